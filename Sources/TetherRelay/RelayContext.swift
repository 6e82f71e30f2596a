#if os(Linux)
import Glibc
import Logging
import TetherAuth
import TetherIO
import TetherQuota

/// What one worker's handlers share. Lives on that worker's loop thread; nothing here is locked.
final class RelayContext {
    /// Replaced by a reload (posted to this loop); listeners and workers never change.
    var configuration: RelayConfiguration
    let stats: RelayStats
    /// The relay's process-wide logger ("tether.relay").
    let logger: Logger
    /// Per module, so that `log.levels` can turn one up: bridges and tunnels, client requests,
    /// authentication, the admin API.
    let tunnelLogger = Logger(label: "tether.tunnel")
    let httpLogger = Logger(label: "tether.http")
    let authLogger = Logger(label: "tether.auth")
    let adminLogger = Logger(label: "tether.admin")
    /// Replaced by the key refresher (posted to this loop) when the key set changes.
    var verifier: TokenVerifier
    /// Asked for a refresh when a token names an unknown kid.
    var keyRefresher: KeyRefresher?
    let shared: RelayShared
    // Unowned: the loop owns its listeners, whose handler factories hold this context.
    unowned let loop: EventLoop
    /// Every worker, to hand a connection to the one that owns its session.
    let workers: WorkerDirectory
    /// The sessions whose home is this worker.
    let sessions = SessionTable()
    /// Tokens this worker verified recently (until their exp): a signature check costs tens of
    /// microseconds, a cache hit about one.
    let tokenCache = TokenCache(capacity: 4096)
    /// Set by `Relay.drain`: bridges that connect now are told to go away at once.
    var draining = false
    /// Audit lines for quota rejections: a few a second per worker, the rest only counted.
    var auditQuotaBucket: TokenBucket
    var auditQuotaSkipped = 0
    /// Connections across all workers above which new ones get 503 CAPACITY_EXCEEDED.
    var maxConnections: Int
    /// Set only in a session worker (Docker isolation): its bridges and control link.
    var worker: WorkerState?
    /// Set only in a relay with `isolation.mode: docker`.
    var isolation: IsolationRuntime?
    /// Cross-worker requests (scrapes, admin API) waiting for every worker's answer.
    var pendingGathers: [UInt64: () -> Void] = [:]
    var nextGatherID: UInt64 = 0

    init(configuration: RelayConfiguration, stats: RelayStats, logger: Logger, verifier: TokenVerifier,
         shared: RelayShared, loop: EventLoop, workers: WorkerDirectory, maxConnections: Int) {
        self.configuration = configuration
        self.shared = shared
        self.maxConnections = maxConnections
        self.auditQuotaBucket = TokenBucket(ratePerSecond: 5, burst: 20, now: loop.nowMilliseconds)
        self.stats = stats
        self.logger = logger
        self.verifier = verifier
        self.loop = loop
        self.workers = workers
    }

    /// The worker that owns a session: all of a session's bridges and streams live on one
    /// loop, so they meet without locks.
    func homeWorker(of session: SessionID) -> Int {
        Int(session.shard % UInt64(workers.count))
    }

    /// Open connections on every worker: this loop's exact count plus the others' as last
    /// published (a few relaxed loads; checked once per accept).
    var openConnections: Int {
        var total = loop.connectionCount
        for (index, handle) in workers.handles.enumerated() where index != loop.index {
            total += handle.stats.openConnections.load(ordering: .relaxed)
        }
        return total
    }

    var control: RelayControl { shared.control }

    /// Monotonic nanoseconds, for request timings (the loop's clock has millisecond steps).
    func monotonicNanoseconds() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) &* 1_000_000_000 &+ UInt64(ts.tv_nsec)
    }

    func nowSeconds() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }
}

/// One slot per worker. Each slot is written once, by its own loop thread at start, and read
/// only there afterwards (hand-off factories run on the target loop), hence unchecked.
final class WorkerDirectory: @unchecked Sendable {
    final class Slot: @unchecked Sendable {
        var context: RelayContext?
    }
    let handles: [EventLoopHandle]
    let slots: [Slot]

    init(handles: [EventLoopHandle]) {
        self.handles = handles
        self.slots = handles.map { _ in Slot() }
    }

    var count: Int { handles.count }

    /// For use on worker `index`'s own thread only.
    func context(of index: Int) -> RelayContext? { slots[index].context }
}
#endif
