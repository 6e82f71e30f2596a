#if os(Linux)
import TetherAuth
import TetherHTTP
import TetherIO
import TetherQuota
import TetherTunnel

/// How a stream ended badly, as the web client's side sees it.
enum StreamFailure: Equatable {
    /// The bridge's connection went away (closed, killed, ping timeout).
    case bridgeLost
    /// The bridge reset the stream.
    case reset(TunnelErrorCode, reason: String)
    /// Docker isolation: the session's container is not there (engine down, start failed,
    /// container died); the message says which.
    case isolation(String)

    /// Status, JSON code and message for a client that has not had a response head yet.
    var response: (status: Int, code: String, message: String) {
        switch self {
        case .bridgeLost:
            return (502, "BRIDGE_DISCONNECTED", "the bridge disconnected before the response started")
        case .isolation(let message):
            return (503, "ISOLATION_UNAVAILABLE", message)
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
    /// Close now (drain deadline passed, streams done, or an operator kicked the session).
    func close(code: UInt16, reason: String, kind: BridgeDisconnectReason)
    var protocolKind: BridgeProtocol { get }
    var remoteAddress: SocketAddress? { get }
}

/// One user's space on this worker: their bridges, quotas and activity, named by the SHA-256
/// session id. Lives on its home worker's loop; nothing here is locked.
final class Session {
    enum State {
        /// Carrying traffic, or recently: quota state is held, the idle timer runs.
        case active
        /// Idle past the timeout with bridges still connected: quota state released, the
        /// bridges kept as cheap parked connections; the next request revives it.
        case parked
    }

    let id: SessionID
    /// The caller's own user id, only ever shown back to that caller (seed API).
    let subject: String
    private(set) var tierName: String
    private(set) var tierClaim: String?
    private(set) var profile: QuotaProfile
    /// Unix seconds.
    let createdAt: Double
    var state = State.active
    /// Monotonic milliseconds of the last stream traffic (heartbeats do not count).
    var lastActivity: UInt64
    var idleTimer: TimerID?
    private(set) var bridges: [Bridge] = []
    private var nextBridge = 0
    /// Held while active, dropped when parked.
    var requestBucket: TokenBucket?
    var upstreamBucket: TokenBucket?
    var downstreamBucket: TokenBucket?
    /// Bandwidth waiters: exchanges whose bytes wait for tokens; woken by one shaping timer.
    var shapingWaiters: [ObjectIdentifier: () -> Void] = [:]
    var shapingTimer: TimerID?
    // Totals for status and the admin API.
    var requestCount: UInt64 = 0
    var bytesUp: UInt64 = 0
    var bytesDown: UInt64 = 0
    /// Docker isolation: the session's container and what waits for it (nil in process mode).
    var isolation: SessionIsolation?

    init(id: SessionID, subject: String, tier: String?, tiers: TierTable, createdAt: Double, now: UInt64) {
        self.id = id
        self.subject = subject
        self.tierClaim = tier
        (self.tierName, self.profile) = tiers.profile(for: tier)
        self.createdAt = createdAt
        self.lastActivity = now
    }

    /// A token with another tier claim (an upgrade, say) switches the profile; buckets follow.
    func updateTier(_ tier: String?, tiers: TierTable, now: UInt64) {
        guard tier != tierClaim else { return }
        tierClaim = tier
        (tierName, profile) = tiers.profile(for: tier)
        if state == .active { makeBuckets(now: now) }
    }

    /// A reload changed the profiles: the session follows its tier's new profile. Streams in
    /// flight keep their windows; new requests and bridges get the new limits.
    func applyTiers(_ tiers: TierTable, now: UInt64) {
        let (name, newProfile) = tiers.profile(for: tierClaim)
        guard name != tierName || newProfile != profile else { return }
        (tierName, profile) = (name, newProfile)
        if state == .active { makeBuckets(now: now) }
    }

    func makeBuckets(now: UInt64) {
        // A Docker-isolated session's quotas are enforced by its worker, in its container.
        guard isolation == nil else { return }
        requestBucket = TokenBucket(ratePerSecond: profile.requestsPerSecond, burst: Double(profile.requestBurst), now: now)
        let rate = Double(profile.bandwidthBytesPerSecond)
        let burst = Double(profile.effectiveBandwidthBurst)
        upstreamBucket = TokenBucket(ratePerSecond: rate, burst: burst, now: now)
        downstreamBucket = TokenBucket(ratePerSecond: rate, burst: burst, now: now)
    }

    func releaseBuckets() {
        requestBucket = nil
        upstreamBucket = nil
        downstreamBucket = nil
    }

    /// Streams currently routed through this session's bridges.
    var activeStreams: Int { bridges.reduce(isolation?.exchanges ?? 0) { $0 + $1.activeStreams } }

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

    /// Bytes of request body the session may forward now (bandwidth quota), at most `wanted`.
    func upstreamAllowance(_ wanted: Int, now: UInt64) -> Int {
        guard let bucket = upstreamBucket, !bucket.isUnlimited else { return wanted }
        return min(wanted, Int(bucket.available(now: now)))
    }

    func downstreamAllowance(_ wanted: Int, now: UInt64) -> Int {
        guard let bucket = downstreamBucket, !bucket.isUnlimited else { return wanted }
        return min(wanted, Int(bucket.available(now: now)))
    }

    func chargeUpstream(_ bytes: Int, now: UInt64) {
        bytesUp &+= UInt64(bytes)
        lastActivity = now
        _ = upstreamBucket?.takeUpTo(bytes, now: now)
    }

    /// Bytes down are counted as they arrive (streamDidReceiveData); this only takes tokens.
    func chargeDownstream(_ bytes: Int, now: UInt64) {
        lastActivity = now
        _ = downstreamBucket?.takeUpTo(bytes, now: now)
    }
}

/// This worker's sessions. Created by a bridge or by `POST /api/proxy/start`; a request to a
/// session that does not exist gets TUNNEL_NOT_AVAILABLE without creating state.
final class SessionTable {
    private(set) var sessions: [SessionID: Session] = [:]

    func existing(_ id: SessionID) -> Session? { sessions[id] }

    func insert(_ session: Session) {
        sessions[session.id] = session
    }

    func remove(_ session: Session) {
        if sessions[session.id] === session { sessions[session.id] = nil }
    }

    var count: Int { sessions.count }
}
#endif
