#if os(Linux)
import FoundationEssentials
import Glibc
import TetherHTTP
import TetherIO
import TetherTunnel
import TetherWebSocket

/// `/ws/bridge`: the CloudToLocalLLM desktop app's JSON protocol (docs/PROTOCOL.md §10).
/// Whole bodies only: a request is sent once its body is complete, and the response arrives in
/// one message. Routing, sessions and errors are shared with tether.v1 bridges.
final class LegacyBridgeConnection: ConnectionHandler, Bridge {
    private struct Pending {
        var head: TunnelRequestHead
        var body: [UInt8]
        var client: StreamClient
        var uuid: String
        var sent: Bool
    }

    private struct Incoming: Decodable {
        var type: String
        var id: String?
        var data: IncomingData?
    }

    private struct IncomingData: Decodable {
        var statusCode: Int?
        var headers: [String: String]?
        var body: String?
        var message: String?
        var error: String?
    }

    private let context: RelayContext
    private let session: Session
    private var socket: WebSocketConnection
    private weak var connection: Connection?
    private var pending: [StreamID: Pending] = [:]
    private var byUUID: [String: StreamID] = [:]
    private var nextStream: StreamID = 1
    private var registered = false
    private var draining = false
    private var pingTimer: TimerID?
    private var silentIntervals = 0
    private let bridgeID: String
    private let maxStreams = 256
    /// In a session worker: the relay's id for this bridge (its greeting was sent long ago).
    let attachID: UInt64?

    private let peer: SocketAddress?
    private let protocolName: String
    private var closeReason = "connection closed"
    private var closeKind: BridgeDisconnectReason?

    init(context: RelayContext, session: Session, peer: SocketAddress?, protocolName: String) {
        self.context = context
        self.session = session
        self.peer = peer
        self.protocolName = protocolName
        self.socket = WebSocketConnection(role: .server, maxMessageSize: context.configuration.webSocketMaxMessage)
        self.bridgeID = LegacyBridgeConnection.uuid()
        self.attachID = nil
    }

    /// A session worker's bridge, handed over by the relay (which greeted it).
    init(context: RelayContext, session: Session, peer: SocketAddress?, protocolName: String, attachID: UInt64,
         bridgeID: String) {
        self.context = context
        self.session = session
        self.peer = peer
        self.protocolName = protocolName
        self.socket = WebSocketConnection(role: .server, maxMessageSize: context.configuration.webSocketMaxMessage)
        self.bridgeID = bridgeID
        self.attachID = attachID
    }

    // MARK: Bridge

    var canOpenStream: Bool { registered && !draining && pending.count < maxStreams }
    var activeStreams: Int { pending.count }
    var protocolKind: BridgeProtocol { .legacy }
    var remoteAddress: SocketAddress? { peer }

    func openStream(_ head: TunnelRequestHead, endStream: Bool, client: StreamClient) -> StreamID? {
        guard canOpenStream else { return nil }
        let id = nextStream
        nextStream += 1
        let uuid = LegacyBridgeConnection.uuid()
        pending[id] = Pending(head: head, body: [], client: client, uuid: uuid, sent: false)
        byUUID[uuid] = id
        context.stats.streamsOpened.addFromOwner()
        if endStream { sendRequest(id) }
        return id
    }

    func sendBody(_ stream: StreamID, _ bytes: UnsafeRawBufferPointer, endStream: Bool) -> Int {
        guard pending[stream] != nil else { return bytes.count }
        // The HTTP decoder already caps bodies at --max-body-size.
        pending[stream]?.body.append(contentsOf: bytes)
        if endStream { sendRequest(stream) }
        return bytes.count
    }

    func consumed(_ stream: StreamID, bytes: Int) {}

    func cancel(_ stream: StreamID, code: TunnelErrorCode) {
        if let p = pending.removeValue(forKey: stream) { byUUID[p.uuid] = nil }
    }

    /// The legacy protocol has no goaway: stop giving it streams; it is closed at the end.
    func goAway() { draining = true }

    func close(code: UInt16, reason: String, kind: BridgeDisconnectReason) {
        fail(code: WebSocketCloseCode(rawValue: code), reason: reason, kind: kind)
    }

    // MARK: ConnectionHandler

    func connectionDidOpen(_ connection: Connection) {
        self.connection = connection
        connection.setDeadline(milliseconds: context.configuration.webSocketIdleTimeoutMilliseconds)
        context.stats.legacyBridgesOpened.addFromOwner()
        if attachID == nil { socket.send(text: LegacyBridgeConnection.greeting(bridgeID: bridgeID)) }
        registered = true
        session.add(self)
        context.activate(session, now: context.loop.nowMilliseconds, cause: "bridge")
        context.bridgeConnected(session, peer: peer, protocolName: protocolName)
        if let attachID { context.worker?.bridgeAttached(attachID, self) }
        flush()
        schedulePing()
    }

    /// The first message after the upgrade (docs/PROTOCOL.md §10).
    static func greeting(bridgeID: String) -> String {
        "{\"type\":\"auth\",\"id\":\(JSONString.quote(LegacyBridgeConnection.uuid())),"
            + "\"data\":{\"success\":true,\"bridgeId\":\(JSONString.quote(bridgeID))},"
            + "\"timestamp\":\(JSONString.quote(LegacyBridgeConnection.timestamp()))}"
    }

    func connection(_ connection: Connection, didRead bytes: UnsafeRawBufferPointer) {
        connection.setDeadline(milliseconds: context.configuration.webSocketIdleTimeoutMilliseconds)
        silentIntervals = 0
        socket.receive(bytes)
        process()
    }

    func connectionWritable(_ connection: Connection) {
        connection.resumeReading()
        process()
    }

    func connectionDidReadEOF(_ connection: Connection) {
        // A session worker being parked: the relay takes the bridge back.
        if let attachID, let worker = context.worker, worker.parking {
            flush()
            let idle = socket.isAtMessageBoundary && pending.isEmpty
            worker.bridgeParked(attachID, state: idle ? .legacy(bridgeID: bridgeID) : nil,
                                reason: pending.isEmpty ? "mid-message" : "requests in flight")
            if closeKind == nil { closeKind = .shutdown }
            closeReason = "parked"
        }
        connection.close(.graceful)
    }

    func connectionDeadlineExpired(_ connection: Connection) {
        context.stats.deadlineExpirations.addFromOwner()
        fail(code: .goingAway, reason: "idle timeout", kind: .idleTimeout)
    }

    func connectionDidClose(_ connection: Connection, error: IOError?) {
        if let pingTimer { context.loop.cancel(pingTimer) }
        pingTimer = nil
        let orphans = pending
        pending = [:]
        byUUID = [:]
        for (_, p) in orphans.sorted(by: { $0.key < $1.key }) { p.client.streamDidFail(.bridgeLost) }
        if let attachID { context.worker?.bridgeDetached(attachID) }
        if registered {
            registered = false
            session.remove(self)
            if closeKind == nil { closeKind = error == nil ? .closedByBridge : .connectionError }
            context.bridgeDisconnected(session, peer: peer, protocolName: protocolName,
                                       reason: error.map { "\($0)" } ?? closeReason, kind: closeKind ?? .closedByBridge)
        }
        context.stats.tunnelsClosed.addFromOwner()
    }

    private func process() {
        guard let connection else { return }
        while connection.isOpen {
            if !connection.isWritable {
                flush()
                connection.pauseReading()
                return
            }
            guard let event = socket.nextEvent() else { break }
            switch event {
            case .text(let text):
                handle(text)
            case .binary(let bytes):
                handle(String(decoding: bytes, as: UTF8.self))
            case .ping, .pong:
                break
            case .close:
                if closeKind == nil { closeKind = .closedByBridge }
            case .protocolError:
                context.stats.webSocketProtocolErrors.addFromOwner()
                if closeKind == nil { closeKind = .protocolError }
            }
            flush()
        }
        flush()
    }

    private func handle(_ text: String) {
        guard let message = try? JSONDecoder().decode(Incoming.self, from: Data(text.utf8)) else {
            context.stats.tunnelProtocolErrors.addFromOwner()
            fail(code: .unsupportedData, reason: "expected a JSON message with a type", kind: .protocolError)
            return
        }
        switch message.type {
        case "ping":
            let id = message.id ?? LegacyBridgeConnection.uuid()
            socket.send(text: "{\"type\":\"pong\",\"id\":\(JSONString.quote(id)),\"timestamp\":\(JSONString.quote(LegacyBridgeConnection.timestamp()))}")
        case "pong":
            break
        case "response":
            guard let uuid = message.id, let stream = byUUID.removeValue(forKey: uuid),
                  let p = pending.removeValue(forKey: stream) else { return }
            let data = message.data
            let status = data?.statusCode ?? 0
            guard (100...599).contains(status) else {
                p.client.streamDidFail(.reset(.protocolError, reason: "response without a valid statusCode"))
                return
            }
            var headers = HTTPHeaders()
            for (name, value) in (data?.headers ?? [:]).sorted(by: { $0.key < $1.key }) {
                let lower = name.lowercased()
                if lower == "content-length" || lower == "transfer-encoding" || lower == "connection" { continue }
                headers.add(name: name, value: value)
            }
            let body = Array((data?.body ?? "").utf8)
            headers.add(name: "Content-Length", value: String(body.count))
            p.client.streamDidReceiveResponse(TunnelResponseHead(status: status, headers: headers), endStream: body.isEmpty)
            if !body.isEmpty { p.client.streamDidReceiveData(body[...], endStream: true) }
        case "error":
            guard let uuid = message.id, let stream = byUUID.removeValue(forKey: uuid),
                  let p = pending.removeValue(forKey: stream) else { return }
            let reason = message.data?.message ?? message.data?.error ?? "bridge error"
            p.client.streamDidFail(.reset(.localServiceError, reason: reason))
        default:
            // Unknown message types are ignored, as the desktop app does.
            break
        }
    }

    private func sendRequest(_ stream: StreamID) {
        guard var p = pending[stream], !p.sent else { return }
        p.sent = true
        // A JSON object cannot repeat a name: repeated fields are joined with ", " (RFC 9110 5.3).
        var order: [String] = []
        var merged: [String: String] = [:]
        for (name, value) in p.head.headers {
            let key = name.lowercased()
            if let existing = merged[key] { merged[key] = existing + ", " + value } else { order.append(key); merged[key] = value }
        }
        var headers = "{"
        for (i, key) in order.enumerated() {
            if i > 0 { headers += "," }
            headers += "\(JSONString.quote(key)):\(JSONString.quote(merged[key] ?? ""))"
        }
        headers += "}"
        let body = String(decoding: p.body, as: UTF8.self)
        let message = "{\"type\":\"request\",\"id\":\(JSONString.quote(p.uuid)),\"data\":{"
            + "\"method\":\(JSONString.quote(p.head.method)),\"path\":\(JSONString.quote(p.head.target)),"
            + "\"headers\":\(headers),\"body\":\(JSONString.quote(body))},"
            + "\"timestamp\":\(JSONString.quote(LegacyBridgeConnection.timestamp()))}"
        p.body = []
        pending[stream] = p
        socket.send(text: message)
        flush()
    }

    private func flush() {
        guard let connection, connection.isOpen else { return }
        if socket.hasOutbound { connection.write(socket.takeOutbound()) }
        // A close frame is parsed ahead of the messages before it: close only once they are handled.
        if socket.shouldCloseTransport && socket.pendingEventCount == 0 { connection.close(.graceful) }
    }

    private func fail(code: WebSocketCloseCode, reason: String, kind: BridgeDisconnectReason) {
        if closeReason == "connection closed" { closeReason = reason }
        if closeKind == nil { closeKind = kind }
        socket.close(code: code, reason: reason)
        flush()
        connection?.close(.graceful)
    }

    // MARK: keepalive

    private func schedulePing() {
        let interval = context.configuration.legacyPingIntervalMilliseconds
        guard interval > 0 else { return }
        pingTimer = context.loop.schedule(afterMilliseconds: interval) { [weak self] in
            self?.pingTick()
        }
    }

    /// Anything received counts as a sign of life; two silent intervals drop the bridge.
    private func pingTick() {
        pingTimer = nil
        guard let connection, connection.isOpen else { return }
        if silentIntervals >= 2 {
            context.stats.tunnelPingTimeouts.addFromOwner()
            fail(code: .goingAway, reason: "ping timeout", kind: .pingTimeout)
            return
        }
        silentIntervals += 1
        socket.send(text: "{\"type\":\"ping\",\"id\":\(JSONString.quote(LegacyBridgeConnection.uuid())),\"timestamp\":\(JSONString.quote(LegacyBridgeConnection.timestamp()))}")
        flush()
        schedulePing()
    }

    // MARK: helpers

    static func uuid() -> String { UUID().uuidString.lowercased() }

    /// ISO-8601 UTC with milliseconds, as JavaScript's Date.toISOString() writes it.
    static func timestamp() -> String {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        var seconds = ts.tv_sec
        var parts = tm()
        gmtime_r(&seconds, &parts)
        func pad(_ v: Int32, _ width: Int) -> String {
            let s = String(v)
            return String(repeating: "0", count: max(0, width - s.count)) + s
        }
        let millis = Int32(ts.tv_nsec / 1_000_000)
        return "\(pad(parts.tm_year + 1900, 4))-\(pad(parts.tm_mon + 1, 2))-\(pad(parts.tm_mday, 2))T"
            + "\(pad(parts.tm_hour, 2)):\(pad(parts.tm_min, 2)):\(pad(parts.tm_sec, 2)).\(pad(millis, 3))Z"
    }
}
#endif
