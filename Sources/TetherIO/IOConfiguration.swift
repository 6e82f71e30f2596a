#if os(Linux)
import Glibc
import Synchronization
import TetherTLS

public struct IOConfiguration: Sendable {
    /// Worker threads, each with its own ring. Default: one per core.
    public var workers: Int = Swift.max(1, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))))
    public var ringEntries: UInt32 = 4096
    /// Provided receive buffers per worker (power of two) and their size: sized by messages in
    /// flight, not by connections.
    public var receiveBufferCount: Int = 512
    public var receiveBufferSize: Int = 16 * 1024
    /// Above this many unsent bytes a connection reports itself unwritable; below the low
    /// watermark it tells its handler it is writable again.
    public var writeHighWatermark: Int = 256 * 1024
    public var writeLowWatermark: Int = 64 * 1024
    /// After a graceful close sends FIN, unread input is drained for this long, so that an
    /// error response is not destroyed by a reset.
    public var lingerMilliseconds: UInt64 = 2_000
    /// A graceful close that cannot flush (peer not reading) is aborted after this long.
    public var closeTimeoutMilliseconds: UInt64 = 10_000

    public init() {}
}

/// Per-worker I/O counters. Only the owning worker writes them (plain relaxed stores once per
/// loop iteration, no contended read-modify-write); scrapers read them from any thread.
public final class IOStats: Sendable {
    public let submissions = Atomic<UInt64>(0)
    public let completions = Atomic<UInt64>(0)
    public let bufferExhaustions = Atomic<UInt64>(0)
    public let loopIterations = Atomic<UInt64>(0)
    public let accepted = Atomic<UInt64>(0)
    public let openConnections = Atomic<Int>(0)
    public init() {}
}

extension Atomic where Value == UInt64 {
    /// Adds to a counter that only one thread writes (its worker): a relaxed load and store,
    /// no locked read-modify-write on the data path. Readers on other threads see it promptly.
    @inline(__always)
    public func addFromOwner(_ n: UInt64 = 1) {
        store(load(ordering: .relaxed) &+ n, ordering: .relaxed)
    }
}

/// Holds the TLS context new connections use; a reload swaps it without touching established
/// connections (each keeps a reference to the context it started with).
public final class TLSContextBox: Sendable {
    private let context: Mutex<TLSContext>
    public init(_ context: TLSContext) { self.context = Mutex(context) }
    public var current: TLSContext {
        get { context.withLock { $0 } }
        set { context.withLock { $0 = newValue } }
    }
}
#endif
