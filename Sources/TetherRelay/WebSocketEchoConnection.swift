#if os(Linux)
import TetherIO
import TetherWebSocket

/// `/ws/echo`: every message comes back with its type. Used by tests and benchmarks; also the
/// template of how a WebSocket endpoint sits on the core (bytes in, codec events, bytes out).
final class WebSocketEchoConnection: ConnectionHandler {
    private let context: RelayContext
    private var socket: WebSocketConnection

    init(context: RelayContext) {
        self.context = context
        self.socket = WebSocketConnection(role: .server, maxMessageSize: context.configuration.webSocketMaxMessage)
    }

    func connectionDidOpen(_ connection: Connection) {
        connection.setDeadline(milliseconds: context.configuration.webSocketIdleTimeoutMilliseconds)
    }

    func connection(_ connection: Connection, didRead bytes: UnsafeRawBufferPointer) {
        connection.setDeadline(milliseconds: context.configuration.webSocketIdleTimeoutMilliseconds)
        socket.receive(bytes)
        process(connection)
    }

    func connectionWritable(_ connection: Connection) {
        connection.resumeReading()
        process(connection)
    }

    func connectionDidReadEOF(_ connection: Connection) {
        connection.close(.graceful)
    }

    func connectionDeadlineExpired(_ connection: Connection) {
        context.stats.deadlineExpirations.addFromOwner()
        socket.close(code: .goingAway, reason: "idle timeout")
        flush(connection)
        connection.close(.graceful)
    }

    private func process(_ connection: Connection) {
        while connection.isOpen {
            if !connection.isWritable {
                flush(connection)
                connection.pauseReading()
                return
            }
            guard let event = socket.nextEvent() else { break }
            switch event {
            case .text(let text):
                socket.send(text: text)
            case .binary(let bytes):
                socket.send(binary: bytes)
            case .ping, .pong, .close:
                break
            case .protocolError:
                context.stats.webSocketProtocolErrors.addFromOwner()
            }
            flush(connection)
        }
        flush(connection)
    }

    private func flush(_ connection: Connection) {
        if socket.hasOutbound {
            connection.write(socket.takeOutbound())
        }
        if socket.shouldCloseTransport && socket.pendingEventCount == 0 {
            connection.close(.graceful)
        }
    }
}
#endif
