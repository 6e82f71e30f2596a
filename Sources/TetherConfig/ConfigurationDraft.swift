import TetherQuota
import TetherRelay

/// The settings as applied, before the checks that involve several keys or referenced files.
struct ConfigurationDraft: Sendable {
    var relay = RelayConfiguration()
    var adminEnabled = true
    var adminTokenFile: String?
    var jwtSecretFile: String?
    var quotaFile: String?
    var tierClaim: String?
    var profile = ProfileOverrides()
    var auditLog = "-"
}

/// quotas.default.* values: they override the quota file's default profile, and the tiers
/// that inherited from it.
struct ProfileOverrides: Sendable, Equatable {
    var maxBridges: Int?
    var maxStreams: Int?
    var requestsPerSecond: Double?
    var requestBurst: Int?
    var bandwidthBytesPerSecond: Int?
    var memoryBytes: Int?

    func applied(to base: QuotaProfile) -> QuotaProfile {
        var p = base
        if let maxBridges { p.maxBridges = maxBridges }
        if let maxStreams { p.maxStreams = maxStreams }
        if let requestsPerSecond { p.requestsPerSecond = requestsPerSecond }
        if let requestBurst { p.requestBurst = requestBurst }
        if let bandwidthBytesPerSecond { p.bandwidthBytesPerSecond = bandwidthBytesPerSecond }
        if let memoryBytes { p.memoryBytes = memoryBytes }
        return p
    }

    /// The table with the overrides applied to its default profile; tiers inherit each
    /// overridden field they had left at the default's value.
    func applied(to table: TierTable) -> TierTable {
        var table = table
        let base = table.defaultProfile
        let overridden = applied(to: base)
        guard overridden != base else { return table }
        table.defaultProfile = overridden
        for (name, var profile) in table.tiers {
            if profile.maxBridges == base.maxBridges { profile.maxBridges = overridden.maxBridges }
            if profile.maxStreams == base.maxStreams { profile.maxStreams = overridden.maxStreams }
            if profile.requestsPerSecond == base.requestsPerSecond { profile.requestsPerSecond = overridden.requestsPerSecond }
            if profile.requestBurst == base.requestBurst { profile.requestBurst = overridden.requestBurst }
            if profile.bandwidthBytesPerSecond == base.bandwidthBytesPerSecond {
                profile.bandwidthBytesPerSecond = overridden.bandwidthBytesPerSecond
            }
            if profile.memoryBytes == base.memoryBytes { profile.memoryBytes = overridden.memoryBytes }
            table.tiers[name] = profile
        }
        return table
    }
}
