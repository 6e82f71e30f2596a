@_spi(Testing) @testable import TetherTunnel
import TetherHTTP
import Testing

/// Deterministic RNG so randomized tests are reproducible (SplitMix64, Steele et al.).
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    mutating func bytes(_ n: Int) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(n)
        while out.count < n {
            var r = next()
            for _ in 0 ..< min(8, n - out.count) {
                out.append(UInt8(truncatingIfNeeded: r))
                r >>= 8
            }
        }
        return out
    }
}

func randomBytes(_ n: Int, seed: UInt64) -> [UInt8] {
    var rng = SplitMix64(seed: seed)
    return rng.bytes(n)
}

/// One decoded frame, payload copied, for comparisons.
struct Frame: Equatable, CustomStringConvertible {
    var type: TunnelFrameType?
    var flags: TunnelFlags = []
    var stream: StreamID = 0
    var payload: [UInt8] = []

    var description: String { "\(type.map { "\($0)" } ?? "unknown") flags=\(flags.rawValue) stream=\(stream) \(payload.count)B" }
}

func decodeFrames(_ messages: [[UInt8]]) -> [Frame] {
    var out: [Frame] = []
    for message in messages {
        do {
            try TunnelFrameCodec.forEachFrame(in: message[...]) { type, flags, stream, payload in
                out.append(Frame(type: type, flags: flags, stream: stream, payload: Array(payload)))
            }
        } catch {
            Issue.record("outbound message does not decode: \(error)")
        }
    }
    return out
}

func frame(_ type: TunnelFrameType, flags: TunnelFlags = [], stream: StreamID = 0, _ payload: [UInt8] = []) -> [UInt8] {
    var out: [UInt8] = []
    TunnelFrameCodec.encode(type: type, flags: flags, stream: stream, payload: payload, into: &out)
    return out
}

func u16(_ v: UInt16) -> [UInt8] { [UInt8(v >> 8), UInt8(v & 0xFF)] }
func u32(_ v: UInt32) -> [UInt8] { [UInt8(v >> 24), UInt8((v >> 16) & 0xFF), UInt8((v >> 8) & 0xFF), UInt8(v & 0xFF)] }
func u64(_ v: UInt64) -> [UInt8] { u32(UInt32(v >> 32)) + u32(UInt32(v & 0xFFFF_FFFF)) }

func helloFrame(_ settings: TunnelSettings = TunnelSettings(), version: UInt16 = 1, agent: String = "peer") -> [UInt8] {
    frame(.hello, TunnelFrameCodec.encodeHello(version: version, settings: settings, agent: agent))
}

func openFrame(_ id: StreamID, _ head: TunnelRequestHead = TunnelRequestHead(method: "GET", target: "/"),
               end: Bool = true) -> [UInt8] {
    frame(.open, flags: end ? .endStream : [], stream: id, (try? TunnelFrameCodec.encodeRequestHead(head)) ?? [])
}

func responseFrame(_ id: StreamID, status: Int = 200, end: Bool = false) -> [UInt8] {
    frame(.response, flags: end ? .endStream : [], stream: id,
          (try? TunnelFrameCodec.encodeResponseHead(TunnelResponseHead(status: status))) ?? [])
}

func windowUpdateFrame(_ id: StreamID, _ increment: UInt32) -> [UInt8] { frame(.windowUpdate, stream: id, u32(increment)) }

func settings(stream: Int = 1 << 20, tunnel: Int = 8 << 20, maxStreams: Int = 256, maxMessage: Int = 1_048_586,
              maxHead: Int = 65_536) -> TunnelSettings {
    var s = TunnelSettings()
    s.streamWindow = stream
    s.tunnelWindow = tunnel
    s.maxStreams = maxStreams
    s.maxMessageSize = maxMessage
    s.maxHeadSize = maxHead
    return s
}

extension TunnelMultiplexer {
    mutating func drainEvents() -> [TunnelEvent] {
        var out: [TunnelEvent] = []
        while let e = nextEvent() { out.append(e) }
        return out
    }

    mutating func takeAll() -> [[UInt8]] {
        var out: [[UInt8]] = []
        while let m = takeOutboundMessage() { out.append(m) }
        return out
    }

    mutating func takeFrames() -> [Frame] { decodeFrames(takeAll()) }

    /// A multiplexer that has its peer's HELLO and nothing queued.
    static func ready(_ role: Role, _ local: TunnelSettings = TunnelSettings(),
                      peer: TunnelSettings = TunnelSettings()) throws -> TunnelMultiplexer {
        var mux = TunnelMultiplexer(role: role, settings: local)
        try mux.receive(message: helloFrame(peer))
        _ = mux.drainEvents()
        _ = mux.takeAll()
        return mux
    }

    /// Feeds a message that must fail the tunnel; returns the error.
    mutating func expectFailure(_ message: [UInt8], sourceLocation: SourceLocation = #_sourceLocation) -> TunnelProtocolError? {
        do {
            try receive(message: message)
            Issue.record("message accepted, expected a tunnel error", sourceLocation: sourceLocation)
            return nil
        } catch {
            #expect(!isReady, sourceLocation: sourceLocation)
            #expect(!hasOutbound && pendingEventCount == 0, "dead tunnel keeps nothing", sourceLocation: sourceLocation)
            #expect(throws: error, sourceLocation: sourceLocation) { try self.receive(message: helloFrame()) }
            return error
        }
    }

    func expectInvariants(sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(invariantViolation() == nil, sourceLocation: sourceLocation)
    }
}

/// A relay and a bridge wired back to back in memory.
struct Pair {
    var relay: TunnelMultiplexer
    var bridge: TunnelMultiplexer

    /// Both sides constructed and their HELLOs exchanged; the hello events are drained.
    init(relay relaySettings: TunnelSettings = TunnelSettings(), bridge bridgeSettings: TunnelSettings = TunnelSettings()) throws {
        relay = TunnelMultiplexer(role: .relay, settings: relaySettings, agent: "tether-relay")
        bridge = TunnelMultiplexer(role: .bridge, settings: bridgeSettings, agent: "tether-bridge/test")
        _ = try toBridge()
        _ = try toRelay()
        _ = relay.drainEvents()
        _ = bridge.drainEvents()
    }

    /// Delivers up to `limit` queued messages relay → bridge; returns the bridge's events.
    @discardableResult
    mutating func toBridge(limit: Int = .max) throws -> [TunnelEvent] {
        var n = 0
        while n < limit, let message = relay.takeOutboundMessage() {
            #expect(message.count <= (relay.peerSettings?.maxMessageSize ?? TunnelProtocol.minMessageSize))
            try bridge.receive(message: message)
            n += 1
        }
        return bridge.drainEvents()
    }

    @discardableResult
    mutating func toRelay(limit: Int = .max) throws -> [TunnelEvent] {
        var n = 0
        while n < limit, let message = bridge.takeOutboundMessage() {
            #expect(message.count <= (bridge.peerSettings?.maxMessageSize ?? TunnelProtocol.minMessageSize))
            try relay.receive(message: message)
            n += 1
        }
        return relay.drainEvents()
    }

    /// Relay opens a stream, which must succeed.
    mutating func open(_ head: TunnelRequestHead, endStream: Bool, sourceLocation: SourceLocation = #_sourceLocation) throws -> StreamID {
        let id = relay.openStream(head, endStream: endStream)
        return try #require(id, sourceLocation: sourceLocation)
    }

    func expectInvariants(sourceLocation: SourceLocation = #_sourceLocation) {
        relay.expectInvariants(sourceLocation: sourceLocation)
        bridge.expectInvariants(sourceLocation: sourceLocation)
    }
}

/// Concatenated DATA bytes per stream from a list of events, and which streams ended.
func bodies(_ events: [TunnelEvent]) -> (bytes: [StreamID: [UInt8]], ended: Set<StreamID>) {
    var bytes: [StreamID: [UInt8]] = [:]
    var ended: Set<StreamID> = []
    for case let .data(id, slice, end) in events {
        bytes[id, default: []] += slice
        if end { ended.insert(id) }
    }
    return (bytes, ended)
}
