import TetherHTTP
import TetherQuota
import TetherTunnel

/// The limits and timeouts a session worker applies: the relay's own, sent on the control link
/// at start and again after a reload (the worker has no configuration of its own).
public struct WorkerSettings: Sendable, Equatable {
    public var httpLimits = HTTPLimits()
    public var webSocketMaxMessage = 16 * 1024 * 1024
    public var headerTimeoutMilliseconds: UInt64 = 30_000
    public var idleTimeoutMilliseconds: UInt64 = 120_000
    public var webSocketIdleTimeoutMilliseconds: UInt64 = 600_000
    public var streamIdleTimeoutMilliseconds: UInt64 = 300_000
    public var tunnelPingIntervalMilliseconds: UInt64 = 30_000
    public var legacyPingIntervalMilliseconds: UInt64 = 30_000
    public var bridgeHandshakeTimeoutMilliseconds: UInt64 = 10_000
    public var tunnel = TunnelSettings()

    public init() {}

    static let day: ClosedRange<Int> = 0...86_400_000

    func encode(into w: inout WireWriter) {
        for v in [httpLimits.maxRequestLineLength, httpLimits.maxHeaderBytes, httpLimits.maxHeaderCount,
                  httpLimits.maxBodySize, httpLimits.maxChunkLineLength, webSocketMaxMessage] {
            w.count(v)
        }
        for v in [headerTimeoutMilliseconds, idleTimeoutMilliseconds, webSocketIdleTimeoutMilliseconds,
                  streamIdleTimeoutMilliseconds, tunnelPingIntervalMilliseconds, legacyPingIntervalMilliseconds,
                  bridgeHandshakeTimeoutMilliseconds] {
            w.u64(v)
        }
        for v in [tunnel.streamWindow, tunnel.tunnelWindow, tunnel.maxStreams, tunnel.maxMessageSize, tunnel.maxHeadSize,
                  tunnel.pingIntervalMilliseconds] {
            w.count(v)
        }
    }

    static func decode(_ r: inout WireReader) throws(WireError) -> WorkerSettings {
        var s = WorkerSettings()
        let int32 = 0...Int(Int32.max)
        s.httpLimits.maxRequestLineLength = try r.count(int32)
        s.httpLimits.maxHeaderBytes = try r.count(int32)
        s.httpLimits.maxHeaderCount = try r.count(int32)
        s.httpLimits.maxBodySize = try r.count()
        s.httpLimits.maxChunkLineLength = try r.count(int32)
        s.webSocketMaxMessage = try r.count(1...Int(Int32.max))
        s.headerTimeoutMilliseconds = UInt64(try r.count(day))
        s.idleTimeoutMilliseconds = UInt64(try r.count(day))
        s.webSocketIdleTimeoutMilliseconds = UInt64(try r.count(day))
        s.streamIdleTimeoutMilliseconds = UInt64(try r.count(day))
        s.tunnelPingIntervalMilliseconds = UInt64(try r.count(day))
        s.legacyPingIntervalMilliseconds = UInt64(try r.count(day))
        s.bridgeHandshakeTimeoutMilliseconds = UInt64(try r.count(day))
        s.tunnel.streamWindow = try r.count(0...TunnelProtocol.maxWindow)
        s.tunnel.tunnelWindow = try r.count(0...TunnelProtocol.maxWindow)
        s.tunnel.maxStreams = try r.count(0...Int(UInt32.max))
        s.tunnel.maxMessageSize = try r.count(TunnelProtocol.minMessageSize...Int(UInt32.max))
        s.tunnel.maxHeadSize = try r.count(0...Int(UInt32.max))
        s.tunnel.pingIntervalMilliseconds = try r.count(0...Int(UInt32.max))
        return s
    }
}

/// The tier of the caller (its name is for logs) and the quota profile the worker enforces.
public struct WorkerTier: Sendable, Equatable {
    public var name: String
    public var profile: QuotaProfile

    public init(name: String, profile: QuotaProfile) {
        self.name = name
        self.profile = profile
    }

    func encode(into w: inout WireWriter) {
        w.string(name)
        let p = profile
        w.count(p.maxBridges)
        w.count(p.maxStreams)
        w.double(p.requestsPerSecond)
        w.count(p.requestBurst)
        w.count(p.bandwidthBytesPerSecond)
        w.count(p.bandwidthBurstBytes)
        w.count(p.maxBodyBytes)
        w.count(p.maxHeaderBytes)
        w.count(p.memoryBytes)
    }

    static func decode(_ r: inout WireReader) throws(WireError) -> WorkerTier {
        let name = try r.string(maxBytes: TierTable.maxTierNameBytes + 16)
        var p = QuotaProfile()
        p.maxBridges = try r.count(1...1000)
        p.maxStreams = try r.count(1...65_535)
        p.requestsPerSecond = try r.double()
        guard p.requestsPerSecond >= 0 else { throw .invalid("negative rate") }
        p.requestBurst = try r.count(1...Int(Int32.max))
        p.bandwidthBytesPerSecond = try r.count()
        p.bandwidthBurstBytes = try r.count()
        p.maxBodyBytes = try r.count()
        p.maxHeaderBytes = try r.count(1...Int(Int32.max))
        p.memoryBytes = try r.count()
        return WorkerTier(name: name, profile: p)
    }
}

/// Who is on the other end of a connection the relay attaches (the worker only sees the
/// relay's unix socket): for X-Forwarded-For / -Proto and the audit trail.
public struct WorkerPeer: Sendable, Equatable {
    public var host: String
    public var port: UInt16
    public var tls: Bool

    public init(host: String, port: UInt16, tls: Bool) {
        self.host = host
        self.port = port
        self.tls = tls
    }

    func encode(into w: inout WireWriter) {
        w.string(host)
        w.u16(port)
        w.bool(tls)
    }

    static func decode(_ r: inout WireReader) throws(WireError) -> WorkerPeer {
        WorkerPeer(host: try r.string(maxBytes: 64), port: try r.u16(), tls: try r.bool())
    }
}

/// What a parked bridge carries into a worker (and back out of it when the worker is stopped).
public enum BridgeState: Sendable, Equatable {
    /// tether.v1: the multiplexer's state (no stream in flight).
    case tunnel(TunnelSnapshot)
    /// The legacy JSON protocol keeps nothing but the id it announced.
    case legacy(bridgeID: String)

    func encode(into w: inout WireWriter) {
        switch self {
        case .tunnel(let snapshot):
            w.u8(1)
            w.blob(snapshot.encoded())
        case .legacy(let id):
            w.u8(2)
            w.string(id)
        }
    }

    static func decode(_ r: inout WireReader) throws(WireError) -> BridgeState {
        switch try r.u8() {
        case 1:
            let raw = try r.blob(maxBytes: 1024)
            do {
                return .tunnel(try TunnelSnapshot.decode(raw))
            } catch {
                throw .invalid("\(error)")
            }
        case 2:
            return .legacy(bridgeID: try r.string(maxBytes: 128))
        case let other:
            throw .invalid("bridge state kind \(other)")
        }
    }
}

/// The first bytes the relay sends on every unix connection to a session worker: what the
/// connection is and who it is for. Authentication happened in the relay; the worker trusts
/// this (it is only reachable through the session's own socket directory).
public enum WorkerPreamble: Sendable, Equatable {
    /// The relay's control link: one per container, opened first (its loss ends the worker).
    case control(session: String, settings: WorkerSettings)
    /// One client request (and its response), then the connection closes.
    case client(session: String, tier: WorkerTier, peer: WorkerPeer)
    /// A bridge's WebSocket (after the upgrade and HELLO, which the relay handled), resumed
    /// from its parked state; the raw WebSocket bytes follow.
    case bridge(session: String, attachID: UInt64, tier: WorkerTier, peer: WorkerPeer, state: BridgeState)

    static let magic: [UInt8] = Array("TTW".utf8)
    public static let version: UInt8 = 1
    /// Magic, version and the u32 length of the rest.
    public static let headerSize = 8
    public static let maxSize = 16 * 1024

    public var session: String {
        switch self {
        case .control(let s, _), .client(let s, _, _), .bridge(let s, _, _, _, _): return s
        }
    }

    public func encoded() -> [UInt8] {
        var body = WireWriter()
        switch self {
        case .control(let session, let settings):
            body.u8(1)
            body.string(session)
            settings.encode(into: &body)
        case .client(let session, let tier, let peer):
            body.u8(2)
            body.string(session)
            tier.encode(into: &body)
            peer.encode(into: &body)
        case .bridge(let session, let attachID, let tier, let peer, let state):
            body.u8(3)
            body.string(session)
            body.u64(attachID)
            tier.encode(into: &body)
            peer.encode(into: &body)
            state.encode(into: &body)
        }
        var out = WireWriter()
        out.bytes = WorkerPreamble.magic
        out.u8(WorkerPreamble.version)
        out.u32(UInt32(body.bytes.count))
        out.bytes += body.bytes
        return out.bytes
    }

    /// Parses a preamble at the start of `bytes`: nil while incomplete, else the preamble and
    /// how many bytes it took (what follows belongs to the connection's protocol).
    public static func parse(_ bytes: ArraySlice<UInt8>) throws(WireError) -> (WorkerPreamble, consumed: Int)? {
        // Reject a wrong magic from its first bytes, before waiting for a length.
        for (i, b) in bytes.prefix(magic.count).enumerated() where b != magic[i] { throw .badMagic }
        guard bytes.count >= headerSize else { return nil }
        var r = WireReader(bytes)
        _ = try r.take(magic.count)
        let version = try r.u8()
        guard version == WorkerPreamble.version else { throw .unsupportedVersion(version) }
        let length = Int(try r.u32())
        guard length <= maxSize else { throw .tooLarge(length) }
        guard r.remaining >= length else { return nil }
        var body = WireReader(try r.take(length))
        let preamble: WorkerPreamble
        let kind = try body.u8()
        let session = try body.string(maxBytes: 64)
        guard session.utf8.count == 64, session.utf8.allSatisfy({ (48...57).contains($0) || (97...102).contains($0) }) else {
            throw .invalid("session id is not 64 lowercase hex digits")
        }
        switch kind {
        case 1:
            preamble = .control(session: session, settings: try WorkerSettings.decode(&body))
        case 2:
            preamble = .client(session: session, tier: try WorkerTier.decode(&body), peer: try WorkerPeer.decode(&body))
        case 3:
            let attachID = try body.u64()
            preamble = .bridge(session: session, attachID: attachID, tier: try WorkerTier.decode(&body),
                               peer: try WorkerPeer.decode(&body), state: try BridgeState.decode(&body))
        default:
            throw .invalid("preamble kind \(kind)")
        }
        try body.expectEnd()
        return (preamble, headerSize + length)
    }
}
