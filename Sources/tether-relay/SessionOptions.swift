import ArgumentParser
import TetherQuota
import TetherRelay

/// Sessions, quotas, global limits and the audit log (docs/SESSIONS.md).
struct SessionOptions: ParsableArguments {
    @Option(help: "JSON file of quota profiles: the default profile and one per tier (docs/SESSIONS.md).")
    var quotaFile: String?
    @Option(help: "JWT claim naming the caller's tier (overrides the quota file's tier_claim).")
    var tierClaim: String?
    @Option(help: "Default profile: bridges one session may connect at once (overrides the quota file).")
    var maxBridges: Int?
    @Option(help: "Default profile: concurrent streams per session.")
    var maxStreams: Int?
    @Option(help: "Default profile: requests per second per session (token bucket; 0 = unlimited).")
    var rateLimit: Double?
    @Option(help: "Default profile: request burst per session.")
    var rateBurst: Int?
    @Option(help: "Default profile: bytes per second per session and direction (0 = unlimited).")
    var bandwidthLimit: Int?
    @Option(help: "Default profile: bytes the relay may hold for one session at once (sizes its flow-control windows).")
    var sessionMemory: Int?
    @Option(help: "Seconds without stream traffic before a session is parked (bridges kept) or, without bridges, removed.")
    var sessionIdleTimeout = 600.0
    @Option(help: "Most sessions on this relay; more get 503 CAPACITY_EXCEEDED.")
    var maxSessions = 20_000
    @Option(help: "Most open connections; more get 503 CAPACITY_EXCEEDED (default: the descriptor limit minus a reserve).")
    var maxConnections: Int?
    @Option(help: "Seconds a bridge has to send its HELLO after the WebSocket upgrade.")
    var bridgeHandshakeTimeout = 10.0
    @Option(help: "Bridge handshakes per second per client address (0 = no limit).")
    var handshakeRate = 10.0
    @Option(help: "Burst of bridge handshakes per client address.")
    var handshakeBurst = 30.0
    @Option(help: "Failed authentications per second per client address before it gets 429 / close 4029 (0 = no limit).")
    var authFailureRate = 0.2
    @Option(help: "Burst of failed authentications per client address.")
    var authFailureBurst = 10.0
    @Option(help: "Apply per-address limits to loopback clients too (off by default: a local reverse proxy would share one address).")
    var limitLoopback = false
    @Option(help: "Audit log: '-' for stdout, 'off', or a file path (JSON lines, appended).")
    var auditLog = "-"

    func validate() throws {
        for (name, value) in [("--session-idle-timeout", sessionIdleTimeout), ("--bridge-handshake-timeout", bridgeHandshakeTimeout)] {
            guard value > 0 && value <= 86_400 else { throw ValidationError("\(name) must be between 0 and 86400 seconds") }
        }
        guard (1...10_000_000).contains(maxSessions) else { throw ValidationError("--max-sessions must be 1...10000000") }
        if let maxConnections, maxConnections < 1 { throw ValidationError("--max-connections must be positive") }
        for (name, value) in [("--handshake-rate", handshakeRate), ("--handshake-burst", handshakeBurst),
                              ("--auth-failure-rate", authFailureRate), ("--auth-failure-burst", authFailureBurst)] {
            guard value >= 0 && value.isFinite else { throw ValidationError("\(name) must be a non-negative number") }
        }
        _ = try tiers(maxBodySize: 10 * 1024 * 1024)
    }

    /// The quota file (or the embedded defaults) with the flags' overrides of the default profile.
    func tiers(maxBodySize: Int) throws -> TierTable {
        var table: TierTable
        if let quotaFile {
            do {
                table = try TierTable.load(file: quotaFile)
            } catch {
                throw ValidationError("--quota-file \(quotaFile): \(error)")
            }
        } else {
            table = TierTable()
            table.defaultProfile.maxBodyBytes = maxBodySize
        }
        if let tierClaim { table.claim = tierClaim }
        var overridden = table.defaultProfile
        if let maxBridges { overridden.maxBridges = maxBridges }
        if let maxStreams { overridden.maxStreams = maxStreams }
        if let rateLimit { overridden.requestsPerSecond = rateLimit }
        if let rateBurst { overridden.requestBurst = rateBurst }
        if let bandwidthLimit { overridden.bandwidthBytesPerSecond = bandwidthLimit }
        if let sessionMemory { overridden.memoryBytes = sessionMemory }
        if overridden != table.defaultProfile {
            // Tiers inherit what they do not set from the default, flags included.
            let base = table.defaultProfile
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
        }
        do {
            try table.validate()
        } catch {
            throw ValidationError("quota profiles: \(error)")
        }
        return table
    }

    func apply(to configuration: inout RelayConfiguration) throws {
        var tiers = try tiers(maxBodySize: configuration.httpLimits.maxBodySize)
        // Per-tier header limits can only lower the relay-wide one.
        let headerLimit = configuration.httpLimits.maxHeaderBytes
        tiers.defaultProfile.maxHeaderBytes = min(tiers.defaultProfile.maxHeaderBytes, headerLimit)
        for (name, profile) in tiers.tiers {
            tiers.tiers[name]?.maxHeaderBytes = min(profile.maxHeaderBytes, headerLimit)
        }
        // The decoder's body cap must admit the most generous tier; each request is then held
        // to its own tier's limit.
        let largestBody = ([tiers.defaultProfile] + Array(tiers.tiers.values)).map(\.maxBodyBytes).max() ?? 0
        configuration.httpLimits.maxBodySize = max(configuration.httpLimits.maxBodySize, largestBody)
        configuration.tiers = tiers
        configuration.auth.tierClaim = tiers.claim
        configuration.sessionIdleTimeoutMilliseconds = UInt64(sessionIdleTimeout * 1000)
        configuration.maxSessions = maxSessions
        configuration.maxConnections = maxConnections
        configuration.bridgeHandshakeTimeoutMilliseconds = UInt64(bridgeHandshakeTimeout * 1000)
        configuration.handshakesPerSecondPerAddress = handshakeRate
        configuration.handshakeBurstPerAddress = handshakeBurst
        configuration.authFailuresPerSecondPerAddress = authFailureRate
        configuration.authFailureBurstPerAddress = authFailureBurst
        configuration.addressLimitsExemptLoopback = !limitLoopback
        switch auditLog {
        case "-": configuration.auditLog = .standardOutput
        case "off", "": configuration.auditLog = .off
        default: configuration.auditLog = .file(auditLog)
        }
    }
}
