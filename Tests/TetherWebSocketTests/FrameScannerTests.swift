import TetherWebSocket
import XCTest

final class FrameScannerTests: XCTestCase {
    /// A client byte stream (masked frames) of whole and fragmented messages with control
    /// frames in between, and the offsets where no message is half received.
    private func stream(seed: UInt64, messages: Int) -> (bytes: [UInt8], boundaries: [Int]) {
        var rng = SplitMix64(seed: seed)
        var out: [UInt8] = []
        var boundaries: [Int] = []
        for _ in 0..<messages {
            let sizes = [0, 1, 125, 126, 127, 65_535, 65_536, 70_000]
            switch rng.next() % 4 {
            case 0:  // a control frame on its own
                WebSocketFrameCodec.encode(opcode: .ping, payload: rng.bytes(Int(rng.next() % 126)),
                                           maskKey: UInt32(truncatingIfNeeded: rng.next()), into: &out)
                boundaries.append(out.count)
            case 1:  // fragmented, with a control frame between fragments (not a boundary)
                let parts = Int(rng.next() % 3) + 2
                for i in 0..<parts {
                    WebSocketFrameCodec.encode(opcode: i == 0 ? .binary : .continuation,
                                               payload: rng.bytes(sizes[Int(rng.next() % 5)]), fin: i == parts - 1,
                                               maskKey: UInt32(truncatingIfNeeded: rng.next()), into: &out)
                    if i == 0 {
                        WebSocketFrameCodec.encode(opcode: .pong, payload: [1, 2], maskKey: 7, into: &out)
                    }
                }
                boundaries.append(out.count)
            default:
                WebSocketFrameCodec.encode(opcode: .binary, payload: rng.bytes(sizes[Int(rng.next() % UInt64(sizes.count))]),
                                           maskKey: UInt32(truncatingIfNeeded: rng.next()), into: &out)
                boundaries.append(out.count)
            }
        }
        return (out, boundaries)
    }

    func testBoundariesAreFoundWhateverTheChunking() throws {
        for seed in 0..<20 as Range<UInt64> {
            let (bytes, boundaries) = stream(seed: seed, messages: 40)
            var rng = SplitMix64(seed: seed + 1000)
            var scanner = WebSocketFrameScanner(maxMessageSize: 1 << 20)
            var position = 0
            var found: [Int] = []
            while position < bytes.count {
                let n = min(bytes.count - position, Int(rng.next() % 9000) + 1)
                let chunk = Array(bytes[position..<position + n])
                let (scanned, last) = try scanner.scan(chunk)
                XCTAssertEqual(scanned, n)
                if let last { found.append(position + last) }
                let expected = boundaries.last { $0 > position && $0 <= position + n }
                XCTAssertEqual(last.map { position + $0 }, expected, "seed \(seed) at \(position)")
                position += n
                XCTAssertEqual(scanner.isAtMessageBoundary, boundaries.contains(position))
            }
            XCTAssertTrue(scanner.isAtMessageBoundary)
            XCTAssertEqual(Set(found).isSubset(of: Set(boundaries)), true)
        }
    }

    /// Stopping at the first boundary hands the rest over unscanned, and a fresh scanner (and a
    /// fresh WebSocketConnection) carries on from there.
    func testStopAtFirstBoundaryThenContinueFresh() throws {
        let (bytes, boundaries) = stream(seed: 77, messages: 30)
        for split in stride(from: 0, to: bytes.count, by: 997) {
            var scanner = WebSocketFrameScanner(maxMessageSize: 1 << 20)
            _ = try scanner.scan(Array(bytes[0..<split]))
            let (scanned, boundary) = try scanner.scan(Array(bytes[split...]), stopAtFirstBoundary: true)
            let expected = boundaries.first { $0 >= split }
            if split == 0 || boundaries.contains(split) {
                XCTAssertTrue(scanner.isAtMessageBoundary)
                XCTAssertEqual(scanned, 0)
            } else {
                XCTAssertEqual(split + scanned, expected)
                XCTAssertEqual(boundary, scanned)
            }
            // Both halves decode cleanly in two independent connections.
            var first = WebSocketConnection(role: .server, maxMessageSize: 1 << 20, autoReplyPing: false)
            first.receive(Array(bytes[0..<(split + scanned)]))
            let one = first.drain()
            XCTAssertTrue(first.isAtMessageBoundary)
            var second = WebSocketConnection(role: .server, maxMessageSize: 1 << 20, autoReplyPing: false)
            second.receive(Array(bytes[(split + scanned)...]))
            let two = second.drain()
            XCTAssertEqual(one + two, decodeEvents(bytes, as: .server), "split \(split)")
            XCTAssertFalse((one + two).contains { if case .protocolError = $0 { return true } else { return false } })
        }
    }

    func testOversizedFramesAndMessagesAreRefusedFromTheHeader() throws {
        var scanner = WebSocketFrameScanner(maxMessageSize: 1000)
        var big: [UInt8] = []
        WebSocketFrameCodec.encode(opcode: .binary, payload: [UInt8](repeating: 1, count: 1001), maskKey: 1, into: &big)
        XCTAssertThrowsError(try scanner.scan(Array(big.prefix(8)))) { XCTAssertEqual($0 as? WebSocketScanError, .messageTooBig) }
        // Fragments that add up past the limit.
        var scanner2 = WebSocketFrameScanner(maxMessageSize: 1000)
        var parts: [UInt8] = []
        WebSocketFrameCodec.encode(opcode: .binary, payload: [UInt8](repeating: 1, count: 600), fin: false, maskKey: 1, into: &parts)
        XCTAssertNoThrow(try scanner2.scan(parts))
        XCTAssertFalse(scanner2.isAtMessageBoundary)
        var more: [UInt8] = []
        WebSocketFrameCodec.encode(opcode: .continuation, payload: [UInt8](repeating: 1, count: 600), maskKey: 1, into: &more)
        XCTAssertThrowsError(try scanner2.scan(more))
        // A 64-bit length with the top bit set.
        var scanner3 = WebSocketFrameScanner(maxMessageSize: .max)
        XCTAssertThrowsError(try scanner3.scan([0x82, 0x7F, 0x80, 0, 0, 0, 0, 0, 0, 0]))
    }
}
