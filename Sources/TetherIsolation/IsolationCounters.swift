import Synchronization
import TetherMetrics

/// Why a session's container is not available (the `reason` label, and the 503's message).
public enum IsolationFailureReason: Int, Sendable, CaseIterable {
    case engineUnreachable, imageMissing, createFailed, startFailed, containerExited, startTimeout, capacity,
         queueFull, nameConflict, setupFailed, containerDied

    public var label: String {
        switch self {
        case .engineUnreachable: return "engine_unreachable"
        case .imageMissing: return "image_missing"
        case .createFailed: return "create_failed"
        case .startFailed: return "start_failed"
        case .containerExited: return "container_exited"
        case .startTimeout: return "start_timeout"
        case .capacity: return "capacity"
        case .queueFull: return "queue_full"
        case .nameConflict: return "name_conflict"
        case .setupFailed: return "setup_failed"
        case .containerDied: return "container_died"
        }
    }
}

public struct IsolationFailure: Error, Sendable, Equatable, CustomStringConvertible {
    public let reason: IsolationFailureReason
    public let message: String

    public init(_ reason: IsolationFailureReason, _ message: String) {
        self.reason = reason
        self.message = message
    }

    public var description: String { "\(reason.label): \(message)" }
}

/// Process-wide figures of the Docker isolation mode (`tether_isolation_*`). Written from
/// background threads and loops, a few times per container: plain atomic adds.
public final class IsolationCounters: Sendable {
    public let starts = Atomic<UInt64>(0)
    public let startsInProgress = Atomic<Int>(0)
    /// Most starts ever in flight at once (the cap's witness).
    public let startsInProgressMax = Atomic<Int>(0)
    public let startsQueued = Atomic<Int>(0)
    public let containers = Atomic<Int>(0)
    public let removals = Atomic<UInt64>(0)
    /// Containers found at start-up (an earlier relay's) and removed.
    public let reaped = Atomic<UInt64>(0)
    public let parks = Atomic<UInt64>(0)
    public let resumes = Atomic<UInt64>(0)
    /// Bridges that could not be moved (closed instead; they reconnect).
    public let bridgeHandoverFailures = Atomic<UInt64>(0)
    public let failures: [Counter]
    /// Create → start → the worker's socket answering (the engine's part).
    private let containerStart = Mutex(Histogram(upperBounds: IsolationCounters.coldStartBounds))
    /// A session needed its container → its worker ready with the bridges attached.
    private let coldStart = Mutex(Histogram(upperBounds: IsolationCounters.coldStartBounds))

    public static let coldStartBounds: [Double] = [0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.35, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 30]

    public final class Counter: Sendable {
        public let value = Atomic<UInt64>(0)
    }

    public init() {
        failures = IsolationFailureReason.allCases.map { _ in Counter() }
    }

    public func fail(_ reason: IsolationFailureReason) {
        failures[reason.rawValue].value.add(1, ordering: .relaxed)
    }

    public func observeContainerStart(nanoseconds: UInt64) {
        containerStart.withLock { $0.observe(nanoseconds: nanoseconds) }
    }

    public func observeColdStart(nanoseconds: UInt64) {
        coldStart.withLock { $0.observe(nanoseconds: nanoseconds) }
    }

    public func containerStartSnapshot() -> HistogramSnapshot {
        containerStart.withLock { $0.snapshot() }
    }

    public func coldStartSnapshot() -> HistogramSnapshot {
        coldStart.withLock { $0.snapshot() }
    }
}
