import XCTest
@testable import TetherHTTP

/// Deterministic RNG (SplitMix64) so failures reproduce from the seed.
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
}

func bytes(_ s: String) -> [UInt8] { Array(s.utf8) }

/// Events with consecutive body pieces merged, so different splits compare equal.
enum Req: Equatable {
    case head(HTTPRequestHead)
    case body([UInt8])
    case end
}

enum Resp: Equatable {
    case head(HTTPResponseHead)
    case body([UInt8])
    case end
}

struct RequestRun {
    var events: [Req] = []
    var error: HTTPParseError?
    /// Total bytes fed when the error was thrown.
    var fedAtError = 0
}

struct ResponseRun {
    var events: [Resp] = []
    var error: HTTPParseError?
}

/// Feeds `pieces` one by one, draining events after each; calls finish() at the end when asked.
func runRequest(_ pieces: [[UInt8]], limits: HTTPLimits = HTTPLimits(), finish: Bool = false,
                file: StaticString = #filePath, line: UInt = #line) -> RequestRun {
    var decoder = HTTPRequestDecoder(limits: limits)
    var run = RequestRun()
    var fed = 0
    var guardCount = 0
    var pendingBody: [UInt8]? = nil
    func flush() {
        if let b = pendingBody { run.events.append(.body(b)); pendingBody = nil }
    }
    func append(_ e: HTTPRequestEvent) {
        switch e {
        case .head(let h): flush(); run.events.append(.head(h))
        case .end: flush(); run.events.append(.end)
        case .body(let b):
            XCTAssertFalse(b.isEmpty, "empty body event", file: file, line: line)
            if pendingBody == nil { pendingBody = b } else { pendingBody?.append(contentsOf: b) }
        }
    }
    for piece in pieces {
        decoder.feed(piece)
        fed += piece.count
        do {
            while let e = try decoder.next() {
                append(e)
                guardCount += 1
                if guardCount > 1_000_000 { XCTFail("runaway decoder", file: file, line: line); flush(); return run }
            }
        } catch {
            run.error = error
            run.fedAtError = fed
            // Dead decoder keeps throwing the same error.
            do {
                _ = try decoder.next()
                XCTFail("decoder did not stay failed", file: file, line: line)
            } catch let again {
                XCTAssertEqual(again, error, file: file, line: line)
            }
            flush()
            return run
        }
    }
    if finish {
        if let error = decoder.finish() {
            run.error = error
        } else {
            do {
                while let e = try decoder.next() { append(e) }
            } catch {
                run.error = error
            }
        }
    }
    flush()
    return run
}

func runResponse(_ pieces: [[UInt8]], methods: [String] = [], limits: HTTPLimits = HTTPLimits(),
                 finish: Bool = false, file: StaticString = #filePath, line: UInt = #line) -> ResponseRun {
    var decoder = HTTPResponseDecoder(limits: limits)
    for m in methods { decoder.expectResponse(toMethod: m) }
    var run = ResponseRun()
    var guardCount = 0
    var pendingBody: [UInt8]? = nil
    func flush() {
        if let b = pendingBody { run.events.append(.body(b)); pendingBody = nil }
    }
    func append(_ e: HTTPResponseEvent) {
        switch e {
        case .head(let h): flush(); run.events.append(.head(h))
        case .end: flush(); run.events.append(.end)
        case .body(let b):
            XCTAssertFalse(b.isEmpty, "empty body event", file: file, line: line)
            if pendingBody == nil { pendingBody = b } else { pendingBody?.append(contentsOf: b) }
        }
    }
    for piece in pieces {
        decoder.feed(piece)
        do {
            while let e = try decoder.next() {
                append(e)
                guardCount += 1
                if guardCount > 1_000_000 { XCTFail("runaway decoder", file: file, line: line); flush(); return run }
            }
        } catch {
            run.error = error
            do {
                _ = try decoder.next()
                XCTFail("decoder did not stay failed", file: file, line: line)
            } catch let again {
                XCTAssertEqual(again, error, file: file, line: line)
            }
            flush()
            return run
        }
    }
    if finish {
        if let error = decoder.finish() {
            run.error = error
        } else {
            do {
                while let e = try decoder.next() { append(e) }
            } catch {
                run.error = error
            }
        }
    }
    flush()
    return run
}

/// Splits `data` into pieces of the given sizes (cycled).
func split(_ data: [UInt8], sizes: [Int]) -> [[UInt8]] {
    var out: [[UInt8]] = []
    var i = 0
    var k = 0
    while i < data.count {
        let n = max(1, sizes[k % sizes.count])
        out.append(Array(data[i..<min(data.count, i + n)]))
        i += n
        k += 1
    }
    return out
}

func randomSplit<R: RandomNumberGenerator>(_ data: [UInt8], maxPiece: Int, using rng: inout R) -> [[UInt8]] {
    var out: [[UInt8]] = []
    var i = 0
    while i < data.count {
        let n = Int.random(in: 1...maxPiece, using: &rng)
        out.append(Array(data[i..<min(data.count, i + n)]))
        i += n
    }
    return out
}

/// Asserts that decoding `raw` fails with the given status (whole, and byte by byte).
func assertRequestError(_ raw: String, status: Int, limits: HTTPLimits = HTTPLimits(),
                        file: StaticString = #filePath, line: UInt = #line) {
    let data = bytes(raw)
    for pieces in [[data], data.map { [$0] }] {
        let run = runRequest(pieces, limits: limits, finish: false)
        XCTAssertEqual(run.error?.status, status, "\(raw.debugDescription): \(String(describing: run.error))",
                       file: file, line: line)
        XCTAssertFalse(run.events.contains(.end), "message completed despite error", file: file, line: line)
    }
}

func assertResponseError(_ raw: String, methods: [String] = [], finish: Bool = false,
                         file: StaticString = #filePath, line: UInt = #line,
                         _ check: (HTTPParseError) -> Bool) {
    let data = bytes(raw)
    for pieces in [[data], data.map { [$0] }] {
        let run = runResponse(pieces, methods: methods, finish: finish)
        guard let error = run.error else {
            XCTFail("no error for \(raw.debugDescription)", file: file, line: line)
            return
        }
        XCTAssertTrue(check(error), "unexpected \(error) for \(raw.debugDescription)", file: file, line: line)
    }
}
