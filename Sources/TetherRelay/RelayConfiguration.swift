import Logging
import TetherAuth
import TetherHTTP
import TetherIO
import TetherIsolation
import TetherQuota
import TetherTunnel

/// Everything the relay needs to start. Plain values, so it crosses threads freely.
public struct RelayConfiguration: Sendable {
    public var host = "127.0.0.1"
    public var port = 8080
    /// Optional TLS listener on the same host.
    public var tlsPort: Int?
    public var tlsCertificateFile: String?
    public var tlsKeyFile: String?
    public var workers: Int = IOConfiguration().workers
    public var httpLimits = HTTPLimits()
    public var webSocketMaxMessage = 16 * 1024 * 1024
    /// A client must send a complete request head within this time (slowloris defence).
    public var headerTimeoutMilliseconds: UInt64 = 30_000
    /// Idle keep-alive connections and stalled bodies are closed after this time.
    public var idleTimeoutMilliseconds: UInt64 = 120_000
    /// WebSocket connections with no traffic at all are closed after this time.
    public var webSocketIdleTimeoutMilliseconds: UInt64 = 600_000
    public var io = IOConfiguration()

    /// Token validation (HS256 secret, JWKS file, issuer, audience, leeway).
    public var auth = AuthConfiguration()
    /// What the relay advertises to bridges in its HELLO (windows, frame and head limits).
    public var tunnel = TunnelSettings()
    /// A proxied stream fails when neither direction moved for this long (no total timeout:
    /// LLM answers run for minutes). Before the response head: 504 LOCAL_TIMEOUT.
    public var streamIdleTimeoutMilliseconds: UInt64 = 300_000
    /// The relay pings every tunnel this often and drops one that missed two answers.
    public var tunnelPingIntervalMilliseconds: UInt64 = 30_000
    /// Same for legacy JSON bridges (`{"type":"ping"}`).
    public var legacyPingIntervalMilliseconds: UInt64 = 30_000

    /// Quota profiles by tier (the tier claim's name is part of it).
    public var tiers = TierTable()
    /// A session without stream traffic for this long is parked (bridges kept) or, without
    /// bridges, removed.
    public var sessionIdleTimeoutMilliseconds: UInt64 = 600_000
    /// Sessions across all workers; more get 503 CAPACITY_EXCEEDED (bridges: close 1013).
    public var maxSessions = 20_000
    /// Open connections across all workers; more get 503 CAPACITY_EXCEEDED. nil: the
    /// descriptor limit minus a reserve, so the kernel never refuses silently first.
    public var maxConnections: Int?
    /// A bridge must send its HELLO this soon after the WebSocket upgrade.
    public var bridgeHandshakeTimeoutMilliseconds: UInt64 = 10_000
    /// Per client address: bridge handshakes (WebSocket upgrades) per second, and burst. 0: off.
    public var handshakesPerSecondPerAddress: Double = 10
    public var handshakeBurstPerAddress: Double = 30
    /// Per client address: failed authentications per second, and burst; beyond, the address
    /// gets 429 (close 4029 for bridges) until its bucket refills. 0: off.
    public var authFailuresPerSecondPerAddress: Double = 0.2
    public var authFailureBurstPerAddress: Double = 10
    /// Loopback clients (a reverse proxy on the same host, local tools) skip per-address limits.
    public var addressLimitsExemptLoopback = true
    /// IPv6 clients are keyed by this prefix: a host usually holds a whole /64 and could
    /// otherwise rotate addresses for a fresh bucket each time.
    public var addressLimitsIPv6PrefixLength = 64
    /// Peers whose X-Forwarded-For names the client (ClientOrigin); none by default, since
    /// any client can write that field.
    public var trustedProxies: [AddressPrefix] = []
    public var auditLog = AuditLog.Destination.standardOutput

    // Operations (docs/CONFIGURATION.md).
    /// The admin listener (GET /metrics, /healthz, /readyz, the /admin API). nil port: off.
    public var adminHost = "127.0.0.1"
    public var adminPort: Int? = 9464
    /// Bearer token for /admin/*; nil: every admin call gets 401.
    public var adminToken: String?
    /// Also serve GET /metrics on the main listeners (public: off by default).
    public var metricsOnMainListener = false
    /// Seconds SIGTERM waits for streams in flight (after GOAWAY to every bridge) before exiting.
    public var drainTimeoutSeconds: Double = 30
    public var logging = LogConfiguration()
    /// In-process sessions, or one Docker container per session (docs/ISOLATION.md).
    public var isolation = IsolationSettings()

    public init() {}
}

/// Log format and levels, per module (logger label). Reloadable.
public struct LogConfiguration: Sendable, Equatable {
    public enum Format: String, Sendable, CaseIterable {
        case text, json
    }
    public var level: Logger.Level = .info
    public var format = Format.text
    /// Overrides by logger label, e.g. "tether.tunnel": .debug.
    public var moduleLevels: [String: Logger.Level] = [:]

    public init() {}

    public func level(for label: String) -> Logger.Level {
        moduleLevels[label] ?? level
    }
}
