import ArgumentParser
import CJemalloc
import Glibc
import Logging
import TetherRelay

struct TetherRelayCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tether-relay",
        abstract: "Reverse-tunnel relay: desktop bridges connect out, web clients reach them through it.",
        subcommands: [Run.self],
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

    func validate() throws {
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
                continue
            }
            logger.info("shutting down", metadata: ["signal": "\(received)"])
            relay.shutdown()
            return
        }
    }
}

TetherRelayCommand.main()
