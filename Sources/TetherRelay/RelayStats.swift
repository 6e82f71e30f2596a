import Synchronization

/// Relay-level counters. Each worker owns one instance and is its only writer, so increments
/// are uncontended; a scrape sums the workers'.
public final class RelayStats: Sendable {
    public let requests = Atomic<UInt64>(0)
    public let badRequests = Atomic<UInt64>(0)
    public let webSocketUpgrades = Atomic<UInt64>(0)
    public let webSocketProtocolErrors = Atomic<UInt64>(0)
    public let deadlineExpirations = Atomic<UInt64>(0)
    public init() {}
}
