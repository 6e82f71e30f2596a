import ArgumentParser
import CJemalloc
import Glibc
import Logging
import TetherAuth
import TetherQuota
import TetherRelay

struct TetherRelayCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tether-relay",
        abstract: "Reverse-tunnel relay: desktop bridges connect out, web clients reach them through it.",
        subcommands: [Run.self, Token.self],
        defaultSubcommand: Run.self
    )
}

struct Run: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Run the relay (the default).")

    @Option(help: "Address of the plaintext HTTP listener.")
    var host = "127.0.0.1"
    @Option(help: "Port of the plaintext HTTP listener (0 picks a free one).")
    var port = 8080
    @Option(help: "Port of the optional TLS listener on the same host.")
    var tlsPort: Int?
    @Option(help: "PEM certificate chain for the TLS listener (re-read on SIGHUP).")
    var tlsCert: String?
    @Option(help: "PEM private key for the TLS listener (re-read on SIGHUP).")
    var tlsKey: String?
    @Option(help: "Worker threads, one io_uring each (default: one per core).")
    var workers: Int?
    @Option(help: "Largest WebSocket message accepted, in bytes (bigger ones get close code 1009).")
    var wsMaxMessage = 16 * 1024 * 1024
    @Option(help: "Largest HTTP request body accepted, in bytes (bigger ones get 413).")
    var maxBodySize = 10 * 1024 * 1024
    @Option(help: "Seconds a client has to send a complete request head (slow clients are cut).")
    var headerTimeout = 30.0
    @Option(help: "Seconds an idle keep-alive connection or a stalled request body is kept.")
    var idleTimeout = 120.0
    @Option(help: "Seconds a WebSocket connection may stay silent before it is closed.")
    var wsIdleTimeout = 600.0
    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel = "info"

    @OptionGroup var auth: AuthOptions
    @OptionGroup var jwks: JWKSOptions

    @Option(help: "Seconds SIGTERM waits for streams in flight (after GOAWAY to every bridge) before exiting.")
    var drainTimeout = 30.0

    @Option(help: "Flow-control window per stream, in bytes, advertised to bridges (bandwidth × RTT: 8 MiB moves 100 MB/s over 50 ms).")
    var streamWindow = 1 << 20
    @Option(help: "Flow-control window per tunnel (all streams of one bridge), in bytes.")
    var tunnelWindow = 8 << 20
    @Option(help: "Most concurrent streams the relay opens on one tunnel (further limited by the bridge's own setting).")
    var tunnelMaxStreams = 256
    @Option(help: "Seconds a proxied stream may stay idle (no response head, no body bytes either way) before it fails. No total limit.")
    var streamIdleTimeout = 300.0
    @Option(help: "Seconds between pings on a tunnel; two unanswered pings drop the bridge.")
    var tunnelPingInterval = 30.0
    @Option(help: "Seconds between pings on a legacy JSON bridge (/ws/bridge); two silent intervals drop it.")
    var legacyPingInterval = 30.0

    @OptionGroup var sessionOptions: SessionOptions

    func validate() throws {
        try sessionOptions.validate()
        guard (0...65535).contains(port) else { throw ValidationError("--port must be 0...65535") }
        if let tlsPort {
            guard (0...65535).contains(tlsPort) else { throw ValidationError("--tls-port must be 0...65535") }
            guard tlsCert != nil, tlsKey != nil else { throw ValidationError("--tls-port needs --tls-cert and --tls-key") }
        }
        if let workers, !(1...256).contains(workers) { throw ValidationError("--workers must be 1...256") }
        guard wsMaxMessage > 0 else { throw ValidationError("--ws-max-message must be positive") }
        guard maxBodySize >= 0 else { throw ValidationError("--max-body-size must not be negative") }
        for (name, value) in [("--header-timeout", headerTimeout), ("--idle-timeout", idleTimeout), ("--ws-idle-timeout", wsIdleTimeout)] {
            guard value > 0 && value <= 86_400 else { throw ValidationError("\(name) must be between 0 and 86400 seconds") }
        }
        guard Logger.Level(rawValue: logLevel) != nil else { throw ValidationError("--log-level: unknown level \(logLevel)") }
        let maxWindow = Int(Int32.max)
        guard (65_536...maxWindow).contains(streamWindow) else { throw ValidationError("--stream-window must be 65536...\(maxWindow) bytes") }
        guard (streamWindow...maxWindow).contains(tunnelWindow) else {
            throw ValidationError("--tunnel-window must be at least --stream-window and at most \(maxWindow) bytes")
        }
        guard (1...65_535).contains(tunnelMaxStreams) else { throw ValidationError("--tunnel-max-streams must be 1...65535") }
        for (name, value) in [("--stream-idle-timeout", streamIdleTimeout), ("--tunnel-ping-interval", tunnelPingInterval),
                              ("--legacy-ping-interval", legacyPingInterval)] {
            guard value > 0 && value <= 86_400 else { throw ValidationError("\(name) must be between 0 and 86400 seconds") }
        }
        try auth.validate()
        try jwks.validate()
    }

    func run() throws {
        let level = Logger.Level(rawValue: logLevel) ?? .info
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let logger = Logger(label: "tether.relay")

        var configuration = RelayConfiguration()
        configuration.host = host
        configuration.port = port
        configuration.tlsPort = tlsPort
        configuration.tlsCertificateFile = tlsCert
        configuration.tlsKeyFile = tlsKey
        if let workers { configuration.workers = workers }
        configuration.webSocketMaxMessage = wsMaxMessage
        configuration.httpLimits.maxBodySize = maxBodySize
        configuration.headerTimeoutMilliseconds = UInt64(headerTimeout * 1000)
        configuration.idleTimeoutMilliseconds = UInt64(idleTimeout * 1000)
        configuration.webSocketIdleTimeoutMilliseconds = UInt64(wsIdleTimeout * 1000)
        configuration.auth = auth.configuration
        jwks.apply(to: &configuration.auth)
        configuration.tunnel.streamWindow = streamWindow
        configuration.tunnel.tunnelWindow = tunnelWindow
        configuration.tunnel.maxStreams = tunnelMaxStreams
        configuration.tunnel.pingIntervalMilliseconds = Int(tunnelPingInterval * 1000)
        configuration.streamIdleTimeoutMilliseconds = UInt64(streamIdleTimeout * 1000)
        configuration.tunnelPingIntervalMilliseconds = UInt64(tunnelPingInterval * 1000)
        configuration.legacyPingIntervalMilliseconds = UInt64(legacyPingInterval * 1000)

        try sessionOptions.apply(to: &configuration)

        // Signals are taken synchronously by this thread (sigwait); workers inherit the mask.
        signal(SIGPIPE, SIG_IGN)
        var signals = sigset_t()
        sigemptyset(&signals)
        for s in [SIGHUP, SIGTERM, SIGINT] { sigaddset(&signals, s) }
        pthread_sigmask(SIG_BLOCK, &signals, nil)

        let relay = try Relay(configuration: configuration, logger: logger)
        try relay.start()
        if let version = tether_jemalloc_version() {
            logger.debug("allocator", metadata: ["jemalloc": "\(String(cString: version))"])
        }
        while true {
            var received: Int32 = 0
            guard sigwait(&signals, &received) == 0 else { continue }
            if received == SIGHUP {
                relay.reloadTLS()
                relay.reloadKeys()
                continue
            }
            logger.info("shutting down", metadata: ["signal": "\(received)"])
            if received == SIGTERM {
                relay.drain(deadlineSeconds: drainTimeout)
            } else {
                relay.shutdown()
            }
            return
        }
    }
}

struct Token: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print a development token (HS256, signed with the configured secret).")

    @Option(help: "Subject (the user id).")
    var sub: String
    @Option(help: "Lifetime: seconds, or with a unit: 90s, 30m, 1h, 7d.")
    var ttl = "1h"
    @Option(help: "Value of the tier claim.")
    var tier: String?
    @OptionGroup var auth: AuthOptions

    func validate() throws {
        guard !sub.isEmpty else { throw ValidationError("--sub must not be empty") }
        guard Token.seconds(ttl) != nil else { throw ValidationError("--ttl: expected e.g. 3600, 90s, 30m, 1h or 7d") }
        guard auth.secret != nil else { throw ValidationError("a secret is needed: --jwt-secret or TETHER_JWT_SECRET") }
        try auth.validate()
    }

    static func seconds(_ text: String) -> Int? {
        let units: [Character: Int] = ["s": 1, "m": 60, "h": 3600, "d": 86_400]
        guard let last = text.last else { return nil }
        if let unit = units[last] {
            guard let n = Int(text.dropLast()), n > 0 else { return nil }
            return n * unit
        }
        guard let n = Int(text), n > 0 else { return nil }
        return n
    }

    func run() throws {
        guard let secret = auth.secret, let ttlSeconds = Token.seconds(ttl) else { return }
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        let minter = TokenMinter(secret: secret, issuer: auth.jwtIssuer, audience: auth.jwtAudience)
        print(try minter.mint(subject: sub, ttlSeconds: ttlSeconds, tier: tier, now: Double(ts.tv_sec)))
    }
}

TetherRelayCommand.main()
