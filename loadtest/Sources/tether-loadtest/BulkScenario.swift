import ArgumentParser

struct Bulk: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Large bodies both ways: downloads from and uploads to the embedded service, MB/s per stream and in total.")
    enum Direction: String, ExpressibleByArgument, CaseIterable { case down, up, both }

    @OptionGroup var relay: RelayOptions
    @Option(help: "Concurrent transfers (one web connection each; with both, half go each way).") var streams = 4
    @Option(help: "Bytes per transfer (uploads must fit the relay's --max-body-size).") var size = 8 << 20
    @Option(help: "down (responses), up (request bodies) or both.") var direction = Direction.both
    @Option(help: "Seconds of transfers (back to back on each connection).") var duration = 10.0
    @Option(help: "Bridges serving the transfers.") var bridges = 2
    @Option(help: "Users the bridges belong to (default: one per bridge).") var users: Int?
    @Option(help: "A transfer with no progress for this long fails as a timeout (seconds).") var timeout = 10.0
    @Option(help: "Relay process id: its CPU over the run is reported.") var relayPid: Int32?

    func validate() throws {
        guard streams >= 1, bridges >= 1, size >= 1 else { throw ValidationError("--streams, --bridges and --size must be at least 1") }
        guard duration > 0, duration <= 86_400, timeout > 0 else { throw ValidationError("--duration must be in (0, 86400], --timeout positive") }
        if let users, users < 1 || users > bridges { throw ValidationError("--users must be 1...bridges") }
    }

    func run() throws {
        raiseFileLimit()
        let setup = try Setup(relay)
        try setup.checkRelay()
        let users = self.users ?? bridges
        var plan = TrafficPlan(workers: setup.workers, tokens: try setup.tokens(count: users), stableBridges: bridges,
                               stableUsers: users, bridgeEndpoint: setup.bridgeEndpoint(),
                               clientEndpoint: setup.clientEndpoint(timeoutSeconds: timeout))
        plan.clients = streams
        switch direction {
        case .down: plan.jobs = [.download(size: size)]
        case .up: plan.jobs = [.upload(size: size)]
        case .both: plan.jobs = [.download(size: size), .upload(size: size)]
        }
        plan.arrivals = .closedLoop
        let session = try TrafficSession(setup: setup, plan: plan, label: "bulk")
        _ = try session.connectBridges(timeout: 120)
        try session.connectClients(timeout: 30)
        var cpu = CPUWindow(relayPID: relayPid)
        cpu.start()
        let before = session.totals
        session.startTraffic()
        let start = monotonicSeconds()
        var previous = before
        session.run(seconds: duration, progress: { t, c in
            defer { previous = c }
            return "t=\(format1(t))s down \(fixed(Double(c.bytesDown &- previous.bytesDown) / 1e6, 1)) MB/s up \(fixed(Double(c.bytesUp &- previous.bytesUp) / 1e6, 1)) MB/s transfers done=\(c.answered) failed=\(c.requestErrors)"
        })
        let atStop = session.totals
        let seconds = monotonicSeconds() - start
        cpu.stop()
        session.drain(timeout: timeout + 2)
        let results = session.finish()
        let t = session.totals

        let down = Double(atStop.bytesDown &- before.bytesDown) / seconds / 1e6
        let up = Double(atStop.bytesUp &- before.bytesUp) / seconds / 1e6
        var report = Report(scenario: "bulk")
        report.headline = "\(streams) transfers (\(direction.rawValue)) of \(size) bytes back to back for \(format1(duration)) s through \(bridges) bridges (\(users) users)"
        setup.options.add(to: &report.parameters)
        report.parameters.set("streams", streams)
        report.parameters.set("size", size)
        report.parameters.set("direction", direction.rawValue)
        report.parameters.set("duration_s", duration)
        report.parameters.set("bridges", bridges)
        report.parameters.set("users", users)
        report.parameters.set("timeout_s", timeout)
        report.figures.set("seconds", seconds)
        addRequestFigures(&report, totals: t, errors: results.errors, seconds: seconds)
        report.figures.set("bytes_down", atStop.bytesDown &- before.bytesDown)
        report.figures.set("bytes_up", atStop.bytesUp &- before.bytesUp)
        report.figures.set("down_mb_per_second", down)
        report.figures.set("up_mb_per_second", up)
        report.figures.set("total_mb_per_second", down + up)
        let perStream = results.transferCount > 0 ? results.transferRateSum / Double(results.transferCount) : .nan
        var stream = JSONReport()
        stream.set("transfers", results.transferCount)
        stream.set("mean", perStream)
        stream.set("min", results.transferCount > 0 ? results.transferRateMin : .nan)
        stream.set("max", results.transferCount > 0 ? results.transferRateMax : .nan)
        report.figures.set("per_stream_mb_per_second", stream)
        report.figures.set("transfer_time_us", results.serviceTime.json)
        report.row("throughput", "down \(fixed(down, 1)) MB/s, up \(fixed(up, 1)) MB/s, total \(fixed(down + up, 1)) MB/s")
        report.row("per stream", results.transferCount > 0
            ? "mean \(fixed(perStream, 1)) MB/s, min \(fixed(results.transferRateMin, 1)), max \(fixed(results.transferRateMax, 1)) over \(results.transferCount) transfers"
            : "no transfer completed")
        addBridgeFigures(&report, totals: t, results: results)
        cpu.add(to: &report)
        try report.emit(json: setup.json)
        try setup.checkRelayStillUp()
    }
}
