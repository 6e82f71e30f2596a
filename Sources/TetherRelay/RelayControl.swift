#if os(Linux)
import Glibc
import Synchronization
import TetherIO

/// Whether the relay takes traffic (`GET /readyz`).
public enum Readiness: UInt8, Sendable {
    /// Listeners not up yet, or no verification key loaded yet.
    case starting
    case ready
    /// SIGTERM or POST /admin/drain: no new work, streams in flight finish.
    case draining

    var label: String {
        switch self {
        case .starting: return "starting"
        case .ready: return "ready"
        case .draining: return "draining"
        }
    }
}

/// What the admin API reaches of the process as a whole: readiness, reload and drain, and every
/// worker's counters for a scrape. Shared by all workers; touched by operators, never per byte.
final class RelayControl: Sendable {
    private let readinessValue = Atomic<UInt8>(Readiness.starting.rawValue)
    let workerStats: [RelayStats]
    let startedAt: Double
    let reloads = ReloadStats()
    /// Set by `Relay.start`, cleared at shutdown (it holds the relay: the cycle is broken there).
    let operations = Mutex<Operations?>(nil)

    struct Operations: Sendable {
        /// Reloads the configuration (blocking: call it off the loops).
        let reload: @Sendable () -> ReloadOutcome
        let keyStats: @Sendable () -> KeyRefreshStats
        /// Whether tokens can be verified at all (a JWKS URL may not have answered yet).
        let hasKeys: @Sendable () -> Bool
    }

    init(workerStats: [RelayStats]) {
        self.workerStats = workerStats
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        startedAt = Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }

    var readiness: Readiness {
        get { Readiness(rawValue: readinessValue.load(ordering: .acquiring)) ?? .starting }
        set { readinessValue.store(newValue.rawValue, ordering: .releasing) }
    }

    /// Readiness as probes see it: ready only while verification keys can be used too.
    var effectiveReadiness: Readiness {
        let state = readiness
        guard state == .ready, let operations = operations.withLock({ $0 }) else { return state }
        return operations.hasKeys() ? .ready : .starting
    }

    /// A drain is final: once draining, the relay never becomes ready again.
    func markReady() {
        _ = readinessValue.compareExchange(expected: Readiness.starting.rawValue, desired: Readiness.ready.rawValue,
                                           ordering: .acquiringAndReleasing)
    }

    /// Asks the main thread to drain, exactly as SIGTERM does (it owns the exit).
    func requestDrain() {
        kill(getpid(), SIGTERM)
    }
}

/// Configuration reloads (SIGHUP, POST /admin/reload).
final class ReloadStats: Sendable {
    let succeeded = Atomic<UInt64>(0)
    let failed = Atomic<UInt64>(0)
    /// Unix seconds of the last successful reload (or of the start), as bits of a Double.
    let lastSuccessBits = Atomic<UInt64>(0)
    let lastSucceeded = Atomic<Bool>(true)

    var lastSuccess: Double { Double(bitPattern: lastSuccessBits.load(ordering: .relaxed)) }
}

/// The result of one reload, for the admin API and the log.
public struct ReloadOutcome: Sendable {
    public var ok: Bool
    /// What changed (keys named as in docs/CONFIGURATION.md), or why it was refused.
    public var message: String
    public var changes: [String] = []
    /// Settings that differ but only take effect after a restart (listeners, workers).
    public var restartRequired: [String] = []
}

extension RelayContext {
    /// Runs `body` on every worker's loop with that worker's context, then hands the results
    /// (in worker order; nil for a worker that is shutting down) to `completion` on this loop.
    /// For scrapes and the admin API: never on the data path.
    func gather<T: Sendable>(_ body: @escaping @Sendable (RelayContext) -> T,
                             completion: @escaping ([T?]) -> Void) {
        let id = nextGatherID
        nextGatherID &+= 1
        let box = GatherBox<T>(count: workers.count)
        pendingGathers[id] = { completion(box.results) }
        let workers = self.workers
        let origin = loop.index
        let finish: @Sendable () -> Void = {
            _ = workers.handles[origin].execute { loop in workers.context(of: loop.index)?.finishGather(id) }
        }
        for (index, handle) in workers.handles.enumerated() {
            let posted = handle.execute { loop in
                box.store(index, workers.context(of: loop.index).map(body))
                if box.arrived() { finish() }
            }
            if !posted && box.arrived() { finish() }
        }
    }

    fileprivate func finishGather(_ id: UInt64) {
        pendingGathers.removeValue(forKey: id)?()
    }
}

private final class GatherBox<T: Sendable>: Sendable {
    private let slots: Mutex<[T?]>
    private let remaining: Atomic<Int>

    init(count: Int) {
        slots = Mutex(Array(repeating: nil, count: count))
        remaining = Atomic(count)
    }

    func store(_ index: Int, _ value: T?) {
        slots.withLock { $0[index] = value }
    }

    /// True for the last worker to arrive.
    func arrived() -> Bool {
        remaining.subtract(1, ordering: .acquiringAndReleasing).newValue == 0
    }

    var results: [T?] { slots.withLock { $0 } }
}
#endif
