import TetherAuth
import TetherHTTP
import TetherIO
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

    public init() {}
}
