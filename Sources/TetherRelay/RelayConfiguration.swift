import TetherHTTP
import TetherIO

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

    public init() {}
}
