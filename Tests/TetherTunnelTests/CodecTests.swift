@testable import TetherTunnel
import TetherHTTP
import Testing

@Suite struct CodecTests {
    @Test func frameHeaderLayoutIsBigEndian() {
        let bytes = frame(.data, flags: .endStream, stream: 0x0102_0304, [0xAA, 0xBB])
        #expect(bytes == [0, 0, 0, 2, 4, 1, 1, 2, 3, 4, 0xAA, 0xBB])
        #expect(TunnelProtocol.frameHeaderSize == 10)
        #expect(TunnelProtocol.subprotocol == "tether.v1")
    }

    /// Every frame type (and an unknown one) survives encode → forEachFrame, packed in one message.
    @Test func everyFrameTypeRoundTrips() throws {
        let head = try TunnelFrameCodec.encodeRequestHead(TunnelRequestHead(method: "POST", target: "/api/chat",
                                                                            headers: ["Content-Type": "application/json"]))
        let frames: [Frame] = [
            Frame(type: .hello, payload: TunnelFrameCodec.encodeHello(settings: TunnelSettings(), agent: "x")),
            Frame(type: .open, flags: .endStream, stream: 1, payload: head),
            Frame(type: .response, stream: 1, payload: try TunnelFrameCodec.encodeResponseHead(TunnelResponseHead(status: 204))),
            Frame(type: .data, stream: 7, payload: Array(0 ... 255)),
            Frame(type: .data, flags: .endStream, stream: 7),
            Frame(type: .reset, stream: 3, payload: TunnelFrameCodec.encodeReset(code: .cancel, reason: "bye")),
            Frame(type: .windowUpdate, stream: 0, payload: u32(65536)),
            Frame(type: .ping, flags: [.ack], payload: u64(0xDEAD_BEEF_0123_4567)),
            Frame(type: .goAway, payload: TunnelFrameCodec.encodeGoAway(lastStreamID: 9, code: .noError, reason: "drain")),
            Frame(type: nil, flags: TunnelFlags(rawValue: 0xF0), stream: 5, payload: [1, 2, 3]),
        ]
        var message: [UInt8] = []
        for f in frames {
            f.payload.withUnsafeBytes {
                TunnelFrameCodec.encode(rawType: f.type?.rawValue ?? 0x7F, flags: f.flags, stream: f.stream, payload: $0, into: &message)
            }
        }
        #expect(decodeFrames([message]) == frames)
        // Slices of a larger buffer decode the same (indices not starting at 0).
        let padded = [9, 9, 9] + message
        var seen = 0
        try TunnelFrameCodec.forEachFrame(in: padded[3...]) { type, _, _, payload in
            #expect(type == frames[seen].type && Array(payload) == frames[seen].payload)
            seen += 1
        }
        #expect(seen == frames.count)

        let reset = try #require(TunnelFrameCodec.decodeReset(frames[5].payload[...]))
        #expect(reset.0 == .cancel && reset.1 == "bye")
        let goAway = try #require(TunnelFrameCodec.decodeGoAway(frames[8].payload[...]))
        #expect(goAway.0 == 9 && goAway.1 == .noError && goAway.2 == "drain")
        #expect(TunnelFrameCodec.decodeReset([0, 0, 0][...]) == nil)
        #expect(TunnelFrameCodec.decodeGoAway([0, 0, 0, 1, 0, 0, 0][...]) == nil)
    }

    @Test func truncatedFramesAreProtocolErrors() throws {
        let message = frame(.ping, u64(1)) + frame(.data, stream: 1, [1, 2, 3])
        let boundaries: Set<Int> = [0, 18, message.count]
        for cut in 0 ... message.count {
            var count = 0
            do {
                try TunnelFrameCodec.forEachFrame(in: message[..<cut]) { _, _, _, _ in count += 1 }
                #expect(boundaries.contains(cut), "cut at \(cut) accepted")
            } catch {
                #expect(!boundaries.contains(cut))
                #expect(error == .protocolError("truncated frame"))
            }
        }
        // A length that would overflow 32-bit arithmetic is just "truncated".
        #expect(throws: TunnelProtocolError.protocolError("truncated frame")) {
            try TunnelFrameCodec.forEachFrame(in: [0xFF, 0xFF, 0xFF, 0xFF, 4, 0, 0, 0, 0, 1][...]) { _, _, _, _ in }
        }
    }

    @Test func requestHeadRoundTripsAndHasTheSpecLayout() throws {
        let head = TunnelRequestHead(method: "GET", target: "/a?b=1", headers: ["Host": "x", "X-Dup": "1", "x-dup": "2 ä"])
        let bytes = try TunnelFrameCodec.encodeRequestHead(head)
        #expect(Array(bytes.prefix(14)) == [3] + Array("GET".utf8) + [0, 6] + Array("/a?b=1".utf8) + [0, 3])
        #expect(Array(bytes[14 ..< 23]) == [0, 4] + Array("Host".utf8) + [0, 1, UInt8(ascii: "x")])
        let decoded = try TunnelFrameCodec.decodeRequestHead(bytes)
        #expect(decoded == head)
        #expect(decoded.headers["X-DUP"] == ["1", "2 ä"])
        #expect(try TunnelFrameCodec.decodeRequestHead(TunnelFrameCodec.encodeRequestHead(TunnelRequestHead(method: "OPTIONS", target: "*"))).headers.isEmpty)
    }

    @Test func responseHeadRoundTrips() throws {
        for status in [100, 200, 404, 599] {
            let head = TunnelResponseHead(status: status, headers: ["Content-Type": "application/x-ndjson", "Empty": ""])
            let bytes = try TunnelFrameCodec.encodeResponseHead(head)
            #expect(Array(bytes.prefix(4)) == u16(UInt16(status)) + [0, 2])
            #expect(try TunnelFrameCodec.decodeResponseHead(bytes) == head)
        }
        for status in [0, 99, 600, 70000] {
            #expect(throws: TunnelProtocolError.self) { try TunnelFrameCodec.encodeResponseHead(TunnelResponseHead(status: status)) }
        }
        #expect(throws: TunnelProtocolError.protocolError("invalid status 600")) {
            try TunnelFrameCodec.decodeResponseHead(u16(600) + u16(0))
        }
    }

    /// Every strict prefix of a valid head and every head with trailing bytes is rejected.
    @Test func truncatedOrPaddedHeadsAreRejected() throws {
        let request = try TunnelFrameCodec.encodeRequestHead(TunnelRequestHead(method: "PUT", target: "/x", headers: ["A": "b", "C": "d"]))
        let response = try TunnelFrameCodec.encodeResponseHead(TunnelResponseHead(status: 201, headers: ["A": "b"]))
        for cut in 0 ..< request.count {
            #expect(throws: TunnelProtocolError.self) { try TunnelFrameCodec.decodeRequestHead(request[..<cut]) }
        }
        for cut in 0 ..< response.count {
            #expect(throws: TunnelProtocolError.self) { try TunnelFrameCodec.decodeResponseHead(response[..<cut]) }
        }
        #expect(throws: TunnelProtocolError.protocolError("trailing bytes after head")) { try TunnelFrameCodec.decodeRequestHead(request + [0]) }
        #expect(throws: TunnelProtocolError.protocolError("trailing bytes after head")) { try TunnelFrameCodec.decodeResponseHead(response + [0]) }
        // A hostile header count is rejected before anything is reserved for it.
        #expect(throws: TunnelProtocolError.protocolError("truncated head")) { try TunnelFrameCodec.decodeResponseHead(u16(200) + u16(0xFFFF)) }
    }

    /// Heads go to HTTP peers: no CR/LF smuggling, names and methods are tokens.
    @Test func invalidHeadFieldsAreRejectedBothWays() throws {
        func request(method: [UInt8] = Array("GET".utf8), target: [UInt8] = [0x2F], name: [UInt8] = [0x61], value: [UInt8] = [0x62]) -> [UInt8] {
            [UInt8(method.count)] + method + u16(UInt16(target.count)) + target + u16(1)
                + u16(UInt16(name.count)) + name + u16(UInt16(value.count)) + value
        }
        #expect(try TunnelFrameCodec.decodeRequestHead(request()) == TunnelRequestHead(method: "GET", target: "/", headers: ["a": "b"]))
        #expect(try TunnelFrameCodec.decodeRequestHead(request(value: [0x09, 0x80, 0xFF, 0x20])).headers.first(name: "a") != nil, "HTAB and obs-text allowed")
        let bad: [(String, [UInt8])] = [
            ("invalid method", request(method: [])), ("invalid method", request(method: Array("G T".utf8))),
            ("invalid target", request(target: [])), ("invalid target", request(target: Array("/a b".utf8))),
            ("invalid target", request(target: [0x2F, 0x0A])),
            ("invalid header name", request(name: [])), ("invalid header name", request(name: Array("a:".utf8))),
            ("invalid header value", request(value: [0x62, 0x0D, 0x0A, 0x62])), ("invalid header value", request(value: [0x00])),
            ("invalid header value", request(value: [0x7F])),
        ]
        for (reason, bytes) in bad {
            #expect(throws: TunnelProtocolError.protocolError(reason)) { try TunnelFrameCodec.decodeRequestHead(bytes) }
        }
        let encodeBad: [TunnelRequestHead] = [
            TunnelRequestHead(method: "", target: "/"),
            TunnelRequestHead(method: String(repeating: "M", count: 256), target: "/"),
            TunnelRequestHead(method: "GET", target: "/\r\n"),
            TunnelRequestHead(method: "GET", target: "/" + String(repeating: "a", count: 65535)),
            TunnelRequestHead(method: "GET", target: "/", headers: ["X": "a\r\nInjected: 1"]),
            TunnelRequestHead(method: "GET", target: "/", headers: ["X Y": "a"]),
            TunnelRequestHead(method: "GET", target: "/", headers: ["X": String(repeating: "v", count: 65536)]),
        ]
        for head in encodeBad {
            #expect(throws: TunnelProtocolError.self) { try TunnelFrameCodec.encodeRequestHead(head) }
        }
        #expect(throws: TunnelProtocolError.self) {
            try TunnelFrameCodec.encodeResponseHead(TunnelResponseHead(status: 200, headers: ["Set-Cookie": "a\nb"]))
        }
        // The longest encodable fields are fine.
        let longest = TunnelRequestHead(method: String(repeating: "M", count: 255), target: "/" + String(repeating: "a", count: 65534))
        #expect(try TunnelFrameCodec.decodeRequestHead(TunnelFrameCodec.encodeRequestHead(longest)) == longest)
    }

    @Test func helloCarriesEverySettingAndTheAgent() throws {
        var s = TunnelSettings()
        s.streamWindow = 5_000_000
        s.tunnelWindow = Int(Int32.max)
        s.maxStreams = 7
        s.maxMessageSize = 2048
        s.maxHeadSize = 999
        s.pingIntervalMilliseconds = 15_000
        let payload = TunnelFrameCodec.encodeHello(settings: s, agent: "tether-bridge/0.3 linux")
        #expect(Array(payload.prefix(4)) == [0, 1, 0, 6])
        #expect(Array(payload[4 ..< 10]) == u16(1) + u32(5_000_000))
        let hello = try TunnelFrameCodec.decodeHello(payload)
        #expect(hello.version == 1 && hello.settings == s && hello.agent == "tether-bridge/0.3 linux")
    }

    @Test func helloDefaultsUnknownIdsAndLimits() throws {
        // No settings at all: defaults. Unknown ids are skipped.
        #expect(try TunnelFrameCodec.decodeHello(u16(1) + u16(0)).settings == TunnelSettings())
        let withUnknown = u16(1) + u16(2) + u16(0x99) + u32(123) + u16(3) + u32(5) + Array("agent".utf8)
        let hello = try TunnelFrameCodec.decodeHello(withUnknown)
        #expect(hello.settings.maxStreams == 5 && hello.settings.streamWindow == 1 << 20 && hello.agent == "agent")

        #expect(throws: TunnelProtocolError.unsupportedVersion) { try TunnelFrameCodec.decodeHello(u16(2) + u16(0)) }
        #expect(throws: TunnelProtocolError.unsupportedVersion) { try TunnelFrameCodec.decodeHello(u16(0)) }
        #expect(TunnelProtocolError.unsupportedVersion.closeCode == 4002)
        let malformed: [[UInt8]] = [[], [0], u16(1), u16(1) + [0], u16(1) + u16(1) + u16(1) + [0, 0, 0]]
        for bytes in malformed {
            #expect(throws: TunnelProtocolError.protocolError("malformed HELLO")) { try TunnelFrameCodec.decodeHello(bytes) }
        }
        #expect(throws: TunnelProtocolError.protocolError("window above 2^31-1 in HELLO")) {
            try TunnelFrameCodec.decodeHello(u16(1) + u16(1) + u16(1) + u32(0x8000_0000))
        }
        #expect(throws: TunnelProtocolError.protocolError("window above 2^31-1 in HELLO")) {
            try TunnelFrameCodec.decodeHello(u16(1) + u16(1) + u16(2) + u32(0xFFFF_FFFF))
        }
        #expect(try TunnelFrameCodec.decodeHello(u16(1) + u16(1) + u16(2) + u32(0x7FFF_FFFF)).settings.tunnelWindow == Int(Int32.max))
        #expect(throws: TunnelProtocolError.protocolError("MAX_MESSAGE_SIZE below 1024")) {
            try TunnelFrameCodec.decodeHello(u16(1) + u16(1) + u16(4) + u32(1023))
        }
        #expect(throws: TunnelProtocolError.protocolError("HELLO agent over 256 bytes")) {
            try TunnelFrameCodec.decodeHello(u16(1) + u16(0) + [UInt8](repeating: 0x61, count: 257))
        }
        // Long agents are cut at a character boundary when sent.
        let agent = String(repeating: "é", count: 200)  // 400 bytes
        let sent = try TunnelFrameCodec.decodeHello(TunnelFrameCodec.encodeHello(settings: TunnelSettings(), agent: agent)).agent
        #expect(sent == String(repeating: "é", count: 128))
    }

    @Test func reasonsAreCutAtCharacterBoundaries() {
        #expect(TunnelFrameCodec.utf8Prefix("abc", maxBytes: 3) == Array("abc".utf8)[...])
        #expect(Array(TunnelFrameCodec.utf8Prefix("aé", maxBytes: 2)) == [0x61])
        #expect(Array(TunnelFrameCodec.utf8Prefix("a€b", maxBytes: 3)) == [0x61])
        #expect(Array(TunnelFrameCodec.utf8Prefix("a€b", maxBytes: 4)) == Array("a€".utf8))
        let reset = TunnelFrameCodec.encodeReset(code: .internalError, reason: String(repeating: "x", count: 1000))
        #expect(reset.count == 4 + TunnelProtocol.maxReasonSize)
    }

    @Test func errorCodeNames() {
        #expect(TunnelErrorCode.localTimeout.name == "LOCAL_TIMEOUT")
        #expect(TunnelErrorCode.noError.description == "NO_ERROR")
        #expect(TunnelErrorCode.headTooLarge.name == "HEAD_TOO_LARGE")
        #expect(TunnelErrorCode.headTooLarge.rawValue == 10)
        #expect(TunnelErrorCode(rawValue: 11).name == "UNKNOWN_11")
        #expect(TunnelErrorCode(rawValue: 11).normalized == .internalError)
        #expect(TunnelErrorCode.cancel.normalized == .cancel)
        #expect(TunnelFlags(rawValue: 0xFF).contains([.endStream, .ack]))
    }
}
