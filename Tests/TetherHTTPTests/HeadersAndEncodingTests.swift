import XCTest
@testable import TetherHTTP

final class HeadersTests: XCTestCase {
    func testMutationAndLookup() {
        var h = HTTPHeaders()
        XCTAssertEqual(h.count, 0)
        h.add(name: "Set-Cookie", value: "a=1")
        h.add(name: "X-Id", value: "7")
        h.add(name: "set-cookie", value: "b=2")
        XCTAssertEqual(h.count, 3)
        XCTAssertEqual(h["SET-COOKIE"], ["a=1", "b=2"])
        XCTAssertEqual(h.first(name: "x-id"), "7")
        XCTAssertNil(h.first(name: "missing"))
        XCTAssertEqual(h["missing"], [])
        XCTAssertTrue(h.contains(name: "X-ID"))
        XCTAssertFalse(h.contains(name: "X-I"))

        h.replaceOrAdd(name: "SET-cookie", value: "c=3")
        XCTAssertEqual(h.map { $0.name }, ["Set-Cookie", "X-Id"], "first entry updated in place, others removed")
        XCTAssertEqual(h["set-cookie"], ["c=3"])
        h.replaceOrAdd(name: "New", value: "n")
        XCTAssertEqual(h.map { $0.value }, ["c=3", "7", "n"])

        h.remove(name: "x-id")
        XCTAssertEqual(h.map { $0.name }, ["Set-Cookie", "New"])
        h.remove(name: "nothing")
        XCTAssertEqual(h.count, 2)
    }

    func testInitialisersAndEquality() {
        let a: HTTPHeaders = ["Host": "h", "Accept": "*/*"]
        let b = HTTPHeaders([("host", "h"), ("ACCEPT", "*/*")])
        XCTAssertEqual(a, b, "names compare case-insensitively")
        XCTAssertNotEqual(a, HTTPHeaders([("Accept", "*/*"), ("Host", "h")]), "order matters")
        XCTAssertNotEqual(a, HTTPHeaders([("Host", "H"), ("Accept", "*/*")]), "values are exact")
        XCTAssertNotEqual(a, HTTPHeaders([("Host", "h")]))
        XCTAssertEqual(Array(a.map { $0.value }), ["h", "*/*"])
    }

    func testContainsToken() {
        let h: HTTPHeaders = ["Connection": " keep-alive ,\tUpgrade", "connection": "x,,CLOSE", "Other": "close"]
        XCTAssertTrue(h.containsToken("upgrade", in: "connection"))
        XCTAssertTrue(h.containsToken("Keep-Alive", in: "Connection"))
        XCTAssertTrue(h.containsToken("close", in: "CONNECTION"))
        XCTAssertFalse(h.containsToken("keep", in: "Connection"))
        XCTAssertFalse(h.containsToken("", in: "Connection"))
        XCTAssertFalse(h.containsToken("upgrade", in: "Other"))
        XCTAssertFalse(HTTPHeaders().containsToken("close", in: "Connection"))
    }

    func testHeadSemantics() {
        func req(_ v: HTTPVersion, _ h: HTTPHeaders) -> HTTPRequestHead {
            HTTPRequestHead(method: "GET", target: "/", version: v, headers: h)
        }
        XCTAssertTrue(req(.http1_1, [:]).isKeepAlive)
        XCTAssertFalse(req(.http1_1, ["Connection": "Close"]).isKeepAlive)
        XCTAssertFalse(req(.http1_0, [:]).isKeepAlive)
        XCTAssertTrue(req(.http1_0, ["Connection": "Keep-Alive"]).isKeepAlive)
        XCTAssertTrue(req(.http1_1, ["Expect": "100-continue"]).expectsContinue)
        XCTAssertFalse(req(.http1_1, ["Expect": "200-ok"]).expectsContinue)
        XCTAssertTrue(req(.http1_1, ["Connection": "Upgrade", "Upgrade": "websocket"]).isUpgradeRequest)
        XCTAssertFalse(req(.http1_1, ["Connection": "Upgrade"]).isUpgradeRequest)
        XCTAssertFalse(req(.http1_1, ["Upgrade": "websocket"]).isUpgradeRequest)

        let r = HTTPRequestHead(method: "GET", target: "/p/q")
        XCTAssertEqual(r.path, "/p/q")
        XCTAssertNil(r.query)
        let q = HTTPRequestHead(method: "GET", target: "/p?")
        XCTAssertEqual(q.path, "/p")
        XCTAssertEqual(q.query, "")
        XCTAssertEqual(HTTPRequestHead(method: "GET", target: "/?a?b").query, "a?b")

        XCTAssertEqual(HTTPResponseHead(status: 404).reason, "Not Found")
        XCTAssertEqual(HTTPResponseHead(status: 200, reason: "Fine").reason, "Fine")
        XCTAssertEqual(HTTPResponseHead(status: 799).reason, "")
        XCTAssertEqual(HTTPResponseHead.standardReason(for: 101), "Switching Protocols")
        XCTAssertEqual(HTTPResponseHead.standardReason(for: 431), "Request Header Fields Too Large")
        XCTAssertFalse(HTTPResponseHead(status: 200, headers: ["Connection": "close"]).isKeepAlive)
        XCTAssertTrue(HTTPVersion.http1_0 < .http1_1)
    }

    func testTokenCharTable() {
        let tchars = Set(bytes("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"))
        for b in 0...255 {
            XCTAssertEqual(isTokenChar(UInt8(b)), tchars.contains(UInt8(b)), "byte \(b)")
            XCTAssertEqual(isFieldValueByte(UInt8(b)), b == 9 || (b >= 0x20 && b != 0x7F), "byte \(b)")
        }
    }
}

final class ScanningTests: XCTestCase {
    /// The word-at-a-time scanners agree with the bytewise definitions for every byte
    /// value at every position (including the unaligned tail).
    func testWordScannersMatchBytewiseDefinition() {
        for len in [1, 7, 8, 9, 16, 23] {
            for pos in 0..<len {
                for b in 0...255 {
                    var data = [UInt8](repeating: UInt8(ascii: "a"), count: len)
                    data[pos] = UInt8(b)
                    data.withUnsafeBufferPointer { p in
                        XCTAssertEqual(firstLF(in: p, from: 0, to: len), b == 10 ? pos : -1)
                        XCTAssertEqual(firstInvalidValueByte(in: p, from: 0, to: len),
                                       isFieldValueByte(UInt8(b)) ? nil : pos)
                        if pos > 0 {
                            XCTAssertEqual(firstLF(in: p, from: 1, to: len), b == 10 ? pos : -1)
                        }
                    }
                }
            }
        }
        // First of several hits wins.
        let data = bytes("abc\u{1}\n\u{0}xyzabc\nq")
        data.withUnsafeBufferPointer { p in
            XCTAssertEqual(firstLF(in: p, from: 0, to: p.count), 4)
            XCTAssertEqual(firstLF(in: p, from: 5, to: p.count), 12)
            XCTAssertEqual(firstInvalidValueByte(in: p, from: 0, to: p.count), 3)
        }
    }
}

final class EncodingTests: XCTestCase {
    func testRequestEncoding() {
        let head = HTTPRequestHead(method: "POST", target: "/a?b=c", version: .http1_1,
                                   headers: ["Host": "example.com", "Content-Length": "3"])
        var out: [UInt8] = [0xFF]
        head.encode(into: &out)
        XCTAssertEqual(out, [0xFF] + bytes("POST /a?b=c HTTP/1.1\r\nHost: example.com\r\nContent-Length: 3\r\n\r\n"))
        XCTAssertEqual(HTTPRequestHead(method: "GET", target: "/", version: .http1_0).encoded(), bytes("GET / HTTP/1.0\r\n\r\n"))
    }

    func testResponseEncoding() {
        XCTAssertEqual(HTTPResponseHead(status: 200, headers: ["Content-Length": "0"]).encoded(),
                       bytes("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"))
        XCTAssertEqual(HTTPResponseHead(status: 599, version: .http1_0).encoded(), bytes("HTTP/1.0 599 \r\n\r\n"))
        XCTAssertEqual(HTTPResponseHead(status: 42, reason: "x").encoded(), bytes("HTTP/1.1 042 x\r\n\r\n"))
        XCTAssertEqual(HTTPResponseHead(status: 12345, reason: "x").encoded(), bytes("HTTP/1.1 500 x\r\n\r\n"))
    }

    func testInjectionIsSanitized() throws {
        let head = HTTPResponseHead(status: 200, reason: "OK\r\nX-Evil: 1",
                                    headers: ["Set-Cookie": "a=1\r\nX-Injected: yes", "Bad\r\nName": "v", "N": "a\u{0}b\u{7f}c\td"])
        let encoded = head.encoded()
        XCTAssertEqual(encoded, bytes("HTTP/1.1 200 OK  X-Evil: 1\r\nSet-Cookie: a=1  X-Injected: yes\r\nBad--Name: v\r\nN: a b c\td\r\n\r\n"))
        var d = HTTPResponseDecoder()
        d.feed(encoded)
        guard case .head(let decoded)? = try d.next() else { return XCTFail() }
        XCTAssertEqual(decoded.headers.count, 3)
        XCTAssertFalse(decoded.headers.contains(name: "X-Injected"))

        let req = HTTPRequestHead(method: "GET /x HTTP/1.1\r\n", target: "/a b\r\nc\u{e9}", headers: ["Host": "h"])
        XCTAssertEqual(req.encoded(), bytes("GET--x-HTTP-1.1-- /a%20b%0D%0Ac%C3%A9 HTTP/1.1\r\nHost: h\r\n\r\n"))
        var r = HTTPRequestDecoder()
        r.feed(req.encoded())
        guard case .head(let decodedReq)? = try r.next() else { return XCTFail() }
        XCTAssertEqual(decodedReq.target, "/a%20b%0D%0Ac%C3%A9")
    }

    func testChunkEncoding() {
        var out: [UInt8] = []
        HTTPChunkedEncoding.encodeChunk(bytes("hello"), into: &out)
        HTTPChunkedEncoding.encodeChunk([], into: &out)
        HTTPChunkedEncoding.encodeChunk([UInt8](repeating: 0x61, count: 26), into: &out)
        bytes("xyz").withUnsafeBytes { HTTPChunkedEncoding.encodeChunk($0, into: &out) }
        HTTPChunkedEncoding.encodeLastChunk(into: &out)
        XCTAssertEqual(out, bytes("5\r\nhello\r\n1a\r\n" + String(repeating: "a", count: 26) + "\r\n3\r\nxyz\r\n0\r\n\r\n"))

        var big: [UInt8] = []
        HTTPChunkedEncoding.encodeChunk([UInt8](repeating: 0, count: 0x10000), into: &big)
        XCTAssertEqual(Array(big.prefix(7)), bytes("10000\r\n"))

        var t: [UInt8] = []
        HTTPChunkedEncoding.encodeLastChunk(trailers: ["Checksum": "abc"], into: &t)
        XCTAssertEqual(t, bytes("0\r\nChecksum: abc\r\n\r\n"))
    }

    func testHexEncoding() {
        for v in [1, 9, 10, 15, 16, 255, 256, 4095, 4096, 0xABCDEF, Int.max] {
            var out: [UInt8] = []
            appendHex(v, into: &out)
            XCTAssertEqual(String(decoding: out, as: UTF8.self), String(v, radix: 16))
        }
    }
}
