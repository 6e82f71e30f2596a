import TetherIO

/// How a bridge scenario lays out users, bridges and web clients, and how requests arrive.
/// Computed once on the main thread; every worker takes its share (index % workers).
struct TrafficPlan: Sendable {
    enum Arrivals: Sendable {
        /// No requests (idle).
        case none
        /// Open loop: a fixed schedule of `perSecond` requests in total, latency from the
        /// intended send time.
        case openLoop(perSecond: Double)
        /// Each web client repeats its job back to back until the end (bulk).
        case closedLoop
        /// Each web client runs its job once; starts spread `spacing` ns apart (stream).
        case once(spacing: UInt64)
    }

    var workers: Int
    var tokens: [String]
    /// Bridges 0..<stableBridges belong to users 0..<stableUsers (round robin); the churning
    /// ones after them to users stableUsers..<stableUsers+churnUsers.
    var stableBridges: Int
    var stableUsers: Int
    var churnBridges = 0
    var churnUsers = 0
    var churnPerSecond = 0.0
    /// Web clients, over the stable users (client c is user c % stableUsers).
    var clients = 0
    /// Client c runs jobs[c % jobs.count].
    var jobs = [Job.small(size: 64)]
    var arrivals = Arrivals.none
    /// Handshakes in progress at once, per worker.
    var maxConnecting = 256
    var bridgeEndpoint: BridgeEndpoint
    var clientEndpoint: ClientEndpoint
    /// Bridges forward to this real local service instead of the embedded one.
    var forward: SocketAddress?

    var totalBridges: Int { stableBridges + churnBridges }

    func user(ofBridge b: Int) -> Int {
        b < stableBridges ? b % max(1, stableUsers) : stableUsers + (b - stableBridges) % max(1, churnUsers)
    }

    func isChurning(_ b: Int) -> Bool { b >= stableBridges }
}

/// One driver loop's bridges (with the embedded service) and web clients, for the idle, rps,
/// stream, bulk and churn scenarios.
final class TrafficWorker: LoopWorker, BridgeOwner, WebClientOwner {
    let loop: EventLoop
    let plan: TrafficPlan
    let counters: WorkerCounters
    let results: WorkerResults
    let service: FakeService
    /// With `plan.forward`: what the bridges serve their streams with instead.
    private let forwarder: ForwardService?
    private let workerIndex: Int

    /// This worker's bridge slots: global bridge index = slot * workers + workerIndex.
    private var bridges: [BridgeClient?] = []
    private var handshaking = Set<ObjectIdentifier>()
    private var startQueue: [Int] = []
    private var startQueueHead = 0
    /// Slots whose bridge must be reopened, not before the given time.
    private var restarts: [(slot: Int, at: UInt64)] = []
    private var replacements = Set<ObjectIdentifier>()

    private var clients: [WebClient] = []
    private var idle: [WebClient] = []
    private var retryClients: [WebClient] = []
    /// Open loop: intended send times of requests waiting for a free connection.
    private var backlog: [UInt64] = []
    private var backlogHead = 0

    private var running = false
    private var stopping = false
    private var startedAt: UInt64 = 0
    private var issued: UInt64 = 0
    private var perSecond = 0.0
    private var onceStarted = 0
    private var churnSlots: [Int] = []
    private var churnCursor = 0
    private var churned: UInt64 = 0
    private var churnRate = 0.0
    private let timeoutNanoseconds: UInt64
    private let payload: UnsafeMutableRawBufferPointer

    init(loop: EventLoop, index: Int, plan: TrafficPlan, counters: WorkerCounters, results: WorkerResults) {
        self.loop = loop
        self.workerIndex = index
        self.plan = plan
        self.counters = counters
        self.results = results
        service = FakeService(counters: counters, results: results)
        forwarder = plan.forward.map { ForwardService(loop: loop, target: $0) }
        timeoutNanoseconds = plan.clientEndpoint.timeoutMilliseconds * 1_000_000
        payload = .allocate(byteCount: 1 << 20, alignment: 64)
        payload.initializeMemory(as: UInt8.self, repeating: UInt8(ascii: "u"))
        let mine = evenShare(plan.totalBridges, worker: index, of: plan.workers)
        bridges = Array(repeating: nil, count: mine)
        for slot in 0..<mine where plan.isChurning(globalIndex(slot)) { churnSlots.append(slot) }
    }

    deinit { payload.deallocate() }

    private func globalIndex(_ slot: Int) -> Int { slot * plan.workers + workerIndex }

    // MARK: phases (posted by the main thread)

    func startBridges() {
        for slot in 0..<bridges.count { startQueue.append(slot) }
        startQueued()
    }

    func startClients() {
        let share = evenShare(plan.clients, worker: workerIndex, of: plan.workers)
        for k in 0..<share {
            let c = k * plan.workers + workerIndex
            let user = c % max(1, plan.stableUsers)
            let client = WebClient(owner: self, loop: loop, index: c, user: user, token: plan.tokens[user],
                                   job: plan.jobs[c % plan.jobs.count],
                                   endpoint: plan.clientEndpoint, counters: counters, results: results,
                                   payload: UnsafeRawBufferPointer(payload))
            clients.append(client)
            client.warmUp()
        }
    }

    func startTraffic(at start: UInt64) {
        running = true
        startedAt = start
        if case .openLoop(let rate) = plan.arrivals { perSecond = rate / Double(plan.workers) }
        churnRate = plan.churnPerSecond / Double(plan.workers)
        if case .closedLoop = plan.arrivals {
            for client in idle { dispatchClosedLoop(client) }
            idle.removeAll()
        }
    }

    /// No new requests; those in flight and in the backlog finish (or time out).
    func stopTraffic() {
        running = false
    }

    /// Closes every bridge and connection (end of run).
    func closeAll() {
        stopping = true
        running = false
        for b in bridges { b?.close() }
        for c in clients { c.close() }
    }

    // MARK: tick

    func tick(now: UInt64) {
        service.emitDueTokens(now: now)
        if !restarts.isEmpty, !stopping { restartDue(now) }
        if !retryClients.isEmpty {
            let retry = retryClients
            retryClients = []
            for c in retry {
                if running { dispatchClosedLoop(c) } else { idle.append(c) }
            }
        }
        expireBacklog(now)
        dispatchBacklog()
        guard running, now >= startedAt else { return }
        let elapsed = Double(now - startedAt)
        switch plan.arrivals {
        case .openLoop:
            // Request k is due at k / rate: the first one at the start.
            let due = UInt64(elapsed * perSecond / 1e9) + 1
            while issued < due {
                let intended = startedAt &+ UInt64(Double(issued) * 1e9 / perSecond)
                issued += 1
                issue(intendedAt: intended)
            }
        case .once(let spacing):
            while onceStarted < clients.count {
                let planned = startedAt &+ UInt64(onceStarted) &* spacing
                guard planned <= now else { break }
                let client = clients[onceStarted]
                onceStarted += 1
                counters.sent.addFromOwner()
                client.send(intendedAt: planned)
            }
        case .closedLoop, .none:
            break
        }
        if churnRate > 0, !churnSlots.isEmpty {
            let due = UInt64(elapsed * churnRate / 1e9)
            var attempts = 0
            while churned < due, attempts < churnSlots.count {
                if churnOne() { churned += 1 } else { attempts += 1 }
            }
        }
    }

    // MARK: bridges

    private var startingQueued = false

    private func startQueued() {
        // Not re-entrant: a connect that fails at once reports back from inside openBridge.
        guard !startingQueued else { return }
        startingQueued = true
        defer { startingQueued = false }
        while startQueueHead < startQueue.count, handshaking.count < plan.maxConnecting, !stopping {
            let slot = startQueue[startQueueHead]
            startQueueHead += 1
            openBridge(slot)
        }
        if startQueueHead == startQueue.count {
            startQueue.removeAll()
            startQueueHead = 0
        }
    }

    @discardableResult
    private func openBridge(_ slot: Int, replacement: Bool = false) -> BridgeClient {
        let index = globalIndex(slot)
        let user = plan.user(ofBridge: index)
        let bridge = BridgeClient(owner: self, service: forwarder ?? service, user: user, index: index,
                                  endpoint: plan.bridgeEndpoint)
        bridges[slot] = bridge
        handshaking.insert(ObjectIdentifier(bridge))
        if replacement { replacements.insert(ObjectIdentifier(bridge)) }
        bridge.start(on: loop, endpoint: plan.bridgeEndpoint, token: plan.tokens[user])
        return bridge
    }

    /// Disconnects one churning bridge and opens its replacement at once.
    private func churnOne() -> Bool {
        let slot = churnSlots[churnCursor % churnSlots.count]
        churnCursor += 1
        guard let old = bridges[slot], old.isReady else { return false }
        old.close(reason: "churn")
        openBridge(slot, replacement: true)
        return true
    }

    private func restartDue(_ now: UInt64) {
        var keep: [(slot: Int, at: UInt64)] = []
        for r in restarts {
            if r.at <= now, bridges[r.slot] == nil {
                openBridge(r.slot, replacement: true)
            } else if bridges[r.slot] == nil {
                keep.append(r)
            }
        }
        restarts = keep
    }

    func bridgeReady(_ bridge: BridgeClient) {
        let id = ObjectIdentifier(bridge)
        handshaking.remove(id)
        results.handshake.record(nanoseconds: nowNanoseconds() &- bridge.startedAt)
        counters.bridgesReady.addFromOwner()
        if replacements.remove(id) != nil { counters.reconnects.addFromOwner() }
        startQueued()
    }

    func bridgeClosed(_ bridge: BridgeClient, wasReady: Bool, reason: String) {
        let id = ObjectIdentifier(bridge)
        let wasHandshaking = handshaking.remove(id) != nil
        replacements.remove(id)
        if wasReady {
            counters.bridgesClosed.addFromOwner()
            if !bridge.closeRequested {
                counters.bridgesLost.addFromOwner()
                results.bridgeLosses.add(reason)
            }
        } else if !(bridge.closeRequested && stopping) {
            counters.bridgesFailed.addFromOwner()
            results.bridgeFailures.add(reason)
        }
        let slot = bridge.index / plan.workers
        if slot < bridges.count, bridges[slot] === bridge {
            bridges[slot] = nil
            // Keep the scenario's shape while it runs: reopen lost or failed bridges (not
            // during setup, where a failure must be reported, not retried).
            if running && !stopping { restarts.append((slot, nowNanoseconds() &+ 100_000_000)) }
        }
        if wasHandshaking { startQueued() }
    }

    // MARK: web clients

    private func issue(intendedAt: UInt64) {
        counters.sent.addFromOwner()
        if let client = idle.popLast() {
            client.send(intendedAt: intendedAt)
        } else {
            backlog.append(intendedAt)
        }
    }

    private func expireBacklog(_ now: UInt64) {
        while backlogHead < backlog.count, now &- backlog[backlogHead] > timeoutNanoseconds {
            backlogHead += 1
            counters.requestErrors.addFromOwner()
            results.errors.add(.timeout)
        }
        compactBacklog()
    }

    private func dispatchBacklog() {
        while backlogHead < backlog.count, let client = idle.popLast() {
            let intended = backlog[backlogHead]
            backlogHead += 1
            client.send(intendedAt: intended)
        }
        compactBacklog()
    }

    private func compactBacklog() {
        if backlogHead == backlog.count {
            backlog.removeAll(keepingCapacity: true)
            backlogHead = 0
        } else if backlogHead > 4096, backlogHead * 2 > backlog.count {
            backlog.removeSubrange(0..<backlogHead)
            backlogHead = 0
        }
    }

    private func dispatchClosedLoop(_ client: WebClient) {
        counters.sent.addFromOwner()
        client.send(intendedAt: nowNanoseconds())
    }

    func clientConnected(_ client: WebClient) {
        if running, case .closedLoop = plan.arrivals {
            dispatchClosedLoop(client)
        } else if case .once = plan.arrivals {
            // Started by the tick, in client order.
        } else {
            idle.append(client)
        }
    }

    func clientConnectFailed(_ client: WebClient, reason: String) {
        counters.failedConnects.addFromOwner()
        if case .once = plan.arrivals { return }
        idle.append(client)
    }

    func requestFinished(_ client: WebClient, failure: RequestFailure?) {
        if let failure {
            counters.requestErrors.addFromOwner()
            results.errors.add(failure)
        } else {
            counters.answered.addFromOwner()
        }
        let connectFailed: Bool
        if case .connectFailed? = failure { connectFailed = true } else { connectFailed = false }
        switch plan.arrivals {
        case .openLoop:
            // A connection that just failed to open waits for the tick, so a dead relay cannot
            // recurse through the whole backlog here.
            if !connectFailed, backlogHead < backlog.count {
                let now = nowNanoseconds()
                while backlogHead < backlog.count {
                    let intended = backlog[backlogHead]
                    backlogHead += 1
                    if now &- intended > timeoutNanoseconds {
                        counters.requestErrors.addFromOwner()
                        results.errors.add(.timeout)
                        continue
                    }
                    compactBacklog()
                    client.send(intendedAt: intended)
                    return
                }
                compactBacklog()
            }
            idle.append(client)
        case .closedLoop:
            if connectFailed {
                retryClients.append(client)
            } else if running {
                dispatchClosedLoop(client)
            } else {
                idle.append(client)
            }
        case .once, .none:
            idle.append(client)
        }
    }
}
