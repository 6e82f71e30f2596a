/// The phases every bridge scenario goes through, driven from the main thread: open the
/// bridges, open the web clients, run traffic for the duration, drain, close, collect.
final class TrafficSession {
    let setup: Setup
    let plan: TrafficPlan
    let label: String
    let harness: Harness<TrafficWorker>
    private(set) var trafficStart: UInt64 = 0

    init(setup: Setup, plan: TrafficPlan, label: String) throws {
        self.setup = setup
        self.plan = plan
        self.label = label
        harness = try Harness(workers: setup.workers, tickNanoseconds: setup.tickNanoseconds,
                                  receiveBuffers: setup.receiveBuffers) { loop, index, counters, results in
            TrafficWorker(loop: loop, index: index, plan: plan, counters: counters, results: results)
        }
    }

    var totals: Totals { harness.totals }

    /// Opens every bridge. With `allowFailures` false a single failure ends the run with the
    /// reasons (a wrong secret or too small a quota must not pass as a measurement).
    func connectBridges(timeout: Double, allowFailures: Bool = false) throws -> Double {
        let start = monotonicSeconds()
        let total = UInt64(plan.totalBridges)
        harness.each { $0.startBridges() }
        harness.run(seconds: timeout, label: label, progress: { t in
            let c = self.totals
            return "t=\(format1(t))s bridges ready=\(c.bridgesReady)/\(total) failed=\(c.bridgesFailed)"
        }, done: {
            let c = self.totals
            return c.bridgesReady + c.bridgesFailed >= total || (!allowFailures && c.bridgesFailed > 0)
        })
        let seconds = monotonicSeconds() - start
        let c = totals
        if !allowFailures && c.bridgesReady < total {
            let results = abort()
            let why = results.bridgeFailures.total > 0 ? results.bridgeFailures.summary : "timed out after \(format1(timeout)) s"
            throw LoadTestError.failed("only \(c.bridgesReady) of \(total) bridges connected: \(why)")
        }
        return seconds
    }

    /// Opens the web clients' connections ahead of the traffic.
    func connectClients(timeout: Double) throws {
        let total = UInt64(plan.clients)
        guard total > 0 else { return }
        harness.each { $0.startClients() }
        harness.run(seconds: timeout, label: label, progress: { t in
            "t=\(format1(t))s web connections=\(self.totals.clientsConnected)/\(total)"
        }, done: {
            let c = self.totals
            return c.clientsConnected + c.failedConnects >= total
        })
        let c = totals
        if c.clientsConnected < total {
            let results = abort()
            throw LoadTestError.failed("only \(c.clientsConnected) of \(total) web connections opened: \(results.clientConnectFailures.summary)")
        }
    }

    func startTraffic() {
        // A little ahead, so every worker starts on the same schedule.
        let start = nowNanoseconds() &+ 2_000_000
        trafficStart = start
        harness.eachAndWait { $0.startTraffic(at: start) }
    }

    /// Runs the traffic for `seconds` (or until `done`), printing a progress line every second.
    func run(seconds: Double, progress: @escaping (Double, Totals) -> String, done: @escaping (Totals) -> Bool = { _ in false }) {
        harness.run(seconds: seconds, label: label,
                    progress: { t in progress(t, self.totals) }, done: { done(self.totals) })
    }

    /// Stops new requests and waits (ticking) until every request has an outcome.
    func drain(timeout: Double) {
        harness.eachAndWait { $0.stopTraffic() }
        harness.run(seconds: timeout, label: label, progress: { t in
            "t=\(format1(t))s draining: \(self.totals.inFlight) requests in flight"
        }, done: { self.totals.inFlight == 0 })
    }

    /// Closes everything, stops the loops and returns the merged results.
    func finish() -> WorkerResults {
        harness.eachAndWait { $0.closeAll() }
        // Let the closes reach the relay (WebSocket close, FIN) before the loops stop.
        let deadline = monotonicSeconds() + 2
        while monotonicSeconds() < deadline {
            let c = totals
            if c.bridgesClosed >= c.bridgesReady { break }
            sleepSeconds(0.02)
        }
        harness.shutdown()
        let results = harness.mergedResults()
        results.bufferExhaustions = harness.bufferExhaustions
        return results
    }

    private func abort() -> WorkerResults {
        harness.eachAndWait { $0.closeAll() }
        sleepSeconds(0.2)
        harness.shutdown()
        return harness.mergedResults()
    }
}
