import XCTest
@testable import TetherHTTP

final class RequestDecoderTests: XCTestCase {
    // MARK: Basics

    func testSimpleGet() throws {
        var d = HTTPRequestDecoder()
        d.feed(bytes("GET /a/b?x=1&y HTTP/1.1\r\nHost: example.com\r\nAccept:  */*  \r\n\r\n"))
        guard case .head(let head)? = try d.next() else { return XCTFail("expected head") }
        XCTAssertEqual(head.method, "GET")
        XCTAssertEqual(head.target, "/a/b?x=1&y")
        XCTAssertEqual(head.path, "/a/b")
        XCTAssertEqual(head.query, "x=1&y")
        XCTAssertEqual(head.version, .http1_1)
        XCTAssertEqual(head.headers.first(name: "host"), "example.com")
        XCTAssertEqual(head.headers["ACCEPT"], ["*/*"], "OWS around values is trimmed")
        XCTAssertTrue(head.isKeepAlive)
        XCTAssertFalse(head.expectsContinue)
        XCTAssertFalse(head.isUpgradeRequest)
        XCTAssertEqual(try d.next(), .end)
        XCTAssertNil(try d.next())
        XCTAssertTrue(d.isIdle)
        XCTAssertNil(d.finish())
    }

    func testHeadIsNotEmittedUntilComplete() throws {
        var d = HTTPRequestDecoder()
        d.feed(bytes("GET / HTTP/1.1\r\nHost: a\r\n"))
        XCTAssertNil(try d.next())
        XCTAssertFalse(d.isIdle)
        d.feed(bytes("\r"))
        XCTAssertNil(try d.next())
        d.feed(bytes("\n"))
        guard case .head? = try d.next() else { return XCTFail("expected head") }
        XCTAssertEqual(try d.next(), .end)
    }

    func testBareLFLineEndingsAndLeadingEmptyLines() {
        let run = runRequest([bytes("\r\n\n\r\nPOST /x HTTP/1.1\nHost: h\nContent-Length: 3\n\nabc")])
        XCTAssertNil(run.error)
        XCTAssertEqual(run.events.count, 3)
        guard case .head(let head) = run.events[0] else { return XCTFail() }
        XCTAssertEqual(head.method, "POST")
        XCTAssertEqual(head.headers["content-length"], ["3"])
        XCTAssertEqual(run.events[1], .body(bytes("abc")))
        XCTAssertEqual(run.events[2], .end)
    }

    func testHeaderOrderAndDuplicatesPreserved() throws {
        var d = HTTPRequestDecoder()
        d.feed(bytes("GET / HTTP/1.1\r\nHost: h\r\nX-A: 1\r\nx-b: 2\r\nX-A: 3\r\nEmpty:\r\nSpaces: a  b \t\r\n\r\n"))
        guard case .head(let head)? = try d.next() else { return XCTFail() }
        XCTAssertEqual(head.headers.count, 6)
        XCTAssertEqual(head.headers["x-a"], ["1", "3"])
        XCTAssertEqual(head.headers.first(name: "EMPTY"), "")
        XCTAssertEqual(head.headers.first(name: "spaces"), "a  b")
        XCTAssertEqual(head.headers.map { $0.name }, ["Host", "X-A", "x-b", "X-A", "Empty", "Spaces"])
    }

    func testObsTextInValueIsAccepted() throws {
        var d = HTTPRequestDecoder()
        d.feed(bytes("GET / HTTP/1.1\r\nHost: h\r\nX-Name: caf\u{e9} \u{1F600}\r\n\r\n"))
        guard case .head(let head)? = try d.next() else { return XCTFail() }
        XCTAssertEqual(head.headers.first(name: "x-name"), "caf\u{e9} \u{1F600}")
    }

    func testHTTP10WithoutHost() throws {
        var d = HTTPRequestDecoder()
        d.feed(bytes("GET / HTTP/1.0\r\n\r\n"))
        guard case .head(let head)? = try d.next() else { return XCTFail() }
        XCTAssertEqual(head.version, .http1_0)
        XCTAssertFalse(head.isKeepAlive)
        XCTAssertEqual(try d.next(), .end)
    }

    func testHigherMinorVersionAccepted() throws {
        var d = HTTPRequestDecoder()
        d.feed(bytes("GET / HTTP/1.7\r\nHost: h\r\n\r\n"))
        guard case .head(let head)? = try d.next() else { return XCTFail() }
        XCTAssertEqual(head.version, HTTPVersion(major: 1, minor: 7))
        XCTAssertTrue(head.isKeepAlive)
    }

    func testTargetForms() throws {
        for target in ["*", "example.com:443", "http://example.com/a?b", "/%20x?q=%2F"] {
            var d = HTTPRequestDecoder()
            d.feed(bytes("OPTIONS \(target) HTTP/1.1\r\nHost: h\r\n\r\n"))
            guard case .head(let head)? = try d.next() else { return XCTFail(target) }
            XCTAssertEqual(head.target, target)
        }
    }

    // MARK: Bodies

    func testContentLengthBodyIsStreamed() throws {
        var d = HTTPRequestDecoder()
        d.feed(bytes("POST /u HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nabc"))
        guard case .head? = try d.next() else { return XCTFail() }
        XCTAssertEqual(try d.next(), .body(bytes("abc")), "body bytes are delivered before the whole body arrives")
        XCTAssertNil(try d.next())
        d.feed(bytes("defg"))
        XCTAssertEqual(try d.next(), .body(bytes("defg")))
        XCTAssertNil(try d.next())
        d.feed(bytes("hijGET"))
        XCTAssertEqual(try d.next(), .body(bytes("hij")))
        XCTAssertEqual(try d.next(), .end)
        XCTAssertNil(try d.next())
        XCTAssertEqual(d.bufferedByteCount, 3)
        XCTAssertFalse(d.isIdle)
    }

    func testZeroContentLength() throws {
        let run = runRequest([bytes("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n")])
        XCTAssertNil(run.error)
        XCTAssertEqual(run.events.count, 2)
        XCTAssertEqual(run.events.last, .end)
    }

    func testIdenticalContentLengthsAccepted() {
        for cl in ["Content-Length: 3\r\nContent-Length: 3", "Content-Length: 3, 3", "Content-Length: 003"] {
            let run = runRequest([bytes("POST / HTTP/1.1\r\nHost: h\r\n\(cl)\r\n\r\nabc")])
            XCTAssertNil(run.error, cl)
            XCTAssertEqual(run.events.dropFirst().first, .body(bytes("abc")), cl)
        }
    }

    func testChunkedWithExtensionsAndTrailers() {
        let raw = "POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
            + "5;name=value\r\nhello\r\n"
            + "6 ; a ; b = \"quoted \\\" str\"\r\n world\r\n"
            + "A\r\n0123456789\r\n"
            + "0;last\r\nX-Trailer: yes\r\nX-Other: 1\r\n\r\n"
        for pieces in [[bytes(raw)], bytes(raw).map { [$0] }] {
            let run = runRequest(pieces)
            XCTAssertNil(run.error)
            XCTAssertEqual(run.events.count, 3)
            XCTAssertEqual(run.events[1], .body(bytes("hello world0123456789")))
            XCTAssertEqual(run.events[2], .end)
            if case .head(let head) = run.events[0] {
                XCTAssertNil(head.headers.first(name: "X-Trailer"), "trailers are discarded")
            }
        }
    }

    func testChunkedCodingIsCaseInsensitiveAndLFOnly() {
        let run = runRequest([bytes("POST / HTTP/1.1\nHost: h\nTransfer-Encoding: ChUnKeD\n\n3\nabc\n0\n\n")])
        XCTAssertNil(run.error)
        XCTAssertEqual(run.events.dropFirst(), [.body(bytes("abc")), .end])
    }

    func testChunkedStreamsPartialChunks() throws {
        var d = HTTPRequestDecoder()
        d.feed(bytes("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nabcd"))
        guard case .head? = try d.next() else { return XCTFail() }
        XCTAssertEqual(try d.next(), .body(bytes("abcd")))
        XCTAssertNil(try d.next())
        d.feed(bytes("efghijklmnop\r"))
        XCTAssertEqual(try d.next(), .body(bytes("efghijklmnop")))
        XCTAssertNil(try d.next())
        d.feed(bytes("\n0\r\n\r\n"))
        XCTAssertEqual(try d.next(), .end)
    }

    func testPipelinedRequestsInOneBuffer() {
        let raw = "GET /one HTTP/1.1\r\nHost: h\r\n\r\n"
            + "POST /two HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello"
            + "PUT /three HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
        for pieces in [[bytes(raw)], bytes(raw).map { [$0] }, split(bytes(raw), sizes: [7, 13, 1, 30])] {
            let run = runRequest(pieces)
            XCTAssertNil(run.error)
            let targets = run.events.compactMap { e -> String? in
                if case .head(let h) = e { return h.target }
                return nil
            }
            XCTAssertEqual(targets, ["/one", "/two", "/three"])
            XCTAssertEqual(run.events.filter { $0 == .end }.count, 3)
            XCTAssertEqual(run.events.filter { if case .body = $0 { return true } else { return false } },
                           [.body(bytes("hello")), .body(bytes("abc"))])
            XCTAssertEqual(run.events.map { e -> String in
                switch e { case .head: return "h"; case .body: return "b"; case .end: return "e" }
            }.joined(), "hehbehbe")
        }
    }

    func testPipelinedAfterEndContinuesWithBufferedRequest() throws {
        var d = HTTPRequestDecoder()
        d.feed(bytes("GET /1 HTTP/1.1\r\nHost: h\r\n\r\nGET /2 HTTP/1.1\r\nHost: h\r\n\r\n"))
        guard case .head(let h1)? = try d.next() else { return XCTFail() }
        XCTAssertEqual(h1.target, "/1")
        XCTAssertEqual(try d.next(), .end)
        guard case .head(let h2)? = try d.next() else { return XCTFail() }
        XCTAssertEqual(h2.target, "/2")
        XCTAssertEqual(try d.next(), .end)
        XCTAssertNil(try d.next())
        XCTAssertEqual(d.bufferedByteCount, 0)
    }

    // MARK: Head semantics

    func testExpectContinue() throws {
        var d = HTTPRequestDecoder()
        d.feed(bytes("PUT /f HTTP/1.1\r\nHost: h\r\nExpect: 100-Continue\r\nContent-Length: 2\r\n\r\n"))
        guard case .head(let head)? = try d.next() else { return XCTFail() }
        XCTAssertTrue(head.expectsContinue)
        XCTAssertNil(try d.next(), "waits for the body the client holds back")
        d.feed(bytes("ok"))
        XCTAssertEqual(try d.next(), .body(bytes("ok")))
        XCTAssertEqual(try d.next(), .end)

        var d10 = HTTPRequestDecoder()
        d10.feed(bytes("PUT /f HTTP/1.0\r\nExpect: 100-continue\r\n\r\n"))
        guard case .head(let head10)? = try d10.next() else { return XCTFail() }
        XCTAssertFalse(head10.expectsContinue, "ignored for HTTP/1.0")
    }

    func testUpgradeKeepsBytesAfterHead() throws {
        var d = HTTPRequestDecoder()
        let frame: [UInt8] = [0x81, 0x85, 0x37, 0xFA, 0x21, 0x3D, 0x7F, 0x9F, 0x4D, 0x51, 0x58]
        d.feed(bytes("GET /ws HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n") + frame)
        guard case .head(let head)? = try d.next() else { return XCTFail() }
        XCTAssertTrue(head.isUpgradeRequest)
        XCTAssertEqual(d.bufferedByteCount, frame.count)
        XCTAssertEqual(d.takeBufferedBytes(), frame)
        XCTAssertEqual(d.bufferedByteCount, 0)
        XCTAssertNil(try d.next(), "decoder is detached after takeBufferedBytes")
        XCTAssertEqual(d.bufferCapacity, 0)
    }

    func testConnectKeepsTunnelBytes() throws {
        var d = HTTPRequestDecoder()
        d.feed(bytes("CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n\u{16}\u{3}\u{1}"))
        guard case .head(let head)? = try d.next() else { return XCTFail() }
        XCTAssertEqual(head.method, "CONNECT")
        XCTAssertEqual(head.target, "example.com:443")
        XCTAssertEqual(d.takeBufferedBytes(), [0x16, 0x03, 0x01])
    }

    func testUpgradeWithoutConnectionTokenIsNotUpgrade() throws {
        var d = HTTPRequestDecoder()
        d.feed(bytes("GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: upgraded\r\n\r\n"))
        guard case .head(let head)? = try d.next() else { return XCTFail() }
        XCTAssertFalse(head.isUpgradeRequest)
    }

    // MARK: Errors (status codes)

    func testBadRequestLines() {
        assertRequestError("GET\r\n\r\n", status: 400)
        assertRequestError("GET /\r\nHost: h\r\n\r\n", status: 400)
        assertRequestError("GET  / HTTP/1.1\r\nHost: h\r\n\r\n", status: 400)
        assertRequestError("GET / HTTP/1.1 \r\nHost: h\r\n\r\n", status: 400)
        assertRequestError(" GET / HTTP/1.1\r\nHost: h\r\n\r\n", status: 400)
        assertRequestError("G(T / HTTP/1.1\r\nHost: h\r\n\r\n", status: 400)
        assertRequestError("GE\u{7F}T / HTTP/1.1\r\nHost: h\r\n\r\n", status: 400)
        assertRequestError("GET /a\u{1}b HTTP/1.1\r\nHost: h\r\n\r\n", status: 400)
        assertRequestError("GET /caf\u{e9} HTTP/1.1\r\nHost: h\r\n\r\n", status: 400)
        assertRequestError("GET / HTTP/1.1\rHost: h\r\n\r\n", status: 400)
        assertRequestError("GET /\r HTTP/1.1\r\nHost: h\r\n\r\n", status: 400)
    }

    func testBadVersions() {
        for v in ["HTTP/1.10", "HTTP/1", "http/1.1", "HTTP/1.x", "HTTP/11", "HTTPS/1.1", "HTTP/1.1x", "HTTP 1.1", "HTTP/-1.1"] {
            assertRequestError("GET / \(v)\r\nHost: h\r\n\r\n", status: 400)
        }
        for v in ["HTTP/2.0", "HTTP/3.0", "HTTP/3.1", "HTTP/0.9"] {
            assertRequestError("GET / \(v)\r\nHost: h\r\n\r\n", status: 505)
        }
        XCTAssertEqual(runRequest([bytes("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")]).error, .versionNotSupported)
        XCTAssertEqual(HTTPParseError.versionNotSupported.code, "VERSION_NOT_SUPPORTED")
    }

    func testBadFieldLines() {
        // obs-fold
        assertRequestError("GET / HTTP/1.1\r\nHost: h\r\nX-A: 1\r\n 2\r\n\r\n", status: 400)
        assertRequestError("GET / HTTP/1.1\r\nHost: h\r\nX-A: 1\r\n\t2\r\n\r\n", status: 400)
        // whitespace before the first field
        assertRequestError("GET / HTTP/1.1\r\n Host: h\r\n\r\n", status: 400)
        // whitespace between name and colon
        assertRequestError("GET / HTTP/1.1\r\nHost : h\r\n\r\n", status: 400)
        assertRequestError("GET / HTTP/1.1\r\nHost: h\r\nContent-Length\t: 0\r\n\r\n", status: 400)
        // invalid name characters / empty name / no colon
        assertRequestError("GET / HTTP/1.1\r\nHost: h\r\nX(A): 1\r\n\r\n", status: 400)
        assertRequestError("GET / HTTP/1.1\r\nHost: h\r\nX\u{e9}: 1\r\n\r\n", status: 400)
        assertRequestError("GET / HTTP/1.1\r\nHost: h\r\n: 1\r\n\r\n", status: 400)
        assertRequestError("GET / HTTP/1.1\r\nHost: h\r\nNoColon\r\n\r\n", status: 400)
        // control characters in values
        assertRequestError("GET / HTTP/1.1\r\nHost: h\r\nX-A: a\u{0}b\r\n\r\n", status: 400)
        assertRequestError("GET / HTTP/1.1\r\nHost: h\r\nX-A: a\u{1b}b\r\n\r\n", status: 400)
        assertRequestError("GET / HTTP/1.1\r\nHost: h\r\nX-A: a\u{7f}b\r\n\r\n", status: 400)
        // bare CR
        assertRequestError("GET / HTTP/1.1\r\nHost: h\r\nX-A: a\rb\r\n\r\n", status: 400)
        assertRequestError("GET / HTTP/1.1\r\nHost: h\r\nX-A: ab\r\r\n\r\n", status: 400)
        assertRequestError("GET / HTTP/1.1\r\nHost: h\r\nX-A\r: ab\r\n\r\n", status: 400)
        assertRequestError("GET / HTTP/1.1\r\nHost: h\r\n\r\r\n", status: 400)
        // HT inside a value is fine
        XCTAssertNil(runRequest([bytes("GET / HTTP/1.1\r\nHost: h\r\nX-A: a\tb\r\n\r\n")]).error)
    }

    func testHostRules() {
        assertRequestError("GET / HTTP/1.1\r\n\r\n", status: 400)
        assertRequestError("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", status: 400)
        assertRequestError("GET / HTTP/1.0\r\nHost: a\r\nhost: a\r\n\r\n", status: 400)
        XCTAssertNil(runRequest([bytes("GET / HTTP/1.1\r\nHOST:\r\n\r\n")]).error, "empty Host is allowed")
    }

    func testContentLengthErrors() {
        for cl in ["+5", "-1", "5a", "0x5", "", "5 5", "5,", ",5", "1.0", "\u{661}"] {
            assertRequestError("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: \(cl)\r\n\r\n", status: 400)
        }
        assertRequestError("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello", status: 400)
        assertRequestError("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5, 6\r\n\r\nhello", status: 400)
        assertRequestError("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 99999999999999999999999999\r\n\r\n", status: 413)
    }

    func testTransferEncodingErrors() {
        // smuggling: both framings
        assertRequestError("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", status: 400)
        assertRequestError("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n0\r\n\r\n", status: 400)
        // TE on HTTP/1.0
        assertRequestError("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", status: 400)
        // unknown codings -> 501
        assertRequestError("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\n", status: 501)
        assertRequestError("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", status: 501)
        assertRequestError("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n", status: 501)
        assertRequestError("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked;q=1\r\n\r\n", status: 501)
        assertRequestError("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: xchunked\r\n\r\n", status: 501)
        // chunked twice or not at all
        assertRequestError("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", status: 400)
        assertRequestError("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding:\r\n\r\n", status: 400)
        XCTAssertEqual(HTTPParseError.notImplemented(reason: "x").code, "NOT_IMPLEMENTED")
    }

    func testChunkErrors() {
        let head = "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
        for line in ["", "x", "-1", "+1", " 1", "1 x", "1;", "1;=v", "1;n=", "1;n=\"open", "1;n=a b", "1;n=\"\u{1}\"",
                     "fffffffffffffffff", "10000000000000000", "1\r"] {
            assertRequestError(head + line + "\r\nx\r\n0\r\n\r\n", status: 400)
        }
        // chunk data longer than declared / missing CRLF after data
        assertRequestError(head + "3\r\nabcd\r\n0\r\n\r\n", status: 400)
        assertRequestError(head + "3\r\nabc\rX0\r\n\r\n", status: 400)
        // bad trailers
        assertRequestError(head + "0\r\nBad Trailer: x\r\n\r\n", status: 400)
        assertRequestError(head + "0\r\n folded\r\n\r\n", status: 400)
        // valid odd-but-legal forms
        XCTAssertNil(runRequest([bytes(head + "0001\r\na\r\n0000\r\n\r\n")]).error)
        XCTAssertNil(runRequest([bytes(head + "1 ;a=\"\\\\\" ; b\t \r\na\r\n0\r\n\r\n")]).error)
        XCTAssertNil(runRequest([bytes(head + "7fffffffffffffff\r\n")], limits: HTTPLimits(maxBodySize: .max)).error,
                     "largest representable size is accepted")
    }

    func testErrorCodesAndStatuses() {
        let cases: [(HTTPParseError, Int, String)] = [
            (.badRequest(reason: "r"), 400, "BAD_REQUEST"),
            (.uriTooLong, 414, "URI_TOO_LONG"),
            (.headersTooLarge, 431, "HEADERS_TOO_LARGE"),
            (.payloadTooLarge, 413, "PAYLOAD_TOO_LARGE"),
            (.notImplemented(reason: "r"), 501, "NOT_IMPLEMENTED"),
            (.versionNotSupported, 505, "VERSION_NOT_SUPPORTED"),
            (.invalidResponse(reason: "r"), 502, "INVALID_RESPONSE"),
        ]
        for (error, status, code) in cases {
            XCTAssertEqual(error.status, status)
            XCTAssertEqual(error.code, code)
            XCTAssertFalse(error.reason.isEmpty)
        }
        XCTAssertEqual(HTTPParseError.badRequest(reason: "missing Host").reason, "missing Host")
    }

    // MARK: Limits and early detection

    func testHugeRequestLineRejectedEarly() {
        // 1 MiB target fed in 1 KiB pieces: must fail after ~8 KiB, not need the whole line.
        let line = bytes("GET /") + [UInt8](repeating: UInt8(ascii: "a"), count: 1 << 20)
        let run = runRequest(split(line, sizes: [1024]))
        XCTAssertEqual(run.error, .uriTooLong)
        XCTAssertEqual(run.error?.status, 414)
        XCTAssertLessThanOrEqual(run.fedAtError, 8192 + 1024 + 2)

        // Fed all at once it fails too, scanning only the window.
        var d = HTTPRequestDecoder()
        d.feed(line)
        XCTAssertThrowsError(try d.next()) { XCTAssertEqual($0 as? HTTPParseError, .uriTooLong) }
    }

    func testRequestLineLengthBoundary() {
        let limits = HTTPLimits(maxRequestLineLength: 30)
        let ok = "GET /" + String(repeating: "a", count: 16) + " HTTP/1.1"  // exactly 30
        XCTAssertEqual(ok.utf8.count, 30)
        XCTAssertNil(runRequest([bytes(ok + "\r\nHost: h\r\n\r\n")], limits: limits).error)
        XCTAssertNil(runRequest(bytes(ok + "\r\nHost: h\r\n\r\n").map { [$0] }, limits: limits).error)
        assertRequestError("GET /" + String(repeating: "a", count: 17) + " HTTP/1.1\r\nHost: h\r\n\r\n", status: 414, limits: limits)
        assertRequestError("GET /" + String(repeating: "a", count: 17) + " HTTP/1.1\nHost: h\n\n", status: 414, limits: limits)
    }

    func testHeaderBytesLimit() {
        // Byte-by-byte, an endless header value must fail once the budget is exceeded.
        let head = bytes("GET / HTTP/1.1\r\nHost: h\r\nX-Big: ")
        let huge = head + [UInt8](repeating: UInt8(ascii: "v"), count: 1 << 20)
        let run = runRequest(split(huge, sizes: [512]))
        XCTAssertEqual(run.error, .headersTooLarge)
        XCTAssertEqual(run.error?.status, 431)
        XCTAssertLessThanOrEqual(run.fedAtError, 16384 + 512 + 64)

        // Exact boundary: field lines totalling maxHeaderBytes are fine, one more byte is not.
        let limits = HTTPLimits(maxHeaderBytes: 40)
        let fields = "Host: h\r\n" + "X: " + String(repeating: "a", count: 26) + "\r\n"  // 9 + 31 = 40
        XCTAssertEqual(fields.utf8.count, 40)
        XCTAssertNil(runRequest([bytes("GET / HTTP/1.1\r\n" + fields + "\r\n")], limits: limits).error)
        XCTAssertNil(runRequest(bytes("GET / HTTP/1.1\r\n" + fields + "\r\n").map { [$0] }, limits: limits).error)
        assertRequestError("GET / HTTP/1.1\r\n" + fields + "Y: 1\r\n\r\n", status: 431, limits: limits)
        assertRequestError("GET / HTTP/1.1\r\nHost: h\r\nX: " + String(repeating: "a", count: 27) + "\r\n\r\n",
                           status: 431, limits: limits)
    }

    func testHeaderCountLimit() {
        var raw = "GET / HTTP/1.1\r\nHost: h\r\n"
        for i in 0..<99 { raw += "X-\(i): v\r\n" }
        XCTAssertNil(runRequest([bytes(raw + "\r\n")]).error, "100 fields allowed")
        assertRequestError(raw + "X-Extra: v\r\n\r\n", status: 431)
        // Detected as soon as the 101st field line is complete, without the end of the head.
        let run = runRequest([bytes(raw + "X-Extra: v\r\n")])
        XCTAssertEqual(run.error, .headersTooLarge)
    }

    func testTrailersCountTowardsHeaderLimits() {
        let limits = HTTPLimits(maxHeaderCount: 3)
        let head = "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
        XCTAssertNil(runRequest([bytes(head + "0\r\nT: 1\r\n\r\n")], limits: limits).error)
        assertRequestError(head + "0\r\nT: 1\r\nU: 2\r\n\r\n", status: 431, limits: limits)
        let small = HTTPLimits(maxHeaderBytes: 64)
        let run = runRequest(split(bytes(head + "0\r\nT: " + String(repeating: "x", count: 10_000)), sizes: [16]), limits: small)
        XCTAssertEqual(run.error, .headersTooLarge)
    }

    func testChunkLineLimit() {
        let head = "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
        let run = runRequest(split(bytes(head + "1;" + String(repeating: "e", count: 100_000)), sizes: [100]))
        XCTAssertEqual(run.error?.status, 400)
        XCTAssertLessThan(run.fedAtError, head.utf8.count + 1024 + 200)
    }

    func testContentLengthAboveLimitRejectedAtHead() {
        let limits = HTTPLimits(maxBodySize: 100)
        let run = runRequest([bytes("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 101\r\n\r\n")], limits: limits)
        XCTAssertEqual(run.error, .payloadTooLarge)
        XCTAssertEqual(run.error?.status, 413)
        XCTAssertTrue(run.events.isEmpty, "no head or body delivered")
        XCTAssertNil(runRequest([bytes("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\n\r\n")], limits: limits).error)
    }

    func testChunkedTotalAboveLimitRejectedAsSoonAsExceeded() {
        let limits = HTTPLimits(maxBodySize: 10)
        let head = "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
        let run = runRequest([bytes(head + "6\r\nabcdef\r\n5\r\n")], limits: limits)
        XCTAssertEqual(run.error, .payloadTooLarge)
        XCTAssertEqual(run.events.count, 2, "head and first chunk were delivered before the violation")
        XCTAssertNil(runRequest([bytes(head + "6\r\nabcdef\r\n4\r\nabcd\r\n0\r\n\r\n")], limits: limits).error)
    }

    func testLoweringBodyLimitAfterHead() throws {
        var d = HTTPRequestDecoder()
        d.feed(bytes("POST /small HTTP/1.1\r\nHost: h\r\nContent-Length: 50\r\n\r\n0123456789"))
        guard case .head? = try d.next() else { return XCTFail() }
        d.limits.maxBodySize = 20
        XCTAssertThrowsError(try d.next()) { XCTAssertEqual($0 as? HTTPParseError, .payloadTooLarge) }

        var c = HTTPRequestDecoder()
        c.feed(bytes("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nabcde\r\n"))
        guard case .head? = try c.next() else { return XCTFail() }
        c.limits.maxBodySize = 8
        XCTAssertEqual(try c.next(), .body(bytes("abcde")))
        c.feed(bytes("4\r\n"))
        XCTAssertThrowsError(try c.next()) { XCTAssertEqual($0 as? HTTPParseError, .payloadTooLarge) }
    }

    // MARK: Truncation (finish)

    func testFinishReportsTruncation() {
        let cases = [
            "GET / HT",
            "GET / HTTP/1.1\r\nHost: h\r\n",
            "GET / HTTP/1.1\r\nHost: h\r\n\r",
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nabc",
            "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
            "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nabcde\r\n",
            "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nTrailer: x\r\n",
        ]
        for raw in cases {
            var d = HTTPRequestDecoder()
            d.feed(bytes(raw))
            while (try? d.next()) != nil {}
            let error = d.finish()
            XCTAssertEqual(error?.status, 400, raw.debugDescription)
            XCTAssertThrowsError(try d.next(), "dead after truncation")
        }
    }

    func testFinishCleanBetweenRequests() throws {
        var d = HTTPRequestDecoder()
        XCTAssertNil(d.finish(), "nothing received")
        var e = HTTPRequestDecoder()
        e.feed(bytes("GET / HTTP/1.1\r\nHost: h\r\n\r\n\r\n"))
        while try e.next() != nil {}
        XCTAssertNil(e.finish(), "trailing blank line is not a message")
        XCTAssertNil(try e.next())
        // Complete body but .end not yet pulled: finish is clean and .end still arrives.
        var f = HTTPRequestDecoder()
        f.feed(bytes("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\n\r\nx"))
        _ = try f.next()
        _ = try f.next()
        XCTAssertNil(f.finish())
        XCTAssertEqual(try f.next(), .end)
        XCTAssertNil(try f.next())
    }

    // MARK: Memory / API details

    func testBufferReleasedWhenDrained() throws {
        var d = HTTPRequestDecoder()
        d.feed(bytes("GET / HTTP/1.1\r\nHost: h\r\n\r\n"))
        _ = try d.next()
        _ = try d.next()
        XCTAssertNil(try d.next())
        XCTAssertEqual(d.bufferCapacity, 0, "idle decoder holds no buffer")

        d.feed(bytes("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 100000\r\n\r\n"))
        _ = try d.next()
        XCTAssertEqual(d.bufferCapacity, 0)
        d.feed([UInt8](repeating: 1, count: 5000))
        guard case .body(let b)? = try d.next() else { return XCTFail() }
        XCTAssertEqual(b.count, 5000)
        XCTAssertEqual(d.bufferCapacity, 0)

        // A partial line keeps only its own bytes.
        d = HTTPRequestDecoder()
        d.feed(bytes("GET / HTTP/1.1\r\nHost: h\r\nX-Partial: abc"))
        _ = try d.next()
        XCTAssertEqual(d.bufferedByteCount, "X-Partial: abc".utf8.count)
    }

    func testErrorIsSticky() {
        var d = HTTPRequestDecoder()
        d.feed(bytes("BAD\r\n"))
        XCTAssertThrowsError(try d.next()) { XCTAssertEqual(($0 as? HTTPParseError)?.status, 400) }
        d.feed(bytes("GET / HTTP/1.1\r\nHost: h\r\n\r\n"))
        XCTAssertThrowsError(try d.next()) { XCTAssertEqual(($0 as? HTTPParseError)?.status, 400) }
        XCTAssertEqual(d.finish()?.status, 400)
        XCTAssertEqual(d.bufferedByteCount, 0)
    }

    func testFeedVariants() throws {
        let raw = bytes("GET /x HTTP/1.1\r\nHost: h\r\n\r\n")
        var a = HTTPRequestDecoder()
        raw.withUnsafeBytes { a.feed($0) }
        var b = HTTPRequestDecoder()
        b.feed(raw.lazy.map { $0 })  // non-contiguous collection
        var c = HTTPRequestDecoder()
        c.feed(raw[0..<10])
        c.feed(raw[10...])
        for var d in [a, b, c] {
            guard case .head(let head)? = try d.next() else { return XCTFail() }
            XCTAssertEqual(head.target, "/x")
            XCTAssertEqual(try d.next(), .end)
        }
    }

    func testLargeBodyHandedOverWithoutLoss() throws {
        var rng = SplitMix64(seed: 7)
        let body = (0..<200_000).map { _ in UInt8.random(in: 0...255, using: &rng) }
        let raw = bytes("PUT /big HTTP/1.1\r\nHost: h\r\nContent-Length: \(body.count)\r\n\r\n") + body
        let run = runRequest(randomSplit(raw, maxPiece: 20_000, using: &rng))
        XCTAssertNil(run.error)
        XCTAssertEqual(run.events.dropFirst().first, .body(body))
    }
}
