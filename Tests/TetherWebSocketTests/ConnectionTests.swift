import TetherWebSocket
import XCTest

final class ConnectionTests: XCTestCase {
    func testFragmentedMessageWithInterleavedControlFrames() {
        var server = WebSocketConnection(role: .server)
        let wire = frame(.text, Array("Hel".utf8), fin: false) + frame(.ping, [1, 2]) + frame(.continuation, Array("lo, ".utf8), fin: false)
            + frame(.pong, [3]) + frame(.continuation, [], fin: false) + frame(.ping, []) + frame(.continuation, Array("wörld".utf8))
        XCTAssertEqual(server.feed(wire), [.ping([1, 2]), .pong([3]), .ping([]), .text("Hello, wörld")])
        // Auto-replied pongs echo the payloads, in order, unmasked.
        let replies = decodeFrames(server.takeOutbound())
        XCTAssertEqual(replies.map { $0.0 }, [WebSocketFrame(opcode: .pong, payload: [1, 2]), WebSocketFrame(opcode: .pong)])
        XCTAssertTrue(replies.allSatisfy { $0.1 == nil })
    }

    func testPingAutoReplyCanBeDisabled() {
        var server = WebSocketConnection(role: .server, autoReplyPing: false)
        XCTAssertEqual(server.feed(frame(.ping, [7])), [.ping([7])])
        XCTAssertFalse(server.hasOutbound)
        server.send(pong: [7])
        server.send(ping: Array(repeating: 1, count: 200))  // truncated to the 125-byte limit
        let frames = decodeFrames(server.takeOutbound())
        XCTAssertEqual(frames.map { $0.0 }, [WebSocketFrame(opcode: .pong, payload: [7]),
                                            WebSocketFrame(opcode: .ping, payload: Array(repeating: 1, count: 125))])
    }

    func testServerInitiatedCloseHandshake() {
        var server = WebSocketConnection(role: .server)
        var client = WebSocketConnection(role: .client)
        server.close(code: .goingAway, reason: "shutting down")
        XCTAssertEqual(server.state, .closeSent)
        XCTAssertFalse(server.shouldCloseTransport)
        server.send(text: "ignored")
        server.send(ping: [1])
        server.close(code: .internalError)  // second close ignored
        let toClient = server.takeOutbound()
        XCTAssertEqual(decodeFrames(toClient).count, 1)

        XCTAssertEqual(client.feed(toClient), [.close(code: .goingAway, reason: "shutting down")])
        XCTAssertEqual(client.state, .closed)
        XCTAssertTrue(client.shouldCloseTransport)
        let toServer = client.takeOutbound()
        client.send(text: "ignored")
        XCTAssertFalse(client.hasOutbound)

        // Data the client sent before seeing our close still arrives while in closeSent.
        XCTAssertEqual(server.feed(frame(.ping, [9])), [.ping([9])])
        XCTAssertFalse(server.hasOutbound, "no pong after our close")
        XCTAssertEqual(server.feed(frame(.text, Array("late".utf8)) + toServer),
                       [.text("late"), .close(code: .goingAway, reason: "")])
        XCTAssertEqual(server.state, .closed)
        XCTAssertTrue(server.shouldCloseTransport)
        XCTAssertFalse(server.hasOutbound, "no reply to a reply")
        XCTAssertEqual(server.feed(frame(.text, Array("after".utf8))), [], "input after close is ignored")
    }

    func testClientInitiatedCloseHandshake() {
        var client = WebSocketConnection(role: .client)
        var server = WebSocketConnection(role: .server)
        client.close()
        XCTAssertEqual(client.state, .closeSent)
        XCTAssertEqual(server.feed(client.takeOutbound()), [.close(code: .normalClosure, reason: "")])
        XCTAssertEqual(server.state, .closed)
        XCTAssertEqual(client.feed(server.takeOutbound()), [.close(code: .normalClosure, reason: "")])
        XCTAssertEqual(client.state, .closed)
        XCTAssertTrue(client.shouldCloseTransport && server.shouldCloseTransport)
        XCTAssertEqual(client.retainedCapacity + server.retainedCapacity, 0)
    }

    func testEmptyCloseAndUnsendableCodes() {
        var server = WebSocketConnection(role: .server)
        XCTAssertEqual(server.feed(frame(.close)), [.close(code: nil, reason: "")])
        XCTAssertEqual(decodeEvents(server.takeOutbound(), as: .client), [.close(code: .normalClosure, reason: "")])

        // 1005 can't be sent: the close goes out with an empty payload.
        var client = WebSocketConnection(role: .client)
        client.close(code: .noStatusReceived, reason: "x")
        XCTAssertEqual(decodeEvents(client.takeOutbound(), as: .server), [.close(code: nil, reason: "")])

        // Long reasons are cut to 123 bytes without splitting a character.
        var s = WebSocketConnection(role: .server)
        s.close(code: .policyViolation, reason: String(repeating: "€", count: 60))
        let out = s.takeOutbound()
        XCTAssertEqual(decodeFrames(out).first?.0.payload.count, 2 + 123)
        XCTAssertEqual(decodeEvents(out, as: .client), [.close(code: .policyViolation, reason: String(repeating: "€", count: 41))])
    }

    func testSimultaneousClose() {
        var client = WebSocketConnection(role: .client)
        var server = WebSocketConnection(role: .server)
        client.close(code: .normalClosure, reason: "c")
        server.close(code: .goingAway, reason: "s")
        let c2s = client.takeOutbound(), s2c = server.takeOutbound()
        XCTAssertEqual(server.feed(c2s), [.close(code: .normalClosure, reason: "c")])
        XCTAssertEqual(client.feed(s2c), [.close(code: .goingAway, reason: "s")])
        XCTAssertEqual(client.state, .closed)
        XCTAssertEqual(server.state, .closed)
        XCTAssertFalse(client.hasOutbound || server.hasOutbound)
    }

    func testManualCloseReply() {
        var server = WebSocketConnection(role: .server, autoReplyClose: false)
        XCTAssertEqual(server.feed(frame(.close, closePayload(4001, Array("app".utf8)))),
                       [.close(code: WebSocketCloseCode.application(4001), reason: "app")])
        XCTAssertEqual(server.state, .closeReceived)
        XCTAssertFalse(server.shouldCloseTransport)
        XCTAssertFalse(server.hasOutbound)
        server.send(text: "last words")  // still allowed before our close
        server.close(code: WebSocketCloseCode(rawValue: 4001))
        XCTAssertEqual(server.state, .closed)
        XCTAssertTrue(server.shouldCloseTransport)
        XCTAssertEqual(decodeEvents(server.takeOutbound(), as: .client),
                       [.text("last words"), .close(code: WebSocketCloseCode(rawValue: 4001), reason: "")])
        XCTAssertNil(WebSocketCloseCode.application(3999))
    }

    func testEventsAreDeliveredInOrderAndQueueIsReleased() {
        var server = WebSocketConnection(role: .server)
        server.receive(frame(.text, Array("a".utf8)) + frame(.binary, [1]) + frame(.ping, [2]))
        XCTAssertEqual(server.pendingEventCount, 3)
        XCTAssertEqual(server.nextEvent(), .text("a"))
        XCTAssertEqual(server.nextEvent(), .binary([1]))
        XCTAssertEqual(server.nextEvent(), .ping([2]))
        XCTAssertNil(server.nextEvent())
        var buffer: [UInt8] = [0xAA]
        server.appendOutbound(into: &buffer)
        XCTAssertEqual(buffer, [0xAA, 0x8A, 0x01, 0x02])
        XCTAssertFalse(server.hasOutbound)
        XCTAssertEqual(server.retainedCapacity, 0)
    }

    /// Idle connections must be cheap: small inline state and no heap storage once a message
    /// (even a large one, received in pieces) has been delivered. A large message is allocated
    /// once, at its final size, not regrown per read.
    func testIdleMemory() {
        XCTAssertLessThan(MemoryLayout<WebSocketConnection>.size, 256)
        var server = WebSocketConnection(role: .server)
        XCTAssertEqual(server.retainedCapacity, 0)
        let payload = [UInt8](repeating: 0x5A, count: 1 << 20)
        let wire = frame(.binary, payload)
        var pos = 0
        while pos < wire.count {
            let n = min(65536, wire.count - pos)
            server.receive(wire[pos ..< pos + n])
            pos += n
            if pos < wire.count {
                XCTAssertGreaterThanOrEqual(server.retainedCapacity, payload.count)
                XCTAssertLessThan(server.retainedCapacity, payload.count + 4096)
            }
        }
        XCTAssertEqual(server.nextEvent(), .binary(payload))
        XCTAssertEqual(server.retainedCapacity, 0)
        // A partial header is held inline, not on the heap.
        server.receive(Array(wire.prefix(5)))
        XCTAssertEqual(server.retainedCapacity, 0)
        server.receive(Array(wire[5 ..< 14]))
        XCTAssertNil(server.nextEvent())
    }

    /// A 16 MiB message (the default limit, exactly) client → server, echoed back.
    func testSixteenMiBEcho() {
        var rng = SplitMix64(seed: 16)
        let payload = rng.bytes(16 * 1024 * 1024)
        var client = WebSocketConnection(role: .client)
        var server = WebSocketConnection(role: .server)
        client.send(binary: payload)
        let wire = client.takeOutbound()
        XCTAssertEqual(wire.count, payload.count + 14)
        // Deliver in 256 KiB reads like a socket would.
        var events: [WebSocketEvent] = []
        var pos = 0
        while pos < wire.count {
            let n = min(256 * 1024, wire.count - pos)
            wire.withUnsafeBytes { server.receive(UnsafeRawBufferPointer(rebasing: $0[pos ..< pos + n])) }
            pos += n
            events += server.drain()
        }
        guard events.count == 1, case .binary(let received) = events[0] else { return XCTFail("\(events.count) events") }
        XCTAssertTrue(received == payload)
        XCTAssertEqual(server.retainedCapacity, 0)
        received.withUnsafeBytes { server.send(binary: $0) }
        var back: [UInt8] = []
        server.appendOutbound(into: &back)
        client.receive(back)
        guard case .binary(let echoed)? = client.nextEvent() else { return XCTFail("no echo") }
        XCTAssertTrue(echoed == payload)

        // One byte more than the limit is refused from the header.
        var small = WebSocketConnection(role: .server)
        var header: [UInt8] = []
        WebSocketFrameCodec.encode(opcode: .binary, payload: [UInt8](repeating: 0, count: 16 * 1024 * 1024 + 1), maskKey: 1, into: &header)
        let events2 = small.feed(Array(header.prefix(14)))
        guard case .protocolError(.messageTooBig, _)? = events2.last else { return XCTFail("\(events2)") }
    }

    func testSixteenMiBTextMessageFragmented() {
        let text = String(repeating: "0123456789abcdé€😀", count: 16 * 1024 * 1024 / 24)
        var client = WebSocketConnection(role: .client)
        var server = WebSocketConnection(role: .server)
        client.send(text: text, fragmentSize: 1_000_003)
        server.receive(client.takeOutbound())
        XCTAssertEqual(server.nextEvent(), .text(text))
        XCTAssertNil(server.nextEvent())
    }
}
