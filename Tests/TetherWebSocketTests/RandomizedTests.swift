import TetherWebSocket
import XCTest

/// Seeded randomized round trips and fuzzing. Every failure message includes the seed.
final class RandomizedTests: XCTestCase {
    enum Message {
        case text(String)
        case binary([UInt8])
        case ping([UInt8])
    }

    struct Generator {
        var rng: SplitMix64
        static let boundarySizes = [0, 1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 124, 125, 126, 127, 128, 255, 256]
        static let largeSizes = [65535, 65536, 65537]

        init(seed: UInt64) { rng = SplitMix64(seed: seed) }

        mutating func int(_ range: ClosedRange<Int>) -> Int { Int.random(in: range, using: &rng) }
        mutating func chance(_ percent: Int) -> Bool { int(0 ... 99) < percent }

        mutating func size(max: Int, allowLarge: Bool) -> Int {
            if allowLarge, chance(5) { return Self.largeSizes[int(0 ... 2)] }
            if chance(50) {
                let fitting = Self.boundarySizes.filter { $0 <= max }
                return fitting[int(0 ... fitting.count - 1)]
            }
            return int(0 ... max)
        }

        /// Random text of exactly `bytes` UTF-8 bytes, mixing 1-4 byte scalars.
        mutating func text(bytes: Int) -> String {
            var scalars = String.UnicodeScalarView()
            var left = bytes
            while left > 0 {
                let width = min(left, int(1 ... 4))
                let value: UInt32
                switch width {
                case 1: value = UInt32(int(0 ... 0x7F))
                case 2: value = UInt32(int(0x80 ... 0x7FF))
                case 3:
                    var v = UInt32(int(0x800 ... 0xFFFF))
                    if (0xD800 ... 0xDFFF).contains(v) { v = 0xFFFD }
                    value = v
                default: value = UInt32(int(0x10000 ... 0x10FFFF))
                }
                if let scalar = Unicode.Scalar(value) { scalars.append(scalar) }
                left -= width
            }
            return String(scalars)
        }

        mutating func message(maxSize: Int, allowLarge: Bool) -> Message {
            switch int(0 ... 9) {
            case 0 ... 3: return .text(text(bytes: size(max: maxSize, allowLarge: allowLarge)))
            case 4 ... 7: return .binary(rng.bytes(size(max: maxSize, allowLarge: allowLarge)))
            default: return .ping(rng.bytes(size(max: 125, allowLarge: false)))
            }
        }

        mutating func messages(count: ClosedRange<Int>, maxSize: Int, allowLarge: Bool = false) -> [Message] {
            (0 ..< int(count)).map { _ in message(maxSize: maxSize, allowLarge: allowLarge) }
        }

        /// Wire bytes as `sender` produces them: random fragmentation (possibly with empty
        /// fragments) and pings interleaved between fragments. Returns the events the peer
        /// must report, in order.
        mutating func encode(_ messages: [Message], from sender: WebSocketRole) -> (wire: [UInt8], expected: [WebSocketEvent]) {
            var wire: [UInt8] = []
            var expected: [WebSocketEvent] = []
            func key(_ g: inout Generator) -> UInt32? { sender == .client ? UInt32(truncatingIfNeeded: g.rng.next()) : nil }
            for message in messages {
                let opcode: WebSocketOpcode, payload: [UInt8], event: WebSocketEvent
                switch message {
                case .ping(let p):
                    WebSocketFrameCodec.encode(opcode: .ping, payload: p, maskKey: key(&self), into: &wire)
                    expected.append(.ping(p))
                    continue
                case .text(let s): opcode = .text; payload = Array(s.utf8); event = .text(s)
                case .binary(let b): opcode = .binary; payload = b; event = .binary(b)
                }
                var cuts = chance(50) ? (0 ..< int(0 ... 4)).map { _ in int(0 ... payload.count) }.sorted() : []
                cuts.append(payload.count)
                var start = 0
                var op = opcode
                for (index, cut) in cuts.enumerated() {
                    let isLast = index == cuts.count - 1
                    WebSocketFrameCodec.encode(opcode: op, payload: Array(payload[start ..< cut]), fin: isLast,
                                               maskKey: key(&self), into: &wire)
                    start = cut
                    op = .continuation
                    if !isLast, chance(20) {
                        let p = rng.bytes(int(0 ... 8))
                        WebSocketFrameCodec.encode(opcode: .ping, payload: p, maskKey: key(&self), into: &wire)
                        expected.append(.ping(p))
                    }
                }
                expected.append(event)
            }
            return (wire, expected)
        }
    }

    /// Feeds `wire` in the given chunk sizes; returns events and the receiver's outbound.
    private func deliver(_ wire: [UInt8], to role: WebSocketRole, chunks: [Int]) -> ([WebSocketEvent], [UInt8]) {
        var conn = WebSocketConnection(role: role)
        var events: [WebSocketEvent] = []
        var pos = 0
        wire.withUnsafeBytes { raw in
            for size in chunks where pos < wire.count {
                let n = min(size, wire.count - pos)
                conn.receive(UnsafeRawBufferPointer(rebasing: raw[pos ..< pos + n]))
                pos += n
                // Drain sometimes mid-way, sometimes only at the end.
                if size % 3 == 0 { events += conn.drain() }
            }
            if pos < wire.count { conn.receive(UnsafeRawBufferPointer(rebasing: raw[pos...])) }
        }
        events += conn.drain()
        return (events, conn.takeOutbound())
    }

    private func pongs(for expected: [WebSocketEvent]) -> [WebSocketEvent] {
        expected.compactMap { if case .ping(let p) = $0 { return .pong(p) } else { return nil } }
    }

    func testRoundTripSplitAtEveryPosition() {
        for seed in UInt64(1) ... 40 {
            var g = Generator(seed: seed)
            for sender in [WebSocketRole.client, .server] {
                let (wire, expected) = g.encode(g.messages(count: 1 ... 5, maxSize: 130), from: sender)
                for split in 0 ... wire.count {
                    let (events, outbound) = deliver(wire, to: sender.peer, chunks: [split, wire.count])
                    if events != expected {
                        XCTFail("seed \(seed) sender \(sender) split \(split): \(events) != \(expected)")
                        return
                    }
                    if split == 0 {
                        XCTAssertEqual(decodeEvents(outbound, as: sender), pongs(for: expected), "seed \(seed)")
                    }
                }
            }
        }
    }

    func testRoundTripByteByByte() {
        for seed in UInt64(100) ... 130 {
            var g = Generator(seed: seed)
            for sender in [WebSocketRole.client, .server] {
                let (wire, expected) = g.encode(g.messages(count: 1 ... 8, maxSize: 600, allowLarge: seed % 10 == 0), from: sender)
                let (events, outbound) = deliver(wire, to: sender.peer, chunks: Array(repeating: 1, count: wire.count))
                XCTAssertEqual(events, expected, "seed \(seed) sender \(sender)")
                XCTAssertEqual(decodeEvents(outbound, as: sender), pongs(for: expected), "seed \(seed)")
            }
        }
    }

    func testRoundTripRandomSplits() {
        for seed in UInt64(1000) ... 1039 {
            var g = Generator(seed: seed)
            for sender in [WebSocketRole.client, .server] {
                let (wire, expected) = g.encode(g.messages(count: 1 ... 20, maxSize: 3000, allowLarge: true), from: sender)
                for _ in 0 ..< 3 {
                    // Tiny reads of huge streams are covered byte-by-byte elsewhere; keep debug runs fast.
                    let maxChunk = [1, 7, 64, 1500, 70000][g.int(wire.count > 50000 ? 2 ... 4 : 0 ... 4)]
                    var chunks: [Int] = []
                    var total = 0
                    while total < wire.count {
                        let c = g.int(0 ... maxChunk)
                        chunks.append(c)
                        total += c
                    }
                    let (events, outbound) = deliver(wire, to: sender.peer, chunks: chunks)
                    XCTAssertEqual(events, expected, "seed \(seed) sender \(sender) maxChunk \(maxChunk)")
                    XCTAssertEqual(decodeEvents(outbound, as: sender), pongs(for: expected), "seed \(seed)")
                }
            }
        }
    }

    /// Same, but produced through the high-level send API with random fragment sizes.
    func testRoundTripThroughSendAPI() {
        for seed in UInt64(2000) ... 2040 {
            var g = Generator(seed: seed)
            for sender in [WebSocketRole.client, .server] {
                var conn = WebSocketConnection(role: sender)
                var expected: [WebSocketEvent] = []
                for message in g.messages(count: 1 ... 10, maxSize: 2000, allowLarge: seed % 8 == 0) {
                    let fragmentSize = g.chance(50) ? 0 : g.int(1 ... 300)
                    switch message {
                    case .text(let s): conn.send(text: s, fragmentSize: fragmentSize); expected.append(.text(s))
                    case .binary(let b): conn.send(binary: b, fragmentSize: fragmentSize); expected.append(.binary(b))
                    case .ping(let p): conn.send(ping: p); expected.append(.ping(p))
                    }
                }
                let wire = conn.takeOutbound()
                XCTAssertEqual(deliver(wire, to: sender.peer, chunks: [g.int(0 ... wire.count)]).0, expected, "seed \(seed)")
            }
        }
    }

    // MARK: - Fuzzing

    /// Whatever the input: no crash, at most one terminal event (close / protocolError) and
    /// nothing after it, a state consistent with the events, and well-formed outbound bytes.
    private func checkInvariants(_ events: [WebSocketEvent], _ conn: inout WebSocketConnection, context: String) {
        let terminal = events.firstIndex {
            switch $0 {
            case .close, .protocolError: return true
            default: return false
            }
        }
        if let terminal {
            XCTAssertEqual(terminal, events.count - 1, "events after the terminal one: \(context)")
            XCTAssertEqual(conn.state, .closed, context)
            XCTAssertTrue(conn.shouldCloseTransport, context)
        } else {
            XCTAssertEqual(conn.state, .open, context)
        }
        let out = conn.takeOutbound()
        let frames = decodeFrames(out)
        XCTAssertTrue(frames.allSatisfy { ($0.1 != nil) == (conn.role == .client) }, context)
        if terminal != nil {
            XCTAssertEqual(frames.last?.0.opcode, .close, context)
        }
        XCTAssertEqual(frames.filter { $0.0.opcode == .close }.count, terminal == nil ? 0 : 1, context)
        conn.receive(frame(.ping, [1], from: conn.role.peer))
        if terminal != nil {
            XCTAssertNil(conn.nextEvent(), "input after the end must be ignored: \(context)")
        }
    }

    func testGarbageNeverCrashes() {
        var g = Generator(seed: 0xBAD)
        for i in 0 ..< 3000 {
            let role: WebSocketRole = i % 2 == 0 ? .server : .client
            var bytes = g.rng.bytes(g.int(0 ... 300))
            // Bias some inputs towards plausible headers so parsing gets deeper.
            if i % 3 == 0, bytes.count >= 2 {
                bytes[0] = [0x81, 0x82, 0x01, 0x02, 0x00, 0x80, 0x88, 0x89, 0x8A][g.int(0 ... 8)]
                bytes[1] = (role == .server ? 0x80 : 0) | UInt8(truncatingIfNeeded: [0, 1, 2, 125, 126, 127][g.int(0 ... 5)])
            }
            var conn = WebSocketConnection(role: role, maxMessageSize: [16, 1000, 1 << 24][i % 3])
            var events: [WebSocketEvent] = []
            var pos = 0
            while pos < bytes.count {
                let n = min(g.int(1 ... 64), bytes.count - pos)
                conn.receive(bytes[pos ..< pos + n])
                pos += n
                events += conn.drain()
            }
            checkInvariants(events, &conn, context: "garbage #\(i)")
        }
    }

    func testMutatedStreamsNeverCrash() {
        var g = Generator(seed: 0xF00D)
        for i in 0 ..< 1500 {
            let sender: WebSocketRole = i % 2 == 0 ? .client : .server
            var (wire, _) = g.encode(g.messages(count: 1 ... 6, maxSize: 200), from: sender)
            for _ in 0 ..< g.int(1 ... 4) where !wire.isEmpty {
                let at = g.int(0 ... wire.count - 1)
                switch g.int(0 ... 4) {
                case 0: wire[at] ^= UInt8(1) << UInt8(g.int(0 ... 7))
                case 1: wire[at] = UInt8(truncatingIfNeeded: g.rng.next())
                case 2: wire.insert(UInt8(truncatingIfNeeded: g.rng.next()), at: at)
                case 3: wire.remove(at: at)
                default: wire.removeSubrange(at...)
                }
            }
            var conn = WebSocketConnection(role: sender.peer, maxMessageSize: i % 4 == 0 ? 100 : 1 << 20)
            var events: [WebSocketEvent] = []
            var pos = 0
            while pos < wire.count {
                let n = min(g.int(1 ... 100), wire.count - pos)
                wire.withUnsafeBytes { conn.receive(UnsafeRawBufferPointer(rebasing: $0[pos ..< pos + n])) }
                pos += n
                events += conn.drain()
            }
            checkInvariants(events, &conn, context: "mutation #\(i)")
        }
    }
}
