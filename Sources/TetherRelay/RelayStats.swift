import Synchronization
import TetherAuth
import TetherIO
import TetherMetrics

/// Relay-level counters. Each worker owns one instance and is its only writer, so increments
/// are uncontended; a scrape sums the workers' (RelayMetrics).
public final class RelayStats: Sendable {
    public let requests = Atomic<UInt64>(0)
    public let badRequests = Atomic<UInt64>(0)
    public let webSocketUpgrades = Atomic<UInt64>(0)
    public let webSocketProtocolErrors = Atomic<UInt64>(0)
    public let deadlineExpirations = Atomic<UInt64>(0)
    public let authFailures = Atomic<UInt64>(0)
    public let tunnelsOpened = Atomic<UInt64>(0)
    public let tunnelsClosed = Atomic<UInt64>(0)
    public let tunnelProtocolErrors = Atomic<UInt64>(0)
    public let tunnelPingTimeouts = Atomic<UInt64>(0)
    public let legacyBridgesOpened = Atomic<UInt64>(0)
    public let streamsOpened = Atomic<UInt64>(0)
    public let streamResetsReceived = Atomic<UInt64>(0)
    /// Proxied requests answered with an error before any response head (502/503/504).
    public let streamsFailed = Atomic<UInt64>(0)
    /// Proxied responses cut after their head (bridge lost, reset, idle).
    public let streamsAborted = Atomic<UInt64>(0)
    public let handOffs = Atomic<UInt64>(0)
    public let sessionsCreated = Atomic<UInt64>(0)
    public let sessionsRevived = Atomic<UInt64>(0)
    public let sessionsParked = Atomic<UInt64>(0)
    public let sessionsRemoved = Atomic<UInt64>(0)
    /// Refused for capacity (sessions, connections).
    public let capacityRejections = Atomic<UInt64>(0)
    /// By quota, indexed like `Quota.allCases`.
    public let quotaRejections: [Counter]

    /// Responses on the public listeners by status code, 100...599 (a bounded label set).
    public let responsesByStatus: [Counter]
    /// Proxied requests: from the decoded head to the end of the response (or its failure).
    public let requestDuration = Histogram()
    /// Proxied requests: from the decoded head to the response head written to the client.
    public let timeToFirstByte = Histogram()
    /// Body bytes through tunnels: request bodies towards bridges, response bodies from them.
    public let tunnelBytesUp = Atomic<UInt64>(0)
    public let tunnelBytesDown = Atomic<UInt64>(0)
    /// Bridges that completed their handshake, by `BridgeProtocol`.
    public let bridgeConnects: [Counter]
    /// Registered bridges that left, by `BridgeDisconnectReason`.
    public let bridgeDisconnects: [Counter]
    /// By `SessionRemovalReason`.
    public let sessionRemovals: [Counter]
    /// By `AuthFailure.allCases`.
    public let authFailuresByReason: [Counter]
    /// Requests refused because the relay is draining.
    public let drainRejections = Atomic<UInt64>(0)
    /// The admin listener: responses by status, and calls refused for a missing/wrong token.
    public let adminResponsesByStatus: [Counter]
    public let adminAuthFailures = Atomic<UInt64>(0)

    public init() {
        quotaRejections = Quota.allCases.map { _ in Counter() }
        responsesByStatus = (0..<RelayStats.statusCount).map { _ in Counter() }
        adminResponsesByStatus = (0..<RelayStats.statusCount).map { _ in Counter() }
        bridgeConnects = BridgeProtocol.allCases.map { _ in Counter() }
        bridgeDisconnects = BridgeDisconnectReason.allCases.map { _ in Counter() }
        sessionRemovals = SessionRemovalReason.allCases.map { _ in Counter() }
        authFailuresByReason = AuthFailure.allCases.map { _ in Counter() }
    }

    static let statusCount = 500

    /// Counts a response status (codes outside 100...599 cannot be written by the encoder).
    @inline(__always)
    func countResponse(_ status: Int, admin: Bool = false) {
        let index = status - 100
        guard index >= 0 && index < RelayStats.statusCount else { return }
        (admin ? adminResponsesByStatus : responsesByStatus)[index].addFromOwner()
    }

    func countAuthFailure(_ failure: AuthFailure) {
        authFailures.addFromOwner()
        if let index = AuthFailure.allCases.firstIndex(of: failure) {
            authFailuresByReason[index].addFromOwner()
        }
    }

    /// A counter that can live in an array (Atomic cannot be copied into one).
    public final class Counter: Sendable {
        public let value = Atomic<UInt64>(0)
        public func addFromOwner() { value.addFromOwner() }
        public var current: UInt64 { value.load(ordering: .relaxed) }
    }
}

/// The quotas a request or bridge can be refused for (metric and audit labels, JSON codes).
enum Quota: Int, CaseIterable {
    case bridges, streams, rate, bodySize, headerSize, capacity, handshakes, authFailures

    var label: String {
        switch self {
        case .bridges: return "bridges"
        case .streams: return "streams"
        case .rate: return "rate"
        case .bodySize: return "body_size"
        case .headerSize: return "header_size"
        case .capacity: return "capacity"
        case .handshakes: return "handshakes"
        case .authFailures: return "auth_failures"
        }
    }
}

/// The bridge protocols (the `protocol` label of the bridge metrics).
enum BridgeProtocol: Int, CaseIterable {
    case tunnel, legacy

    var label: String {
        switch self {
        case .tunnel: return "tether.v1"
        case .legacy: return "legacy-json"
        }
    }
}

/// Why a registered bridge left (the `reason` label; the audit line has the detail).
enum BridgeDisconnectReason: Int, CaseIterable {
    /// The bridge closed the WebSocket or the TCP connection.
    case closedByBridge
    /// The connection failed (reset, I/O error).
    case connectionError
    case pingTimeout
    case idleTimeout
    /// The bridge broke tether.v1 / the legacy protocol or WebSocket framing.
    case protocolError
    /// The relay is shutting down (drain deadline, stop).
    case shutdown
    /// An operator removed its session (DELETE /admin/sessions/<id>).
    case kicked

    var label: String {
        switch self {
        case .closedByBridge: return "closed_by_bridge"
        case .connectionError: return "connection_error"
        case .pingTimeout: return "ping_timeout"
        case .idleTimeout: return "idle_timeout"
        case .protocolError: return "protocol_error"
        case .shutdown: return "shutdown"
        case .kicked: return "kicked"
        }
    }
}

/// Why a session was removed (the `reason` label).
enum SessionRemovalReason: Int, CaseIterable {
    case idle, stopped, kicked

    var label: String {
        switch self {
        case .idle: return "idle"
        case .stopped: return "stopped"
        case .kicked: return "kicked"
        }
    }
}

/// Docker isolation: the counters only a session worker can see (it enforces the session's
/// quotas and speaks tether.v1 with bridges it holds). The worker reports their totals on its
/// control link in this order; the relay adds each increase to its own, so /metrics counts a
/// refusal the same in either isolation mode. Counters both sides see (requests, responses,
/// streams) are counted by the relay alone.
extension RelayStats {
    var workerTotals: [UInt64] {
        var out = quotaRejections.map(\.current)
        out.append(webSocketProtocolErrors.load(ordering: .relaxed))
        out.append(tunnelProtocolErrors.load(ordering: .relaxed))
        out.append(tunnelPingTimeouts.load(ordering: .relaxed))
        out.append(streamResetsReceived.load(ordering: .relaxed))
        return out
    }

    /// What bounds a worker's claim on a counter: a refusal or a stream reset needs a request
    /// the relay sent it; a protocol error or ping timeout ends a bridge the relay handed it.
    enum WorkerClaim { case request, reset, bridge }

    func workerClaim(at index: Int) -> WorkerClaim? {
        switch index - quotaRejections.count {
        case ..<0: return .request
        case 0, 1, 2: return .bridge
        case 3: return .reset
        default: return nil
        }
    }

    func addWorkerIncrease(at index: Int, _ n: UInt64) {
        let quotas = quotaRejections.count
        switch index - quotas {
        case ..<0: quotaRejections[index].value.addFromOwner(n)
        case 0: webSocketProtocolErrors.addFromOwner(n)
        case 1: tunnelProtocolErrors.addFromOwner(n)
        case 2: tunnelPingTimeouts.addFromOwner(n)
        case 3: streamResetsReceived.addFromOwner(n)
        default: break
        }
    }
}
