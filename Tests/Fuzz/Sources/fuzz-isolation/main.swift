import TetherIsolation
@_spi(Testing) import TetherTunnel
import TetherWebSocket

/// What the relay parses from a session worker (a container running untrusted work) and the
/// boundary finder used to hand bridges between them. The first byte picks the target and a
/// chunking. Findings: a crash, a preamble or control message that does not survive its own
/// encoding, a split that changes what the decoder sees, a snapshot that builds a multiplexer
/// with broken credit, a "boundary" at which a fresh WebSocket connection cannot start.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let input = Array(UnsafeBufferPointer(start: data, count: size))
    guard let config = input.first else { return 0 }
    let rest = Array(input[1...])
    switch config % 4 {
    case 0: preamble(rest)
    case 1: control(rest, step: Int(config >> 2) + 1)
    case 2: snapshot(rest)
    default: scanner(rest, step: Int(config >> 2) + 1)
    }
    return 0
}

private func preamble(_ bytes: [UInt8]) {
    // Aim past the magic most of the time: the header is easy, the body is the target.
    for candidate in [bytes, [0x54, 0x54, 0x57, 1] + bytes] {
        guard let (parsed, consumed) = (try? WorkerPreamble.parse(candidate[...])) ?? nil else { continue }
        precondition(consumed <= candidate.count && consumed >= WorkerPreamble.headerSize)
        let again = parsed.encoded()
        guard let (reparsed, n) = (try? WorkerPreamble.parse(again[...])) ?? nil else {
            preconditionFailure("a parsed preamble does not parse after encoding")
        }
        precondition(reparsed == parsed && n == again.count, "preamble changed through its encoding")
    }
}

private func control(_ bytes: [UInt8], step: Int) {
    var whole = ControlMessageDecoder()
    whole.feed(bytes)
    var expected: [ControlMessage] = []
    var wholeFailed = false
    do {
        while let m = try whole.next() { expected.append(m) }
    } catch {
        wholeFailed = true
    }
    var split = ControlMessageDecoder()
    var got: [ControlMessage] = []
    var splitFailed = false
    var i = 0
    outer: while i < bytes.count {
        split.feed(Array(bytes[i..<min(bytes.count, i + step)]))
        i += step
        do {
            while let m = try split.next() { got.append(m) }
        } catch {
            splitFailed = true
            break outer
        }
    }
    precondition(got == expected && splitFailed == wholeFailed, "chunking changed the control messages")
    for m in expected {
        var d = ControlMessageDecoder()
        d.feed(m.encoded())
        precondition((try? d.next()) == m, "a control message does not survive its encoding")
    }
}

private func snapshot(_ bytes: [UInt8]) {
    var candidates = [bytes]
    if bytes.count >= TunnelSnapshot.encodedSize - 1 { candidates.append([1] + bytes.prefix(TunnelSnapshot.encodedSize - 1)) }
    for candidate in candidates {
        guard let s = try? TunnelSnapshot.decode(candidate[...]) else { continue }
        precondition(s.inconsistency == nil)
        precondition((try? TunnelSnapshot.decode(s.encoded()[...])) == s, "snapshot changed through its encoding")
        let mux = TunnelMultiplexer(role: .relay, restoring: s)
        precondition(mux.invariantViolation() == nil, "restored multiplexer: \(mux.invariantViolation() ?? "")")
        precondition(!mux.hasOutbound && mux.isReady)
    }
}

private func scanner(_ bytes: [UInt8], step: Int) {
    var s = WebSocketFrameScanner(maxMessageSize: 1 << 16)
    var position = 0
    var lastBoundary = 0
    while position < bytes.count {
        let n = min(step, bytes.count - position)
        guard let (scanned, last) = try? s.scan(Array(bytes[position..<position + n])) else { return }
        precondition(scanned == n)
        if let last {
            precondition(last > 0 && last <= n)
            lastBoundary = position + last
        }
        position += n
    }
    // Up to the last boundary is whole messages: a fresh connection ends between messages
    // (unless the frames themselves break the protocol, which the codec reports).
    var ws = WebSocketConnection(role: .server, maxMessageSize: 1 << 16, autoReplyPing: false)
    ws.receive(Array(bytes[0..<lastBoundary]))
    var ended = false  // a protocol error, or a close frame: the stream is over either way
    while let e = ws.nextEvent() {
        switch e {
        case .protocolError, .close: ended = true
        default: break
        }
    }
    precondition(ended || ws.isAtMessageBoundary, "the scanner's boundary is inside a message")
}

// SwiftPM links executables with main defined as <module>_main; hand control to libFuzzer's
// driver from there.
@_silgen_name("LLVMFuzzerRunDriver")
func LLVMFuzzerRunDriver(_ argc: UnsafeMutablePointer<Int32>,
                         _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
                         _ callback: @convention(c) (UnsafePointer<UInt8>, Int) -> Int32) -> Int32

@_cdecl("fuzz_isolation_main")
public func fuzzerMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    var argc = argc
    var argv = argv
    return LLVMFuzzerRunDriver(&argc, &argv, fuzz)
}
