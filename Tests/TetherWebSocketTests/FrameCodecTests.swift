import TetherWebSocket
import XCTest

final class FrameCodecTests: XCTestCase {
    private let hello = Array("Hello".utf8)

    /// RFC 6455 §5.7 examples, byte for byte.
    func testRFCExamplesEncode() {
        var out: [UInt8] = []
        WebSocketFrameCodec.encode(opcode: .text, payload: hello, into: &out)
        XCTAssertEqual(out, [0x81, 0x05, 0x48, 0x65, 0x6C, 0x6C, 0x6F])

        out = []
        WebSocketFrameCodec.encode(opcode: .text, payload: hello, maskKey: 0x37FA_213D, into: &out)
        XCTAssertEqual(out, [0x81, 0x85, 0x37, 0xFA, 0x21, 0x3D, 0x7F, 0x9F, 0x4D, 0x51, 0x58])

        out = []
        WebSocketFrameCodec.encode(opcode: .text, payload: Array("Hel".utf8), fin: false, into: &out)
        WebSocketFrameCodec.encode(opcode: .continuation, payload: Array("lo".utf8), into: &out)
        XCTAssertEqual(out, [0x01, 0x03, 0x48, 0x65, 0x6C, 0x80, 0x02, 0x6C, 0x6F])

        out = []
        WebSocketFrameCodec.encode(opcode: .pong, payload: hello, maskKey: 0x37FA_213D, into: &out)
        XCTAssertEqual(out, [0x8A, 0x85, 0x37, 0xFA, 0x21, 0x3D, 0x7F, 0x9F, 0x4D, 0x51, 0x58])

        out = []
        WebSocketFrameCodec.encode(opcode: .binary, payload: [UInt8](repeating: 7, count: 256), into: &out)
        XCTAssertEqual(Array(out.prefix(4)), [0x82, 0x7E, 0x01, 0x00])
        XCTAssertEqual(out.count, 4 + 256)

        out = []
        WebSocketFrameCodec.encode(opcode: .binary, payload: [UInt8](repeating: 7, count: 65536), into: &out)
        XCTAssertEqual(Array(out.prefix(10)), [0x82, 0x7F, 0, 0, 0, 0, 0, 1, 0, 0])
        XCTAssertEqual(out.count, 10 + 65536)
    }

    func testRFCExamplesDecode() {
        let masked: [UInt8] = [0x81, 0x85, 0x37, 0xFA, 0x21, 0x3D, 0x7F, 0x9F, 0x4D, 0x51, 0x58]
        XCTAssertEqual(WebSocketFrameCodec.decode(masked),
                       .frame(WebSocketFrame(opcode: .text, payload: hello), maskKey: 0x37FA_213D, consumed: 11))
        XCTAssertEqual(decodeEvents(masked, as: .server), [.text("Hello")])
        XCTAssertEqual(decodeEvents([0x81, 0x05, 0x48, 0x65, 0x6C, 0x6C, 0x6F], as: .client), [.text("Hello")])
        XCTAssertEqual(decodeEvents([0x01, 0x03, 0x48, 0x65, 0x6C, 0x80, 0x02, 0x6C, 0x6F], as: .client), [.text("Hello")])
        for n in 0 ..< masked.count {
            XCTAssertEqual(WebSocketFrameCodec.decode(Array(masked.prefix(n))), .incomplete)
        }
        XCTAssertEqual(WebSocketFrameCodec.decode([0x83, 0x00]), .invalid)
        XCTAssertEqual(WebSocketFrameCodec.decode([0x82, 0x7F, 0x80, 0, 0, 0, 0, 0, 0, 1]), .invalid)
        let rsv = WebSocketFrame(fin: false, rsv1: true, rsv2: false, rsv3: true, opcode: .binary, payload: [1, 2])
        var out: [UInt8] = []
        WebSocketFrameCodec.encode(rsv, into: &out)
        XCTAssertEqual(out, [0x52, 0x02, 1, 2])
        XCTAssertEqual(WebSocketFrameCodec.decode(out), .frame(rsv, maskKey: nil, consumed: 4))
    }

    /// The word-at-a-time masking must equal the byte-by-byte definition for every length,
    /// key phase and (mis)alignment.
    func testApplyMaskMatchesNaiveDefinition() {
        var rng = SplitMix64(seed: 42)
        let key: UInt32 = 0x37FA_213D
        let keyBytes: [UInt8] = [0x37, 0xFA, 0x21, 0x3D]
        let data = rng.bytes(200)
        for length in 0 ... 80 {
            for offset in 0 ..< 8 {
                for misalign in 0 ..< 3 {
                    var buf = Array(data[misalign ..< misalign + length])
                    buf.withUnsafeMutableBytes { WebSocketFrameCodec.applyMask($0, key: key, offset: offset) }
                    let expected = (0 ..< length).map { data[misalign + $0] ^ keyBytes[(offset + $0) % 4] }
                    XCTAssertEqual(buf, expected, "length \(length) offset \(offset)")
                }
            }
        }
        // Masking in pieces at running offsets equals masking at once.
        var whole = data, pieces = data
        whole.withUnsafeMutableBytes { WebSocketFrameCodec.applyMask($0, key: key) }
        pieces.withUnsafeMutableBytes { buf in
            var at = 0
            for size in [1, 2, 3, 5, 8, 13, 21, 34, 55, 58] {
                WebSocketFrameCodec.applyMask(UnsafeMutableRawBufferPointer(rebasing: buf[at ..< at + size]), key: key, offset: at)
                at += size
            }
        }
        XCTAssertEqual(whole, pieces)
    }

    /// Header sizes at every length-encoding boundary, both directions, through the
    /// connection API; client frames carry a fresh mask key each.
    func testPayloadSizeBoundariesRoundTrip() {
        for size in [0, 1, 125, 126, 127, 65535, 65536, 65537] {
            let payload = (0 ..< size).map { UInt8(truncatingIfNeeded: $0 &* 31) }
            for role in [WebSocketRole.client, .server] {
                var sender = WebSocketConnection(role: role)
                sender.send(binary: payload)
                let wire = sender.takeOutbound()
                XCTAssertEqual(wire.count, WebSocketFrameCodec.headerSize(payloadCount: size, masked: role == .client) + size)
                let frames = decodeFrames(wire)
                XCTAssertEqual(frames.count, 1)
                XCTAssertEqual(frames.first?.0.payload, payload)
                XCTAssertEqual(frames.first?.1 != nil, role == .client, "client masks, server doesn't")
                XCTAssertEqual(decodeEvents(wire, as: role.peer), [.binary(payload)], "size \(size)")
            }
        }
        XCTAssertEqual(WebSocketFrameCodec.headerSize(payloadCount: 125, masked: false), 2)
        XCTAssertEqual(WebSocketFrameCodec.headerSize(payloadCount: 126, masked: true), 8)
        XCTAssertEqual(WebSocketFrameCodec.headerSize(payloadCount: 65536, masked: true), 14)
    }

    func testClientMasksWithFreshKeysAndServerUnmasks() {
        var client = WebSocketConnection(role: .client)
        let payload = [UInt8](repeating: 0, count: 64)
        for _ in 0 ..< 8 { client.send(binary: payload) }
        let wire = client.takeOutbound()
        let frames = decodeFrames(wire)
        let keys = Set(frames.compactMap { $0.1 })
        XCTAssertEqual(frames.count, 8)
        XCTAssertGreaterThan(keys.count, 1, "mask keys must vary")
        XCTAssertNotEqual(Array(wire[6 ..< 70]), payload, "payload must be masked on the wire")
        var server = WebSocketConnection(role: .server)
        XCTAssertEqual(server.feed(wire), Array(repeating: .binary(payload), count: 8))
        // Server → client: unmasked, mask bit clear.
        server.send(text: "hi")
        let back = server.takeOutbound()
        XCTAssertEqual(back, [0x81, 0x02, 0x68, 0x69])
        XCTAssertEqual(client.feed(back), [.text("hi")])
    }

    func testUnsafeBufferAndFragmentedSendVariants() {
        var client = WebSocketConnection(role: .client)
        let data: [UInt8] = Array(0 ..< 100)
        data.withUnsafeBytes { client.send(binary: $0) }
        data.withUnsafeBytes { client.send(binary: $0, fragmentSize: 30) }
        client.send(binary: data, fragmentSize: 100)  // fits: one frame
        client.send(text: "héllo", fragmentSize: 2)    // splits inside "é"
        client.send(binary: [], fragmentSize: 5)
        let frames = decodeFrames(client.takeOutbound())
        XCTAssertEqual(frames.map { $0.0.opcode }, [.binary, .binary, .continuation, .continuation, .continuation, .binary,
                                                     .text, .continuation, .continuation, .binary])
        XCTAssertEqual(frames.map { $0.0.fin }, [true, false, false, false, true, true, false, false, true, true])
        XCTAssertEqual(frames[2].0.payload, Array(30 ..< 60))
        var server = WebSocketConnection(role: .server)
        var wire: [UInt8] = []
        for (f, _) in frames { WebSocketFrameCodec.encode(f, maskKey: 0xDEAD_BEEF, into: &wire) }
        XCTAssertEqual(server.feed(wire), [.binary(data), .binary(data), .binary(data), .text("héllo"), .binary([])])
    }
}
