import ArgumentParser

struct Idle: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "N bridges connect and hold; the relay's resident memory per tunnel.",
        discussion: """
        With --path /ws/tunnel (the default) every connection is a tether.v1 bridge (upgrade with a token, HELLO \
        exchange, pings answered), one user each unless --users says otherwise. Any other --path (e.g. /ws/echo) \
        holds plain WebSocket connections instead (no token needed), as Benchmarks/idle-rss.sh does.
        """)
    @OptionGroup var relay: RelayOptions
    @Option(help: "Connections (bridges) to open.") var connections = 1000
    @Option(help: "WebSocket path: /ws/tunnel for bridges, anything else for plain WebSocket connections.")
    var path = "/ws/tunnel"
    @Option(help: "Users the bridges belong to (default: one per bridge).") var users: Int?
    @Option(help: "Seconds to hold them once established.") var hold = 5.0
    @Option(help: "Handshakes in progress at once, per worker.") var concurrency = 256
    @Option(help: "Relay process id: RSS from /proc/PID/status (VmRSS), CPU from /proc/PID/stat.") var relayPid: Int32?
    @Option(help: "Read the relay's RSS from its Prometheus endpoint instead (process_resident_memory_bytes), e.g. http://127.0.0.1:9464/metrics.")
    var metricsUrl: String?

    func validate() throws {
        guard connections >= 1 else { throw ValidationError("--connections must be at least 1") }
        guard hold >= 0, hold <= 86_400 else { throw ValidationError("--hold must be in [0, 86400]") }
        if let users, users < 1 || users > connections { throw ValidationError("--users must be 1...connections") }
    }

    func run() throws {
        raiseFileLimit()
        if path != "/ws/tunnel" {
            let target = try parseLoopbackTarget(relay.target)
            try BlockingHTTP.checkReachable(target)
            try RawIdleScenario.run(.init(target: target, connections: connections, path: path, hold: hold,
                                          workers: relay.workers, concurrency: max(1, concurrency), sources: relay.sources,
                                          relayPID: relayPid, tlsCA: relay.tls ? relay.ca : nil, json: relay.json))
            return
        }
        let probe = try MemoryProbe.make(pid: relayPid, metricsURL: metricsUrl)
        let setup = try Setup(relay)
        try setup.checkRelay()
        let users = self.users ?? connections
        if connections + 64 > fileLimit() {
            log("warning: the open-file limit (\(fileLimit())) is below \(connections) connections; raise it with ulimit -n")
        }
        var plan = TrafficPlan(workers: setup.workers, tokens: try setup.tokens(count: users), stableBridges: connections,
                               stableUsers: users, bridgeEndpoint: setup.bridgeEndpoint(),
                               clientEndpoint: setup.clientEndpoint(timeoutSeconds: 5))
        plan.maxConnecting = max(1, concurrency)
        let session = try TrafficSession(setup: setup, plan: plan, label: "idle")
        let rssBefore = probe?.residentBytes()
        let connectSeconds = try session.connectBridges(timeout: 600, allowFailures: true)
        let established = session.totals.bridgesReady
        log("[idle] \(established) bridges ready in \(format1(connectSeconds)) s; holding \(format1(hold)) s")
        session.run(seconds: 1, progress: { _, _ in "settling" })
        let rssEstablished = probe?.residentBytes()
        session.run(seconds: hold, progress: { t, c in
            "t=\(format1(t))s holding \(c.bridgesReady &- c.bridgesClosed) bridges (lost \(c.bridgesLost))"
        })
        let rssAfter = probe?.residentBytes()
        let results = session.finish()
        let t = session.totals

        var report = Report(scenario: "idle")
        report.headline = "\(t.bridgesReady)/\(connections) bridges (\(users) users)\(setup.tls != nil ? " over TLS" : "") held \(format1(hold)) s"
        setup.options.add(to: &report.parameters)
        report.parameters.set("connections", connections)
        report.parameters.set("users", users)
        report.parameters.set("hold_s", hold)
        report.parameters.set("concurrency", concurrency)
        report.parameters.set("memory_source", probe?.description ?? "none")
        report.figures.set("tls", setup.tls != nil ? "yes" : "no")
        report.figures.set("connections", connections)
        report.figures.set("connections_established", t.bridgesReady)
        report.figures.set("connections_failed", t.bridgesFailed)
        report.figures.set("connect_seconds", connectSeconds)
        report.figures.set("handshakes_per_second", Double(t.bridgesReady) / connectSeconds)
        report.row("connect", "\(t.bridgesReady) ready, \(t.bridgesFailed) failed in \(format1(connectSeconds)) s (\(fixed(Double(t.bridgesReady) / connectSeconds, 0)) handshakes/s)")
        addBridgeFigures(&report, totals: t, results: results)
        if let before = rssBefore, let held = [rssEstablished, rssAfter].compactMap({ $0 }).max() {
            let perTunnel = t.bridgesReady > 0 ? Double(held - before) / Double(t.bridgesReady) : .nan
            report.figures.set("relay_rss_before_bytes", before)
            report.figures.set("relay_rss_after_bytes", held)
            report.figures.set("rss_per_tunnel_bytes", perTunnel)
            report.figures.set("rss_per_connection_bytes", perTunnel)
            report.row("relay RSS", "\(before / 1024) KiB empty -> \(held / 1024) KiB held = \(fixed(perTunnel, 0)) B (\(fixed(perTunnel / 1024, 2)) KiB) per tunnel")
        } else if probe != nil {
            report.row("relay RSS", "could not be read (\(probe?.description ?? ""))")
        }
        try report.emit(json: setup.json)
        try setup.checkRelayStillUp()
        if t.bridgesReady < UInt64(connections) {
            throw LoadTestError.failed("only \(t.bridgesReady) of \(connections) bridges connected: \(results.bridgeFailures.summary)")
        }
    }
}
