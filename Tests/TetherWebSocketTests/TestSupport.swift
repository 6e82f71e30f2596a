import TetherWebSocket
import XCTest

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
        var out = [UInt8](repeating: 0, count: n)
        var i = 0
        while i < n {
            var r = next()
            for _ in 0 ..< min(8, n - i) {
                out[i] = UInt8(truncatingIfNeeded: r)
                r >>= 8
                i += 1
            }
        }
        return out
    }
}

extension WebSocketRole {
    var peer: WebSocketRole { self == .server ? .client : .server }
}

extension WebSocketConnection {
    /// Drains all pending events.
    mutating func drain() -> [WebSocketEvent] {
        var out: [WebSocketEvent] = []
        while let e = nextEvent() { out.append(e) }
        return out
    }

    mutating func feed(_ bytes: [UInt8]) -> [WebSocketEvent] {
        receive(bytes)
        return drain()
    }
}

/// Events a fresh connection of `role` produces from `bytes` (i.e. what the peer would see).
func decodeEvents(_ bytes: [UInt8], as role: WebSocketRole) -> [WebSocketEvent] {
    var c = WebSocketConnection(role: role, maxMessageSize: Int.max, autoReplyPing: false)
    return c.feed(bytes)
}

/// Structural frame decode of a whole byte stream; fails the test on leftovers.
func decodeFrames(_ bytes: [UInt8], file: StaticString = #filePath, line: UInt = #line) -> [(WebSocketFrame, UInt32?)] {
    var out: [(WebSocketFrame, UInt32?)] = []
    var rest = bytes[...]
    while !rest.isEmpty {
        let r = rest.withUnsafeBytes { WebSocketFrameCodec.decode($0) }
        guard case let .frame(frame, key, consumed) = r else {
            XCTFail("undecodable outbound bytes: \(r)", file: file, line: line)
            return out
        }
        out.append((frame, key))
        rest = rest.dropFirst(consumed)
    }
    return out
}

/// A frame as a peer of `senderRole` would put it on the wire (masked iff client).
func frame(_ opcode: WebSocketOpcode, _ payload: [UInt8] = [], fin: Bool = true, from senderRole: WebSocketRole = .client,
           key: UInt32 = 0xA1B2_C3D4) -> [UInt8] {
    var out: [UInt8] = []
    WebSocketFrameCodec.encode(opcode: opcode, payload: payload, fin: fin, maskKey: senderRole == .client ? key : nil, into: &out)
    return out
}

/// Raw frame with full control over the first byte and the length encoding.
/// `lengthField` is the 7-bit length plus any extended length bytes, mask bit excluded.
func rawFrame(b0: UInt8, lengthField: [UInt8], payload: [UInt8], maskKey: UInt32? = 0x0102_0304) -> [UInt8] {
    var out: [UInt8] = [b0, lengthField[0] | (maskKey != nil ? 0x80 : 0)]
    out += lengthField.dropFirst()
    var body = payload
    if let key = maskKey {
        out += [UInt8(key >> 24), UInt8((key >> 16) & 0xFF), UInt8((key >> 8) & 0xFF), UInt8(key & 0xFF)]
        body.withUnsafeMutableBytes { WebSocketFrameCodec.applyMask($0, key: key) }
    }
    return out + body
}

func closePayload(_ code: UInt16, _ reason: [UInt8] = []) -> [UInt8] {
    [UInt8(code >> 8), UInt8(code & 0xFF)] + reason
}

/// Feeds `bytes` to a fresh connection and asserts it fails with `code`: the last event is
/// `.protocolError(code)`, the state is closed, the outbound holds exactly one close frame
/// carrying `code`, and later input is ignored.
@discardableResult
func assertProtocolError(_ bytes: [UInt8], role: WebSocketRole = .server, code: WebSocketCloseCode,
                         maxMessageSize: Int = 16 * 1024 * 1024,
                         file: StaticString = #filePath, line: UInt = #line) -> [WebSocketEvent] {
    var c = WebSocketConnection(role: role, maxMessageSize: maxMessageSize)
    let events = c.feed(bytes)
    guard case let .protocolError(got, reason)? = events.last else {
        XCTFail("expected protocolError(\(code)), got \(events)", file: file, line: line)
        return events
    }
    XCTAssertEqual(got, code, reason, file: file, line: line)
    XCTAssertFalse(reason.isEmpty, file: file, line: line)
    XCTAssertEqual(c.state, .closed, file: file, line: line)
    XCTAssertTrue(c.shouldCloseTransport, file: file, line: line)
    let out = c.takeOutbound()
    // Outbound may hold pongs queued before the failure; it must end with exactly one close.
    let closes = decodeEvents(out, as: role.peer)
    XCTAssertEqual(closes.filter { if case .close = $0 { return true } else { return false } }.count, 1, "\(closes)",
                   file: file, line: line)
    if case let .close(sent, _)? = closes.last {
        XCTAssertEqual(sent, code, file: file, line: line)
    } else {
        XCTFail("outbound is not a close frame: \(closes)", file: file, line: line)
    }
    // Everything after the failure is ignored.
    XCTAssertEqual(c.feed(frame(.ping, [1], from: role.peer) + frame(.text, Array("x".utf8), from: role.peer)), [],
                   file: file, line: line)
    XCTAssertFalse(c.hasOutbound, file: file, line: line)
    return events
}
