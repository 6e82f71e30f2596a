/// The state of an idle tunnel (no stream in flight) that outlives the process holding it: the
/// Docker isolation mode stops an idle session's container while the bridge stays connected to
/// the relay, which keeps serving the tunnel (pings, window updates) from this snapshot and
/// hands it to the next container. Everything else a tunnel holds (streams, buffers) is empty
/// when it is taken, so these few numbers are the whole protocol state (docs/PROTOCOL.md §3, §5).
public struct TunnelSnapshot: Sendable, Equatable {
    /// What we announced in our HELLO, and the peer's HELLO.
    public var localSettings: TunnelSettings
    public var peerSettings: TunnelSettings
    /// Credit we may still use, and credit the peer may still use.
    public var tunnelSendWindow: Int
    public var tunnelReceiveWindow: Int
    /// Credit owed to the peer but not yet sent (batched WINDOW_UPDATE).
    public var tunnelUnreturned: Int
    /// Stream ids only grow: the next OPEN must be above this one.
    public var highestStreamID: StreamID
    public var goAwaySent: StreamID?
    public var goAwayReceived: StreamID?

    public init(localSettings: TunnelSettings, peerSettings: TunnelSettings, tunnelSendWindow: Int,
                tunnelReceiveWindow: Int, tunnelUnreturned: Int, highestStreamID: StreamID,
                goAwaySent: StreamID? = nil, goAwayReceived: StreamID? = nil) {
        self.localSettings = localSettings
        self.peerSettings = peerSettings
        self.tunnelSendWindow = tunnelSendWindow
        self.tunnelReceiveWindow = tunnelReceiveWindow
        self.tunnelUnreturned = tunnelUnreturned
        self.highestStreamID = highestStreamID
        self.goAwaySent = goAwaySent
        self.goAwayReceived = goAwayReceived
    }

    static let formatVersion: UInt8 = 1
    /// Encoded size: version, 2 × 6 settings, 4 numbers, 2 optional ids.
    public static let encodedSize = 1 + 2 * 6 * 4 + 4 * 4 + 2 * 5

    public func encoded() -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(Self.encodedSize)
        out.append(Self.formatVersion)
        for settings in [localSettings, peerSettings] {
            for value in [settings.streamWindow, settings.tunnelWindow, settings.maxStreams, settings.maxMessageSize,
                          settings.maxHeadSize, settings.pingIntervalMilliseconds] {
                out.appendU32(UInt32(clamping: value))
            }
        }
        out.appendU32(UInt32(clamping: tunnelSendWindow))
        out.appendU32(UInt32(clamping: tunnelReceiveWindow))
        out.appendU32(UInt32(clamping: tunnelUnreturned))
        out.appendU32(highestStreamID)
        for id in [goAwaySent, goAwayReceived] {
            out.append(id == nil ? 0 : 1)
            out.appendU32(id ?? 0)
        }
        return out
    }

    /// Decodes and checks a snapshot. It may come from another process (a session's container,
    /// which is not trusted), so every number is checked against what a real tunnel can hold
    /// before a multiplexer is built from it.
    public static func decode(_ bytes: ArraySlice<UInt8>) throws(TunnelSnapshotError) -> TunnelSnapshot {
        var r = PayloadReader(bytes)
        guard let version = r.u8() else { throw .truncated }
        guard version == formatVersion else { throw .unsupportedVersion(version) }
        func settings(_ r: inout PayloadReader) throws(TunnelSnapshotError) -> TunnelSettings {
            var s = TunnelSettings()
            guard let a = r.u32(), let b = r.u32(), let c = r.u32(), let d = r.u32(), let e = r.u32(), let f = r.u32() else {
                throw .truncated
            }
            (s.streamWindow, s.tunnelWindow, s.maxStreams) = (Int(a), Int(b), Int(c))
            (s.maxMessageSize, s.maxHeadSize, s.pingIntervalMilliseconds) = (Int(d), Int(e), Int(f))
            guard s.streamWindow <= TunnelProtocol.maxWindow, s.tunnelWindow <= TunnelProtocol.maxWindow,
                  s.maxMessageSize >= TunnelProtocol.minMessageSize else { throw .invalid("settings out of range") }
            return s
        }
        let local = try settings(&r)
        let peer = try settings(&r)
        guard let send = r.u32(), let receive = r.u32(), let unreturned = r.u32(), let highest = r.u32() else {
            throw .truncated
        }
        var ids: [StreamID?] = []
        for _ in 0..<2 {
            guard let flag = r.u8(), let id = r.u32() else { throw .truncated }
            guard flag <= 1 else { throw .invalid("bad flag") }
            ids.append(flag == 1 ? id : nil)
        }
        guard r.remaining == 0 else { throw .invalid("\(r.remaining) trailing bytes") }
        let snapshot = TunnelSnapshot(localSettings: local, peerSettings: peer, tunnelSendWindow: Int(send),
                                      tunnelReceiveWindow: Int(receive), tunnelUnreturned: Int(unreturned),
                                      highestStreamID: highest, goAwaySent: ids[0], goAwayReceived: ids[1])
        if let problem = snapshot.inconsistency { throw .invalid(problem) }
        return snapshot
    }

    /// Why no real tunnel could be in this state, or nil.
    public var inconsistency: String? {
        guard (0...TunnelProtocol.maxWindow).contains(tunnelSendWindow) else { return "send window \(tunnelSendWindow)" }
        guard tunnelReceiveWindow >= 0, tunnelUnreturned >= 0 else { return "negative receive credit" }
        // With no stream in flight every byte of our tunnel credit is either grantable or owed.
        guard tunnelReceiveWindow + tunnelUnreturned == localSettings.tunnelWindow else {
            return "receive window \(tunnelReceiveWindow) + unreturned \(tunnelUnreturned) != \(localSettings.tunnelWindow)"
        }
        if let goAwaySent, goAwaySent > highestStreamID { return "GOAWAY above the highest stream" }
        return nil
    }
}

public enum TunnelSnapshotError: Error, Sendable, Equatable, CustomStringConvertible {
    case truncated
    case unsupportedVersion(UInt8)
    case invalid(String)

    public var description: String {
        switch self {
        case .truncated: return "tunnel snapshot truncated"
        case .unsupportedVersion(let v): return "tunnel snapshot version \(v) not supported"
        case .invalid(let why): return "tunnel snapshot invalid: \(why)"
        }
    }
}
