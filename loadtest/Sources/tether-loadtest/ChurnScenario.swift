import ArgumentParser

struct Churn: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Bridges disconnect and reconnect at a rate while requests flow to users whose bridges stay up.")
    @OptionGroup var relay: RelayOptions
    @Option(help: "Seconds of churn and traffic.") var duration = 10.0
    @Option(help: "Bridges that stay up (they carry every request).") var stableBridges = 10
    @Option(help: "Users of the stable bridges (default: one per bridge).") var stableUsers: Int?
    @Option(help: "Bridges that disconnect and reconnect (separate users, no requests).") var churnBridges = 10
    @Option(help: "Users of the churning bridges (default: one per bridge).") var churnUsers: Int?
    @Option(help: "Reconnects per second in total (each closes one churning bridge and opens its replacement).")
    var churnRate = 10.0
    @Option(help: "Requests per second to the stable users (open loop).") var rate = 200.0
    @Option(help: "Keep-alive web connections (over the stable users).") var connections = 16
    @Option(help: "Response body size in bytes.") var size = 64
    @Option(help: "A request with no progress for this long fails as a timeout (seconds).") var timeout = 5.0
    @Option(help: "Relay process id: its CPU over the run is reported.") var relayPid: Int32?

    func validate() throws {
        guard duration > 0, duration <= 86_400 else { throw ValidationError("--duration must be in (0, 86400]") }
        guard stableBridges >= 1, churnBridges >= 1, connections >= 1 else {
            throw ValidationError("--stable-bridges, --churn-bridges and --connections must be at least 1")
        }
        guard churnRate > 0, rate > 0, size >= 0, timeout > 0 else {
            throw ValidationError("--churn-rate, --rate and --timeout must be positive")
        }
        if let stableUsers, stableUsers < 1 || stableUsers > stableBridges { throw ValidationError("--stable-users must be 1...stable-bridges") }
        if let churnUsers, churnUsers < 1 || churnUsers > churnBridges { throw ValidationError("--churn-users must be 1...churn-bridges") }
    }

    func run() throws {
        raiseFileLimit()
        let setup = try Setup(relay)
        try setup.checkRelay()
        let stableUsers = self.stableUsers ?? stableBridges
        let churnUsers = self.churnUsers ?? churnBridges
        // Separate subjects: lt-s<n> carry the requests, lt-c<n> churn.
        let tokens = try setup.tokens(prefix: "lt-s", count: stableUsers) + setup.tokens(prefix: "lt-c", count: churnUsers)
        var plan = TrafficPlan(workers: setup.workers, tokens: tokens, stableBridges: stableBridges, stableUsers: stableUsers,
                               bridgeEndpoint: setup.bridgeEndpoint(), clientEndpoint: setup.clientEndpoint(timeoutSeconds: timeout))
        plan.churnBridges = churnBridges
        plan.churnUsers = churnUsers
        plan.churnPerSecond = churnRate
        plan.clients = connections
        plan.jobs = [.small(size: size)]
        plan.arrivals = .openLoop(perSecond: rate)
        let run = try OpenLoopRun.execute(setup: setup, plan: plan, label: "churn", duration: duration, timeout: timeout,
                                          relayPID: relayPid)

        var report = Report(scenario: "churn")
        report.headline = "\(fixed(churnRate, 0)) reconnects/s over \(churnBridges) bridges (\(churnUsers) users) for \(format1(duration)) s, \(fixed(rate, 0)) req/s to \(stableBridges) stable bridges (\(stableUsers) users)"
        setup.options.add(to: &report.parameters)
        report.parameters.set("duration_s", duration)
        report.parameters.set("stable_bridges", stableBridges)
        report.parameters.set("stable_users", stableUsers)
        report.parameters.set("churn_bridges", churnBridges)
        report.parameters.set("churn_users", churnUsers)
        report.parameters.set("churn_rate", churnRate)
        report.parameters.set("rate", rate)
        report.parameters.set("connections", connections)
        report.parameters.set("size", size)
        report.parameters.set("timeout_s", timeout)
        let t = run.totals
        let reconnectRate = Double(t.reconnects) / run.seconds
        report.figures.set("reconnects", t.reconnects)
        report.figures.set("reconnects_per_second", reconnectRate)
        report.figures.set("reconnect_failures", t.bridgesFailed)
        // Every request goes to a stable user: all request failures are failures on stable bridges.
        report.figures.set("failed_requests_stable", run.results.errors.total)
        report.row("reconnects", "\(t.reconnects) (\(fixed(reconnectRate, 1)) /s), \(t.bridgesFailed) failed")
        report.row("failed requests on stable bridges", "\(run.results.errors.total)")
        run.add(to: &report, targetRate: rate)
        try report.emit(json: setup.json)
        try setup.checkRelayStillUp()
    }
}
