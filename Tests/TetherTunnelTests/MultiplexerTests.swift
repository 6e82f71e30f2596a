@_spi(Testing) @testable import TetherTunnel
import TetherHTTP
import Testing

private let get = TunnelRequestHead(method: "GET", target: "/")
private let ok = TunnelResponseHead(status: 200)

private func resetFrame(_ id: StreamID, _ code: TunnelErrorCode, _ reason: String) -> Frame {
    Frame(type: .reset, stream: id, payload: TunnelFrameCodec.encodeReset(code: code, reason: reason))
}

private func windowUpdate(_ id: StreamID, _ increment: UInt32) -> Frame {
    Frame(type: .windowUpdate, stream: id, payload: u32(increment))
}

@Suite struct HandshakeTests {
    @Test func helloIsQueuedAtOnceWithEverySettingAndTheAgent() throws {
        let s = settings(stream: 100_000, tunnel: 400_000, maxStreams: 3, maxMessage: 4096, maxHead: 2000)
        var relay = TunnelMultiplexer(role: .relay, settings: s, agent: "tether-relay")
        #expect(!relay.isReady && relay.peerSettings == nil && !relay.canOpenStream)
        #expect(relay.openStream(get, endStream: true) == nil)
        let frames = relay.takeFrames()
        #expect(frames.count == 1)
        #expect(frames.first?.type == .hello && frames.first?.stream == 0)
        let hello = try TunnelFrameCodec.decodeHello(frames[0].payload)
        #expect(hello.settings == s && hello.agent == "tether-relay" && hello.version == 1)

        var bridge = TunnelMultiplexer(role: .bridge, agent: "b")
        try bridge.receive(message: frame(.hello, frames[0].payload))
        #expect(bridge.drainEvents() == [.hello(version: 1, settings: s, agent: "tether-relay")])
        #expect(bridge.isReady && bridge.peerSettings == s)
        #expect(bridge.tunnelSendWindow == 400_000 && bridge.tunnelReceiveWindow == 8 << 20)
        #expect(!bridge.canOpenStream, "only the relay opens streams")
    }

    @Test func pairConnects() throws {
        let p = try Pair(relay: settings(maxStreams: 9), bridge: settings(stream: 1000, tunnel: 5000))
        #expect(p.relay.isReady && p.bridge.isReady && p.relay.canOpenStream)
        #expect(p.relay.tunnelSendWindow == 5000 && p.bridge.tunnelReceiveWindow == 5000)
        #expect(p.bridge.peerSettings?.maxStreams == 9)
    }

    @Test func localSettingsAreClampedToWhatTheWireCarries() throws {
        var s = TunnelSettings()
        s.streamWindow = -1
        s.tunnelWindow = 1 << 40
        s.maxMessageSize = 10
        s.maxStreams = -3
        var m = TunnelMultiplexer(role: .bridge, settings: s)
        #expect(m.localSettings.streamWindow == 0 && m.localSettings.tunnelWindow == Int(Int32.max))
        #expect(m.localSettings.maxMessageSize == 1024 && m.localSettings.maxStreams == 0)
        #expect(try TunnelFrameCodec.decodeHello(m.takeFrames()[0].payload).settings == m.localSettings)
    }

    @Test func pingsAreAnsweredAutomatically() throws {
        var p = try Pair()
        p.relay.ping(42)
        p.relay.ping(.max)
        #expect(try p.toBridge() == [.ping(42), .ping(.max)])
        #expect(try p.toRelay() == [.pong(42), .pong(.max)])
        p.bridge.ping(7)
        #expect(p.bridge.takeFrames() == [Frame(type: .ping, payload: u64(7))])
    }

    @Test func unknownFrameTypesAndFlagBitsAreIgnored() throws {
        var bridge = try TunnelMultiplexer.ready(.bridge)
        var message: [UInt8] = []
        [1, 2, 3].withUnsafeBytes { TunnelFrameCodec.encode(rawType: 0x42, flags: [], stream: 77, payload: $0, into: &message) }
        message += frame(.open, flags: TunnelFlags(rawValue: 0xFD), stream: 1, try TunnelFrameCodec.encodeRequestHead(get))
        try bridge.receive(message: message)
        #expect(bridge.drainEvents() == [.streamOpened(1, get, endStream: true)])
        #expect(!bridge.hasOutbound)
    }
}

@Suite struct StreamTests {
    @Test func requestAndResponseBodiesFlowBothWays() throws {
        var p = try Pair()
        let head = TunnelRequestHead(method: "POST", target: "/api/chat?x=1", headers: ["Content-Length": "5", "X-Forwarded-For": "1.2.3.4"])
        let id = try p.open(head, endStream: false)
        #expect(id == 1 && p.relay.isOpen(1) && p.relay.activeStreamCount == 1)
        #expect(p.relay.sendData(id, Array("hello".utf8), endStream: true) == 5)
        #expect(p.relay.sendWindow(for: id) == 0, "request direction ended")
        #expect(try p.toBridge() == [.streamOpened(1, head, endStream: false), .data(1, Array("hello".utf8)[...], endStream: true)])
        p.bridge.consumed(1, bytes: 5)

        let response = TunnelResponseHead(status: 200, headers: ["Content-Type": "application/x-ndjson"])
        #expect(p.bridge.sendData(1, [1], endStream: false) == 0, "no body before the head")
        p.bridge.sendResponse(1, response, endStream: false)
        p.bridge.sendResponse(1, TunnelResponseHead(status: 500), endStream: true)  // ignored: already answered
        #expect(p.bridge.sendData(1, Array("world".utf8), endStream: false) == 5)
        #expect(p.bridge.isOpen(1))
        #expect(p.bridge.sendData(1, [], endStream: true) == 0)
        #expect(!p.bridge.isOpen(1) && p.bridge.activeStreamCount == 0)
        #expect(try p.toRelay() == [.response(1, response, endStream: false), .data(1, Array("world".utf8)[...], endStream: false),
                                   .data(1, [], endStream: true)])
        #expect(!p.relay.isOpen(1) && p.relay.activeStreamCount == 0)
        p.relay.consumed(1, bytes: 5)
        p.expectInvariants()
        // Ids strictly increase.
        #expect(p.relay.openStream(get, endStream: true) == 2)
        #expect(p.relay.openStream(get, endStream: true) == 3)
    }

    @Test func manyConcurrentStreamsAreByteExact() throws {
        var p = try Pair(relay: settings(maxMessage: 16 * 1024), bridge: settings(maxMessage: 8 * 1024))
        var rng = SplitMix64(seed: 7)
        var requests: [StreamID: [UInt8]] = [:]
        for i in 0 ..< 100 {
            let body = rng.bytes(Int.random(in: 0 ... 20_000, using: &rng))
            let id = try p.open(TunnelRequestHead(method: "POST", target: "/\(i)"), endStream: body.isEmpty)
            if !body.isEmpty { #expect(p.relay.sendData(id, body, endStream: true) == body.count) }
            requests[id] = body
        }
        let events = try p.toBridge()
        var opened: [StreamID: Bool] = [:]
        for case let .streamOpened(id, head, end) in events {
            #expect(head.target == "/\(id - 1)")
            opened[id] = end
        }
        let request = bodies(events)
        var responses: [StreamID: [UInt8]] = [:]
        for (id, body) in requests.sorted(by: { $0.key < $1.key }) {
            #expect(opened[id] == body.isEmpty)
            #expect((request.bytes[id] ?? []) == body)
            #expect(request.ended.contains(id) == !body.isEmpty)
            p.bridge.consumed(id, bytes: body.count)
            let response = rng.bytes(Int.random(in: 0 ... 20_000, using: &rng))
            p.bridge.sendResponse(id, ok, endStream: response.isEmpty)
            if !response.isEmpty { #expect(p.bridge.sendData(id, response, endStream: true) == response.count) }
            responses[id] = response
        }
        #expect(p.bridge.activeStreamCount == 0)
        let relayEvents = try p.toRelay()
        #expect(relayEvents.filter { if case .response = $0 { true } else { false } }.count == 100)
        let response = bodies(relayEvents)
        for (id, body) in responses {
            #expect((response.bytes[id] ?? []) == body)
            p.relay.consumed(id, bytes: body.count)
        }
        #expect(p.relay.activeStreamCount == 0)
        try p.toBridge()
        // Nothing in flight: each side's send window equals what the other still grants.
        #expect(p.relay.tunnelSendWindow == p.bridge.tunnelReceiveWindow)
        #expect(p.bridge.tunnelSendWindow == p.relay.tunnelReceiveWindow)
        p.expectInvariants()
        #expect(p.relay.retainedCapacity == 0 && p.bridge.retainedCapacity == 0)
    }

    @Test func largeBodiesAreSplitToThePeersMessageSize() throws {
        var p = try Pair(relay: settings(maxMessage: 1024), bridge: settings(maxMessage: 3000))
        let id = try p.open(get, endStream: false)
        let body = randomBytes(10_000, seed: 1)
        #expect(p.relay.sendData(id, body, endStream: true) == 10_000)
        let messages = p.relay.takeAll()
        #expect(messages.allSatisfy { $0.count <= 3000 })
        let data = decodeFrames(messages).filter { $0.type == .data }
        #expect(data.map(\.payload.count) == [2990, 2990, 2990, 1030])
        #expect(data.map { $0.flags.contains(.endStream) } == [false, false, false, true])
        for m in messages { try p.bridge.receive(message: m) }
        #expect(bodies(p.bridge.drainEvents()).bytes[id] == body)
    }

    @Test func smallFramesShareAMessage() throws {
        var p = try Pair()
        for _ in 0 ..< 10 { _ = p.relay.openStream(get, endStream: true) }
        p.relay.ping(1)
        let messages = p.relay.takeAll()
        #expect(messages.count == 1)
        #expect(decodeFrames(messages).count == 11)
    }

    @Test func endStreamIsSetOnlyWhenEveryByteWasTaken() throws {
        var p = try Pair(relay: settings(stream: 1024))
        let id = try p.open(get, endStream: true)
        try p.toBridge()
        p.bridge.sendResponse(id, ok, endStream: false)
        _ = try p.toRelay()
        let body = randomBytes(2000, seed: 2)
        #expect(p.bridge.sendData(id, body, endStream: true) == 1024)
        #expect(p.bridge.sendData(id, [], endStream: false) == 0)
        #expect(p.bridge.isOpen(id))
        var q = p
        #expect(q.bridge.takeFrames() == [Frame(type: .data, stream: id, payload: Array(body[..<1024]))])
        // An empty END_STREAM needs no window.
        #expect(q.bridge.sendData(id, [], endStream: true) == 0)
        #expect(q.bridge.takeFrames() == [Frame(type: .data, flags: .endStream, stream: id)])
        #expect(!q.bridge.isOpen(id))
        #expect(q.bridge.sendData(id, [1], endStream: true) == 0, "direction ended")

        try p.toRelay()
        p.relay.consumed(id, bytes: 1024)
        try p.toBridge()
        #expect(p.bridge.sendData(id, body[1024...], endStream: true) == 976)
        #expect(p.bridge.takeFrames() == [Frame(type: .data, flags: .endStream, stream: id, payload: Array(body[1024...]))])
    }
}

@Suite struct FlowControlTests {
    @Test func senderStopsAtTheStreamWindowAndResumesOnConsumed() throws {
        var p = try Pair(relay: settings(stream: 4096))
        let id = try p.open(get, endStream: true)
        try p.toBridge()
        p.bridge.sendResponse(id, ok, endStream: false)
        let body = randomBytes(10_000, seed: 3)
        #expect(p.bridge.sendWindow(for: id) == 4096)
        #expect(p.bridge.sendData(id, body, endStream: true) == 4096)
        #expect(p.bridge.sendWindow(for: id) == 0)
        #expect(p.bridge.sendData(id, body[4096...], endStream: true) == 0)
        var received = bodies(try p.toRelay()).bytes[id] ?? []
        #expect(received == Array(body[..<4096]))

        // Credit under a quarter of the window is held back.
        p.relay.consumed(id, bytes: 1000)
        #expect(!p.relay.hasOutbound)
        p.relay.consumed(id, bytes: 24)
        let update = p.relay.takeAll()
        #expect(decodeFrames(update) == [windowUpdate(id, 1024)])
        for m in update { try p.bridge.receive(message: m) }
        #expect(p.bridge.drainEvents() == [.windowAvailable(id)])
        #expect(p.bridge.sendWindow(for: id) == 1024)
        p.relay.consumed(id, bytes: 1_000_000)  // over-reporting is clamped to what it holds
        try p.toBridge()
        #expect(p.bridge.sendWindow(for: id) == 4096)
        p.expectInvariants()

        var sent = 4096
        while sent < body.count {
            let n = p.bridge.sendData(id, body[sent...], endStream: true)
            #expect(n > 0 && n <= 4096)
            sent += n
            let got = bodies(try p.toRelay()).bytes[id] ?? []
            received += got
            p.relay.consumed(id, bytes: got.count)
            try p.toBridge()
            p.expectInvariants()
        }
        #expect(received == body)
        #expect(!p.relay.isOpen(id) && !p.bridge.isOpen(id))
    }

    /// The tunnel window is larger than a stream window, so one stalled stream leaves room for
    /// the others; once the tunnel window is used up, all wait for tunnel credit.
    @Test func aStalledStreamDoesNotBlockOthers() throws {
        var p = try Pair(relay: settings(stream: 4096, tunnel: 16384))
        for _ in 1 ... 5 { _ = p.relay.openStream(get, endStream: true) }
        try p.toBridge()
        for id: StreamID in 1 ... 5 { p.bridge.sendResponse(id, ok, endStream: false) }
        let chunk = [UInt8](repeating: 7, count: 4096)
        #expect(p.bridge.sendData(1, chunk, endStream: false) == 4096)  // stream 1 stalls: never consumed
        #expect(p.bridge.sendWindow(for: 1) == 0)
        #expect(p.bridge.sendWindow(for: 2) == 4096)
        for id: StreamID in 2 ... 4 { #expect(p.bridge.sendData(id, chunk, endStream: false) == 4096) }
        #expect(p.bridge.tunnelSendWindow == 0)
        #expect(p.bridge.sendWindow(for: 5) == 0)
        #expect(p.bridge.sendData(5, [1], endStream: false) == 0)
        _ = try p.toRelay()

        // Stream 2 is passed on: its stream credit and a quarter of the tunnel come back.
        p.relay.consumed(2, bytes: 4096)
        let updates = p.relay.takeAll()
        #expect(decodeFrames(updates) == [windowUpdate(2, 4096), windowUpdate(0, 4096)])
        for m in updates { try p.bridge.receive(message: m) }
        // Stream 2's window grew while the tunnel's was 0: only the tunnel event tells.
        #expect(p.bridge.drainEvents() == [.windowAvailable(0)])
        #expect(p.bridge.sendWindow(for: 5) == 4096 && p.bridge.sendWindow(for: 2) == 4096 && p.bridge.sendWindow(for: 1) == 0)
        #expect(p.bridge.sendData(5, chunk, endStream: true) == 4096)
        #expect(p.bridge.sendWindow(for: 2) == 0, "tunnel used up again")
        p.expectInvariants()
    }

    @Test func noStreamCreditOnceThePeersDirectionEnded() throws {
        var p = try Pair(relay: settings(stream: 4096, tunnel: 1 << 20))
        let id = try p.open(get, endStream: false)  // the request body is still open
        try p.toBridge()
        p.bridge.sendResponse(id, ok, endStream: false)
        #expect(p.bridge.sendData(id, [UInt8](repeating: 1, count: 4096), endStream: true) == 4096)
        _ = try p.toRelay()
        #expect(p.relay.isOpen(id))
        p.relay.consumed(id, bytes: 4096)
        #expect(!p.relay.hasOutbound, "the bridge sends no more on it: no stream WINDOW_UPDATE")
        p.expectInvariants()
    }

    @Test func windowAvailableForAStreamNeedsTunnelCredit() throws {
        var bridge = try TunnelMultiplexer.ready(.bridge, peer: settings(stream: 10, tunnel: 100))
        try bridge.receive(message: openFrame(1))
        _ = bridge.drainEvents()
        bridge.sendResponse(1, ok, endStream: false)
        #expect(bridge.sendData(1, [UInt8](repeating: 0, count: 50), endStream: false) == 10)
        try bridge.receive(message: windowUpdateFrame(1, 5) + windowUpdateFrame(1, 5))
        #expect(bridge.drainEvents() == [.windowAvailable(1)], "only when growing from 0")
        #expect(bridge.sendWindow(for: 1) == 10)
        // Updates for gone or finished directions are ignored, not errors.
        #expect(bridge.sendData(1, [1, 2], endStream: true) == 2)
        try bridge.receive(message: windowUpdateFrame(1, 0x7FFF_FFFF))
        #expect(bridge.drainEvents() == [])
    }
}

@Suite struct ResetTests {
    /// The relay cancels (web client gone) while bodies are in flight both ways: all of the
    /// stream's tunnel credit comes back on both sides, including DATA that crossed the RESET.
    @Test func cancelReturnsAllCreditOnBothSides() throws {
        let s = settings(stream: 65536, tunnel: 131_072)
        var p = try Pair(relay: s, bridge: s)
        let id = try p.open(get, endStream: false)
        #expect(p.relay.sendData(id, [UInt8](repeating: 1, count: 40000), endStream: false) == 40000)
        _ = try p.toBridge()  // the bridge holds 40000 unconsumed bytes
        p.bridge.sendResponse(id, ok, endStream: false)
        #expect(p.bridge.sendData(id, [UInt8](repeating: 2, count: 40000), endStream: false) == 40000)

        p.relay.reset(id, code: .cancel, reason: "client gone")
        #expect(!p.relay.isOpen(id) && p.relay.sendData(id, [1], endStream: false) == 0)
        #expect(p.relay.sendWindow(for: id) == 0)
        // RESPONSE and DATA that crossed the RESET are ignored; their credit comes back anyway.
        #expect(try p.toRelay() == [])
        #expect(p.relay.tunnelReceiveWindow == 131_072)
        #expect(try p.toBridge() == [.streamReset(id, .cancel, reason: "client gone")])
        #expect(!p.bridge.isOpen(id))
        // The bridge returned the credit of the 40000 bytes it never passed on.
        #expect(p.bridge.tunnelReceiveWindow == 131_072 && p.bridge.tunnelSendWindow == 131_072)
        try p.toRelay()
        #expect(p.relay.tunnelSendWindow == 131_072)
        // A late consumed() for the reset stream does not return the credit twice.
        p.bridge.consumed(id, bytes: 40000)
        #expect(!p.bridge.hasOutbound)
        p.expectInvariants()
    }

    @Test func bridgeResetReachesTheRelayAndReturnsCredit() throws {
        let s = settings(stream: 65536, tunnel: 131_072)
        var p = try Pair(relay: s, bridge: s)
        let id = try p.open(get, endStream: true)
        try p.toBridge()
        p.bridge.sendResponse(id, ok, endStream: false)
        _ = p.bridge.sendData(id, [UInt8](repeating: 3, count: 40000), endStream: false)
        p.bridge.reset(id, code: .localServiceError, reason: "connection refused")
        #expect(!p.bridge.isOpen(id) && p.bridge.activeStreamCount == 0)
        let events = try p.toRelay()
        #expect(events.count == 3)
        #expect(events.last == .streamReset(id, .localServiceError, reason: "connection refused"))
        #expect(!p.relay.isOpen(id))
        // The relay never passed the 40000 bytes on; the RESET gave their credit back.
        #expect(decodeFrames(p.relay.takeAll()) == [windowUpdate(0, 40000)])
        #expect(p.relay.tunnelReceiveWindow == 131_072)
        p.relay.consumed(id, bytes: 40000)
        #expect(!p.relay.hasOutbound, "no double credit after a reset")
        p.expectInvariants()
        // Frames still arriving for it are ignored; resets of unknown streams do nothing.
        try p.bridge.receive(message: frame(.data, stream: id, [1, 2, 3]) + frame(.reset, stream: id, u32(6)))
        #expect(p.bridge.drainEvents() == [])
        p.relay.reset(99, code: .cancel)
        #expect(!p.relay.hasOutbound)
    }

    @Test func unknownErrorCodesAreInternalErrors() throws {
        var bridge = try TunnelMultiplexer.ready(.bridge)
        try bridge.receive(message: openFrame(1) + frame(.reset, stream: 1, u32(77) + Array("why".utf8)))
        #expect(bridge.drainEvents() == [.streamOpened(1, get, endStream: true), .streamReset(1, .internalError, reason: "why")])
    }

    /// The caller may still hold the DATA of a stream that finished: consumed() returns its
    /// tunnel credit (no stream update: the stream is gone), reset() drops it.
    @Test func creditOfFinishedStreamsReturnsWhenConsumed() throws {
        var p = try Pair(relay: settings(stream: 8192, tunnel: 16384))
        for _ in 0 ..< 2 { _ = p.relay.openStream(get, endStream: true) }
        try p.toBridge()
        for id: StreamID in 1 ... 2 {
            p.bridge.sendResponse(id, ok, endStream: false)
            #expect(p.bridge.sendData(id, [UInt8](repeating: 4, count: 8192), endStream: true) == 8192)
        }
        let events = try p.toRelay()
        #expect(bodies(events).ended == [1, 2])
        #expect(p.relay.activeStreamCount == 0 && !p.relay.isOpen(1))
        #expect(p.relay.tunnelReceiveWindow == 0 && p.bridge.tunnelSendWindow == 0)
        p.expectInvariants()
        #expect(p.relay.retainedCapacity > 0, "credit of held bytes is tracked")

        p.relay.consumed(1, bytes: 3000)  // under a quarter of the tunnel window
        #expect(!p.relay.hasOutbound)
        p.relay.consumed(1, bytes: 5192)
        #expect(decodeFrames(p.relay.takeAll()) == [windowUpdate(0, 8192)])
        p.relay.consumed(1, bytes: 100)
        #expect(!p.relay.hasOutbound, "all of stream 1's credit is back")
        // Stream 2's data is dropped: reset() returns its credit, and sends no RESET.
        p.relay.reset(2, code: .cancel)
        #expect(decodeFrames(p.relay.takeAll()) == [windowUpdate(0, 8192)])
        #expect(p.relay.tunnelReceiveWindow == 16384)
        p.expectInvariants()
        #expect(p.relay.retainedCapacity == 0)
    }
}

@Suite struct StreamErrorTests {
    @Test func dataAfterEndStreamResetsTheStream() throws {
        var bridge = try TunnelMultiplexer.ready(.bridge)
        try bridge.receive(message: openFrame(1, end: true) + openFrame(3, end: false))
        _ = bridge.drainEvents()
        try bridge.receive(message: frame(.data, stream: 1, [1]) + frame(.data, flags: .endStream, stream: 3, [2]))
        #expect(bridge.drainEvents() == [.streamReset(1, .streamClosed, reason: "DATA after END_STREAM"), .data(3, [2], endStream: true)])
        #expect(bridge.takeFrames() == [resetFrame(1, .streamClosed, "DATA after END_STREAM")])
        #expect(!bridge.isOpen(1) && bridge.isOpen(3))
        try bridge.receive(message: frame(.data, stream: 1, [1]) + frame(.data, stream: 3, [1]))
        #expect(bridge.drainEvents() == [.streamReset(3, .streamClosed, reason: "DATA after END_STREAM")])
        try bridge.receive(message: frame(.data, stream: 1, [1]))
        #expect(bridge.drainEvents() == [], "then ignored")
        bridge.expectInvariants()
    }

    @Test func relaySideStreamErrors() throws {
        var relay = try TunnelMultiplexer.ready(.relay, settings(maxHead: 100))
        for _ in 1 ... 8 { _ = relay.openStream(get, endStream: false) }
        _ = relay.takeAll()
        let bigHead = try TunnelFrameCodec.encodeResponseHead(TunnelResponseHead(status: 200, headers: ["X": String(repeating: "v", count: 200)]))
        let cases: [([UInt8], TunnelEvent)] = [
            (frame(.data, stream: 1, [1]), .streamReset(1, .protocolError, reason: "DATA before RESPONSE")),
            (responseFrame(2) + responseFrame(2), .streamReset(2, .protocolError, reason: "second RESPONSE")),
            (responseFrame(3, end: true) + responseFrame(3), .streamReset(3, .streamClosed, reason: "RESPONSE after end of stream")),
            (responseFrame(4, status: 101), .streamReset(4, .protocolError, reason: "informational response")),
            (frame(.response, stream: 5, bigHead), .streamReset(5, .headTooLarge, reason: "response head over 100 bytes")),
            (frame(.response, stream: 6, [0xFF]), .streamReset(6, .protocolError, reason: "truncated response head")),
            (responseFrame(7, end: true) + frame(.data, stream: 7, [1]), .streamReset(7, .streamClosed, reason: "DATA after END_STREAM")),
            (frame(.response, stream: 8, u16(200) + u16(1) + u16(1) + [0x41] + u16(2) + [0x0D, 0x0A]),
             .streamReset(8, .protocolError, reason: "invalid header value")),
        ]
        for (message, expected) in cases {
            try relay.receive(message: message)
            let events = relay.drainEvents()
            #expect(events.last == expected)
            guard case let .streamReset(id, code, reason) = expected else { continue }
            #expect(relay.takeFrames() == [resetFrame(id, code, reason)])
            #expect(!relay.isOpen(id))
        }
        #expect(relay.activeStreamCount == 0 && relay.isReady)
        relay.expectInvariants()
    }

    /// The bridge rejects OPENs it can't serve with a RESET; its caller never hears of them.
    @Test func bridgeRejectsOpensItCannotServe() throws {
        var bridge = try TunnelMultiplexer.ready(.bridge, settings(maxStreams: 2, maxHead: 64))
        let big = TunnelRequestHead(method: "GET", target: "/" + String(repeating: "a", count: 100))
        try bridge.receive(message: openFrame(1, big) + frame(.open, stream: 2, [3, 0x47]) + openFrame(3, end: false)
            + openFrame(4, end: false) + openFrame(5))
        #expect(bridge.drainEvents() == [.streamOpened(3, get, endStream: false), .streamOpened(4, get, endStream: false)])
        #expect(bridge.takeFrames() == [resetFrame(1, .headTooLarge, "request head over 64 bytes"),
                                        resetFrame(2, .protocolError, "truncated request head"),
                                        resetFrame(5, .refusedStream, "too many streams")])
        // Their DATA is ignored (and credited back).
        try bridge.receive(message: frame(.data, flags: .endStream, stream: 1, [1, 2]))
        #expect(bridge.drainEvents() == [])
        bridge.expectInvariants()
    }

    @Test func headsOverThePeersLimitAreNotSent() throws {
        var p = try Pair(relay: settings(maxHead: 64), bridge: settings(maxHead: 64))
        let big = TunnelRequestHead(method: "GET", target: "/" + String(repeating: "a", count: 100))
        #expect(p.relay.openStream(big, endStream: true) == nil)
        #expect(p.relay.openStream(TunnelRequestHead(method: "GET", target: "/\r\n"), endStream: true) == nil)
        #expect(!p.relay.hasOutbound && p.relay.activeStreamCount == 0)
        let id = try p.open(get, endStream: true)
        try p.toBridge()
        p.bridge.sendResponse(id, TunnelResponseHead(status: 200, headers: ["X": String(repeating: "v", count: 100)]), endStream: true)
        #expect(p.bridge.drainEvents() == [.streamReset(id, .headTooLarge, reason: "response head over 64 bytes")])
        #expect(try p.toRelay() == [.streamReset(id, .headTooLarge, reason: "response head over 64 bytes")])
        // An invalid head can't be sent either.
        let id2 = try p.open(get, endStream: true)
        try p.toBridge()
        p.bridge.sendResponse(id2, TunnelResponseHead(status: 99), endStream: true)
        #expect(p.bridge.drainEvents() == [.streamReset(id2, .internalError, reason: "invalid status 99")])
        #expect(p.relay.activeStreamCount == 1)
        try p.toRelay()
        #expect(p.relay.activeStreamCount == 0)
    }

    @Test func relayRespectsTheBridgesMaxStreams() throws {
        var p = try Pair(bridge: settings(maxStreams: 2))
        #expect(p.relay.openStream(get, endStream: true) == 1)
        #expect(p.relay.openStream(get, endStream: true) == 2)
        #expect(!p.relay.canOpenStream && p.relay.openStream(get, endStream: true) == nil)
        try p.toBridge()
        p.bridge.sendResponse(1, ok, endStream: true)
        try p.toRelay()
        #expect(p.relay.canOpenStream)
        #expect(p.relay.openStream(get, endStream: true) == 3)
        #expect(try p.toBridge().count == 1, "not refused")
    }
}

@Suite struct GoAwayTests {
    @Test func relayGoAwayLetsOpenStreamsFinish() throws {
        var p = try Pair()
        let a = try p.open(get, endStream: true)
        let b = try p.open(get, endStream: false)
        try p.toBridge()
        p.relay.goAway(code: .noError, reason: "draining")
        #expect(p.relay.goAwaySent == 2 && p.relay.isReady)
        #expect(!p.relay.canOpenStream && p.relay.openStream(get, endStream: true) == nil)
        #expect(try p.toBridge() == [.goAway(lastStreamID: 2, code: .noError, reason: "draining")])
        #expect(p.bridge.goAwayReceived == 2)
        // Existing streams finish normally, both directions.
        #expect(p.relay.sendData(b, Array("body".utf8), endStream: true) == 4)
        let events = try p.toBridge()
        #expect(bodies(events).bytes[b] == Array("body".utf8))
        p.bridge.sendResponse(a, ok, endStream: true)
        p.bridge.sendResponse(b, ok, endStream: true)
        #expect(try p.toRelay() == [.response(a, ok, endStream: true), .response(b, ok, endStream: true)])
        #expect(p.relay.activeStreamCount == 0 && p.bridge.activeStreamCount == 0)
        // An OPEN after the relay's GOAWAY is refused, not served.
        try p.bridge.receive(message: openFrame(3))
        #expect(p.bridge.drainEvents() == [])
        #expect(p.bridge.takeFrames() == [resetFrame(3, .refusedStream, "going away")])
    }

    /// The bridge shuts down while the relay opens another stream: that one crosses the
    /// GOAWAY, is refused (safe to retry), and stream 1 still finishes.
    @Test func bridgeGoAwayRefusesStreamsItDidNotProcess() throws {
        var p = try Pair()
        _ = p.relay.openStream(get, endStream: true)
        try p.toBridge()
        p.bridge.goAway(reason: "shutting down")
        p.bridge.goAway(reason: "again")  // the last id never grows
        #expect(p.bridge.goAwaySent == 1)
        #expect(p.relay.openStream(get, endStream: true) == 2)
        #expect(try p.toBridge() == [], "the bridge refuses stream 2")
        #expect(try p.toRelay() == [
            .goAway(lastStreamID: 1, code: .noError, reason: "shutting down"),
            .streamReset(2, .refusedStream, reason: "not processed before GOAWAY"),
            .goAway(lastStreamID: 1, code: .noError, reason: "again"),
        ])
        #expect(!p.relay.canOpenStream && p.relay.isOpen(1) && !p.relay.isOpen(2))
        p.bridge.sendResponse(1, ok, endStream: true)
        #expect(try p.toRelay() == [.response(1, ok, endStream: true)])
        #expect(try p.toBridge() == [])
        #expect(p.relay.activeStreamCount == 0 && p.bridge.activeStreamCount == 0)
        p.expectInvariants()
    }
}

/// Tunnel-level errors: each closes the WebSocket with the right code, and the multiplexer
/// is dead afterwards.
struct ErrorCase: Sendable, CustomTestStringConvertible {
    var name: String
    var role: TunnelMultiplexer.Role
    var local = TunnelSettings()
    var peer = TunnelSettings()
    var hello = true
    var openStreams = 0
    var setup: [[UInt8]] = []
    var message: [UInt8]
    var expected: TunnelProtocolError
    var testDescription: String { name }
}

private let protocolErrorCases: [ErrorCase] = {
    func pe(_ reason: String) -> TunnelProtocolError { .protocolError(reason) }
    let bigUnknown: [UInt8] = {
        var out: [UInt8] = []
        [UInt8](repeating: 0, count: 1015).withUnsafeBytes { TunnelFrameCodec.encode(rawType: 0x55, flags: [], stream: 0, payload: $0, into: &out) }
        return out
    }()
    return [
        ErrorCase(name: "HELLO version 2", role: .relay, hello: false, message: helloFrame(version: 2), expected: .unsupportedVersion),
        ErrorCase(name: "PING before HELLO", role: .bridge, hello: false, message: frame(.ping, u64(1)), expected: pe("first frame is not HELLO")),
        ErrorCase(name: "unknown frame before HELLO", role: .bridge, hello: false, message: [0, 0, 0, 0, 0x33, 0, 0, 0, 0, 0],
                  expected: pe("first frame is not HELLO")),
        ErrorCase(name: "HELLO on a stream", role: .bridge, hello: false, message: frame(.hello, stream: 1, TunnelFrameCodec.encodeHello(settings: TunnelSettings(), agent: "")),
                  expected: pe("HELLO on stream 1")),
        ErrorCase(name: "HELLO with a tiny MAX_MESSAGE_SIZE", role: .relay, hello: false,
                  message: frame(.hello, u16(1) + u16(1) + u16(4) + u32(100)), expected: pe("MAX_MESSAGE_SIZE below 1024")),
        ErrorCase(name: "duplicate HELLO", role: .relay, message: helloFrame(), expected: pe("duplicate HELLO")),
        ErrorCase(name: "OPEN received by the relay", role: .relay, message: openFrame(1), expected: pe("OPEN sent by the bridge")),
        ErrorCase(name: "RESPONSE received by the bridge", role: .bridge, setup: [openFrame(1)], message: responseFrame(1),
                  expected: pe("RESPONSE sent by the relay")),
        ErrorCase(name: "OPEN reusing an id", role: .bridge, setup: [openFrame(5)], message: openFrame(5),
                  expected: pe("OPEN with non-increasing stream id 5")),
        ErrorCase(name: "OPEN with a lower id", role: .bridge, setup: [openFrame(5)], message: openFrame(3),
                  expected: pe("OPEN with non-increasing stream id 3")),
        ErrorCase(name: "OPEN on stream 0", role: .bridge, message: openFrame(0), expected: pe("OPEN with non-increasing stream id 0")),
        ErrorCase(name: "truncated frame", role: .bridge, message: Array(frame(.ping, u64(1)).prefix(15)), expected: pe("truncated frame")),
        ErrorCase(name: "frame after a truncated one", role: .bridge, message: frame(.ping, u64(1)) + [0, 0, 0, 9, 7],
                  expected: pe("truncated frame")),
        ErrorCase(name: "message over MAX_MESSAGE_SIZE", role: .bridge, local: settings(maxMessage: 1024), setup: [openFrame(1, end: false)],
                  message: frame(.data, stream: 1, [UInt8](repeating: 0, count: 1015)), expected: .messageTooBig),
        ErrorCase(name: "unknown frames count towards message size", role: .bridge, local: settings(maxMessage: 1024),
                  message: bigUnknown, expected: .messageTooBig),
        ErrorCase(name: "DATA over the stream window", role: .bridge, local: settings(stream: 1024), setup: [openFrame(1, end: false)],
                  message: frame(.data, stream: 1, [UInt8](repeating: 0, count: 1025)), expected: .flowControl),
        ErrorCase(name: "DATA over the tunnel window", role: .bridge, local: settings(stream: 2048, tunnel: 2048),
                  setup: [openFrame(1, end: false) + openFrame(2, end: false), frame(.data, stream: 1, [UInt8](repeating: 0, count: 1500))],
                  message: frame(.data, stream: 2, [UInt8](repeating: 0, count: 600)), expected: .flowControl),
        ErrorCase(name: "DATA on an ignored stream over the tunnel window", role: .bridge, local: settings(stream: 1024, tunnel: 1024),
                  setup: [openFrame(1, end: false), frame(.reset, stream: 1, u32(6))],
                  message: frame(.data, stream: 1, [UInt8](repeating: 0, count: 1025)), expected: .flowControl),
        ErrorCase(name: "tunnel window above 2^31-1", role: .relay, message: windowUpdateFrame(0, 0x7FFF_FFFF), expected: .flowControl),
        ErrorCase(name: "stream window above 2^31-1", role: .relay, openStreams: 1,
                  message: windowUpdateFrame(1, 0x7FFF_0000) + windowUpdateFrame(1, 0x10_0000), expected: .flowControl),
        ErrorCase(name: "WINDOW_UPDATE of 0", role: .relay, message: windowUpdateFrame(0, 0), expected: pe("WINDOW_UPDATE increment 0")),
        ErrorCase(name: "WINDOW_UPDATE of 2^31", role: .relay, message: windowUpdateFrame(0, 0x8000_0000),
                  expected: pe("WINDOW_UPDATE increment 2147483648")),
        ErrorCase(name: "WINDOW_UPDATE payload of 5 bytes", role: .relay, message: frame(.windowUpdate, u32(1) + [0]),
                  expected: pe("malformed WINDOW_UPDATE")),
        ErrorCase(name: "DATA on an unopened stream", role: .bridge, setup: [openFrame(1, end: false)],
                  message: frame(.data, stream: 2, [1]), expected: pe("frame on unopened stream 2")),
        ErrorCase(name: "RESET on a stream the relay never opened", role: .relay, openStreams: 2, message: frame(.reset, stream: 9, u32(0)),
                  expected: pe("frame on unopened stream 9")),
        ErrorCase(name: "WINDOW_UPDATE on an unopened stream", role: .relay, message: windowUpdateFrame(1, 1),
                  expected: pe("frame on unopened stream 1")),
        ErrorCase(name: "DATA on stream 0", role: .bridge, message: frame(.data, [1]), expected: pe("stream frame on stream 0")),
        ErrorCase(name: "RESPONSE on stream 0", role: .relay, message: responseFrame(0), expected: pe("stream frame on stream 0")),
        ErrorCase(name: "short PING", role: .bridge, message: frame(.ping, [1, 2, 3, 4, 5, 6, 7]), expected: pe("malformed PING")),
        ErrorCase(name: "PING on a stream", role: .bridge, setup: [openFrame(1)], message: frame(.ping, stream: 1, u64(1)),
                  expected: pe("malformed PING")),
        ErrorCase(name: "short RESET", role: .bridge, setup: [openFrame(1)], message: frame(.reset, stream: 1, [0, 0, 0]),
                  expected: pe("malformed RESET")),
        ErrorCase(name: "short GOAWAY", role: .bridge, message: frame(.goAway, [0, 0, 0, 0, 0, 0, 0]), expected: pe("malformed GOAWAY")),
        ErrorCase(name: "GOAWAY on a stream", role: .relay, openStreams: 1, message: frame(.goAway, stream: 1, u32(0) + u32(0)),
                  expected: pe("malformed GOAWAY")),
    ]
}()

@Suite struct TunnelErrorTests {
    @Test(arguments: protocolErrorCases)
    func tunnelErrorClosesWithTheRightCode(_ c: ErrorCase) throws {
        var mux = TunnelMultiplexer(role: c.role, settings: c.local)
        if c.hello { try mux.receive(message: helloFrame(c.peer)) }
        for _ in 0 ..< c.openStreams { _ = mux.openStream(get, endStream: false) }
        for message in c.setup { try mux.receive(message: message) }
        _ = mux.drainEvents()
        let error = mux.expectFailure(c.message)
        #expect(error == c.expected)
        #expect(mux.failure == c.expected)
    }

    @Test func closeCodes() {
        #expect(TunnelProtocolError.unsupportedVersion.closeCode == 4002)
        #expect(TunnelProtocolError.flowControl == TunnelProtocolError(closeCode: 4003, reason: "flow control"))
        #expect(TunnelProtocolError.protocolError("x").closeCode == 4003)
        #expect(TunnelProtocolError.messageTooBig.closeCode == 1009)
        #expect("\(TunnelProtocolError.flowControl)" == "4003 flow control")
    }

    @Test func aDeadMultiplexerDoesNothing() throws {
        var p = try Pair()
        let id = try p.open(get, endStream: false)
        _ = p.relay.sendData(id, [1, 2, 3], endStream: false)
        try p.toBridge()
        #expect(p.bridge.expectFailure(helloFrame()) == .protocolError("duplicate HELLO"))
        p.bridge.sendResponse(id, ok, endStream: false)
        #expect(p.bridge.sendData(id, [1], endStream: true) == 0)
        p.bridge.consumed(id, bytes: 3)
        p.bridge.reset(id, code: .cancel)
        p.bridge.ping(1)
        p.bridge.goAway()
        #expect(!p.bridge.hasOutbound && !p.bridge.isOpen(id) && p.bridge.activeStreamCount == 0)
        #expect(p.bridge.sendWindow(for: id) == 0)
        #expect(p.bridge.retainedCapacity == 0)
    }
}

@Suite struct MemoryTests {
    /// 15,000 idle tunnels must cost nothing but their structs: no heap storage while idle.
    @Test func idleMultiplexersHoldNoHeapStorage() throws {
        #expect(MemoryLayout<TunnelMultiplexer>.size <= 256, "per-tunnel struct: \(MemoryLayout<TunnelMultiplexer>.size) bytes")
        var p = try Pair()
        #expect(p.relay.retainedCapacity == 0 && p.bridge.retainedCapacity == 0)
        // After traffic, including a reset and a finished stream, storage is released again.
        for _ in 0 ..< 20 { _ = p.relay.openStream(get, endStream: false) }
        for id: StreamID in 1 ... 20 { _ = p.relay.sendData(id, [UInt8](repeating: 1, count: 1000), endStream: id % 2 == 0) }
        #expect(p.relay.retainedCapacity > 0)
        let events = try p.toBridge()
        for (id, bytes) in bodies(events).bytes { p.bridge.consumed(id, bytes: bytes.count) }
        for id: StreamID in 1 ... 20 {
            if id % 2 == 0 { p.bridge.sendResponse(id, ok, endStream: true) } else { p.relay.reset(id, code: .cancel) }
        }
        try p.toBridge()
        try p.toRelay()
        try p.toBridge()
        #expect(p.relay.activeStreamCount == 0 && p.bridge.activeStreamCount == 0)
        #expect(p.relay.retainedCapacity == 0 && p.bridge.retainedCapacity == 0)

        var tunnels: [TunnelMultiplexer] = []
        tunnels.reserveCapacity(15_000)
        let hello = helloFrame()
        for _ in 0 ..< 15_000 {
            var mux = TunnelMultiplexer(role: .relay, agent: "tether-relay")
            _ = mux.takeOutboundMessage()
            try mux.receive(message: hello)
            _ = mux.nextEvent()
            tunnels.append(mux)
        }
        #expect(tunnels.reduce(0) { $0 + $1.retainedCapacity } == 0)
    }
}
