import Foundation
import Logging
import NIOCore
import NIOPosix
import TetherTunnel

/// Everything the supervisor reacts to, funnelled through one stream so its state needs no lock:
/// tunnels report from their event loops, timers and signal handlers from wherever they run.
enum BridgeEvent: Sendable {
    case tunnel(Int, TunnelLifecycleEvent)
    case retry(generation: Int)
    case shutdown(reason: String)
    case drainDeadline
    case hardDeadline
}

/// Where the token comes from. A file is read again before every connection attempt, so a
/// token refreshed on disk is picked up by the next reconnect.
enum TokenSource: Sendable {
    case none
    case literal(String)
    case file(String)

    func read() throws(ConfigurationError) -> String? {
        switch self {
        case .none:
            return nil
        case .literal(let token):
            return token
        case .file(let path):
            guard let data = FileManager.default.contents(atPath: path) else {
                throw ConfigurationError("cannot read token file \(path)")
            }
            let token = String(decoding: data, as: UTF8.self).trimmingWhitespace()
            guard !token.isEmpty else { throw ConfigurationError("token file \(path) is empty") }
            // It goes into a header line: no control characters (a second line, say).
            guard !token.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7F }) else {
                throw ConfigurationError("token file \(path) holds more than one line")
            }
            return token
        }
    }
}

struct BridgeConfiguration: Sendable {
    var tunnel: TunnelOptions
    var token: TokenSource
    /// Ctrl-C / SIGTERM: how long running streams may take to finish.
    var shutdownTimeout: TimeAmount
}

/// The supervisor: keeps one tunnel open (reconnecting with backoff), opens a replacement at once
/// when the relay sends GOAWAY while the old tunnel drains, and shuts down gracefully.
final class Bridge {
    private let configuration: BridgeConfiguration
    private let forwarder: LocalForwarder
    private let status: BridgeStatus
    private let logger: Logger
    private let events: AsyncStream<BridgeEvent>
    /// Feed for `events`; hand it to signal handlers.
    let input: AsyncStream<BridgeEvent>.Continuation

    private var primary: TunnelConnection?
    private var primaryReady = false
    /// Tunnels that got GOAWAY (or are shutting down) and live on until their streams finish.
    private var draining: [Int: TunnelConnection] = [:]
    private var backoff = Backoff()
    private var retryGeneration = 0
    private var retryPending = false
    private var attempts = 0
    private var tunnelCounter = 0
    /// Set once stopping: the exit status.
    private var exitCode: Int32?

    init(configuration: BridgeConfiguration, forwarder: LocalForwarder, status: BridgeStatus, logger: Logger) {
        self.configuration = configuration
        self.forwarder = forwarder
        self.status = status
        self.logger = logger
        (events, input) = AsyncStream.makeStream(of: BridgeEvent.self)
    }

    /// Runs until shut down; returns the process exit status.
    func run() async -> Int32 {
        connect()
        for await event in events {
            handle(event)
            if let exitCode, primary == nil, draining.isEmpty { return exitCode }
            if case .hardDeadline = event, let exitCode { return exitCode }
        }
        return exitCode ?? 0
    }

    private func handle(_ event: BridgeEvent) {
        switch event {
        case .tunnel(let number, let lifecycle):
            handleTunnel(number, lifecycle)
        case .retry(let generation):
            guard generation == retryGeneration, retryPending else { return }
            retryPending = false
            connect()
        case .shutdown(let reason):
            if exitCode == nil {
                logger.info("\(reason): finishing streams (up to \(configuration.shutdownTimeout.inSeconds) s), then exiting")
                stop(exitCode: 0, graceful: true)
            } else {
                logger.info("\(reason) again: closing now")
                forceCloseAll()
            }
        case .drainDeadline:
            if primary != nil || !draining.isEmpty {
                logger.warning("streams still running after \(configuration.shutdownTimeout.inSeconds) s; closing anyway")
                forceCloseAll()
            }
        case .hardDeadline:
            break
        }
        updateStatus()
    }

    private func handleTunnel(_ number: Int, _ event: TunnelLifecycleEvent) {
        let isPrimary = primary?.number == number
        switch event {
        case .ready(let agent):
            guard isPrimary else { return }
            primaryReady = true
            backoff.reset()
            logger.info("connected to \(configuration.tunnel.relay)\(agent.isEmpty ? "" : " (\(agent))")")
        case .goAway(let reason):
            guard isPrimary, let tunnel = primary else { return }
            draining[number] = tunnel
            primary = nil
            primaryReady = false
            if exitCode == nil {
                logger.info("relay is going away\(reason.isEmpty ? "" : " (\(reason))"); opening a new tunnel")
                connect()
            }
        case .closed(let info):
            if !isPrimary {
                draining.removeValue(forKey: number)
                logger.info("tunnel \(number) closed: \(info)")
                return
            }
            primary = nil
            primaryReady = false
            switch info.peerCode {
            case 4001:
                logger.error("relay rejected the token: \(info.reason.isEmpty ? "no reason given" : info.reason)")
                stop(exitCode: 2, graceful: false)
            case 4002:
                logger.error("relay does not support protocol version \(TunnelProtocol.version): \(info.reason)")
                stop(exitCode: 3, graceful: false)
            default:
                guard exitCode == nil else {
                    logger.info("tunnel \(number) closed: \(info)")
                    return
                }
                logger.warning("\(info.wasReady ? "tunnel lost" : "connection failed"): \(info)")
                scheduleRetry()
            }
        }
    }

    private func connect() {
        guard exitCode == nil, primary == nil else { return }
        let token: String?
        do {
            token = try configuration.token.read()
        } catch {
            logger.error("\(error)")
            scheduleRetry()
            return
        }
        if attempts > 0 { status.update { $0.reconnects += 1 } }
        attempts += 1
        tunnelCounter += 1
        let number = tunnelCounter
        let input = self.input
        let tunnel = TunnelConnection(
            number: number, loop: MultiThreadedEventLoopGroup.singleton.next(), options: configuration.tunnel,
            forwarder: forwarder, status: status, logger: logger,
            report: { input.yield(.tunnel(number, $0)) })
        primary = tunnel
        primaryReady = false
        logger.info("connecting to \(configuration.tunnel.relay) (tunnel \(number))")
        tunnel.start(token: token)
    }

    private func scheduleRetry() {
        guard exitCode == nil else { return }
        let delay = backoff.nextDelay()
        retryGeneration += 1
        retryPending = true
        let generation = retryGeneration
        logger.info("reconnecting in \((delay * 10).rounded() / 10) s")
        let input = self.input
        Task {
            try? await Task.sleep(nanoseconds: UInt64(delay * 1e9))
            input.yield(.retry(generation: generation))
        }
    }

    private func stop(exitCode code: Int32, graceful: Bool) {
        guard exitCode == nil else { return }
        exitCode = code
        retryPending = false
        if graceful {
            primary?.beginShutdown()
            for tunnel in draining.values { tunnel.beginShutdown() }
            after(configuration.shutdownTimeout, .drainDeadline)
        } else {
            forceCloseAll()
        }
    }

    private func forceCloseAll() {
        primary?.forceClose(reason: "bridge shutting down")
        for tunnel in draining.values { tunnel.forceClose(reason: "bridge shutting down") }
        // A relay that never answers our close must not keep us alive.
        after(configuration.tunnel.closeTimeout + .seconds(1), .hardDeadline)
    }

    private func after(_ delay: TimeAmount, _ event: BridgeEvent) {
        let input = self.input
        Task {
            try? await Task.sleep(nanoseconds: UInt64(max(0, delay.nanoseconds)))
            input.yield(event)
        }
    }

    private func updateStatus() {
        let state: BridgeStatus.State = primary == nil ? .disconnected : primaryReady ? .connected : .connecting
        let tunnels = (primaryReady ? 1 : 0) + draining.count
        status.update { $0.tunnels = tunnels }
        status.setState(state)
    }
}
