// The tether.v1 tunnel (TetherTunnel, docs/PROTOCOL.md): frame codec and the multiplexer's
// per-stream bookkeeping. Run from Benchmarks/:
//   swift package --disable-sandbox benchmark --target TunnelBenchmarks
// Every benchmark does 1,000 operations per measured iteration (scalingFactor .kilo), so the
// reported figures are per operation (per frame, or per stream). Results: Benchmarks/results/micro.md.

import Benchmark
import TetherHTTP
import TetherTunnel

/// Inputs built once, on first use.
final class Fixture: Sendable {
    /// What the relay forwards for `POST /api/ollama/api/chat` (prefix, token and Authorization
    /// removed, X-Forwarded-* added).
    let openHead = TunnelRequestHead(method: "POST", target: "/api/chat", headers: [
        "Host": "relay.cloudtolocalllm.online",
        "User-Agent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0.0.0 Safari/537.36",
        "Accept": "application/json, text/plain, */*",
        "Content-Type": "application/json",
        "Content-Length": "154",
        "Origin": "https://app.cloudtolocalllm.online",
        "Accept-Language": "en-US,en;q=0.9",
        "X-Forwarded-For": "203.0.113.7",
        "X-Forwarded-Proto": "https",
    ])
    let responseHead = TunnelResponseHead(status: 200, headers: [
        "Content-Type": "application/x-ndjson",
        "Date": "Sun, 22 Nov 2026 13:52:02 GMT",
    ])
    let data1K: [UInt8]
    let data16K: [UInt8]
    /// One WebSocket message each, as `TunnelMultiplexer` receives them.
    let openFrame: [UInt8]
    let data1KFrame: [UInt8]
    let data16KFrame: [UInt8]
    let windowUpdateFrame: [UInt8]
    let requestBody: [UInt8]
    /// One NDJSON line of a streamed chat answer (what a bridge forwards per token, about).
    let responseChunk: [UInt8]

    init() {
        var state: UInt64 = 0x2545_F491_4F6C_DD1D
        func bytes(_ n: Int) -> [UInt8] {
            (0 ..< n).map { _ in
                state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
                return UInt8(truncatingIfNeeded: state >> 33)
            }
        }
        data1K = bytes(1024)
        data16K = bytes(16 * 1024)
        requestBody = Array(#"{"model":"llama3.2:3b","messages":[{"role":"user","content":"Why is the sky blue? Answer in two sentences."}],"stream":true,"options":{"temperature":0.7}}"#.utf8)
        responseChunk = Array((#"{"model":"llama3.2:3b","created_at":"2026-11-22T13:52:02.118Z","message":{"role":"assistant","content":" the"},"done":false}"# + "\n").utf8)

        var open: [UInt8] = []
        // The fixture is fixed and valid: a failure here is a bug in the benchmark itself.
        let payload = (try? TunnelFrameCodec.encodeRequestHead(openHead)) ?? []
        TunnelFrameCodec.encode(type: .open, stream: 7, payload: payload, into: &open)
        openFrame = open
        var d1: [UInt8] = []
        TunnelFrameCodec.encode(type: .data, stream: 7, payload: data1K, into: &d1)
        data1KFrame = d1
        var d16: [UInt8] = []
        TunnelFrameCodec.encode(type: .data, stream: 7, payload: data16K, into: &d16)
        data16KFrame = d16
        var wu: [UInt8] = []
        TunnelFrameCodec.encode(type: .windowUpdate, stream: 7, payload: [0x00, 0x04, 0x00, 0x00], into: &wu)
        windowUpdateFrame = wu
    }
}

let fixture = Fixture()

// MARK: - Codec

/// Appends one frame to a reused buffer (the multiplexer appends to its outbound message).
func encodeFrames(_ benchmark: Benchmark, type: TunnelFrameType, payload: [UInt8]) {
    var out: [UInt8] = []
    out.reserveCapacity(TunnelProtocol.frameHeaderSize + payload.count)
    payload.withUnsafeBytes { payload in
        for i in benchmark.scaledIterations {
            out.removeAll(keepingCapacity: true)
            TunnelFrameCodec.encode(type: type, stream: StreamID(truncatingIfNeeded: i | 1), payload: payload, into: &out)
            blackHole(out.count)
        }
    }
}

/// Walks the frames of one message: header checks, the payload is a slice (no copy).
func walkFrames(_ benchmark: Benchmark, message: [UInt8], _ body: (TunnelFrameType?, ArraySlice<UInt8>) throws(TunnelProtocolError) -> Void) {
    for _ in benchmark.scaledIterations {
        do {
            try TunnelFrameCodec.forEachFrame(in: message[...]) { (type, _, _, payload) throws(TunnelProtocolError) in
                try body(type, payload)
            }
        } catch {
            benchmark.error("frame did not decode: \(error)")
        }
    }
}

// MARK: - Multiplexer

/// A relay and a bridge multiplexer wired back to back: every outbound message of one is
/// received by the other, as over a real tunnel. Events are handled as the relay and the bridge
/// do: the bridge answers each OPEN, both report DATA as consumed at once (which returns credit).
struct TunnelPair {
    var relay: TunnelMultiplexer
    var bridge: TunnelMultiplexer
    /// Streams whose OPEN the bridge has seen, oldest first (a ring; `head` is the oldest).
    var opened: [StreamID] = []
    var head = 0
    var failed: String?

    init(settings: TunnelSettings) {
        relay = TunnelMultiplexer(role: .relay, settings: settings, agent: "tether-relay/bench")
        bridge = TunnelMultiplexer(role: .bridge, settings: settings, agent: "tether-bridge/bench")
        pump()
    }

    /// Moves messages both ways and handles events until both sides are quiet.
    mutating func pump() {
        var moved = true
        while moved, failed == nil {
            moved = false
            while let message = relay.takeOutboundMessage() {
                moved = true
                do { try bridge.receive(message: message) } catch { failed = "bridge: \(error)" }
            }
            while let event = bridge.nextEvent() { handleBridge(event) }
            while let message = bridge.takeOutboundMessage() {
                moved = true
                do { try relay.receive(message: message) } catch { failed = "relay: \(error)" }
            }
            while let event = relay.nextEvent() { handleRelay(event) }
        }
    }

    private mutating func handleBridge(_ event: TunnelEvent) {
        switch event {
        case .streamOpened(let id, let head, _):
            blackHole(head)
            opened.append(id)
        case .data(let id, let bytes, _):
            bridge.consumed(id, bytes: bytes.count)
        case .streamReset(let id, let code, _):
            failed = "bridge saw a reset of stream \(id): \(code)"
        case .hello, .windowAvailable, .ping, .pong, .goAway, .response:
            break
        }
    }

    private mutating func handleRelay(_ event: TunnelEvent) {
        switch event {
        case .response(_, let head, _):
            blackHole(head)
        case .data(let id, let bytes, _):
            relay.consumed(id, bytes: bytes.count)
        case .streamReset(let id, let code, _):
            failed = "relay saw a reset of stream \(id): \(code)"
        case .hello, .windowAvailable, .ping, .pong, .goAway, .streamOpened:
            break
        }
    }

    /// Relay side: opens a stream with the chat request and its body (END_STREAM on the body).
    mutating func openChatStream() {
        guard let id = relay.openStream(fixture.openHead, endStream: false) else {
            failed = "openStream refused (\(relay.activeStreamCount) open)"
            return
        }
        _ = relay.sendData(id, fixture.requestBody, endStream: true)
        pump()
    }

    /// Bridge side: answers the oldest open stream with a head and `chunks` NDJSON lines, each
    /// sent as the local service produced it (one message, and the relay's consumption, each).
    mutating func answerOldestStream(chunks: Int) {
        guard head < opened.count else {
            failed = "no stream to answer"
            return
        }
        let id = opened[head]
        head += 1
        if head == opened.count {
            opened.removeAll(keepingCapacity: true)
            head = 0
        }
        bridge.sendResponse(id, fixture.responseHead, endStream: false)
        for i in 0 ..< chunks {
            let sent = bridge.sendData(id, fixture.responseChunk, endStream: i == chunks - 1)
            if sent != fixture.responseChunk.count { failed = "window closed on stream \(id)" }
            pump()
        }
    }

    var openCount: Int { opened.count - head }
}

/// Steady state with `concurrent` streams in flight: each operation opens one stream and
/// finishes the oldest, so every operation is one whole stream life (OPEN + request body,
/// RESPONSE, 8 response DATA, credit returned, both ends) while `concurrent - 1` others stay
/// open. Default windows: WINDOW_UPDATEs are batched and rare here (the tunnel's every ~2 MiB).
func streamLifecycles(_ benchmark: Benchmark, concurrent: Int) {
    var pair = TunnelPair(settings: TunnelSettings())
    for _ in 1 ..< concurrent { pair.openChatStream() }
    benchmark.startMeasurement()
    for _ in benchmark.scaledIterations {
        pair.openChatStream()
        while pair.openCount >= concurrent {
            pair.answerOldestStream(chunks: 8)
        }
    }
    benchmark.stopMeasurement()
    if let failed = pair.failed { benchmark.error(failed) }
    if pair.relay.activeStreamCount != concurrent - 1 || pair.bridge.activeStreamCount != concurrent - 1 {
        benchmark.error("\(pair.relay.activeStreamCount) streams open on the relay, expected \(concurrent - 1)")
    }
}

let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .init(
        metrics: [.wallClock, .cpuTotal, .throughput, .mallocCountTotal],
        timeUnits: .nanoseconds,
        scalingFactor: .kilo,
        maxDuration: .seconds(2)
    )

    // Head encoding validates every field (the peer would reset a stream with a bad one).
    Benchmark("OPEN encode (head, 9 fields)") { benchmark in
        let head = fixture.openHead
        var out: [UInt8] = []
        out.reserveCapacity(1024)
        for i in benchmark.scaledIterations {
            out.removeAll(keepingCapacity: true)
            do {
                let payload = try TunnelFrameCodec.encodeRequestHead(head)
                TunnelFrameCodec.encode(type: .open, stream: StreamID(truncatingIfNeeded: i | 1), payload: payload, into: &out)
            } catch {
                benchmark.error("OPEN did not encode: \(error)")
            }
            blackHole(out.count)
        }
    }

    Benchmark("OPEN decode (frame walk + head)") { benchmark in
        walkFrames(benchmark, message: fixture.openFrame) { (type, payload) throws(TunnelProtocolError) in
            guard type == .open else { throw .protocolError("not an OPEN") }
            blackHole(try TunnelFrameCodec.decodeRequestHead(payload))
        }
    }

    Benchmark("DATA 1 KiB encode") { benchmark in
        encodeFrames(benchmark, type: .data, payload: fixture.data1K)
    }

    Benchmark("DATA 16 KiB encode") { benchmark in
        encodeFrames(benchmark, type: .data, payload: fixture.data16K)
    }

    Benchmark("DATA 1 KiB decode (frame walk, payload slice)") { benchmark in
        walkFrames(benchmark, message: fixture.data1KFrame) { (type, payload) throws(TunnelProtocolError) in
            guard type == .data, payload.count == 1024 else { throw .protocolError("not a 1 KiB DATA") }
            blackHole(payload)
        }
    }

    Benchmark("DATA 16 KiB decode (frame walk, payload slice)") { benchmark in
        walkFrames(benchmark, message: fixture.data16KFrame) { (type, payload) throws(TunnelProtocolError) in
            guard type == .data, payload.count == 16 * 1024 else { throw .protocolError("not a 16 KiB DATA") }
            blackHole(payload)
        }
    }

    Benchmark("WINDOW_UPDATE encode") { benchmark in
        var out: [UInt8] = []
        out.reserveCapacity(64)
        for i in benchmark.scaledIterations {
            out.removeAll(keepingCapacity: true)
            let increment = UInt32(truncatingIfNeeded: 4096 + (i & 1023)).bigEndian
            withUnsafeBytes(of: increment) { payload in
                TunnelFrameCodec.encode(type: .windowUpdate, stream: StreamID(truncatingIfNeeded: i | 1), payload: payload, into: &out)
            }
            blackHole(out.count)
        }
    }

    Benchmark("WINDOW_UPDATE decode (frame walk + increment)") { benchmark in
        walkFrames(benchmark, message: fixture.windowUpdateFrame) { (type, payload) throws(TunnelProtocolError) in
            guard type == .windowUpdate, payload.count == 4 else { throw .protocolError("not a WINDOW_UPDATE") }
            let i = payload.startIndex
            blackHole(UInt32(payload[i]) << 24 | UInt32(payload[i + 1]) << 16 | UInt32(payload[i + 2]) << 8 | UInt32(payload[i + 3]))
        }
    }

    Benchmark("Stream lifecycle, 1 stream at a time (per stream)") { benchmark in
        streamLifecycles(benchmark, concurrent: 1)
    }

    Benchmark("Stream lifecycle, 256 concurrent streams (per stream)") { benchmark in
        streamLifecycles(benchmark, concurrent: 256)
    }

    // Flow control alone: one long response on one stream, 1 KiB DATA frames, a stream window
    // of 4 KiB so that the relay owes a WINDOW_UPDATE for every DATA it consumes (the batching
    // threshold is a quarter of the window), delivered back to the bridge each time.
    Benchmark("DATA 1 KiB + consumed + WINDOW_UPDATE round trip (per DATA)") { benchmark in
        var settings = TunnelSettings()
        settings.streamWindow = 4096
        var pair = TunnelPair(settings: settings)
        pair.openChatStream()
        guard pair.head < pair.opened.count else {
            benchmark.error(pair.failed ?? "no stream")
            return
        }
        let id = pair.opened[pair.head]
        pair.bridge.sendResponse(id, fixture.responseHead, endStream: false)
        pair.pump()
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations {
            let sent = pair.bridge.sendData(id, fixture.data1K, endStream: false)
            if sent != 1024 { pair.failed = "window closed: sent \(sent)" }
            pair.pump()
        }
        benchmark.stopMeasurement()
        if let failed = pair.failed { benchmark.error(failed) }
        if pair.bridge.sendWindow(for: id) != 4096 {
            benchmark.error("credit was not returned: send window \(pair.bridge.sendWindow(for: id))")
        }
    }

    // What the harness itself adds to each measured iteration (reading /proc/self/stat for
    // cpuTotal allocates and costs CPU inside the window): subtracted in results/micro_table.py.
    Benchmark("Harness: empty iteration", configuration: .init(scalingFactor: .one)) { benchmark in
        blackHole(benchmark.scaledIterations.count)
    }
}
