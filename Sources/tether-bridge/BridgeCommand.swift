import ArgumentParser
import Foundation
import Logging
import NIOCore
import NIOSSL
import TetherTunnel

let bridgeVersion = "0.1.0"

@main
struct BridgeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tether-bridge",
        abstract: "Connects out to a Tether relay and serves its streams from a local HTTP service (Ollama by default).",
        discussion: """
            Exit status: 0 after a clean shutdown (SIGINT/SIGTERM), 2 when the relay rejects the token \
            (close 4001), 3 when it does not speak this protocol version (close 4002), 64 for bad usage.
            """,
        version: "tether-bridge \(bridgeVersion)")

    @Option(help: "Relay URL, ws:// or wss:// (path defaults to /ws/tunnel). Env: TETHER_RELAY_URL.")
    var relay: String?
    @Option(help: "Bearer token (JWT). Env: TETHER_TOKEN.")
    var token: String?
    @Option(help: "File holding the token, re-read before every (re)connect. Env: TETHER_TOKEN_FILE.")
    var tokenFile: String?
    @Option(help: "PEM file of CA certificates to trust for wss:// instead of the system store.")
    var caFile: String?
    @Option(help: ArgumentHelp(
        "Local service streams are forwarded to, http:// or https:// (repeatable; the first is the default). Env: TETHER_TARGET.",
        valueName: "url"))
    var target: [String] = []
    @Option(help: "Streams the relay may run at once on a tunnel (advertised in HELLO).")
    var maxStreams = 256
    @Option(help: "Per-stream receive window, bytes (suffixes KiB, MiB). Advertised in HELLO.")
    var streamWindow = "1MiB"
    @Option(help: "Tunnel-wide receive window, bytes (suffixes KiB, MiB). Advertised in HELLO.")
    var tunnelWindow = "8MiB"
    @Option(help: "Seconds the local service may stay silent on a request before it fails with LOCAL_TIMEOUT.")
    var localIdleTimeout = 300.0
    @Option(help: "Seconds to connect to the local service.")
    var localConnectTimeout = 10.0
    @Option(help: "Seconds an unused keep-alive connection to the local service stays open.")
    var localPoolIdleTimeout = 60.0
    @Option(help: "PEM file of CA certificates to trust for an https:// target instead of the system store.")
    var targetCaFile: String?
    @Option(help: "Seconds to connect to the relay (TCP, TLS, upgrade and its HELLO).")
    var connectTimeout = 10.0
    @Option(help: "Seconds between our pings to the relay.")
    var pingInterval = 15.0
    @Option(help: "Seconds to wait for a pong before dropping the tunnel and reconnecting.")
    var pingTimeout = 10.0
    @Option(help: "Seconds running streams may take to finish on SIGINT/SIGTERM.")
    var shutdownTimeout = 5.0
    @Option(help: "Seconds between status lines in the log (0: none).")
    var statusInterval = 30.0
    @Option(help: "JSON status file, rewritten every second and on every state change.")
    var statusFile: String?
    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel = "info"

    func validate() throws {
        guard (1...65_535).contains(maxStreams) else { throw ValidationError("--max-streams must be 1...65535") }
        for (name, value) in [("--stream-window", streamWindow), ("--tunnel-window", tunnelWindow)] {
            guard let bytes = ByteSize.parse(value), (1...Int(Int32.max)).contains(bytes) else {
                throw ValidationError("\(name) must be 1 byte ... 2 GiB - 1 (e.g. 1048576 or 8MiB)")
            }
        }
        for (name, value) in [("--local-idle-timeout", localIdleTimeout), ("--local-connect-timeout", localConnectTimeout),
                              ("--local-pool-idle-timeout", localPoolIdleTimeout), ("--connect-timeout", connectTimeout), ("--ping-interval", pingInterval),
                              ("--ping-timeout", pingTimeout)] {
            guard value > 0, value <= 86_400 else { throw ValidationError("\(name) must be between 0 and 86400 seconds") }
        }
        guard shutdownTimeout >= 0, shutdownTimeout <= 3_600 else {
            throw ValidationError("--shutdown-timeout must be 0...3600 seconds")
        }
        guard statusInterval >= 0 else { throw ValidationError("--status-interval must not be negative") }
        guard Logger.Level(rawValue: logLevel) != nil else { throw ValidationError("--log-level: unknown level \(logLevel)") }
        guard token == nil || tokenFile == nil else { throw ValidationError("give --token or --token-file, not both") }
    }

    func run() async throws {
        let level = Logger.Level(rawValue: logLevel) ?? .info
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let logger = Logger(label: "tether.bridge")
        let configuration = try makeConfiguration(logger: logger)
        let targets = configuration.targets
        let local = LocalForwarder.Configuration(
            target: targets[0], tls: try makeTargetTLS(targets[0], logger: logger),
            connectTimeout: .fractionalSeconds(localConnectTimeout), idleTimeout: .fractionalSeconds(localIdleTimeout),
            poolIdleTimeout: .fractionalSeconds(localPoolIdleTimeout), maxConnections: maxStreams)

        let status = BridgeStatus(relay: configuration.bridge.tunnel.relay.description)
        let reporter = StatusReporter(status: status, path: statusFile, lineInterval: statusInterval, logger: logger)
        status.setStateChangeHandler { reporter.writeFile() }
        let forwarder = LocalForwarder(targets: targets, configuration: local)
        let bridge = Bridge(configuration: configuration.bridge, forwarder: forwarder, status: status, logger: logger)
        let signals = SignalHandlers(input: bridge.input)

        logger.info("tether-bridge \(bridgeVersion): relay \(configuration.bridge.tunnel.relay), targets \(targets.map(\.description).joined(separator: ", "))")
        let reporting = Task { await reporter.run() }
        let code = await bridge.run()
        signals.cancel()
        reporting.cancel()
        await forwarder.shutdown()
        status.setState(.disconnected)
        reporter.writeFile()
        logger.info("exiting (status \(code))")
        if code != 0 { throw ExitCode(code) }
    }

    /// TLS for an https:// target: verified against the system store or `--target-ca-file`,
    /// like a browser would (a local service with a self-signed certificate needs that file).
    private func makeTargetTLS(_ target: LocalTarget, logger: Logger) throws -> NIOSSLContext? {
        guard target.useTLS else {
            if targetCaFile != nil { logger.warning("--target-ca-file is ignored for an http:// target") }
            return nil
        }
        var tlsConfiguration = TLSConfiguration.makeClientConfiguration()
        tlsConfiguration.applicationProtocols = ["http/1.1"]
        if let targetCaFile {
            do {
                tlsConfiguration.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(targetCaFile))
            } catch {
                throw ValidationError("--target-ca-file \(targetCaFile): \(error)")
            }
        }
        return try NIOSSLContext(configuration: tlsConfiguration)
    }

    private func makeConfiguration(logger: Logger) throws -> (bridge: BridgeConfiguration, targets: [LocalTarget]) {
        let env = ProcessInfo.processInfo.environment
        guard let relayString = relay ?? env["TETHER_RELAY_URL"].flatMap({ $0.isEmpty ? nil : $0 }) else {
            throw ValidationError("no relay: give --relay ws[s]://host[:port] or set TETHER_RELAY_URL")
        }
        let endpoint: RelayEndpoint
        do { endpoint = try RelayEndpoint(parsing: relayString) } catch { throw ValidationError(error.description) }

        var targetStrings = target
        if targetStrings.isEmpty, let fromEnv = env["TETHER_TARGET"], !fromEnv.isEmpty {
            targetStrings = fromEnv.split(separator: ",").map { $0.trimmingWhitespace() }.filter { !$0.isEmpty }
        }
        if targetStrings.isEmpty { targetStrings = ["http://127.0.0.1:11434"] }
        var targets: [LocalTarget] = []
        for string in targetStrings {
            do { targets.append(try LocalTarget(parsing: string)) } catch { throw ValidationError(error.description) }
        }

        let tokenSource: TokenSource
        if let token {
            tokenSource = .literal(token)
        } else if let path = tokenFile ?? env["TETHER_TOKEN_FILE"].flatMap({ $0.isEmpty ? nil : $0 }) {
            tokenSource = .file(path)
        } else if let token = env["TETHER_TOKEN"], !token.isEmpty {
            tokenSource = .literal(token)
        } else {
            logger.warning("no token configured (--token, --token-file or TETHER_TOKEN): the relay will likely refuse the tunnel")
            tokenSource = .none
        }
        if case .literal(let t) = tokenSource, t.contains(where: { $0.isNewline }) {
            throw ValidationError("the token must be a single line")
        }

        var tls: NIOSSLContext?
        if endpoint.useTLS {
            var tlsConfiguration = TLSConfiguration.makeClientConfiguration()
            tlsConfiguration.applicationProtocols = ["http/1.1"]
            if let caFile {
                do {
                    tlsConfiguration.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(caFile))
                } catch {
                    throw ValidationError("--ca-file \(caFile): \(error)")
                }
            }
            tls = try NIOSSLContext(configuration: tlsConfiguration)
        } else if caFile != nil {
            logger.warning("--ca-file is ignored for a ws:// relay")
        }

        var settings = TunnelSettings()
        settings.streamWindow = ByteSize.parse(streamWindow) ?? settings.streamWindow
        settings.tunnelWindow = ByteSize.parse(tunnelWindow) ?? settings.tunnelWindow
        settings.maxStreams = maxStreams
        settings.pingIntervalMilliseconds = Int(pingInterval * 1000)

        #if os(Linux)
        let system = "linux"
        #elseif os(macOS)
        let system = "macos"
        #else
        let system = "unknown"
        #endif
        let options = TunnelOptions(
            relay: endpoint, tls: tls, settings: settings, agent: "tether-bridge/\(bridgeVersion) \(system)",
            connectTimeout: .fractionalSeconds(connectTimeout), pingInterval: .fractionalSeconds(pingInterval),
            pingTimeout: .fractionalSeconds(pingTimeout))
        let bridge = BridgeConfiguration(tunnel: options, token: tokenSource, shutdownTimeout: .fractionalSeconds(shutdownTimeout))
        return (bridge, targets)
    }
}

extension TimeAmount {
    /// Fractional seconds (the flags take them), to the millisecond.
    static func fractionalSeconds(_ value: Double) -> TimeAmount {
        .milliseconds(Int64((value * 1000).rounded()))
    }
}
