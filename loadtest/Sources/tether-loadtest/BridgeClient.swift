import TetherHTTP
import TetherIO
import TetherTLS
import TetherTunnel
import TetherWebSocket

/// Where and how bridges connect. Immutable, shared by every worker.
struct BridgeEndpoint: Sendable {
    var target: SocketAddress
    var sources: [SocketAddress?]
    var tls: TLSContext?
    /// Host header (and TLS server name: "localhost" for a certificate made for it).
    var hostHeader: String
    var serverName: String
    var path = "/ws/tunnel"
    /// What our bridges accept. Large windows: the embedded service consumes request bodies
    /// at once, so they bound nothing here and only a slow relay should limit bulk uploads.
    var settings: TunnelSettings = {
        var s = TunnelSettings()
        s.streamWindow = 8 << 20
        s.tunnelWindow = 64 << 20
        s.maxStreams = 4096
        return s
    }()
}

/// What a bridge tells its owner, on the owner's loop.
protocol BridgeOwner: AnyObject {
    /// The relay's HELLO arrived: the tunnel carries streams from now on.
    func bridgeReady(_ bridge: BridgeClient)
    /// The bridge is gone (closed by us, by the relay, or never got ready). `reason` is a
    /// short, countable description ("close 4001 bad signature", "connect: ...").
    func bridgeClosed(_ bridge: BridgeClient, wasReady: Bool, reason: String)
}

/// One tether.v1 bridge (docs/PROTOCOL.md): WebSocket client upgrade to /ws/tunnel with the
/// `tether.v1` subprotocol and a bearer token, HELLO exchange, then streams answered by the
/// embedded fake service (`FakeService`), all on the worker's loop.
final class BridgeClient: ConnectionHandler {
    enum Phase { case idle, connecting, upgrading, awaitingHello, ready, closing, closed }

    unowned let owner: any BridgeOwner
    unowned let service: any BridgeService
    /// Index of the simulated user (its token) and of this bridge in the scenario.
    let user: Int
    let index: Int
    private(set) var phase = Phase.idle
    private(set) var connection: Connection?
    private var key = ""
    private var decoder = HTTPResponseDecoder()
    private var ws: WebSocketConnection
    var mux: TunnelMultiplexer
    /// Streams the fake service is serving.
    var streams: [StreamID: ServiceStream] = [:]
    /// Streams forwarded to a real local service (`--forward`).
    var exchanges: [StreamID: LocalExchange] = [:]
    /// Response bodies waiting for window or for the socket to drain.
    var pumping: [StreamID] = []
    /// Queued in the service's list of bridges to flush after a batch of tokens.
    var flushQueued = false
    private(set) var startedAt: UInt64 = 0
    private var refusal: (status: Int, body: [UInt8])?
    private var closeReason: String?
    /// The driver asked for the close (churn, end of run): not a loss.
    private(set) var closeRequested = false

    init(owner: any BridgeOwner, service: any BridgeService, user: Int, index: Int, endpoint: BridgeEndpoint) {
        self.owner = owner
        self.service = service
        self.user = user
        self.index = index
        ws = WebSocketConnection(role: .client, maxMessageSize: endpoint.settings.maxMessageSize + 64)
        mux = TunnelMultiplexer(role: .bridge, settings: endpoint.settings, agent: "tether-loadtest")
    }

    var isReady: Bool { phase == .ready }
    var isFinished: Bool { phase == .closed }

    func start(on loop: EventLoop, endpoint: BridgeEndpoint, token: String) {
        guard phase == .idle else { return }
        phase = .connecting
        startedAt = nowNanoseconds()
        var extra = HTTPHeaders()
        extra.add(name: "Authorization", value: "Bearer " + token)
        extra.add(name: "User-Agent", value: "tether-loadtest")
        let request = WebSocketHandshake.clientRequest(host: endpoint.hostHeader, target: endpoint.path,
                                                       protocols: [TunnelProtocol.subprotocol], extraHeaders: extra)
        key = request.key
        upgradeBytes = request.head.encoded()
        let source = endpoint.sources[index % endpoint.sources.count]
        loop.connect(to: endpoint.target, from: source, tls: endpoint.tls, serverName: endpoint.serverName, handler: self)
    }

    private var upgradeBytes: [UInt8] = []

    /// Closes the tunnel the way a bridge shutting down does: WebSocket close 1000, then FIN.
    func close(reason: String = "closed by the driver") {
        closeRequested = true
        switch phase {
        case .idle:
            phase = .closed
        case .connecting, .upgrading:
            closeReason = closeReason ?? reason
            connection?.close(.abort)
        case .awaitingHello, .ready:
            closeReason = closeReason ?? reason
            phase = .closing
            ws.close(code: .normalClosure, reason: "")
            flush()
            connection?.close(.graceful)
        case .closing, .closed:
            break
        }
    }

    func abort() {
        closeRequested = true
        connection?.close(.abort)
    }

    // MARK: ConnectionHandler

    func connectionDidOpen(_ connection: Connection) {
        self.connection = connection
        guard phase == .connecting else { return }
        phase = .upgrading
        decoder.expectResponse(toMethod: "GET")
        connection.write(upgradeBytes)
        upgradeBytes = []
    }

    func connection(_ connection: Connection, didRead bytes: UnsafeRawBufferPointer) {
        switch phase {
        case .upgrading:
            readUpgradeResponse(bytes)
        case .awaitingHello, .ready, .closing:
            ws.receive(bytes)
            processWebSocket()
        case .idle, .connecting, .closed:
            break
        }
    }

    func connectionWritable(_ connection: Connection) {
        service.pumpAll(self)
    }

    func connectionDidReadEOF(_ connection: Connection) {
        if closeReason == nil { closeReason = phase == .upgrading && refusal != nil ? refusalReason() : "relay closed the connection" }
        connection.close(.graceful)
    }

    func connectionDidClose(_ connection: Connection, error: IOError?) {
        let wasReady = phase == .ready || (phase == .closing && mux.isReady)
        if closeReason == nil {
            if let error {
                closeReason = error.operation == "connect" ? "connect: \(errnoName(error.errno))" : "\(error.operation): \(errnoName(error.errno))"
            } else {
                closeReason = "connection closed"
            }
        }
        phase = .closed
        self.connection = nil
        streams = [:]
        pumping = []
        let orphans = exchanges
        exchanges = [:]
        for (_, exchange) in orphans { exchange.abandon() }
        owner.bridgeClosed(self, wasReady: wasReady, reason: closeReason ?? "connection closed")
    }

    // MARK: upgrade

    private func readUpgradeResponse(_ bytes: UnsafeRawBufferPointer) {
        decoder.feed(bytes)
        do {
            while let event = try decoder.next() {
                switch event {
                case .head(let head):
                    if head.status == 101 {
                        let selected = try WebSocketHandshake.validateServerResponse(
                            head, key: key, requestedProtocols: [TunnelProtocol.subprotocol])
                        guard selected == TunnelProtocol.subprotocol else {
                            return fail("relay did not select \(TunnelProtocol.subprotocol)")
                        }
                        phase = .awaitingHello
                        let rest = decoder.takeBufferedBytes()
                        decoder = HTTPResponseDecoder()
                        flush()  // our HELLO
                        // A PING in a message of its own: the relay answers it only once it
                        // has taken our HELLO and let the tunnel into the session (quota
                        // checks passed, e.g. no 4008), so its PONG is the "registered" signal.
                        mux.ping(BridgeClient.registrationPing)
                        flush()
                        if !rest.isEmpty {
                            rest.withUnsafeBytes { ws.receive($0) }
                            processWebSocket()
                        }
                        return
                    }
                    if head.status >= 200 { refusal = (head.status, []) }
                case .body(let body):
                    if var r = refusal, r.body.count < 256 {
                        r.body += body.prefix(256 - r.body.count)
                        refusal = r
                    }
                case .end:
                    return fail(refusalReason())
                }
            }
        } catch {
            fail("bad upgrade response: \(error)")
        }
    }

    private func refusalReason() -> String {
        guard let refusal else { return "upgrade refused" }
        let code = errorCode(in: refusal.body)
        return "HTTP \(refusal.status)\(code.map { " \($0)" } ?? "")"
    }

    private func fail(_ reason: String) {
        closeReason = closeReason ?? reason
        connection?.close(.abort)
    }

    // MARK: WebSocket and multiplexer

    private func processWebSocket() {
        while let event = ws.nextEvent() {
            switch event {
            case .binary(let message):
                do {
                    try mux.receive(message: message)
                } catch {
                    closeReason = closeReason ?? "tunnel protocol error: \(error.reason)"
                    ws.close(code: WebSocketCloseCode(rawValue: error.closeCode), reason: error.reason)
                    flush()
                    connection?.close(.graceful)
                    return
                }
                dispatchTunnelEvents()
            case .text:
                closeReason = closeReason ?? "text message on the tunnel"
                ws.close(code: .unsupportedData, reason: "text message")
            case .ping, .pong:
                break
            case .close(let code, let reason):
                if closeReason == nil {
                    let c = code?.rawValue ?? 1005
                    closeReason = "close \(c)\(reason.isEmpty ? "" : " \(closeReasonKey(reason))")"
                }
            case .protocolError(let code, let reason):
                closeReason = closeReason ?? "WebSocket protocol error \(code.rawValue): \(reason)"
            }
        }
        flush()
        if ws.shouldCloseTransport { connection?.close(.graceful) }
    }

    private func dispatchTunnelEvents() {
        while let event = mux.nextEvent() {
            switch event {
            case .hello:
                helloReceived = true
                becomeReadyIfRegistered()
            case .pong(let value):
                if value == BridgeClient.registrationPing {
                    registered = true
                    becomeReadyIfRegistered()
                }
            case .streamOpened(let id, let head, let end):
                service.open(self, id, head, endStream: end)
            case .data(let id, let bytes, let end):
                service.requestBody(self, id, bytes, endStream: end)
            case .streamReset(let id, _, _):
                service.reset(self, id)
            case .windowAvailable(let id):
                if id == 0 { service.pumpAll(self) } else { service.pump(self, id) }
            case .ping, .response:
                break
            case .goAway:
                break  // the relay drains: it opens no more streams here
            }
        }
    }

    static let registrationPing: UInt64 = 0x7465_7468_6572_0001
    private var helloReceived = false
    private var registered = false

    private func becomeReadyIfRegistered() {
        guard phase == .awaitingHello, helloReceived, registered else { return }
        phase = .ready
        owner.bridgeReady(self)
    }

    /// Moves the multiplexer's queued messages into WebSocket frames and onto the socket.
    func flush() {
        guard let connection, connection.isOpen else { return }
        while let message = mux.takeOutboundMessage() {
            ws.send(binary: message)
        }
        if ws.hasOutbound { connection.write(ws.takeOutbound()) }
    }

    var canWrite: Bool { connection?.isWritable ?? false }
}

/// The relay's JSON error code (`{"error":{"code":"X"...`) in a small error body, if any.
func errorCode(in body: [UInt8]) -> String? {
    let marker = Array("\"code\":\"".utf8)
    guard body.count > marker.count else { return nil }
    var i = 0
    while i + marker.count <= body.count {
        if body[i] == marker[0], Array(body[i ..< i + marker.count]) == marker {
            let start = i + marker.count
            var end = start
            while end < body.count, body[end] != UInt8(ascii: "\""), end - start < 64 { end += 1 }
            return String(decoding: body[start ..< end], as: UTF8.self)
        }
        i += 1
    }
    return nil
}

/// A close reason cut to its stable part ("TOO_MANY_BRIDGES: max 3" -> "TOO_MANY_BRIDGES"), so
/// reasons with numbers in them still count as one kind.
func closeReasonKey(_ reason: String) -> String {
    if let colon = reason.firstIndex(of: ":") { return String(reason[..<colon]) }
    return reason.count > 48 ? String(reason.prefix(48)) : reason
}

func errnoName(_ e: Int32) -> String {
    switch e {
    case 104: return "ECONNRESET"
    case 111: return "ECONNREFUSED"
    case 110: return "ETIMEDOUT"
    case 99: return "EADDRNOTAVAIL"
    case 24: return "EMFILE"
    case 23: return "ENFILE"
    case 32: return "EPIPE"
    case 125: return "ECANCELED"
    case 71: return "EPROTO"
    default: return "errno \(e)"
    }
}
