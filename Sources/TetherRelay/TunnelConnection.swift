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

    init(context: RelayContext, session: Session) {
        self.context = context
        self.session = session
        self.socket = WebSocketConnection(role: .server, maxMessageSize: max(context.configuration.webSocketMaxMessage,
                                                                             context.configuration.tunnel.maxMessageSize))
        self.mux = TunnelMultiplexer(role: .relay, settings: context.configuration.tunnel, agent: "tether-relay")
    }

    // MARK: Bridge

    var canOpenStream: Bool { registered && !draining && mux.canOpenStream }
    var activeStreams: Int { streams.count }

    func openStream(_ head: TunnelRequestHead, endStream: Bool, client: StreamClient) -> StreamID? {
        guard canOpenStream, let id = mux.openStream(head, endStream: endStream) else { return nil }
        streams[id] = client
        context.stats.streamsOpened.addFromOwner()
        flush()
        return id
    }

    func sendBody(_ stream: StreamID, _ bytes: UnsafeRawBufferPointer, endStream: Bool) -> Int {
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

    func close(reason: String) {
        fail(code: .goingAway, reason: reason)
    }

    // MARK: ConnectionHandler

    func connectionDidOpen(_ connection: Connection) {
        self.connection = connection
        connection.setDeadline(milliseconds: context.configuration.webSocketIdleTimeoutMilliseconds)
        context.stats.tunnelsOpened.addFromOwner()
        flush()  // our HELLO
        schedulePing()
    }

    func connection(_ connection: Connection, didRead bytes: UnsafeRawBufferPointer) {
        connection.setDeadline(milliseconds: context.configuration.webSocketIdleTimeoutMilliseconds)
        socket.receive(bytes)
        process()
    }

    func connectionWritable(_ connection: Connection) {
        connection.resumeReading()
        process()
    }

    func connectionDidReadEOF(_ connection: Connection) {
        connection.close(.graceful)
    }

    func connectionDeadlineExpired(_ connection: Connection) {
        context.stats.deadlineExpirations.addFromOwner()
        fail(code: .goingAway, reason: "idle timeout")
    }

    func connectionDidClose(_ connection: Connection, error: IOError?) {
        if let pingTimer { context.loop.cancel(pingTimer) }
        pingTimer = nil
        if registered {
            session.remove(self)
            context.sessions.removeIfEmpty(session)
            registered = false
        }
        let orphans = streams
        streams = [:]
        for (_, client) in orphans.sorted(by: { $0.key < $1.key }) {
            client.streamDidFail(.bridgeLost)
        }
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
                    context.logger.notice("tunnel protocol error", metadata: [
                        "session": "\(session.id)", "code": "\(error.closeCode)", "reason": "\(error.reason)"])
                    fail(code: WebSocketCloseCode(rawValue: error.closeCode), reason: error.reason)
                    return
                }
                dispatchMuxEvents()
            case .text:
                context.stats.tunnelProtocolErrors.addFromOwner()
                fail(code: .unsupportedData, reason: "tether.v1 carries binary messages only")
                return
            case .ping, .pong:
                break
            case .close:
                break
            case .protocolError:
                context.stats.webSocketProtocolErrors.addFromOwner()
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
                    registered = true
                    session.add(self)
                    if context.draining { goAway() }
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
        if socket.shouldCloseTransport {
            connection.close(.graceful)
        }
    }

    private func fail(code: WebSocketCloseCode, reason: String) {
        socket.close(code: code, reason: reason)
        flush()
        connection?.close(.graceful)
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
            fail(code: .goingAway, reason: "ping timeout")
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
