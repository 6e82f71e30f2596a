import XCTest
@testable import TetherHTTP

/// Random well-formed messages: the head as the decoder should report it, the body, and
/// the encoded wire bytes.
struct MessageGenerator {
    var rng: SplitMix64

    init(seed: UInt64) { rng = SplitMix64(seed: seed) }

    mutating func int(_ r: ClosedRange<Int>) -> Int { Int.random(in: r, using: &rng) }
    mutating func chance(_ p: Double) -> Bool { Double.random(in: 0..<1, using: &rng) < p }
    mutating func pick<T>(_ xs: [T]) -> T { xs[int(0...(xs.count - 1))] }

    static let tokenChars = Array("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ".utf8)
    static let pathChars = Array("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'()*+,;=:@%/".utf8)
    static let valueChars = Array("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 \t!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~".utf8)
    static let reserved: Set<String> = ["host", "content-length", "transfer-encoding"]

    mutating func token(_ len: ClosedRange<Int>) -> String {
        String(decoding: (0..<int(len)).map { _ in pick(Self.tokenChars) }, as: UTF8.self)
    }

    mutating func fieldValue() -> String {
        if chance(0.05) { return pick(["caf\u{e9}", "\u{65e5}\u{672c} \u{1F600}", "a\u{80}b"]) }
        var v = (0..<int(0...40)).map { _ in pick(Self.valueChars) }
        while let f = v.first, f == 0x20 || f == 0x09 { v.removeFirst() }
        while let l = v.last, l == 0x20 || l == 0x09 { v.removeLast() }
        return String(decoding: v, as: UTF8.self)
    }

    mutating func target() -> String {
        if chance(0.03) { return "*" }
        if chance(0.03) { return "example.com:\(int(1...65535))" }
        var t = "/" + String(decoding: (0..<int(0...60)).map { _ in pick(Self.pathChars) }, as: UTF8.self)
        if chance(0.4) { t += "?" + String(decoding: (0..<int(0...30)).map { _ in pick(Self.pathChars + [UInt8(ascii: "?")]) }, as: UTF8.self) }
        return t
    }

    mutating func body(large: Bool) -> [UInt8] {
        let size: Int
        switch int(0...9) {
        case 0...3: size = 0
        case 4...7: size = int(1...200)
        case 8: size = int(200...5000)
        default: size = large ? int(5000...120_000) : int(1...300)
        }
        return (0..<size).map { _ in UInt8.random(in: 0...255, using: &rng) }
    }

    mutating func extraHeaders(into headers: inout HTTPHeaders) {
        for _ in 0..<int(0...8) {
            var name = token(1...20)
            while Self.reserved.contains(name.lowercased()) { name = token(1...20) }
            headers.add(name: name, value: fieldValue())
        }
    }

    mutating func chunkedBody(_ body: [UInt8]) -> [UInt8] {
        var out: [UInt8] = []
        var i = 0
        while i < body.count {
            let n = min(body.count - i, int(1...max(1, min(body.count, 3000))))
            var sizeHex = String(n, radix: 16, uppercase: chance(0.5))
            if chance(0.1) { sizeHex = "00" + sizeHex }
            out += Array(sizeHex.utf8)
            if chance(0.2) { out += Array(pick([";a=b", "; ext", " ; q=\"s p;\\\"x\"", ";n1=v1;n2"]).utf8) }
            let eol: [UInt8] = chance(0.9) ? [13, 10] : [10]
            out += eol
            out += body[i..<(i + n)]
            out += chance(0.9) ? [13, 10] : [10]
            i += n
        }
        out += Array("0".utf8)
        if chance(0.2) { out += Array(";last".utf8) }
        out += [13, 10]
        if chance(0.3) {
            var trailers = HTTPHeaders()
            for _ in 0..<int(1...3) { trailers.add(name: token(1...10), value: fieldValue()) }
            trailers.encodeFields(into: &out)
        }
        out += [13, 10]
        return out
    }

    /// Inserts a framing header at a random position.
    mutating func insert(_ name: String, _ value: String, into headers: inout HTTPHeaders) {
        var pairs = headers.map { ($0.name, $0.value) }
        pairs.insert((name, value), at: int(0...pairs.count))
        headers = HTTPHeaders(pairs)
    }

    mutating func request(large: Bool = false) -> (head: HTTPRequestHead, body: [UInt8], wire: [UInt8]) {
        let method = chance(0.8) ? pick(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]) : token(1...10)
        let version: HTTPVersion = chance(0.85) ? .http1_1 : (chance(0.5) ? .http1_0 : HTTPVersion(major: 1, minor: 9))
        var headers = HTTPHeaders()
        extraHeaders(into: &headers)
        if version != .http1_0 || chance(0.5) {
            insert(pick(["Host", "host", "HOST"]), chance(0.9) ? "example.com" : fieldValue(), into: &headers)
        }
        let body = body(large: large)
        var bodyWire = body
        if version == .http1_0 || chance(0.5) {
            if !body.isEmpty || chance(0.5) {
                insert(pick(["Content-Length", "content-length"]), String(body.count), into: &headers)
            }
        } else {
            insert(pick(["Transfer-Encoding", "transfer-encoding"]), pick(["chunked", "Chunked", " chunked"]).trimmingOWS, into: &headers)
            bodyWire = chunkedBody(body)
        }
        if body.isEmpty && !headers.contains(name: "transfer-encoding") { bodyWire = [] }
        let head = HTTPRequestHead(method: method, target: target(), version: version, headers: headers)
        return (head, body, head.encoded() + bodyWire)
    }

    /// A response; `untilEOF` permits an unframed body (only valid as the last message).
    mutating func response(method: String, untilEOF: Bool, large: Bool = false)
        -> (head: HTTPResponseHead, body: [UInt8], wire: [UInt8], interim: [HTTPResponseHead]) {
        var interim: [HTTPResponseHead] = []
        var wire: [UInt8] = []
        if chance(0.15) {
            for _ in 0..<int(1...2) {
                var h = HTTPHeaders()
                if chance(0.5) { h.add(name: "Link", value: "</a.css>") }
                let ih = HTTPResponseHead(status: pick([100, 102, 103]), headers: h)
                interim.append(ih)
                ih.encode(into: &wire)
            }
        }
        let status = pick([200, 200, 201, 204, 206, 301, 304, 400, 404, 500, 503, 299, 599])
        let version: HTTPVersion = chance(0.9) ? .http1_1 : .http1_0
        var headers = HTTPHeaders()
        extraHeaders(into: &headers)
        let noBody = method == "HEAD" || status == 204 || status == 304
        var body = noBody ? [] : body(large: large)
        var bodyWire = body
        let mode = int(0...2)
        if noBody {
            if chance(0.5) { insert("Content-Length", String(int(0...100_000)), into: &headers) }
            bodyWire = []
        } else if mode == 0 || version == .http1_0 && !untilEOF {
            insert("Content-Length", String(body.count), into: &headers)
        } else if mode == 1 && version == .http1_1 {
            insert("Transfer-Encoding", "chunked", into: &headers)
            bodyWire = chunkedBody(body)
        } else if untilEOF {
            // read until close
        } else {
            insert("Content-Length", String(body.count), into: &headers)
        }
        if noBody { body = [] }
        let reason = chance(0.8) ? nil : pick(["", "Custom Reason", "Tab\tHere", "caf\u{e9}"])
        let head = HTTPResponseHead(status: status, reason: reason, headers: headers, version: version)
        head.encode(into: &wire)
        return (head, body, wire + bodyWire, interim)
    }
}

extension String {
    var trimmingOWS: String {
        var s = Substring(self)
        while s.first == " " || s.first == "\t" { s.removeFirst() }
        while s.last == " " || s.last == "\t" { s.removeLast() }
        return String(s)
    }
}

func expectedEvents(_ head: HTTPRequestHead, _ body: [UInt8]) -> [Req] {
    body.isEmpty ? [.head(head), .end] : [.head(head), .body(body), .end]
}

final class RoundTripTests: XCTestCase {
    func testEverySplitPointForSmallRequests() {
        var gen = MessageGenerator(seed: 1)
        var checked = 0
        while checked < 6 {
            let m = gen.request()
            guard m.wire.count < 700 else { continue }
            checked += 1
            let expected = expectedEvents(m.head, m.body)
            for k in 0...m.wire.count {
                let run = runRequest([Array(m.wire[..<k]), Array(m.wire[k...])])
                XCTAssertNil(run.error, "split \(k)")
                XCTAssertEqual(run.events, expected, "split \(k)")
                if run.events != expected { return }
            }
        }
        // A chunked request with extensions and trailers, every split.
        let raw = bytes("POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3;a=\"b\"\r\nabc\r\n1\nd\n0\r\nT: v\r\n\r\n")
        for k in 0...raw.count {
            let run = runRequest([Array(raw[..<k]), Array(raw[k...])])
            XCTAssertNil(run.error)
            XCTAssertEqual(run.events.dropFirst(), [.body(bytes("abcd")), .end], "split \(k)")
        }
    }

    func testByteByByteRequests() {
        var gen = MessageGenerator(seed: 2)
        var chunked = 0, withBody = 0
        for i in 0..<150 {
            let m = gen.request()
            if m.head.headers.contains(name: "transfer-encoding") { chunked += 1 }
            if !m.body.isEmpty { withBody += 1 }
            let run = runRequest(m.wire.map { [$0] })
            XCTAssertNil(run.error, "message \(i)")
            XCTAssertEqual(run.events, expectedEvents(m.head, m.body), "message \(i)")
        }
        XCTAssertGreaterThan(chunked, 30, "generator covers chunked framing")
        XCTAssertGreaterThan(withBody, 50, "generator covers bodies")
    }

    func testRandomSplitsAndPipelinedRequests() {
        var gen = MessageGenerator(seed: 3)
        for i in 0..<150 {
            var wire: [UInt8] = []
            var expected: [Req] = []
            for _ in 0..<gen.int(1...5) {
                let m = gen.request(large: true)
                wire += m.wire
                expected += expectedEvents(m.head, m.body)
            }
            let limits = HTTPLimits(maxBodySize: 1 << 30)
            let pieces = randomSplit(wire, maxPiece: gen.pick([3, 64, 1500, 16384, 70_000]), using: &gen.rng)
            let run = runRequest(pieces, limits: limits)
            XCTAssertNil(run.error, "batch \(i)")
            XCTAssertEqual(run.events, expected, "batch \(i)")
            XCTAssertEqual(runRequest([wire], limits: limits).events, expected, "batch \(i) in one piece")
        }
    }

    func testResponseRoundTrips() {
        var gen = MessageGenerator(seed: 4)
        for i in 0..<250 {
            var wire: [UInt8] = []
            var expected: [Resp] = []
            var methods: [String] = []
            let count = gen.int(1...4)
            for j in 0..<count {
                let method = gen.chance(0.2) ? "HEAD" : gen.pick(["GET", "POST"])
                methods.append(method)
                let m = gen.response(method: method, untilEOF: j == count - 1, large: true)
                wire += m.wire
                expected += m.interim.map { .head($0) }
                expected.append(.head(m.head))
                if !m.body.isEmpty { expected.append(.body(m.body)) }
                expected.append(.end)
            }
            let limits = HTTPLimits(maxBodySize: 1 << 30)
            let splits: [[[UInt8]]] = [
                [wire],
                randomSplit(wire, maxPiece: gen.pick([1, 7, 100, 4096]), using: &gen.rng),
            ]
            for pieces in splits {
                let run = runResponse(pieces, methods: methods, limits: limits, finish: true)
                XCTAssertNil(run.error, "batch \(i)")
                XCTAssertEqual(run.events, expected, "batch \(i)")
                if run.events != expected { return }
            }
        }
    }

    func testEverySplitPointForSmallResponses() {
        let raw = bytes("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX: y\r\n\r\n2;e\r\nab\r\n0\r\n\r\n"
                        + "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n"
                        + "HTTP/1.0 200 OK\r\n\r\nrest")
        let expected = runResponse([raw], methods: ["POST", "HEAD", "GET"], finish: true).events
        XCTAssertEqual(expected.count, 9)
        XCTAssertEqual(expected.last, .end)
        for k in 0...raw.count {
            let run = runResponse([Array(raw[..<k]), Array(raw[k...])], methods: ["POST", "HEAD", "GET"], finish: true)
            XCTAssertNil(run.error, "split \(k)")
            XCTAssertEqual(run.events, expected, "split \(k)")
        }
    }
}
