import ArgumentParser

struct RPS: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rps",
        abstract: "Small requests at a fixed arrival rate (open loop) through M bridges; latency from the intended send time.")
    @OptionGroup var relay: RelayOptions
    @Option(help: "Requests per second in total (a fixed schedule, whatever the answers do).") var rate = 1000.0
    @Option(help: "Seconds of traffic.") var duration = 10.0
    @Option(help: "Bridges serving the requests.") var bridges = 10
    @Option(help: "Users the bridges belong to (default: one per bridge).") var users: Int?
    @Option(help: "Keep-alive web connections (spread over the users).") var connections = 64
    @Option(help: "Response body size in bytes.") var size = 64
    @Option(help: "Request this path instead of /small?size=N (e.g. /files/1KiB.bin with --forward); every 2xx counts.")
    var path: String?
    @Option(help: "Bridges forward to this real local service (http://127.0.0.1:PORT) instead of the embedded one.")
    var forward: String?
    @Option(help: "A request with no progress for this long fails as a timeout (seconds).") var timeout = 5.0
    @Option(help: "Relay process id: its CPU over the run is reported.") var relayPid: Int32?

    func validate() throws {
        guard rate > 0, rate <= 10_000_000 else { throw ValidationError("--rate must be in (0, 10000000]") }
        guard duration > 0, duration <= 86_400 else { throw ValidationError("--duration must be in (0, 86400]") }
        guard bridges >= 1, connections >= 1, size >= 0, timeout > 0 else {
            throw ValidationError("--bridges and --connections must be at least 1, --size at least 0, --timeout positive")
        }
        if let users, users < 1 || users > bridges { throw ValidationError("--users must be 1...bridges") }
        if let path, !path.hasPrefix("/") { throw ValidationError("--path must start with /") }
    }

    func run() throws {
        raiseFileLimit()
        let setup = try Setup(relay)
        let forwardTarget = try forward.map { try ForwardService.parseTarget($0) }
        try setup.checkRelay()
        let users = self.users ?? bridges
        var plan = TrafficPlan(workers: setup.workers, tokens: try setup.tokens(count: users), stableBridges: bridges,
                               stableUsers: users, bridgeEndpoint: setup.bridgeEndpoint(),
                               clientEndpoint: setup.clientEndpoint(timeoutSeconds: timeout))
        plan.clients = connections
        plan.forward = forwardTarget
        let requestPath = path ?? (forward != nil ? "/" : nil)
        plan.jobs = [requestPath.map { .get(path: $0) } ?? .small(size: size)]
        plan.arrivals = .openLoop(perSecond: rate)
        let run = try OpenLoopRun.execute(setup: setup, plan: plan, label: "rps", duration: duration, timeout: timeout,
                                          relayPID: relayPid)

        var report = Report(scenario: "rps")
        let served = forward.map { "GET \(requestPath ?? "/") forwarded to \($0)" } ?? requestPath.map { "GET \($0)" } ?? "\(size)-byte responses"
        report.headline = "open loop at \(fixed(rate, 0)) req/s for \(format1(duration)) s through \(bridges) bridges (\(users) users), \(connections) connections, \(served)"
        setup.options.add(to: &report.parameters)
        report.parameters.set("rate", rate)
        report.parameters.set("duration_s", duration)
        report.parameters.set("bridges", bridges)
        report.parameters.set("users", users)
        report.parameters.set("connections", connections)
        report.parameters.set("size", size)
        report.parameters.set("timeout_s", timeout)
        if let requestPath { report.parameters.set("path", requestPath) }
        if let forward { report.parameters.set("forward", forward) }
        run.add(to: &report, targetRate: rate)
        try report.emit(json: setup.json)
        try setup.checkRelayStillUp()
    }
}

/// The open-loop run shared by `rps` and `churn`: bridges, clients, traffic, drain.
struct OpenLoopRun {
    var seconds = 0.0
    var answeredInWindow: UInt64 = 0
    var sentInWindow: UInt64 = 0
    var totals: Totals
    var results: WorkerResults
    var cpu: CPUWindow

    static func execute(setup: Setup, plan: TrafficPlan, label: String, duration: Double, timeout: Double,
                        relayPID: Int32?) throws -> OpenLoopRun {
        let session = try TrafficSession(setup: setup, plan: plan, label: label)
        _ = try session.connectBridges(timeout: 120)
        try session.connectClients(timeout: 30)
        var cpu = CPUWindow(relayPID: relayPID)
        cpu.start()
        session.startTraffic()
        let start = monotonicSeconds()
        var previous = session.totals
        session.run(seconds: duration, progress: { t, c in
            defer { previous = c }
            var line = "t=\(format1(t))s sent=\(c.sent) answered=\(c.answered) (\(c.answered &- previous.answered)/s) errors=\(c.requestErrors) in-flight=\(c.inFlight)"
            if plan.churnBridges > 0 { line += " reconnects=\(c.reconnects) reconnect-failures=\(c.bridgesFailed)" }
            if c.bridgesLost > 0 { line += " bridges-lost=\(c.bridgesLost)" }
            return line
        })
        let atStop = session.totals
        let seconds = monotonicSeconds() - start
        cpu.stop()
        session.drain(timeout: timeout + 2)
        let results = session.finish()
        return OpenLoopRun(seconds: seconds, answeredInWindow: atStop.answered, sentInWindow: atStop.sent,
                           totals: session.totals, results: results, cpu: cpu)
    }

    func add(to report: inout Report, targetRate: Double) {
        let achieved = Double(answeredInWindow) / seconds
        report.figures.set("seconds", seconds)
        report.figures.set("target_rate", targetRate)
        report.figures.set("sent_rate", Double(sentInWindow) / seconds)
        report.figures.set("achieved_rate", achieved)
        addRequestFigures(&report, totals: totals, errors: results.errors, seconds: seconds)
        report.figures.set("latency_us", results.latency.json)
        report.figures.set("service_time_us", results.serviceTime.json)
        report.row("achieved rate", "\(fixed(achieved, 0)) answered/s (target \(fixed(targetRate, 0)))")
        report.row("latency", results.latency.summary)
        report.row("  (from intended send time: corrected for coordinated omission)", "")
        report.row("service time", results.serviceTime.summary)
        addBridgeFigures(&report, totals: totals, results: results)
        cpu.add(to: &report)
    }
}
