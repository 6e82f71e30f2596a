import Synchronization
import TetherIO

/// Relay-level counters. Each worker owns one instance and is its only writer, so increments
/// are uncontended; a scrape sums the workers'.
public final class RelayStats: Sendable {
    public let requests = Atomic<UInt64>(0)
    public let badRequests = Atomic<UInt64>(0)
    public let webSocketUpgrades = Atomic<UInt64>(0)
    public let webSocketProtocolErrors = Atomic<UInt64>(0)
    public let deadlineExpirations = Atomic<UInt64>(0)
    public let authFailures = Atomic<UInt64>(0)
    public let tunnelsOpened = Atomic<UInt64>(0)
    public let tunnelsClosed = Atomic<UInt64>(0)
    public let tunnelProtocolErrors = Atomic<UInt64>(0)
    public let tunnelPingTimeouts = Atomic<UInt64>(0)
    public let legacyBridgesOpened = Atomic<UInt64>(0)
    public let streamsOpened = Atomic<UInt64>(0)
    public let streamResetsReceived = Atomic<UInt64>(0)
    /// Proxied requests answered with an error before any response head (502/503/504).
    public let streamsFailed = Atomic<UInt64>(0)
    /// Proxied responses cut after their head (bridge lost, reset, idle).
    public let streamsAborted = Atomic<UInt64>(0)
    public let handOffs = Atomic<UInt64>(0)
    public let sessionsCreated = Atomic<UInt64>(0)
    public let sessionsRevived = Atomic<UInt64>(0)
    public let sessionsParked = Atomic<UInt64>(0)
    public let sessionsRemoved = Atomic<UInt64>(0)
    /// Refused for capacity (sessions, connections).
    public let capacityRejections = Atomic<UInt64>(0)
    /// By quota, indexed like `Quota.allCases`.
    public let quotaRejections: [Counter]
    public init() {
        quotaRejections = Quota.allCases.map { _ in Counter() }
    }

    /// A counter that can live in an array (Atomic cannot be copied into one).
    public final class Counter: Sendable {
        public let value = Atomic<UInt64>(0)
        public func addFromOwner() { value.addFromOwner() }
    }
}

/// The quotas a request or bridge can be refused for (metric and audit labels, JSON codes).
enum Quota: Int, CaseIterable {
    case bridges, streams, rate, bodySize, headerSize, capacity, handshakes, authFailures

    var label: String {
        switch self {
        case .bridges: return "bridges"
        case .streams: return "streams"
        case .rate: return "rate"
        case .bodySize: return "body_size"
        case .headerSize: return "header_size"
        case .capacity: return "capacity"
        case .handshakes: return "handshakes"
        case .authFailures: return "auth_failures"
        }
    }
}
