import TetherWebSocket
import XCTest

/// Every violation RFC 6455 requires us to detect, with the close code that must be queued.
final class ProtocolErrorTests: XCTestCase {
    func testMaskingRules() {
        // Server requires masked client frames; detected from the 2-byte prefix alone.
        assertProtocolError(frame(.text, Array("hi".utf8), from: .server), role: .server, code: .protocolError)
        assertProtocolError([0x81, 0x05], role: .server, code: .protocolError)
        // Client requires unmasked server frames.
        assertProtocolError(frame(.text, Array("hi".utf8), from: .client), role: .client, code: .protocolError)
        assertProtocolError([0x81, 0x82], role: .client, code: .protocolError)
    }

    func testReservedBitsAndOpcodes() {
        for rsv: UInt8 in [0x40, 0x20, 0x10, 0x70] {
            assertProtocolError(rawFrame(b0: 0x81 | rsv, lengthField: [1], payload: [0x41]), code: .protocolError)
        }
        for opcode: UInt8 in [3, 4, 5, 6, 7, 11, 12, 13, 14, 15] {
            assertProtocolError(rawFrame(b0: 0x80 | opcode, lengthField: [0], payload: []), code: .protocolError)
        }
    }

    func testControlFrameRules() {
        // > 125 bytes (legitimately encoded with a 16-bit length) and fragmented control frames.
        for opcode: UInt8 in [0x8, 0x9, 0xA] {
            assertProtocolError(rawFrame(b0: 0x80 | opcode, lengthField: [126, 0, 126], payload: Array(repeating: 0, count: 126)),
                                code: .protocolError)
            assertProtocolError(rawFrame(b0: opcode, lengthField: [0], payload: []), code: .protocolError)
        }
        // 125 is fine.
        var server = WebSocketConnection(role: .server)
        XCTAssertEqual(server.feed(frame(.ping, Array(repeating: 9, count: 125))), [.ping(Array(repeating: 9, count: 125))])
    }

    func testFragmentationOrder() {
        assertProtocolError(frame(.continuation, [1]), code: .protocolError)
        assertProtocolError(frame(.continuation, [], fin: false), code: .protocolError)
        assertProtocolError(frame(.text, [0x61], fin: false) + frame(.text, [0x62]), code: .protocolError)
        assertProtocolError(frame(.binary, [1], fin: false) + frame(.binary, [2], fin: false), code: .protocolError)
        assertProtocolError(frame(.binary, [1], fin: false) + frame(.text, [0x61]), code: .protocolError)
        // A finished message is followed by a stray continuation.
        let events = assertProtocolError(frame(.binary, [1]) + frame(.continuation, [2]), code: .protocolError)
        XCTAssertEqual(events.first, .binary([1]), "events before the violation are still delivered")
    }

    func testLengthEncodingRules() {
        // Non-minimal 16-bit and 64-bit encodings.
        assertProtocolError(rawFrame(b0: 0x82, lengthField: [126, 0, 5], payload: [1, 2, 3, 4, 5]), code: .protocolError)
        assertProtocolError(rawFrame(b0: 0x82, lengthField: [126, 0, 125], payload: Array(repeating: 0, count: 125)),
                            code: .protocolError)
        assertProtocolError(rawFrame(b0: 0x82, lengthField: [127, 0, 0, 0, 0, 0, 0, 0, 200], payload: Array(repeating: 0, count: 200)),
                            code: .protocolError)
        assertProtocolError(rawFrame(b0: 0x82, lengthField: [127, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF], payload: []),
                            code: .protocolError)
        // 64-bit length with the most significant bit set: rejected from the header alone.
        assertProtocolError(rawFrame(b0: 0x82, lengthField: [127, 0x80, 0, 0, 0, 0, 0, 0, 1], payload: []),
                            code: .protocolError, maxMessageSize: Int.max)
        // Minimal encodings right at the boundaries are accepted.
        var server = WebSocketConnection(role: .server)
        XCTAssertEqual(server.feed(rawFrame(b0: 0x82, lengthField: [126, 0, 126], payload: Array(repeating: 1, count: 126))),
                       [.binary(Array(repeating: 1, count: 126))])
        XCTAssertEqual(server.feed(rawFrame(b0: 0x82, lengthField: [127, 0, 0, 0, 0, 0, 1, 0, 0], payload: Array(repeating: 2, count: 65536))),
                       [.binary(Array(repeating: 2, count: 65536))])
    }

    /// 1009 is decided from the frame header: no payload byte needs to arrive.
    func testMessageTooBigFromHeader() {
        // 1 GiB announced, only the header sent.
        let header = Array(rawFrame(b0: 0x82, lengthField: [127, 0, 0, 0, 0, 0x40, 0, 0, 0], payload: []))
        assertProtocolError(header, code: .messageTooBig)
        assertProtocolError(rawFrame(b0: 0x82, lengthField: [101], payload: []), code: .messageTooBig, maxMessageSize: 100)
        // The sum of fragments counts; control frames don't.
        let fragments = frame(.text, Array(repeating: 0x61, count: 60), fin: false) + frame(.ping, [1])
            + rawFrame(b0: 0x80, lengthField: [41], payload: [])
        let events = assertProtocolError(fragments, code: .messageTooBig, maxMessageSize: 100)
        XCTAssertEqual(events.first, .ping([1]))
        // Exactly at the limit is fine.
        var server = WebSocketConnection(role: .server, maxMessageSize: 100)
        XCTAssertEqual(server.feed(frame(.binary, Array(repeating: 1, count: 60), fin: false) + frame(.continuation, Array(repeating: 2, count: 40))),
                       [.binary(Array(repeating: 1, count: 60) + Array(repeating: 2, count: 40))])
        XCTAssertEqual(server.retainedCapacity, 0)
    }

    func testInvalidUTF8IsRejectedWith1007() {
        let invalid: [[UInt8]] = [
            [0x80], [0xBF], [0xC0, 0x80], [0xC1, 0xBF],                 // lone continuation, overlong 2-byte
            [0xE0, 0x80, 0x80], [0xE0, 0x9F, 0xBF],                     // overlong 3-byte
            [0xF0, 0x80, 0x80, 0x80], [0xF0, 0x8F, 0xBF, 0xBF],         // overlong 4-byte
            [0xED, 0xA0, 0x80], [0xED, 0xBF, 0xBF],                     // surrogates
            [0xF4, 0x90, 0x80, 0x80], [0xF5, 0x80, 0x80, 0x80], [0xFE], [0xFF],  // > U+10FFFF
            [0xC3], [0xE2, 0x82], [0xF0, 0x9F, 0x98],                   // truncated at message end
            [0xC3, 0x41], [0xE2, 0x41, 0x82],                           // missing continuation
            Array("κόσμε".utf8) + [0xED, 0xA0, 0x80] + Array("edited".utf8),
        ]
        for bytes in invalid {
            assertProtocolError(frame(.text, bytes), code: .invalidPayloadData)
            assertProtocolError(frame(.text, bytes, from: .server), role: .client, code: .invalidPayloadData)
        }
    }

    /// Invalid text fails as soon as the bad byte arrives, before the message (or even the
    /// frame) is complete.
    func testInvalidUTF8FailsFast() {
        var server = WebSocketConnection(role: .server)
        XCTAssertEqual(server.feed(frame(.text, Array("ok ".utf8) + [0xC0], fin: false)).count, 1)
        XCTAssertEqual(server.state, .closed)

        var server2 = WebSocketConnection(role: .server)
        let big = frame(.text, Array("abc".utf8) + [0xFF] + Array(repeating: 0x61, count: 1000))
        let events = server2.feed(Array(big.prefix(20)))  // header + a few payload bytes
        guard case .protocolError(.invalidPayloadData, _)? = events.last else { return XCTFail("\(events)") }
    }

    func testValidMultibyteSplitAcrossFragments() {
        let text = "a€😀ü"
        let bytes = Array(text.utf8)
        // Split the encoded text into two fragments at every position, then every byte as a fragment.
        for cut in 0 ... bytes.count {
            var server = WebSocketConnection(role: .server)
            let wire = frame(.text, Array(bytes[..<cut]), fin: false) + frame(.continuation, Array(bytes[cut...]))
            XCTAssertEqual(server.feed(wire), [.text(text)], "cut \(cut)")
        }
        var client = WebSocketConnection(role: .client)
        client.send(text: text, fragmentSize: 1)
        var server = WebSocketConnection(role: .server)
        XCTAssertEqual(server.feed(client.takeOutbound()), [.text(text)])
        // Boundary scalars.
        for s in ["\u{7F}", "\u{80}", "\u{7FF}", "\u{800}", "\u{D7FF}", "\u{E000}", "\u{FFFF}", "\u{10000}", "\u{10FFFF}"] {
            XCTAssertEqual(server.feed(frame(.text, Array(s.utf8))), [.text(s)])
        }
    }

    /// The validator agrees with the standard library on random byte strings.
    func testUTF8ValidationMatchesStandardLibrary() {
        var rng = SplitMix64(seed: 0x5EED)
        let interesting: [UInt8] = [0x00, 0x41, 0x7F, 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF, 0xC0, 0xC1, 0xC2, 0xDF, 0xE0, 0xE1,
                                    0xEC, 0xED, 0xEE, 0xEF, 0xF0, 0xF1, 0xF3, 0xF4, 0xF5, 0xFF]
        for _ in 0 ..< 3000 {
            let n = Int(rng.next() % 12)
            let bytes = (0 ..< n).map { _ in interesting[Int(rng.next() % UInt64(interesting.count))] }
            let valid = String(validating: bytes, as: UTF8.self) != nil
            var server = WebSocketConnection(role: .server)
            let events = server.feed(frame(.text, bytes, fin: false) + frame(.continuation, []))
            if valid {
                XCTAssertEqual(events, [.text(String(decoding: bytes, as: UTF8.self))], "\(bytes)")
            } else {
                guard case .protocolError(.invalidPayloadData, _)? = events.last else { return XCTFail("\(bytes): \(events)") }
            }
        }
    }

    func testClosePayloadRules() {
        assertProtocolError(frame(.close, [0x03]), code: .protocolError)
        assertProtocolError([0x88, 0x81], code: .protocolError)  // detected from the header
        for code: UInt16 in [0, 1, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535] {
            assertProtocolError(frame(.close, closePayload(code)), code: .protocolError)
        }
        assertProtocolError(frame(.close, closePayload(1000, [0xFF])), code: .invalidPayloadData)
        assertProtocolError(frame(.close, closePayload(1000, [0xE2, 0x82])), code: .invalidPayloadData)
        for code: UInt16 in [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 3999, 4000, 4999] {
            var server = WebSocketConnection(role: .server)
            XCTAssertEqual(server.feed(frame(.close, closePayload(code, Array("bye ✓".utf8)))),
                           [.close(code: WebSocketCloseCode(rawValue: code), reason: "bye ✓")])
            XCTAssertEqual(decodeEvents(server.takeOutbound(), as: .client), [.close(code: WebSocketCloseCode(rawValue: code), reason: "")],
                           "reply echoes the code")
        }
    }

    /// After we sent close, a violation reports the error but queues no second close frame.
    func testViolationAfterCloseSentQueuesNoSecondClose() {
        var server = WebSocketConnection(role: .server)
        server.close(code: .goingAway)
        _ = server.takeOutbound()
        let events = server.feed(frame(.continuation, [1]))
        XCTAssertEqual(events.count, 1)
        guard case .protocolError(.protocolError, _)? = events.first else { return XCTFail("\(events)") }
        XCTAssertFalse(server.hasOutbound)
        XCTAssertEqual(server.state, .closed)
    }
}
