#if os(Linux)
import TetherHTTP
import FoundationEssentials
import TetherIsolation
import TetherTunnel
import TetherWebSocket

/// What the relay itself does for a Docker-isolated session's bridge while no container holds
/// it: the WebSocket and the tether.v1 (or legacy JSON) protocol of an idle tunnel. A new
/// bridge gets our HELLO (or the legacy greeting) here; a parked one continues from the state
/// its container handed back. Pings are answered and window updates taken, so the bridge
/// cannot tell; the state goes to the next container with `handOver`.
///
/// Only complete messages reach the WebSocket codec (`WebSocketFrameScanner`); bytes after
/// the last message boundary stay raw, so the next owner can start a fresh codec on them.
final class ParkedBridgeState {
    enum Kind {
        case tunnel(TunnelMultiplexer)
        case legacy(bridgeID: String)
    }

    enum Event: Equatable {
        /// The bridge's HELLO (tether.v1): it may now be registered and handed over.
        case hello
        /// A sign of life (PING answer, legacy pong).
        case pong
        /// The bridge sent GOAWAY: it is leaving.
        case goAway
        /// Close the bridge with this code and reason.
        case fail(code: UInt16, reason: String, kind: BridgeDisconnectReason)
        /// The bridge closed the WebSocket.
        case peerClosed
    }

    private(set) var kind: Kind
    private var socket: WebSocketConnection
    private var scanner: WebSocketFrameScanner
    private var raw: [UInt8]
    /// tether.v1: the bridge's HELLO arrived (a restored tunnel had it long ago).
    private(set) var greeted: Bool
    /// The last failure broke WebSocket framing (1002/1009), not tether.v1 or the legacy
    /// protocol: counted as tether_websocket_protocol_errors_total, as in process.
    private(set) var failedInWebSocket = false

    /// A new tether.v1 bridge: our HELLO is queued.
    init(tunnel settings: TunnelSettings, maxMessage: Int) {
        kind = .tunnel(TunnelMultiplexer(role: .relay, settings: settings, agent: "tether-relay"))
        socket = WebSocketConnection(role: .server, maxMessageSize: maxMessage)
        scanner = WebSocketFrameScanner(maxMessageSize: maxMessage)
        raw = []
        greeted = false
    }

    /// A new legacy bridge: the greeting is queued.
    init(legacyBridgeID: String, maxMessage: Int) {
        kind = .legacy(bridgeID: legacyBridgeID)
        socket = WebSocketConnection(role: .server, maxMessageSize: maxMessage)
        scanner = WebSocketFrameScanner(maxMessageSize: maxMessage)
        raw = []
        greeted = true
        socket.send(text: LegacyBridgeConnection.greeting(bridgeID: legacyBridgeID))
    }

    /// A bridge its container handed back.
    init(restoring state: BridgeState, maxMessage: Int) {
        switch state {
        case .tunnel(let snapshot): kind = .tunnel(TunnelMultiplexer(role: .relay, restoring: snapshot))
        case .legacy(let id): kind = .legacy(bridgeID: id)
        }
        socket = WebSocketConnection(role: .server, maxMessageSize: maxMessage)
        scanner = WebSocketFrameScanner(maxMessageSize: maxMessage)
        raw = []
        greeted = true
    }

    var isLegacy: Bool {
        if case .legacy = kind { return true }
        return false
    }

    // MARK: input

    func receive(_ bytes: UnsafeRawBufferPointer) -> [Event] {
        let last: Int?
        do {
            last = try scanner.scan(bytes).lastBoundary
        } catch {
            failedInWebSocket = true
            return [.fail(code: 1009, reason: "message too big", kind: .protocolError)]
        }
        guard let last else {
            raw.append(contentsOf: bytes)
            return []
        }
        if raw.isEmpty {
            socket.receive(UnsafeRawBufferPointer(rebasing: bytes[0..<last]))
        } else {
            raw.append(contentsOf: UnsafeRawBufferPointer(rebasing: bytes[0..<last]))
            socket.receive(raw)
        }
        raw = Array(UnsafeRawBufferPointer(rebasing: bytes[last...]))
        return drain()
    }

    private func drain() -> [Event] {
        var events: [Event] = []
        while let event = socket.nextEvent() {
            switch event {
            case .binary(let message):
                switch kind {
                case .tunnel(var mux):
                    do {
                        try mux.receive(message: message)
                    } catch {
                        kind = .tunnel(mux)
                        events.append(.fail(code: error.closeCode, reason: error.reason, kind: .protocolError))
                        return events
                    }
                    while let e = mux.nextEvent() {
                        switch e {
                        case .hello:
                            greeted = true
                            events.append(.hello)
                        case .pong: events.append(.pong)
                        case .goAway: events.append(.goAway)
                        // No stream is open while parked: anything else is a late frame of a
                        // finished stream (the multiplexer credits it) or an answered ping.
                        case .ping, .streamOpened, .response, .data, .streamReset, .windowAvailable: break
                        }
                    }
                    kind = .tunnel(mux)
                case .legacy:
                    events += legacyMessage(String(decoding: message, as: UTF8.self))
                }
            case .text(let text):
                if case .tunnel = kind {
                    events.append(.fail(code: 1003, reason: "tether.v1 carries binary messages only", kind: .protocolError))
                    return events
                }
                events += legacyMessage(text)
            case .ping, .pong:
                events.append(.pong)
            case .close:
                events.append(.peerClosed)
            case .protocolError:
                failedInWebSocket = true
                events.append(.fail(code: 1002, reason: "WebSocket protocol error", kind: .protocolError))
                return events
            }
        }
        return events
    }

    private struct LegacyMessage: Decodable {
        var type: String
        var id: String?
    }

    private func legacyMessage(_ text: String) -> [Event] {
        guard let message = try? JSONDecoder().decode(LegacyMessage.self, from: Data(text.utf8)) else {
            return [.fail(code: 1003, reason: "expected a JSON message with a type", kind: .protocolError)]
        }
        switch message.type {
        case "ping":
            let id = message.id ?? LegacyBridgeConnection.uuid()
            socket.send(text: "{\"type\":\"pong\",\"id\":\(JSONString.quote(id)),\"timestamp\":\(JSONString.quote(LegacyBridgeConnection.timestamp()))}")
            return [.pong]
        default:
            // Answers to requests of a container that is gone, pongs: nothing to do.
            return [.pong]
        }
    }

    // MARK: output

    /// Bytes for the bridge, if any.
    func takeOutbound() -> [UInt8]? {
        if case .tunnel(var mux) = kind {
            while let message = mux.takeOutboundMessage() { socket.send(binary: message) }
            kind = .tunnel(mux)
        }
        return socket.hasOutbound ? socket.takeOutbound() : nil
    }

    var shouldCloseTransport: Bool { socket.shouldCloseTransport }

    func ping(_ value: UInt64) {
        switch kind {
        case .tunnel(var mux):
            mux.ping(value)
            kind = .tunnel(mux)
        case .legacy:
            socket.send(text: "{\"type\":\"ping\",\"id\":\(JSONString.quote(LegacyBridgeConnection.uuid())),\"timestamp\":\(JSONString.quote(LegacyBridgeConnection.timestamp()))}")
        }
    }

    func goAway() {
        if case .tunnel(var mux) = kind {
            mux.goAway(code: .noError, reason: "relay draining")
            kind = .tunnel(mux)
        }
    }

    func close(code: UInt16, reason: String) {
        socket.close(code: WebSocketCloseCode(rawValue: code), reason: reason)
    }

    // MARK: hand-over

    /// The state for the next container and the raw bytes after the last complete message,
    /// or nil while it cannot move (no HELLO yet, output not taken). Call `takeOutbound` first.
    func handOver() -> (BridgeState, [UInt8])? {
        guard greeted, socket.isAtMessageBoundary, !socket.hasOutbound, socket.pendingEventCount == 0 else { return nil }
        switch kind {
        case .tunnel(let mux):
            guard let snapshot = mux.snapshot() else { return nil }
            return (.tunnel(snapshot), raw)
        case .legacy(let id):
            return (.legacy(bridgeID: id), raw)
        }
    }
}
#endif
