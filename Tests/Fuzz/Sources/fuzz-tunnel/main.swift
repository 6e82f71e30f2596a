import TetherHTTP
@_spi(Testing) import TetherTunnel

/// Drives both roles with hostile peers. The first byte picks settings and a mode: raw
/// messages (u16 length-prefixed chunks of the input) or frames built from 8-byte recipes,
/// which reach deep into the stream state machine. Between messages the harness acts like a
/// caller (opens streams, answers, sends bodies, passes data on, resets). Any crash, a broken
/// credit invariant, a negative window, an outbound message over the peer's limit or one that
/// does not parse, or a dead multiplexer coming back to life is a finding.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let input = Array(UnsafeBufferPointer(start: data, count: size))
    guard let config = input.first else { return 0 }
    let rest = input[1...]
    checkCodecRoundTrips(rest)
    let messages = config & 0x80 != 0 ? recipeMessages(rest) : rawMessages(rest)
    for role in [TunnelMultiplexer.Role.relay, .bridge] {
        run(role, config: config, messages: messages)
    }
    return 0
}

private func settings(_ variant: UInt8) -> TunnelSettings {
    var s = TunnelSettings()
    switch variant & 3 {
    case 0: break
    case 1: s.streamWindow = 1024; s.tunnelWindow = 4096; s.maxStreams = 3; s.maxMessageSize = 1024; s.maxHeadSize = 64
    case 2: s.streamWindow = 0; s.tunnelWindow = 100; s.maxStreams = 1
    default: s.streamWindow = 3000; s.tunnelWindow = 2000; s.maxMessageSize = 2048
    }
    return s
}

private func run(_ role: TunnelMultiplexer.Role, config: UInt8, messages: [[UInt8]]) {
    var mux = TunnelMultiplexer(role: role, settings: settings(config), agent: "fuzz")
    let consumeAll = config & 0x10 != 0
    var held: [StreamID: Int] = [:]
    var queue = messages
    if config & 0x40 != 0 {
        queue.insert(frame(.hello, TunnelFrameCodec.encodeHello(settings: settings(config >> 2), agent: "peer")), at: 0)
    }
    var failure: TunnelProtocolError?
    for (step, message) in queue.enumerated() {
        do {
            try mux.receive(message: message)
            precondition(failure == nil, "a dead multiplexer accepted a message")
        } catch {
            precondition(failure == nil || failure == error, "a dead multiplexer changed its error")
            precondition([1009, 4002, 4003].contains(error.closeCode), "unexpected close code \(error.closeCode)")
            precondition(!mux.isReady && !mux.hasOutbound && mux.nextEvent() == nil && mux.activeStreamCount == 0)
            failure = error
            continue
        }
        while let event = mux.nextEvent() {
            switch event {
            case .hello:
                precondition(mux.isReady)
            case let .streamOpened(id, _, end):
                precondition(role == .bridge)  // may be gone already: later frames of the message count too
                if step % 3 != 0 {
                    mux.sendResponse(id, TunnelResponseHead(status: 200, headers: ["Content-Type": "text/plain"]), endStream: end && step % 2 == 0)
                }
            case let .response(id, _, _):
                precondition(role == .relay)
                _ = id
            case let .data(id, bytes, _):
                precondition(bytes.count <= mux.localSettings.streamWindow)
                if consumeAll { mux.consumed(id, bytes: bytes.count) } else { held[id, default: 0] += bytes.count }
            case let .streamReset(id, _, _):
                precondition(!mux.isOpen(id))
                held[id] = nil
            case .windowAvailable, .ping, .pong, .goAway:
                break
            }
        }
        act(&mux, step: step, held: &held)
        check(mux)
    }
}

/// What a caller would do between messages, varied by step.
private func act(_ mux: inout TunnelMultiplexer, step: Int, held: inout [StreamID: Int]) {
    let body = [UInt8](repeating: UInt8(truncatingIfNeeded: step), count: (step * 977) % 5000)
    if mux.role == .relay, mux.canOpenStream {
        let id = mux.openStream(TunnelRequestHead(method: "POST", target: "/\(step)"), endStream: step % 4 == 0)
        precondition(id != nil || mux.peerSettings.map { $0.maxHeadSize < 64 } == true, "canOpenStream but openStream failed")
    }
    let highest = max(mux.highestStreamID, 6)
    for id in (highest - 5) ... highest where mux.isOpen(id) {
        let window = mux.sendWindow(for: id)
        precondition(window >= 0)
        let taken = mux.sendData(id, body, endStream: step % 3 == 1)
        precondition(taken <= window && taken <= body.count)
    }
    if step % 5 == 4, let (id, n) = held.first {
        mux.consumed(id, bytes: n / 2 + 1)
        held[id] = n / 2 + 1 >= n ? nil : n - n / 2 - 1
    }
    if step % 7 == 6 { mux.reset(StreamID(step % 5 + 1), code: .cancel) }
    if step % 11 == 10 { mux.ping(UInt64(step)) }
    if step % 13 == 12 { mux.goAway() }
}

private func check(_ mux: TunnelMultiplexer) {
    if let violation = mux.invariantViolation() { preconditionFailure(violation) }
    var copy = mux
    let limit = mux.peerSettings?.maxMessageSize ?? TunnelProtocol.minMessageSize
    while let message = copy.takeOutboundMessage() {
        precondition(!message.isEmpty && message.count <= limit, "outbound message of \(message.count) bytes over \(limit)")
        do {
            try TunnelFrameCodec.forEachFrame(in: message[...]) { type, _, _, _ in precondition(type != nil) }
        } catch {
            preconditionFailure("outbound message does not parse: \(error)")
        }
    }
}

/// Whatever decodes must re-encode to something that decodes the same. Invalid UTF-8 comes
/// out as U+FFFD (3 bytes each), so only ASCII heads must re-encode within the length limits.
private func checkCodecRoundTrips(_ bytes: ArraySlice<UInt8>) {
    func isASCII(_ headers: HTTPHeaders, _ strings: String...) -> Bool {
        (strings + headers.flatMap { [$0.name, $0.value] }).allSatisfy { $0.utf8.allSatisfy { $0 < 0x80 } }
    }
    if let head = try? TunnelFrameCodec.decodeRequestHead(bytes) {
        if let encoded = try? TunnelFrameCodec.encodeRequestHead(head) {
            precondition((try? TunnelFrameCodec.decodeRequestHead(encoded)) == head, "request head round trip")
        } else {
            precondition(!isASCII(head.headers, head.method, head.target), "decoded request head does not re-encode")
        }
    }
    if let head = try? TunnelFrameCodec.decodeResponseHead(bytes) {
        if let encoded = try? TunnelFrameCodec.encodeResponseHead(head) {
            precondition((try? TunnelFrameCodec.decodeResponseHead(encoded)) == head, "response head round trip")
        } else {
            precondition(!isASCII(head.headers), "decoded response head does not re-encode")
        }
    }
    if let hello = try? TunnelFrameCodec.decodeHello(bytes) {
        let again = try? TunnelFrameCodec.decodeHello(TunnelFrameCodec.encodeHello(settings: hello.settings, agent: hello.agent))
        precondition(again?.settings == hello.settings, "HELLO settings round trip")
        precondition(hello.agent.utf8.count > TunnelProtocol.maxAgentSize || again?.agent == hello.agent, "HELLO agent round trip")
    }
}

private func rawMessages(_ bytes: ArraySlice<UInt8>) -> [[UInt8]] {
    var out: [[UInt8]] = []
    var i = bytes.startIndex
    while i + 2 <= bytes.endIndex {
        let n = Int(bytes[i]) << 8 | Int(bytes[i + 1])
        let end = min(bytes.endIndex, i + 2 + n)
        out.append(Array(bytes[(i + 2) ..< end]))
        i = end
    }
    return out
}

/// Frames from 8-byte recipes [type, flags, stream, a, b, c, d, e]: mostly well-formed
/// payloads with the odd defect, so the fuzzer gets past framing into the state machine.
private func recipeMessages(_ bytes: ArraySlice<UInt8>) -> [[UInt8]] {
    var out: [[UInt8]] = []
    var message: [UInt8] = []
    var i = bytes.startIndex
    while i + 8 <= bytes.endIndex {
        let r = Array(bytes[i ..< i + 8])
        i += 8
        let stream: StreamID = r[2] >= 250 ? 0xFFFF_FFF0 | StreamID(r[2] & 0x0F) : StreamID(r[2] % 7)
        let flags = TunnelFlags(rawValue: r[1])
        var payload: [UInt8]
        var type = TunnelFrameType(rawValue: r[0] % 9 + 1)
        switch type {
        case .hello?:
            payload = TunnelFrameCodec.encodeHello(version: r[3] == 0 ? 2 : 1, settings: settings(r[4]), agent: "")
        case .open?:
            var headers = HTTPHeaders()
            for k in 0 ..< Int(r[4] % 4) { headers.add(name: "X-\(k)", value: String(repeating: "v", count: Int(r[5]))) }
            payload = (try? TunnelFrameCodec.encodeRequestHead(TunnelRequestHead(method: "GET", target: "/", headers: headers))) ?? []
        case .response?:
            let status = [200, 204, 101, 404, 503][Int(r[4] % 5)]
            payload = (try? TunnelFrameCodec.encodeResponseHead(TunnelResponseHead(status: status, headers: ["A": String(repeating: "b", count: Int(r[5]))]))) ?? []
        case .data?:
            payload = [UInt8](repeating: r[5], count: Int(r[3]) * 16 + Int(r[4] % 16))
        case .reset?:
            payload = u32(UInt32(r[3] % 12)) + Array("x".utf8)
        case .windowUpdate?:
            payload = r[3] & 1 == 0 ? u32(UInt32(r[4]) << 8 | UInt32(r[5])) : u32(UInt32(r[4]) << 24 | UInt32(r[5]) << 16 | UInt32(r[6]) << 8 | UInt32(r[7]))
        case .ping?:
            payload = Array(r.prefix(r[3] == 0 ? 7 : 8))
        case .goAway?:
            payload = u32(UInt32(r[4] % 7)) + u32(UInt32(r[5] % 12))
        case nil:
            payload = [r[3]]
            type = nil
        }
        // The odd defect: a payload cut short.
        if r[7] == 0xFF, !payload.isEmpty { payload.removeLast() }
        payload.withUnsafeBytes {
            TunnelFrameCodec.encode(rawType: type?.rawValue ?? 0x33, flags: flags, stream: stream, payload: $0, into: &message)
        }
        if r[6] & 1 == 1 || message.count > 60_000 {
            out.append(message)
            message = []
        }
    }
    if !message.isEmpty { out.append(message) }
    return out
}

private func frame(_ type: TunnelFrameType, _ payload: [UInt8]) -> [UInt8] {
    var out: [UInt8] = []
    TunnelFrameCodec.encode(type: type, stream: 0, payload: payload, into: &out)
    return out
}

private func u32(_ v: UInt32) -> [UInt8] {
    [UInt8(v >> 24), UInt8((v >> 16) & 0xFF), UInt8((v >> 8) & 0xFF), UInt8(v & 0xFF)]
}

// SwiftPM links executables with main defined as <module>_main; hand control to libFuzzer's
// driver from there.
@_silgen_name("LLVMFuzzerRunDriver")
func LLVMFuzzerRunDriver(_ argc: UnsafeMutablePointer<Int32>,
                         _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
                         _ callback: @convention(c) (UnsafePointer<UInt8>, Int) -> Int32) -> Int32

@_cdecl("fuzz_tunnel_main")
public func fuzzerMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    var argc = argc
    var argv = argv
    return LLVMFuzzerRunDriver(&argc, &argv, fuzz)
}
