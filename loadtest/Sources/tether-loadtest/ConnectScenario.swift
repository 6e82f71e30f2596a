import ArgumentParser
import TetherIO

struct Connect: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Bridge handshakes per second: TCP (+TLS), upgrade with a JWT, HELLO answered; then close (or hold).")
    @OptionGroup var relay: RelayOptions
    @Option(help: "Seconds of handshakes.") var duration = 10.0
    @Option(help: "Handshakes in progress at once, in total.") var concurrency = 64
    @Option(help: "Distinct users (tokens) the handshakes cycle through.") var users = 10_000
    @Flag(help: "Keep every bridge open until the end instead of closing it after its HELLO.") var hold = false
    @Option(help: "Relay process id: its CPU over the run is reported.") var relayPid: Int32?

    func validate() throws {
        guard duration > 0, duration <= 86_400 else { throw ValidationError("--duration must be in (0, 86400]") }
        guard concurrency >= 1 else { throw ValidationError("--concurrency must be at least 1") }
        guard users >= 1 else { throw ValidationError("--users must be at least 1") }
    }

    func run() throws {
        raiseFileLimit()
        let setup = try Setup(relay)
        try setup.checkRelay()
        let tokens = try setup.tokens(count: users)
        let plan = ConnectPlan(workers: setup.workers, tokens: tokens, endpoint: setup.bridgeEndpoint(),
                               concurrency: concurrency, hold: hold)
        let harness = try Harness(workers: setup.workers, tickNanoseconds: setup.tickNanoseconds,
                                  receiveBuffers: setup.receiveBuffers) { loop, index, counters, results in
            ConnectWorker(loop: loop, index: index, plan: plan, counters: counters, results: results)
        }
        var cpu = CPUWindow(relayPID: relayPid)
        cpu.start()
        let start = monotonicSeconds()
        harness.each { $0.start() }
        var previous: UInt64 = 0
        harness.run(seconds: duration, label: "connect", progress: { t in
            let c = harness.totals
            defer { previous = c.bridgesReady }
            return "t=\(format1(t))s handshakes=\(c.bridgesReady) (\(c.bridgesReady &- previous)/s) failed=\(c.bridgesFailed)"
        })
        let atStop = harness.totals
        let seconds = monotonicSeconds() - start
        cpu.stop()
        harness.eachAndWait { $0.stop() }
        // Handshakes still in progress finish (or fail) before the loops stop.
        harness.run(seconds: 10, label: "connect", progress: { _ in "finishing" },
                    done: { harness.eachAndWaitValue { $0.inProgress } == 0 })
        harness.eachAndWait { $0.closeAll() }
        sleepSeconds(0.5)
        harness.shutdown()
        let results = harness.mergedResults()
        results.bufferExhaustions = harness.bufferExhaustions
        let final = harness.totals

        var report = Report(scenario: "connect")
        report.headline = "\(setup.tls != nil ? "TLS" : "plaintext") bridge handshakes with HS256 tokens for \(format1(seconds)) s, \(concurrency) at once, \(users) users\(hold ? ", held" : "")"
        setup.options.add(to: &report.parameters)
        report.parameters.set("duration_s", duration)
        report.parameters.set("concurrency", concurrency)
        report.parameters.set("users", users)
        report.parameters.set("hold", hold)
        let rate = Double(atStop.bridgesReady) / seconds
        report.figures.set("seconds", seconds)
        report.figures.set("handshakes", atStop.bridgesReady)
        report.figures.set("handshakes_total", final.bridgesReady)
        report.figures.set("handshakes_per_second", rate)
        report.figures.set("failed", final.bridgesFailed)
        report.figures.set("failures", counts: results.bridgeFailures.counts)
        report.figures.set("bridges_lost", final.bridgesLost)
        report.figures.set("handshake_latency_us", results.handshake.json)
        report.figures.set("driver_buffer_exhaustions", results.bufferExhaustions)
        report.figures.set("driver_loop_gap_us", results.loopGap.json)
        report.row("handshakes", "\(atStop.bridgesReady) in \(format1(seconds)) s = \(fixed(rate, 0)) /s")
        report.row("failed", final.bridgesFailed == 0 ? "0" : "\(final.bridgesFailed): \(results.bridgeFailures.summary)")
        report.row("handshake latency", results.handshake.summary)
        cpu.add(to: &report)
        try report.emit(json: setup.json)
        try setup.checkRelayStillUp()
        if final.bridgesReady == 0 {
            throw LoadTestError.failed("no bridge handshake succeeded: \(results.bridgeFailures.summary)")
        }
    }
}

struct ConnectPlan: Sendable {
    var workers: Int
    var tokens: [String]
    var endpoint: BridgeEndpoint
    var concurrency: Int
    var hold: Bool
}

/// Keeps its share of handshakes in progress for as long as it runs; each bridge is closed
/// as soon as the relay's HELLO arrives (or held).
final class ConnectWorker: LoopWorker, BridgeOwner {
    private let loop: EventLoop
    private let plan: ConnectPlan
    private let counters: WorkerCounters
    private let results: WorkerResults
    private let service: FakeService
    private let index: Int
    private let share: Int
    private var live: [ObjectIdentifier: BridgeClient] = [:]
    private var handshaking = 0
    private var opened = 0
    private var running = false

    init(loop: EventLoop, index: Int, plan: ConnectPlan, counters: WorkerCounters, results: WorkerResults) {
        self.loop = loop
        self.index = index
        self.plan = plan
        self.counters = counters
        self.results = results
        service = FakeService(counters: counters, results: results)
        share = max(1, evenShare(plan.concurrency, worker: index, of: plan.workers))
    }

    var inProgress: Int { handshaking }

    func start() {
        running = true
        fill()
    }

    func stop() { running = false }

    func closeAll() {
        running = false
        for b in live.values { b.close() }
    }

    func tick(now: UInt64) {
        if running { fill() }
    }

    private var filling = false

    private func fill() {
        // Not re-entrant: a connect that fails at once reports back from inside start().
        guard !filling else { return }
        filling = true
        defer { filling = false }
        while running, handshaking < share {
            let n = opened * plan.workers + index
            opened += 1
            let user = n % plan.tokens.count
            let bridge = BridgeClient(owner: self, service: service, user: user, index: n, endpoint: plan.endpoint)
            live[ObjectIdentifier(bridge)] = bridge
            handshaking += 1
            bridge.start(on: loop, endpoint: plan.endpoint, token: plan.tokens[user])
            // Failed before reaching the kernel (no ports, no descriptors): retry on the next tick.
            if bridge.isFinished { break }
        }
    }

    func bridgeReady(_ bridge: BridgeClient) {
        handshaking -= 1
        results.handshake.record(nanoseconds: nowNanoseconds() &- bridge.startedAt)
        counters.bridgesReady.addFromOwner()
        if !plan.hold { bridge.close() }
        fill()
    }

    func bridgeClosed(_ bridge: BridgeClient, wasReady: Bool, reason: String) {
        live[ObjectIdentifier(bridge)] = nil
        if wasReady {
            counters.bridgesClosed.addFromOwner()
            if !bridge.closeRequested {
                counters.bridgesLost.addFromOwner()
                results.bridgeLosses.add(reason)
            }
        } else {
            handshaking -= 1
            if !bridge.closeRequested {
                counters.bridgesFailed.addFromOwner()
                results.bridgeFailures.add(reason)
            }
        }
        fill()
    }
}
