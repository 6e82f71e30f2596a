import Logging
import NIOCore
import NIOPosix
import NIOSSL
import TetherHTTP
import TetherTunnel
import TetherWebSocket

/// What a tunnel tells the supervisor, in order: at most one `ready`, at most one `goAway`,
/// then exactly one `closed`.
enum TunnelLifecycleEvent: Sendable {
    /// The relay's HELLO arrived: the tunnel can carry streams.
    case ready(agent: String)
    /// The relay will open no more streams here; the tunnel lives on until its streams finish.
    case goAway(reason: String)
    case closed(TunnelCloseInfo)
}

struct TunnelCloseInfo: Sendable, CustomStringConvertible {
    /// The relay's WebSocket close code when it started the close (4001 auth failed, 4002
    /// unsupported version, 1001 going away...).
    var peerCode: UInt16?
    var reason: String
    var wasReady: Bool
    /// We closed (drained, shutdown, ping timeout, protocol error) rather than the relay.
    var closedByUs = false

    var description: String {
        if let peerCode { return "closed by relay (\(peerCode)\(reason.isEmpty ? "" : ": \(reason)"))" }
        return reason
    }
}

struct TunnelOptions: Sendable {
    var relay: RelayEndpoint
    var tls: NIOSSLContext?
    var settings: TunnelSettings
    var agent: String
    /// TCP connect, TLS, upgrade and the relay's HELLO must all fit in this.
    var connectTimeout: TimeAmount
    var pingInterval: TimeAmount
    var pingTimeout: TimeAmount
    /// How long a close handshake may take before the socket is closed anyway.
    var closeTimeout: TimeAmount = .seconds(2)
}

/// One tunnel: a WebSocket to the relay over a NIO channel, with the `tether.v1` multiplexer
/// on top. The codecs are value types owned by this object; every mutable property is touched
/// only on `loop` (methods called from elsewhere hop there first), hence `@unchecked Sendable`.
final class TunnelConnection: @unchecked Sendable {
    let number: Int
    let loop: any EventLoop
    private let options: TunnelOptions
    let forwarder: LocalForwarder
    /// This loop's connections to the local service.
    let pool: LocalPool
    let allocator = ByteBufferAllocator()
    /// Scratch space for encoding request heads (kept between streams).
    var headBytes: [UInt8] = []
    let status: BridgeStatus
    let logger: Logger
    private let report: @Sendable (TunnelLifecycleEvent) -> Void

    enum Phase {
        case idle, connecting, upgrading, awaitingHello, ready, closing, closed
    }

    // Loop-confined state (internal where TunnelStreams.swift needs it).
    private(set) var phase = Phase.idle
    private var channel: (any Channel)?
    private var handshakeKey = ""
    private var responseDecoder = HTTPResponseDecoder()
    /// A refused upgrade: its status and (the start of) its body, for the log.
    private var refusal: (status: Int, body: [UInt8])?
    private var ws: WebSocketConnection
    var mux: TunnelMultiplexer
    var streams: [StreamID: StreamContext] = [:]
    private var draining = false
    private var closeInfo = TunnelCloseInfo(peerCode: nil, reason: "connection lost", wasReady: false)
    private var connectDeadline: Scheduled<Void>?
    private var closeDeadline: Scheduled<Void>?
    private var pingTimer: RepeatedTask?
    private var pingDeadline: Scheduled<Void>?
    private var outstandingPing: UInt64?
    private var pingCounter: UInt64 = 0
    private var dispatching = false
    private var flushScheduled = false

    init(number: Int, loop: any EventLoop, options: TunnelOptions, forwarder: LocalForwarder, status: BridgeStatus,
         logger: Logger, report: @escaping @Sendable (TunnelLifecycleEvent) -> Void) {
        self.number = number
        self.loop = loop
        self.options = options
        self.forwarder = forwarder
        pool = forwarder.pool(for: loop)
        self.status = status
        var logger = logger
        logger[metadataKey: "tunnel"] = "\(number)"
        self.logger = logger
        self.report = report
        ws = WebSocketConnection(role: .client, maxMessageSize: options.settings.maxMessageSize)
        mux = TunnelMultiplexer(role: .bridge, settings: options.settings, agent: options.agent)
    }

    // MARK: - Control (any thread)

    func start(token: String?) {
        loop.execute { self.connect(token: token) }
    }

    /// Bridge shutdown: GOAWAY (no new streams), close once the streams are done.
    func beginShutdown() {
        loop.execute {
            switch self.phase {
            case .idle, .connecting, .upgrading, .awaitingHello:
                self.fail("bridge shutting down")
            case .ready:
                if !self.draining {
                    self.mux.goAway(code: .noError, reason: "bridge shutting down")
                    self.draining = true
                    self.flush()
                }
                self.closeIfDrained()
            case .closing, .closed:
                break
            }
        }
    }

    /// Drain deadline passed: close now; streams still running fail on the relay side.
    func forceClose(reason: String) {
        loop.execute {
            self.closeGracefully(code: .goingAway, reason: reason)
        }
    }

    // MARK: - Connecting and the upgrade

    private func connect(token: String?) {
        guard phase == .idle else { return }
        phase = .connecting
        connectDeadline = loop.scheduleTask(in: options.connectTimeout) { [self] in
            if phase != .ready && phase != .closing && phase != .closed {
                fail("relay did not complete the handshake within \(options.connectTimeout.inSeconds) s")
            }
        }
        let relay = options.relay
        let tls = options.tls
        let bootstrap = ClientBootstrap(group: loop)
            .connectTimeout(options.connectTimeout)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer { [self] channel in
                do {
                    if let tls {
                        // SNI must be a DNS name; for an IP literal NIOSSL checks the address instead.
                        let sni = relay.host.isIPAddress ? nil : relay.host
                        try channel.pipeline.syncOperations.addHandler(
                            NIOSSLClientHandler(context: tls, serverHostname: sni))
                    }
                    try channel.pipeline.syncOperations.addHandler(TunnelChannelHandler(tunnel: self))
                    return channel.eventLoop.makeSucceededVoidFuture()
                } catch {
                    return channel.eventLoop.makeFailedFuture(error)
                }
            }
        logger.debug("connecting to \(relay)")
        bootstrap.connect(host: relay.host, port: relay.port).whenComplete { [self] result in
            switch result {
            case .success(let channel):
                if phase == .closed {
                    channel.close(promise: nil)
                    return
                }
                self.channel = channel
                sendUpgrade(token: token)
            case .failure(let error):
                fail("cannot connect to \(relay): \(error)")
            }
        }
    }

    private func sendUpgrade(token: String?) {
        guard phase == .connecting, let channel else { return }
        phase = .upgrading
        var extra = TetherHTTP.HTTPHeaders()
        if let token { extra.add(name: "Authorization", value: "Bearer \(token)") }
        extra.add(name: "User-Agent", value: options.agent)
        let (head, key) = WebSocketHandshake.clientRequest(
            host: options.relay.hostHeader, target: options.relay.target,
            protocols: [TunnelProtocol.subprotocol], extraHeaders: extra)
        handshakeKey = key
        responseDecoder.expectResponse(toMethod: "GET")
        channel.writeAndFlush(channel.allocator.buffer(bytes: head.encoded()), promise: nil)
    }

    private func receiveUpgradeResponse(_ buffer: ByteBuffer) {
        responseDecoder.feed(buffer.readableBytesView)
        do {
            while let event = try responseDecoder.next() {
                switch event {
                case .head(let head):
                    if head.status == 101 {
                        try upgraded(head)
                        return
                    }
                    if head.status < 200 { continue }
                    refusal = (head.status, [])
                case .body(let bytes):
                    if var r = refusal, r.body.count < 512 {
                        r.body += bytes.prefix(512 - r.body.count)
                        refusal = r
                    }
                case .end:
                    failRefused()
                    return
                }
            }
        } catch let error as WebSocketHandshakeError {
            fail("relay handshake failed: \(error.reason)")
        } catch {
            fail("relay answered with an invalid HTTP response: \(error)")
        }
    }

    private func failRefused() {
        guard let refusal else { return }
        let body = String(decoding: refusal.body, as: UTF8.self).trimmingWhitespace()
        fail("relay refused the upgrade: HTTP \(refusal.status)\(body.isEmpty ? "" : " \(body)")")
    }

    private func upgraded(_ head: HTTPResponseHead) throws(WebSocketHandshakeError) {
        let selected = try WebSocketHandshake.validateServerResponse(
            head, key: handshakeKey, requestedProtocols: [TunnelProtocol.subprotocol])
        guard selected == TunnelProtocol.subprotocol else {
            throw .badResponse(reason: "relay did not select the \(TunnelProtocol.subprotocol) subprotocol")
        }
        phase = .awaitingHello
        logger.debug("upgraded; waiting for the relay's HELLO")
        let rest = responseDecoder.takeBufferedBytes()
        flush()  // our HELLO
        if !rest.isEmpty { receiveWebSocket(rest) }
    }

    // MARK: - Channel events (on the loop)

    fileprivate func channelRead(_ buffer: ByteBuffer) {
        switch phase {
        case .upgrading:
            receiveUpgradeResponse(buffer)
        case .awaitingHello, .ready, .closing:
            receiveWebSocket(buffer.readableBytesView)
        case .idle, .connecting, .closed:
            break
        }
    }

    fileprivate func channelInactive() {
        if phase == .upgrading, refusal != nil { failRefused() }
        finish()
    }

    fileprivate func errorCaught(_ error: any Error) {
        if phase == .closing || phase == .closed { return }
        if closeInfo.peerCode == nil { closeInfo.reason = "\(error)" }
    }

    // MARK: - WebSocket and multiplexer

    private func receiveWebSocket<C: Collection>(_ bytes: C) where C.Element == UInt8 {
        ws.receive(bytes)
        while let event = ws.nextEvent() {
            switch event {
            case .binary(let message):
                do {
                    try mux.receive(message: message)
                } catch {
                    logger.warning("tunnel protocol error from relay: \(error.reason)")
                    closeGracefully(code: WebSocketCloseCode(rawValue: error.closeCode), reason: error.reason)
                    return
                }
                dispatchEvents()
            case .text:
                closeGracefully(code: .unsupportedData, reason: "text message on a tunnel")
                return
            case .ping, .pong:
                break  // pongs to WebSocket pings are queued by the codec
            case .close(let code, let reason):
                // Our own close echoed back says nothing new.
                if !closeInfo.closedByUs {
                    closeInfo.peerCode = code?.rawValue ?? WebSocketCloseCode.noStatusReceived.rawValue
                    closeInfo.reason = reason
                }
            case .protocolError(let code, let reason):
                logger.warning("WebSocket protocol error: \(reason)")
                closeInfo.reason = "WebSocket protocol error (\(code)): \(reason)"
            }
        }
        flush()
    }

    /// Handles the multiplexer's queued events. Not re-entrant: a flush from inside a handler
    /// leaves later events to this loop, so they are handled in order.
    func dispatchEvents() {
        guard !dispatching else { return }
        dispatching = true
        defer { dispatching = false }
        while let event = mux.nextEvent() { handle(event) }
        // The relay ending a request body can be what retires the last stream.
        closeIfDrained()
    }

    private func handle(_ event: TunnelEvent) {
        switch event {
        case .hello(let version, _, let agent):
            guard phase == .awaitingHello else { return }
            phase = .ready
            closeInfo.wasReady = true
            connectDeadline?.cancel()
            connectDeadline = nil
            startPinging()
            logger.debug("tunnel ready (relay \(agent.isEmpty ? "?" : agent), protocol v\(version))")
            report(.ready(agent: agent))
        case .streamOpened(let id, let head, let endStream):
            openStream(id, head, endStream: endStream)
        case .data(let id, let bytes, let endStream):
            receiveData(id, bytes, endStream: endStream)
        case .streamReset(let id, let code, let reason):
            guard let context = streams.removeValue(forKey: id) else { return }
            logger.debug("stream \(id) reset by relay: \(code) \(reason)")
            context.abort()
            status.streamEnded(code == .cancel ? .cancelled : .failed)
            closeIfDrained()
        case .windowAvailable(let id):
            if id == 0 {
                for context in streams.values where context.pending != nil { pushPending(context) }
            } else if let context = streams[id] {
                pushPending(context)
            }
        case .ping:
            break  // the multiplexer queued the ACK; flush() sends it
        case .pong(let payload):
            if payload == outstandingPing {
                outstandingPing = nil
                pingDeadline?.cancel()
                pingDeadline = nil
            }
        case .goAway(let lastStreamID, let code, let reason):
            guard !draining else { return }
            draining = true
            logger.info("relay sent GOAWAY (last stream \(lastStreamID), \(code)\(reason.isEmpty ? "" : ": \(reason)"))")
            report(.goAway(reason: reason))
            closeIfDrained()
        case .response:
            break  // relay-bound only; the multiplexer rejects it for a bridge
        }
    }

    // MARK: - Keepalive

    private func startPinging() {
        pingTimer = loop.scheduleRepeatedTask(initialDelay: options.pingInterval, delay: options.pingInterval) {
            [self] _ in
            guard phase == .ready, outstandingPing == nil else { return }
            pingCounter &+= 1
            let payload = pingCounter
            outstandingPing = payload
            mux.ping(payload)
            flush()
            pingDeadline = loop.scheduleTask(in: options.pingTimeout) { [self] in
                guard outstandingPing == payload else { return }
                logger.warning("no pong from the relay within \(options.pingTimeout.inSeconds) s: dropping the tunnel")
                fail("ping timeout")
            }
        }
    }

    // MARK: - Output and closing

    /// Moves queued frames into WebSocket messages and writes them out at once (no batching
    /// delay: a streamed token must reach the web client now).
    func flush() {
        guard let channel, phase == .awaitingHello || phase == .ready || phase == .closing else { return }
        // Our own calls (a response head too large, say) can queue events as well.
        dispatchEvents()
        while let message = mux.takeOutboundMessage() { ws.send(binary: message) }
        if ws.hasOutbound {
            channel.writeAndFlush(channel.allocator.buffer(bytes: ws.takeOutbound()), promise: nil)
        }
        // A close frame is parsed ahead of the messages before it: close once they are handled.
        if ws.shouldCloseTransport && ws.pendingEventCount == 0 { channel.close(promise: nil) }
    }

    /// Flushes once the loop has finished what it is doing now (the rest of this read from the
    /// local service or the relay, typically): a response head, its body and its end then
    /// leave in one WebSocket message and one write. No timer: it runs in this loop iteration.
    func scheduleFlush() {
        guard !flushScheduled else { return }
        flushScheduled = true
        loop.execute { [self] in
            flushScheduled = false
            flush()
        }
    }

    func closeIfDrained() {
        guard draining, phase == .ready, streams.isEmpty, mux.activeStreamCount == 0 else { return }
        logger.info("all streams done; closing the drained tunnel")
        closeGracefully(code: .normalClosure, reason: "drained")
    }

    /// Closing handshake, bounded by `closeTimeout`.
    private func closeGracefully(code: WebSocketCloseCode, reason: String) {
        switch phase {
        case .awaitingHello, .ready:
            phase = .closing
            closeInfo.reason = reason
            closeInfo.closedByUs = true
            flush()
            ws.close(code: code, reason: reason)
            flush()
            closeDeadline = loop.scheduleTask(in: options.closeTimeout) { [self] in channel?.close(promise: nil) }
        case .idle, .connecting, .upgrading:
            fail(reason)
        case .closing, .closed:
            break
        }
    }

    /// Drops the connection without a closing handshake.
    private func fail(_ reason: String) {
        guard phase != .closed else { return }
        if closeInfo.peerCode == nil {
            closeInfo.reason = reason
            closeInfo.closedByUs = true
        }
        if let channel {
            phase = .closing
            channel.close(promise: nil)  // channelInactive → finish()
        } else {
            finish()
        }
    }

    /// Final teardown, exactly once: streams fail, timers stop, the supervisor hears `closed`.
    private func finish() {
        guard phase != .closed else { return }
        phase = .closed
        connectDeadline?.cancel()
        closeDeadline?.cancel()
        pingTimer?.cancel()
        pingDeadline?.cancel()
        // Out of `streams` first: aborting completes futures, which may call back in.
        let open = streams
        streams = [:]
        for (_, context) in open {
            context.abort()
            status.streamEnded(.failed)
        }
        channel = nil
        report(.closed(closeInfo))
    }
}

/// Pipeline end: passes bytes and channel events to the tunnel (all on the channel's loop).
private final class TunnelChannelHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    let tunnel: TunnelConnection

    init(tunnel: TunnelConnection) { self.tunnel = tunnel }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        tunnel.channelRead(unwrapInboundIn(data))
    }

    func channelInactive(context: ChannelHandlerContext) {
        tunnel.channelInactive()
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        tunnel.errorCaught(error)
        context.close(promise: nil)
    }
}

extension TimeAmount {
    var inSeconds: Double { Double(nanoseconds) / 1e9 }
}

extension String {
    /// IPv4 dotted quad or an IPv6 literal (anything with a colon, as URLs bracket those).
    var isIPAddress: Bool {
        if contains(":") { return true }
        let parts = split(separator: ".", omittingEmptySubsequences: false)
        return parts.count == 4 && parts.allSatisfy { UInt8($0) != nil }
    }
}
