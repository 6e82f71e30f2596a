import ArgumentParser

struct Stream: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "K concurrent LLM-like streams at T tokens/s for D seconds; the delay the relay adds per chunk.")
    @OptionGroup var relay: RelayOptions
    @Option(help: "Concurrent streams (one web connection each).") var streams = 100
    @Option(help: "Tokens (chunks) per second per stream.") var tokenRate = 20.0
    @Option(help: "Seconds each stream lasts.") var duration = 10.0
    @Option(help: "Bytes per chunk (at least 32).") var chunkSize = 32
    @Option(help: "Bridges serving the streams.") var bridges = 10
    @Option(help: "Users the bridges belong to (default: one per bridge).") var users: Int?
    @Option(help: "Seconds over which the streams start (spread evenly).") var ramp = 1.0
    @Option(help: "A stream with no chunk for this long fails as a timeout (seconds).") var timeout = 10.0
    @Option(help: "Relay process id: its CPU over the run is reported.") var relayPid: Int32?

    func validate() throws {
        guard streams >= 1, bridges >= 1 else { throw ValidationError("--streams and --bridges must be at least 1") }
        guard tokenRate > 0, tokenRate <= 100_000 else { throw ValidationError("--token-rate must be in (0, 100000]") }
        guard duration > 0, duration <= 86_400, ramp >= 0, timeout > 0 else {
            throw ValidationError("--duration must be in (0, 86400], --ramp at least 0, --timeout positive")
        }
        guard (StreamRecord.minimumSize...4096).contains(chunkSize) else { throw ValidationError("--chunk-size must be 32...4096") }
        if let users, users < 1 || users > bridges { throw ValidationError("--users must be 1...bridges") }
    }

    func run() throws {
        raiseFileLimit()
        let setup = try Setup(relay)
        try setup.checkRelay()
        let users = self.users ?? bridges
        let tokens = max(1, Int(tokenRate * duration))
        var plan = TrafficPlan(workers: setup.workers, tokens: try setup.tokens(count: users), stableBridges: bridges,
                               stableUsers: users, bridgeEndpoint: setup.bridgeEndpoint(),
                               clientEndpoint: setup.clientEndpoint(timeoutSeconds: timeout))
        plan.clients = streams
        plan.jobs = [.stream(tokens: tokens, rate: tokenRate, size: chunkSize)]
        plan.arrivals = .once(spacing: UInt64(ramp * 1e9 / Double(streams)))
        let session = try TrafficSession(setup: setup, plan: plan, label: "stream")
        _ = try session.connectBridges(timeout: 120)
        try session.connectClients(timeout: 30)
        var cpu = CPUWindow(relayPID: relayPid)
        cpu.start()
        session.startTraffic()
        let start = monotonicSeconds()
        var previous = session.totals
        let expected = UInt64(streams)
        session.run(seconds: duration + ramp + timeout + 5, progress: { t, c in
            defer { previous = c }
            return "t=\(format1(t))s streams started=\(c.sent)/\(streams) done=\(c.answered) failed=\(c.requestErrors) chunks sent=\(c.chunksSent) received=\(c.chunksReceived) (\(c.chunksReceived &- previous.chunksReceived)/s)"
        }, done: { c in c.answered + c.requestErrors >= expected })
        let seconds = monotonicSeconds() - start
        cpu.stop()
        session.drain(timeout: 1)
        let results = session.finish()
        let t = session.totals

        var report = Report(scenario: "stream")
        report.headline = "\(streams) streams at \(format1(tokenRate)) tokens/s for \(format1(duration)) s (\(tokens) chunks of \(chunkSize) B each) through \(bridges) bridges (\(users) users)"
        setup.options.add(to: &report.parameters)
        report.parameters.set("streams", streams)
        report.parameters.set("token_rate", tokenRate)
        report.parameters.set("duration_s", duration)
        report.parameters.set("tokens_per_stream", tokens)
        report.parameters.set("chunk_size", chunkSize)
        report.parameters.set("bridges", bridges)
        report.parameters.set("users", users)
        report.parameters.set("ramp_s", ramp)
        report.parameters.set("timeout_s", timeout)
        report.figures.set("seconds", seconds)
        addRequestFigures(&report, totals: t, errors: results.errors, seconds: seconds)
        report.figures.set("chunks_expected", UInt64(streams) * UInt64(tokens))
        report.figures.set("chunks_sent", t.chunksSent)
        report.figures.set("chunks_received", t.chunksReceived)
        report.figures.set("chunks_lost", t.chunksSent >= t.chunksReceived ? t.chunksSent - t.chunksReceived : 0)
        report.figures.set("chunks_missing", results.chunksMissing)
        report.figures.set("chunks_reordered", results.chunksReordered)
        report.figures.set("chunks_per_second", Double(t.chunksReceived) / seconds)
        report.figures.set("send_stalls", results.tokenStalls)
        report.figures.set("chunk_delay_us", results.chunkDelay.json)
        report.figures.set("stream_duration_us", results.latency.json)
        report.row("chunks", "\(t.chunksSent) sent by the services, \(t.chunksReceived) received (\(fixed(Double(t.chunksReceived) / seconds, 0)) /s), \(results.chunksMissing) missing, \(results.chunksReordered) reordered")
        report.row("added delay per chunk", results.chunkDelay.summary)
        report.row("  (service emission to client arrival: relay + loopback + the driver's own work)", "")
        addBridgeFigures(&report, totals: t, results: results)
        cpu.add(to: &report)
        try report.emit(json: setup.json)
        try setup.checkRelayStillUp()
    }
}
