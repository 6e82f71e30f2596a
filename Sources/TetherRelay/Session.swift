#if os(Linux)
import TetherAuth
import TetherHTTP
import TetherTunnel

/// How a stream ended badly, as the web client's side sees it.
enum StreamFailure: Equatable {
    /// The bridge's connection went away (closed, killed, ping timeout).
    case bridgeLost
    /// The bridge reset the stream.
    case reset(TunnelErrorCode, reason: String)

    /// Status, JSON code and message for a client that has not had a response head yet.
    var response: (status: Int, code: String, message: String) {
        switch self {
        case .bridgeLost:
            return (502, "BRIDGE_DISCONNECTED", "the bridge disconnected before the response started")
        case .reset(let code, let reason):
            let detail = reason.isEmpty ? code.name : "\(code.name): \(reason)"
            switch code {
            case .localServiceError, .destinationRefused:
                return (502, "LOCAL_SERVICE_ERROR", "the bridge could not reach the local service (\(detail))")
            case .localTimeout:
                return (504, "LOCAL_TIMEOUT", "the local service did not answer in time (\(detail))")
            case .refusedStream:
                return (503, "TUNNEL_NOT_AVAILABLE", "the bridge refused the stream (\(detail))")
            case .protocolError, .flowControlError, .streamClosed, .headTooLarge:
                return (502, "BRIDGE_PROTOCOL_ERROR", "the bridge broke the tunnel protocol (\(detail))")
            default:
                return (502, "BRIDGE_DISCONNECTED", "the bridge abandoned the stream (\(detail))")
            }
        }
    }
}

/// The web client's end of a stream (an HTTP connection on the same loop). A bridge calls it
/// as the response arrives; it never outlives the bridge's bookkeeping of the stream.
protocol StreamClient: AnyObject {
    func streamDidReceiveResponse(_ head: TunnelResponseHead, endStream: Bool)
    func streamDidReceiveData(_ bytes: ArraySlice<UInt8>, endStream: Bool)
    func streamDidFail(_ failure: StreamFailure)
    /// Send window reopened: request body bytes may flow again.
    func streamWindowAvailable()
}

/// One connected bridge of a session, whatever its protocol (tether.v1 or legacy JSON).
protocol Bridge: AnyObject {
    /// Ready (greeted), not draining, and below its stream limit.
    var canOpenStream: Bool { get }
    var activeStreams: Int { get }
    func openStream(_ head: TunnelRequestHead, endStream: Bool, client: StreamClient) -> StreamID?
    /// Request body bytes; returns how many were taken (flow control).
    func sendBody(_ stream: StreamID, _ bytes: UnsafeRawBufferPointer, endStream: Bool) -> Int
    /// The client passed `bytes` of response body on to its socket.
    func consumed(_ stream: StreamID, bytes: Int)
    /// The client went away or gave up: reset the stream, forget the client.
    func cancel(_ stream: StreamID, code: TunnelErrorCode)
    /// The relay is draining: no new streams here; in-flight ones finish.
    func goAway()
    /// Close now (drain deadline passed or streams done).
    func close(reason: String)
}

/// One user's space on this worker: their bridges, named by the SHA-256 session id.
final class Session {
    let id: SessionID
    private(set) var bridges: [Bridge] = []
    private var nextBridge = 0
    /// Streams currently routed through this session (for status and, later, quotas).
    var activeStreams: Int { bridges.reduce(0) { $0 + $1.activeStreams } }

    init(id: SessionID) { self.id = id }

    func add(_ bridge: Bridge) {
        bridges.append(bridge)
    }

    func remove(_ bridge: Bridge) {
        bridges.removeAll { $0 === bridge }
    }

    /// Round robin over bridges that can take a stream; `excluding` skips one that just refused.
    func pickBridge(excluding: Bridge? = nil) -> Bridge? {
        let n = bridges.count
        guard n > 0 else { return nil }
        for step in 0..<n {
            let candidate = bridges[(nextBridge + step) % n]
            if candidate.canOpenStream && candidate !== excluding {
                nextBridge = (nextBridge + step + 1) % n
                return candidate
            }
        }
        return nil
    }

    var isConnected: Bool { !bridges.isEmpty }
}

/// This worker's sessions. A session exists while it has a bridge; requests to a session
/// without one get TUNNEL_NOT_AVAILABLE without creating state.
final class SessionTable {
    private(set) var sessions: [SessionID: Session] = [:]

    func existing(_ id: SessionID) -> Session? { sessions[id] }

    func session(for id: SessionID) -> Session {
        if let s = sessions[id] { return s }
        let s = Session(id: id)
        sessions[id] = s
        return s
    }

    func removeIfEmpty(_ session: Session) {
        if session.bridges.isEmpty { sessions[session.id] = nil }
    }

    var count: Int { sessions.count }
}
#endif
