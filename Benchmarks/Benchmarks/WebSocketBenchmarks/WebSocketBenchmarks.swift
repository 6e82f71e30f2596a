// WebSocket frames (TetherWebSocket): what every tunnel and echo message costs the relay.
// Run from Benchmarks/:
//   swift package --disable-sandbox benchmark --target WebSocketBenchmarks
// Every benchmark does 1,000 operations per measured iteration (scalingFactor .kilo), so the
// reported figures are per operation. Results: Benchmarks/results/micro.md.

import Benchmark
import TetherWebSocket

/// Inputs built once, on first use. Payloads are deterministic pseudo-random bytes (binary) or
/// real-looking text, never all zeros (masking must do real work).
final class Fixture: Sendable {
    static let maskKey: UInt32 = 0x37FA_213D

    let payload64: [UInt8]
    let payload16K: [UInt8]
    /// NDJSON as Ollama streams it: ASCII only (the validator's 8-byte fast path).
    let asciiText16K: [UInt8]
    /// Chat text in German, Russian, Chinese and Japanese with some emoji: about two thirds of
    /// the bytes are in multi-byte sequences (the validator's slow path).
    let mixedText16K: [UInt8]
    /// Masked client frames, as a browser or the bridge sends them.
    let maskedBinary64: [UInt8]
    let maskedBinary16K: [UInt8]
    let maskedText16K: [UInt8]
    let maskedMixedText16K: [UInt8]

    init() {
        var state: UInt64 = 0x9E37_79B9_7F4A_7C15
        func bytes(_ n: Int) -> [UInt8] {
            (0 ..< n).map { _ in
                state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
                return UInt8(truncatingIfNeeded: state >> 33)
            }
        }
        payload64 = bytes(64)
        payload16K = bytes(16 * 1024)
        asciiText16K = Self.fill(16 * 1024, with: #"{"model":"llama3.2:3b","created_at":"2026-11-22T13:52:02.118Z","message":{"role":"assistant","content":" the"},"done":false}"# + "\n")
        mixedText16K = Self.fill(16 * 1024, with: "Grüße aus München! Привет, как дела? 你好，世界。こんにちは 🌍🚀 ")
        maskedBinary64 = Self.frame(.binary, payload64)
        maskedBinary16K = Self.frame(.binary, payload16K)
        maskedText16K = Self.frame(.text, asciiText16K)
        maskedMixedText16K = Self.frame(.text, mixedText16K)
    }

    /// `unit` repeated, cut at a character boundary to at most `count` bytes.
    private static func fill(_ count: Int, with unit: String) -> [UInt8] {
        var s = ""
        while s.utf8.count < count { s += unit }
        var out: [UInt8] = []
        for c in s {
            let n = c.utf8.count
            if out.count + n > count { break }
            out.append(contentsOf: c.utf8)
        }
        return out
    }

    private static func frame(_ opcode: WebSocketOpcode, _ payload: [UInt8]) -> [UInt8] {
        var out: [UInt8] = []
        WebSocketFrameCodec.encode(opcode: opcode, payload: payload, maskKey: maskKey, into: &out)
        return out
    }
}

let fixture = Fixture()

/// The relay's receive path: one server-role connection fed one masked frame per operation,
/// then the event taken (binary payload or validated text).
func receiveFrames(_ benchmark: Benchmark, frame: [UInt8], expectText: Bool) {
    var connection = WebSocketConnection(role: .server)
    var received = 0
    for _ in benchmark.scaledIterations {
        connection.receive(frame)
        while let event = connection.nextEvent() {
            switch event {
            case .binary(let bytes) where !expectText:
                received += 1
                blackHole(bytes)
            case .text(let text) where expectText:
                received += 1
                blackHole(text)
            default:
                benchmark.error("unexpected event \(event)")
            }
        }
    }
    if received != benchmark.scaledIterations.count { benchmark.error("received \(received) messages") }
}

/// The codec's encoder into an empty array: the path `WebSocketConnection` takes for a fresh
/// outbound message (one exact allocation, masking fused with the copy).
func encodeFrames(_ benchmark: Benchmark, payload: [UInt8], maskKey: UInt32?) {
    payload.withUnsafeBytes { payload in
        for _ in benchmark.scaledIterations {
            var out: [UInt8] = []
            WebSocketFrameCodec.encode(opcode: .binary, payload: payload, maskKey: maskKey, into: &out)
            blackHole(out)
        }
    }
}

/// `send` + `takeOutbound` on a connection: as the bridge (client) or the relay (server) sends.
func sendMessages(_ benchmark: Benchmark, role: WebSocketRole, payload: [UInt8]) {
    var connection = WebSocketConnection(role: role)
    payload.withUnsafeBytes { payload in
        for _ in benchmark.scaledIterations {
            connection.send(binary: payload)
            blackHole(connection.takeOutbound())
        }
    }
}

/// `UTF8Validator.isValid` over the whole text (valid input: the validator reads every byte).
func validate(_ benchmark: Benchmark, _ text: [UInt8]) {
    var valid = 0
    text.withUnsafeBytes { text in
        for _ in benchmark.scaledIterations where UTF8Validator.isValid(identity(text)) {
            valid += 1
        }
    }
    blackHole(valid)
    if valid != benchmark.scaledIterations.count { benchmark.error("the text did not validate") }
}

let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .init(
        metrics: [.wallClock, .cpuTotal, .throughput, .mallocCountTotal],
        timeUnits: .nanoseconds,
        scalingFactor: .kilo,
        maxDuration: .seconds(2)
    )

    Benchmark("Decode masked binary frame 64 B (server receive + event)") { benchmark in
        receiveFrames(benchmark, frame: fixture.maskedBinary64, expectText: false)
    }

    Benchmark("Decode masked binary frame 16 KiB (server receive + event)") { benchmark in
        receiveFrames(benchmark, frame: fixture.maskedBinary16K, expectText: false)
    }

    Benchmark("Decode masked text frame 16 KiB ASCII (+ UTF-8 check + String)") { benchmark in
        receiveFrames(benchmark, frame: fixture.maskedText16K, expectText: true)
    }

    Benchmark("Decode masked text frame 16 KiB multilingual (+ UTF-8 check + String)") { benchmark in
        receiveFrames(benchmark, frame: fixture.maskedMixedText16K, expectText: true)
    }

    Benchmark("Encode frame 64 B, masked (client)") { benchmark in
        encodeFrames(benchmark, payload: fixture.payload64, maskKey: Fixture.maskKey)
    }

    Benchmark("Encode frame 64 B, unmasked (server)") { benchmark in
        encodeFrames(benchmark, payload: fixture.payload64, maskKey: nil)
    }

    Benchmark("Encode frame 16 KiB, masked (client)") { benchmark in
        encodeFrames(benchmark, payload: fixture.payload16K, maskKey: Fixture.maskKey)
    }

    Benchmark("Encode frame 16 KiB, unmasked (server)") { benchmark in
        encodeFrames(benchmark, payload: fixture.payload16K, maskKey: nil)
    }

    // The connection draws a fresh mask key per frame from the system CSPRNG.
    Benchmark("Send 64 B message, client role (random mask key)") { benchmark in
        sendMessages(benchmark, role: .client, payload: fixture.payload64)
    }

    Benchmark("Send 64 B message, server role") { benchmark in
        sendMessages(benchmark, role: .server, payload: fixture.payload64)
    }

    Benchmark("UTF-8 validator 16 KiB ASCII") { benchmark in
        validate(benchmark, fixture.asciiText16K)
    }

    Benchmark("UTF-8 validator 16 KiB multilingual") { benchmark in
        validate(benchmark, fixture.mixedText16K)
    }

    // What the harness itself adds to each measured iteration (reading /proc/self/stat for
    // cpuTotal allocates and costs CPU inside the window): subtracted in results/micro_table.py.
    Benchmark("Harness: empty iteration", configuration: .init(scalingFactor: .one)) { benchmark in
        blackHole(benchmark.scaledIterations.count)
    }
}
