/// What one session (one user's bridges and streams) may use. A tier of `TierTable` names one.
/// Plain values; `TierTable.validate()` checks the ranges.
public struct QuotaProfile: Sendable, Equatable {
    /// Bridges (desktop apps) connected at once.
    public var maxBridges: Int = 3
    /// Client requests in flight at once, over all bridges.
    public var maxStreams: Int = 64
    /// Sustained request rate; 0 = unlimited.
    public var requestsPerSecond: Double = 10
    /// Requests allowed back to back above the sustained rate.
    public var requestBurst: Int = 20
    /// Per direction; 0 = unlimited.
    public var bandwidthBytesPerSecond: Int = 50 * 1024 * 1024
    /// 0 => same as bandwidthBytesPerSecond (one second's worth).
    public var bandwidthBurstBytes: Int = 0
    public var maxBodyBytes: Int = 10 * 1024 * 1024
    public var maxHeaderBytes: Int = 64 * 1024
    /// What the relay may hold for the session at once.
    public var memoryBytes: Int = 8 * 1024 * 1024

    public init() {}

    /// Burst in bytes actually used (resolves the 0 default).
    public var effectiveBandwidthBurst: Int {
        bandwidthBurstBytes > 0 ? bandwidthBurstBytes : bandwidthBytesPerSecond
    }

    /// A full request-rate bucket for a new session.
    public func makeRequestBucket(now: UInt64) -> TokenBucket {
        TokenBucket(ratePerSecond: requestsPerSecond, burst: Double(requestBurst), now: now)
    }

    /// A full byte bucket for one direction of a new session.
    public func makeBandwidthBucket(now: UInt64) -> TokenBucket {
        TokenBucket(ratePerSecond: Double(bandwidthBytesPerSecond),
                    burst: Double(effectiveBandwidthBurst), now: now)
    }
}
