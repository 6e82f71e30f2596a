/// Quota profiles by tier. A session's tier is read from one JWT claim (`claim`); a token without
/// it, or naming a tier the table does not know, gets the default profile.
public struct TierTable: Sendable, Equatable {
    /// JWT claim that names the tier.
    public var claim: String = "tier"
    public var defaultProfile = QuotaProfile()
    public var tiers: [String: QuotaProfile] = [:]

    /// Longest tier name accepted: tier names end up in logs and metrics labels.
    public static let maxTierNameBytes = 64

    public init() {}

    /// Unknown or missing tier => ("default", defaultProfile).
    public func profile(for tier: String?) -> (name: String, profile: QuotaProfile) {
        if let tier, let profile = tiers[tier] {
            return (tier, profile)
        }
        return ("default", defaultProfile)
    }

    /// Checks every profile's ranges and every tier name; the error names the first bad key
    /// (default first, then tiers by name, so the same table always reports the same key).
    public func validate() throws(QuotaConfigurationError) {
        guard !claim.isEmpty else {
            throw QuotaConfigurationError(key: "tier_claim", problem: "must not be empty")
        }
        try Self.validate(defaultProfile, at: "default")
        for name in tiers.keys.sorted() {
            try Self.validateTierName(name)
            if let profile = tiers[name] {
                try Self.validate(profile, at: "tiers.\(name)")
            }
        }
    }

    static func validateTierName(_ name: String) throws(QuotaConfigurationError) {
        let key = "tiers.\(name)"
        guard !name.isEmpty, name.utf8.count <= maxTierNameBytes else {
            throw QuotaConfigurationError(key: key, problem: "tier names must be 1 to \(maxTierNameBytes) bytes")
        }
        // `profile(for:)` reports the fallback as "default"; a tier of that name would make the
        // reported name ambiguous.
        guard name != "default" else {
            throw QuotaConfigurationError(key: key, problem: "\"default\" is reserved for the default profile")
        }
    }

    static func validate(_ p: QuotaProfile, at path: String) throws(QuotaConfigurationError) {
        func check(_ ok: Bool, _ key: ProfileKey, _ problem: String) throws(QuotaConfigurationError) {
            if !ok { throw QuotaConfigurationError(key: "\(path).\(key.rawValue)", problem: problem) }
        }
        try check((1...1000).contains(p.maxBridges), .maxBridges, "must be between 1 and 1000")
        try check((1...65535).contains(p.maxStreams), .maxStreams, "must be between 1 and 65535")
        try check(p.requestsPerSecond.isFinite && p.requestsPerSecond >= 0, .requestsPerSecond,
                  "must be a finite number >= 0 (0 = unlimited)")
        // A burst below one request would refuse every request whatever the rate.
        try check(p.requestBurst >= 1, .requestBurst, "must be >= 1")
        try check(p.bandwidthBytesPerSecond >= 0, .bandwidthBytesPerSecond, "must be >= 0 (0 = unlimited)")
        try check(p.bandwidthBurstBytes >= 0, .bandwidthBurstBytes, "must be >= 0 (0 = one second's worth)")
        try check(p.maxBodyBytes >= 0, .maxBodyBytes, "must be >= 0")
        try check((1024...1024 * 1024).contains(p.maxHeaderBytes), .maxHeaderBytes,
                  "must be between 1024 and 1048576 (1 KiB to 1 MiB)")
        try check(p.memoryBytes >= 256 * 1024, .memoryBytes, "must be >= 262144 (256 KiB)")
    }
}

/// The JSON names of `QuotaProfile`'s fields.
enum ProfileKey: String, CaseIterable {
    case maxBridges = "max_bridges"
    case maxStreams = "max_streams"
    case requestsPerSecond = "requests_per_second"
    case requestBurst = "request_burst"
    case bandwidthBytesPerSecond = "bandwidth_bytes_per_second"
    case bandwidthBurstBytes = "bandwidth_burst_bytes"
    case maxBodyBytes = "max_body_bytes"
    case maxHeaderBytes = "max_header_bytes"
    case memoryBytes = "memory_bytes"
}
