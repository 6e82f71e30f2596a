#if os(Linux)
import TetherAuth
import TetherIO
import TetherTunnel
import TetherWebSocket

/// `/ws/tunnel`: one bridge speaking tether.v1 (docs/PROTOCOL.md). Bytes go through the
/// WebSocket codec, whole messages through the multiplexer; its events are dispatched to the
/// web clients' connections on this loop. Lives on its session's home worker.
final class TunnelConnection: ConnectionHandler, Bridge {
    private let context: RelayContext
    private let session: Session
    private var socket: WebSocketConnection
    private var mux: TunnelMultiplexer
    private var streams: [StreamID: StreamClient] = [:]
    private weak var connection: Connection?
    private var registered = false
    private var draining = false
    private var pingTimer: TimerID?
    private var pingsUnanswered = 0
    private var pingCounter: UInt64 = 0
    private let peer: SocketAddress?
    private let protocolName: String
    /// Why the tunnel ended, for the audit log and the disconnect metric.
    private var closeReason = "connection closed"
    private var closeKind: BridgeDisconnectReason?
    /// A stream's body was refused because our socket to the bridge was full.
    private var sendersBlocked = false
    /// In a session worker: the relay's id for this bridge, which arrived resumed (HELLOs
    /// exchanged long ago, its state in `mux`).
    let attachID: UInt64?
    private var resumed: Bool { attachID != nil }

    /// `attachID` and `snapshot` together: a session worker's bridge, handed over by the relay
    /// with its tunnel's state.
    init(context: RelayContext, session: Session, peer: SocketAddress?, protocolName: String, attachID: UInt64? = nil,
         resuming snapshot: TunnelSnapshot? = nil) {
        self.context = context
        self.session = session
        self.peer = peer
        self.protocolName = protocolName
        self.socket = WebSocketConnection(role: .server, maxMessageSize: max(context.configuration.webSocketMaxMessage,
                                                                             context.configuration.tunnel.maxMessageSize))
        if let attachID, let snapshot {
            self.mux = TunnelMultiplexer(role: .relay, restoring: snapshot)
            self.attachID = attachID
        } else {
            self.mux = TunnelMultiplexer(role: .relay, settings: context.tunnelSettings(for: session.profile), agent: "tether-relay")
            self.attachID = nil
        }
    }

    // MARK: Bridge

    var canOpenStream: Bool { registered && !draining && mux.canOpenStream }
    var activeStreams: Int { streams.count }
    var protocolKind: BridgeProtocol { .tunnel }
    var remoteAddress: SocketAddress? { peer }

    func openStream(_ head: TunnelRequestHead, endStream: Bool, client: StreamClient) -> StreamID? {
        guard canOpenStream, let id = mux.openStream(head, endStream: endStream) else { return nil }
        streams[id] = client
        context.stats.streamsOpened.addFromOwner()
        flush()
        return id
    }

    func sendBody(_ stream: StreamID, _ bytes: UnsafeRawBufferPointer, endStream: Bool) -> Int {
        // Our queue to the bridge is full: hold the client's body instead of growing it, even
        // if the bridge granted a bigger window. (A bare END goes through: its caller cannot
        // tell "0 bytes taken" from "sent".)
        guard let connection, connection.isWritable || bytes.isEmpty else {
            sendersBlocked = true
            return 0
        }
        let taken = mux.sendData(stream, bytes, endStream: endStream)
        forgetIfClosed(stream)
        flush()
        return taken
    }

    func consumed(_ stream: StreamID, bytes: Int) {
        mux.consumed(stream, bytes: bytes)
        flush()
    }

    func cancel(_ stream: StreamID, code: TunnelErrorCode) {
        streams[stream] = nil
        // Even for a stream the bridge already finished: the reset sends nothing then, but
        // returns the tunnel credit of response bytes the client never took.
        mux.reset(stream, code: code)
        flush()
    }

    func goAway() {
        guard !draining else { return }
        draining = true
        mux.goAway(code: .noError, reason: "relay draining")
        flush()
    }

    func close(code: UInt16, reason: String, kind: BridgeDisconnectReason) {
        fail(code: WebSocketCloseCode(rawValue: code), reason: reason, kind: kind)
    }

    // MARK: ConnectionHandler

    func connectionDidOpen(_ connection: Connection) {
        self.connection = connection
        context.stats.tunnelsOpened.addFromOwner()
        if resumed {
            register()
        } else {
            // Until its HELLO, a bridge has the handshake deadline, however much else it sends.
            connection.setDeadline(milliseconds: context.configuration.bridgeHandshakeTimeoutMilliseconds)
            flush()  // our HELLO
        }
        schedulePing()
    }

    func connection(_ connection: Connection, didRead bytes: UnsafeRawBufferPointer) {
        if registered {
            connection.setDeadline(milliseconds: context.configuration.webSocketIdleTimeoutMilliseconds)
        }
        socket.receive(bytes)
        process()
    }

    func connectionWritable(_ connection: Connection) {
        connection.resumeReading()
        process()
        if sendersBlocked {
            sendersBlocked = false
            for client in Array(streams.values) { client.streamWindowAvailable() }
        }
    }

    func connectionDidReadEOF(_ connection: Connection) {
        context.tunnelLogger.debug("bridge sent EOF", metadata: [
            "session": "\(session.id)", "streams": "\(streams.count)", "close": "\(closeReason)"])
        // A session worker being parked: the relay stopped feeding us at a message boundary
        // and takes the tunnel back with its state.
        if let attachID, let worker = context.worker, worker.parking {
            flush()
            let snapshot = socket.isAtMessageBoundary ? mux.snapshot() : nil
            worker.bridgeParked(attachID, state: snapshot.map { .tunnel($0) },
                                reason: socket.isAtMessageBoundary ? "streams in flight" : "mid-message")
            if closeKind == nil { closeKind = .shutdown }
            closeReason = "parked"
        }
        connection.close(.graceful)
    }

    func connectionDeadlineExpired(_ connection: Connection) {
        context.stats.deadlineExpirations.addFromOwner()
        if registered {
            fail(code: .goingAway, reason: "idle timeout", kind: .idleTimeout)
        } else {
            fail(code: .policyViolation, reason: "HELLO not received in time", kind: .idleTimeout)
        }
    }

    func connectionDidClose(_ connection: Connection, error: IOError?) {
        context.tunnelLogger.debug("tunnel closed", metadata: [
            "session": "\(session.id)", "streams": "\(streams.count)", "close": "\(closeReason)",
            "error": "\(error.map { "\($0)" } ?? "none")"])
        if let pingTimer { context.loop.cancel(pingTimer) }
        pingTimer = nil
        if closeKind == nil { closeKind = error == nil ? .closedByBridge : .connectionError }
        detach(reason: error.map { "\($0)" } ?? closeReason)
        context.stats.tunnelsClosed.addFromOwner()
    }

    // MARK: input

    private func process() {
        guard let connection else { return }
        while connection.isOpen {
            // The bridge outpacing its socket only happens within windows; stop reading
            // rather than queueing without bound.
            if !connection.isWritable {
                flush()
                connection.pauseReading()
                return
            }
            guard let event = socket.nextEvent() else { break }
            switch event {
            case .binary(let message):
                do {
                    try mux.receive(message: message)
                } catch {
                    context.stats.tunnelProtocolErrors.addFromOwner()
                    context.tunnelLogger.notice("tunnel protocol error", metadata: [
                        "session": "\(session.id)", "code": "\(error.closeCode)", "reason": "\(error.reason)"])
                    fail(code: WebSocketCloseCode(rawValue: error.closeCode), reason: error.reason, kind: .protocolError)
                    return
                }
                dispatchMuxEvents()
            case .text:
                context.stats.tunnelProtocolErrors.addFromOwner()
                fail(code: .unsupportedData, reason: "tether.v1 carries binary messages only", kind: .protocolError)
                return
            case .ping, .pong:
                break
            case .close:
                if closeReason == "connection closed" { closeReason = "closed by bridge" }
                if closeKind == nil { closeKind = .closedByBridge }
            case .protocolError:
                context.stats.webSocketProtocolErrors.addFromOwner()
                if closeKind == nil { closeKind = .protocolError }
            }
            flush()
        }
        flush()
    }

    private func dispatchMuxEvents() {
        while let event = mux.nextEvent() {
            switch event {
            case .hello:
                if !registered {
                    guard context.sessions.existing(session.id) === session else {
                        fail(code: WebSocketCloseCode(rawValue: 1013), reason: "session ended while connecting; reconnect",
                             kind: .shutdown)
                        return
                    }
                    if session.bridges.count >= session.profile.maxBridges {
                        context.recordQuotaRejection(.bridges, session: session.id, peer: peer)
                        fail(code: WebSocketCloseCode(rawValue: 4008),
                             reason: "TOO_MANY_BRIDGES: this session already has \(session.profile.maxBridges) bridges connected",
                             kind: .closedByBridge)
                        return
                    }
                    register()
                }
            case .response(let id, let head, let end):
                let client = streams[id]
                if end { forgetIfClosed(id) }
                client?.streamDidReceiveResponse(head, endStream: end)
            case .data(let id, let bytes, let end):
                let client = streams[id]
                if end { forgetIfClosed(id) }
                if let client {
                    client.streamDidReceiveData(bytes, endStream: end)
                } else {
                    mux.consumed(id, bytes: bytes.count)
                }
            case .streamReset(let id, let code, let reason):
                context.stats.streamResetsReceived.addFromOwner()
                streams.removeValue(forKey: id)?.streamDidFail(.reset(code, reason: reason))
            case .windowAvailable(let id):
                if id == 0 {
                    for client in Array(streams.values) { client.streamWindowAvailable() }
                } else {
                    streams[id]?.streamWindowAvailable()
                }
            case .ping, .streamOpened:
                break
            case .pong:
                pingsUnanswered = 0
            case .goAway:
                draining = true
            }
        }
    }

    private func register() {
        registered = true
        session.add(self)
        context.activate(session, now: context.loop.nowMilliseconds, cause: "bridge")
        connection?.setDeadline(milliseconds: context.configuration.webSocketIdleTimeoutMilliseconds)
        context.bridgeConnected(session, peer: peer, protocolName: protocolName)
        if let attachID { context.worker?.bridgeAttached(attachID, self) }
        if context.draining { goAway() }
    }

    /// Drops the client reference once the multiplexer considers the stream finished. Only
    /// called at an end of stream: events are queued per message, so the multiplexer may
    /// already have seen the end while earlier events of the stream are still being dispatched.
    private func forgetIfClosed(_ id: StreamID) {
        if !mux.isOpen(id) { streams[id] = nil }
    }

    // MARK: output

    private func flush() {
        guard let connection, connection.isOpen else { return }
        while let message = mux.takeOutboundMessage() {
            socket.send(binary: message)
        }
        if socket.hasOutbound {
            connection.write(socket.takeOutbound())
        }
        // The codec parses a close frame ahead of the messages before it (the last DATA with
        // END_STREAM, typically): close only once every one of them has been dispatched.
        if socket.shouldCloseTransport && socket.pendingEventCount == 0 {
            connection.close(.graceful)
        }
    }

    private func fail(code: WebSocketCloseCode, reason: String, kind: BridgeDisconnectReason) {
        if closeReason == "connection closed" { closeReason = reason }
        if closeKind == nil { closeKind = kind }
        socket.close(code: code, reason: reason)
        flush()
        connection?.close(.graceful)
        // The tunnel is dead for its streams now, not when the bridge acknowledges the close.
        detach(reason: closeReason)
    }

    /// Leaves the session and fails the streams still in flight (once).
    private func detach(reason: String) {
        let orphans = streams
        streams = [:]
        for (_, client) in orphans.sorted(by: { $0.key < $1.key }) {
            client.streamDidFail(.bridgeLost)
        }
        if let attachID { context.worker?.bridgeDetached(attachID) }
        if registered {
            registered = false
            session.remove(self)
            context.bridgeDisconnected(session, peer: peer, protocolName: protocolName, reason: reason,
                                       kind: closeKind ?? .closedByBridge)
        }
    }

    // MARK: keepalive

    private func schedulePing() {
        let interval = context.configuration.tunnelPingIntervalMilliseconds
        guard interval > 0 else { return }
        pingTimer = context.loop.schedule(afterMilliseconds: interval) { [weak self] in
            self?.pingTick()
        }
    }

    private func pingTick() {
        pingTimer = nil
        guard let connection, connection.isOpen else { return }
        if pingsUnanswered >= 2 {
            context.stats.tunnelPingTimeouts.addFromOwner()
            fail(code: .goingAway, reason: "ping timeout", kind: .pingTimeout)
            return
        }
        pingsUnanswered += 1
        pingCounter &+= 1
        mux.ping(pingCounter)
        flush()
        schedulePing()
    }
}
#endif
