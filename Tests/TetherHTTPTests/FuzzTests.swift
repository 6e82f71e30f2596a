import XCTest
@testable import TetherHTTP

/// Random and mutated inputs must never crash or hang, and must produce a well-formed
/// event sequence that either stops for more input or ends in an HTTPParseError.
final class FuzzTests: XCTestCase {
    static let interesting = Array("\r\n :;,\t\"\\0123456789abcdefABCDEF-/HTTP1.GETchunkedContent-LengthTransfer-EncodinghostHost\u{0}\u{7f}".utf8)
        + [0x80, 0xFF, 0xC3, 0xA9]

    static let tinyLimits = HTTPLimits(maxRequestLineLength: 40, maxHeaderBytes: 120, maxHeaderCount: 4,
                                       maxBodySize: 100, maxChunkLineLength: 12)

    func mutate(_ input: [UInt8], _ gen: inout MessageGenerator) -> [UInt8] {
        var data = input
        for _ in 0..<gen.int(1...4) {
            switch gen.int(0...6) {
            case 0 where !data.isEmpty:  // flip a byte
                data[gen.int(0...(data.count - 1))] = UInt8.random(in: 0...255, using: &gen.rng)
            case 1:  // insert an interesting byte
                data.insert(gen.pick(Self.interesting), at: gen.int(0...data.count))
            case 2 where !data.isEmpty:  // delete a range
                let a = gen.int(0...(data.count - 1))
                let b = min(data.count, a + gen.int(1...10))
                data.removeSubrange(a..<b)
            case 3 where !data.isEmpty:  // duplicate a range
                let a = gen.int(0...(data.count - 1))
                let b = min(data.count, a + gen.int(1...40))
                data.insert(contentsOf: data[a..<b], at: gen.int(0...data.count))
            case 4 where !data.isEmpty:  // truncate
                data.removeLast(gen.int(0...(data.count - 1)))
            case 5:  // replace a line terminator style
                if let i = data.firstIndex(of: 13) { data.remove(at: i) }
            default:  // set a byte to CR or LF
                if !data.isEmpty { data[gen.int(0...(data.count - 1))] = gen.pick([13, 10, 32, 9, 0x3A]) }
            }
        }
        return data
    }

    func checkRequestGrammar(_ run: RequestRun, file: StaticString = #filePath, line: UInt = #line) {
        var inBody = false
        for e in run.events {
            switch e {
            case .head: XCTAssertFalse(inBody, "head inside a message", file: file, line: line); inBody = true
            case .body: XCTAssertTrue(inBody, "body outside a message", file: file, line: line)
            case .end: XCTAssertTrue(inBody, "end outside a message", file: file, line: line); inBody = false
            }
        }
    }

    func checkResponseGrammar(_ run: ResponseRun, file: StaticString = #filePath, line: UInt = #line) {
        var inBody = false
        var switched = false
        for e in run.events {
            XCTAssertFalse(switched, "events after 101", file: file, line: line)
            switch e {
            case .head(let h):
                XCTAssertFalse(inBody, "head inside a message", file: file, line: line)
                if h.status == 101 { switched = true } else if h.status >= 200 { inBody = true }
            case .body: XCTAssertTrue(inBody, "body outside a message", file: file, line: line)
            case .end: XCTAssertTrue(inBody, "end outside a message", file: file, line: line); inBody = false
            }
        }
    }

    func testMutatedRequests() {
        var gen = MessageGenerator(seed: 42)
        var errors = 0
        for _ in 0..<3000 {
            var wire: [UInt8] = []
            for _ in 0..<gen.int(1...3) { wire += gen.request().wire }
            let input = mutate(wire, &gen)
            let limits = gen.chance(0.3) ? Self.tinyLimits : HTTPLimits()
            let finish = gen.chance(0.5)
            let run = runRequest(randomSplit(input, maxPiece: gen.pick([1, 5, 50, 5000]), using: &gen.rng),
                                 limits: limits, finish: finish)
            checkRequestGrammar(run)
            if finish && run.error == nil {
                XCTAssertTrue(run.events.isEmpty || run.events.last == .end, "clean close only between messages")
            }
            if run.error != nil { errors += 1 }
        }
        XCTAssertGreaterThan(errors, 500, "mutations should mostly be detected")
    }

    func testRandomGarbageRequests() {
        var gen = MessageGenerator(seed: 43)
        for _ in 0..<3000 {
            let n = gen.int(0...300)
            let biased = gen.chance(0.5)
            var input = (0..<n).map { _ in biased ? gen.pick(Self.interesting) : UInt8.random(in: 0...255, using: &gen.rng) }
            if gen.chance(0.5) { input = bytes(gen.pick(["GET / HTTP/1.1\r\n", "POST /x HTTP/1.1\r\nHost: a\r\n", "PUT / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"])) + input }
            let run = runRequest(randomSplit(input, maxPiece: gen.pick([1, 3, 64, 1000]), using: &gen.rng),
                                 limits: gen.chance(0.3) ? Self.tinyLimits : HTTPLimits(), finish: true)
            checkRequestGrammar(run)
            if run.error == nil {
                XCTAssertTrue(run.events.isEmpty || run.events.last == .end, "clean close only between messages")
            }
        }
    }

    func testMutatedAndGarbageResponses() {
        var gen = MessageGenerator(seed: 44)
        for i in 0..<3000 {
            var input: [UInt8]
            var methods: [String] = []
            if i % 3 == 0 {
                input = (0..<gen.int(0...300)).map { _ in gen.pick(Self.interesting) }
                if gen.chance(0.5) { input = bytes("HTTP/1.1 200 OK\r\n") + input }
            } else {
                input = []
                let count = gen.int(1...3)
                for j in 0..<count {
                    let method = gen.chance(0.2) ? "HEAD" : (gen.chance(0.05) ? "CONNECT" : "GET")
                    methods.append(method)
                    input += gen.response(method: method, untilEOF: j == count - 1).wire
                }
                input = mutate(input, &gen)
                if gen.chance(0.1) { input = bytes("HTTP/1.1 101 Switching Protocols\r\n\r\n") + input }
            }
            let finish = gen.chance(0.7)
            let run = runResponse(randomSplit(input, maxPiece: gen.pick([1, 5, 50, 5000]), using: &gen.rng),
                                  methods: methods, limits: gen.chance(0.3) ? Self.tinyLimits : HTTPLimits(),
                                  finish: finish)
            checkResponseGrammar(run)
            if finish && run.error == nil, case .head(let h)? = run.events.last {
                // Only a tunnel may end on a head.
                XCTAssertTrue(h.status == 101 || methods.contains("CONNECT"),
                              "closed after head \(h.status) without error")
            }
        }
    }

    /// Truncating a valid request anywhere and closing must report an error (or be clean
    /// only at message boundaries).
    func testTruncationAtEveryPoint() {
        var gen = MessageGenerator(seed: 45)
        for _ in 0..<20 {
            let m = gen.request()
            guard m.wire.count < 600 else { continue }
            for k in 0..<m.wire.count {
                let run = runRequest([Array(m.wire[..<k])], finish: true)
                if run.events.last == .end {
                    XCTAssertNil(run.error)
                } else if k > 0 {
                    XCTAssertEqual(run.error?.status, 400, "cut at \(k)")
                }
            }
            let full = runRequest([m.wire], finish: true)
            XCTAssertNil(full.error)
            XCTAssertEqual(full.events.last, .end)
        }
    }
}
