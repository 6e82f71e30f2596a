import XCTest
@testable import TetherHTTP

final class ResponseDecoderTests: XCTestCase {
    func head(_ e: Resp?) -> HTTPResponseHead? {
        if case .head(let h)? = e { return h }
        return nil
    }

    func testContentLength() {
        let raw = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nhello"
        for pieces in [[bytes(raw)], bytes(raw).map { [$0] }] {
            let run = runResponse(pieces, methods: ["GET"])
            XCTAssertNil(run.error)
            XCTAssertEqual(head(run.events.first)?.status, 200)
            XCTAssertEqual(head(run.events.first)?.reason, "OK")
            XCTAssertEqual(head(run.events.first)?.headers.first(name: "content-type"), "text/plain")
            XCTAssertEqual(run.events.dropFirst(), [.body(bytes("hello")), .end])
        }
    }

    func testChunked() {
        let raw = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4;x=y\r\nWiki\r\n5\r\npedia\r\n0\r\nExpires: never\r\n\r\n"
        for pieces in [[bytes(raw)], bytes(raw).map { [$0] }] {
            let run = runResponse(pieces)
            XCTAssertNil(run.error)
            XCTAssertEqual(run.events.dropFirst(), [.body(bytes("Wikipedia")), .end])
        }
    }

    func testHeadResponseHasNoBody() throws {
        var d = HTTPResponseDecoder()
        d.expectResponse(toMethod: "HEAD")
        d.expectResponse(toMethod: "GET")
        XCTAssertEqual(d.outstandingRequestCount, 2)
        d.feed(bytes("HTTP/1.1 200 OK\r\nContent-Length: 999999999999\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"))
        XCTAssertEqual(try d.next().flatMap { if case .head(let h) = $0 { return h.status } else { return nil } }, 200)
        XCTAssertEqual(try d.next(), .end, "HEAD response ends right after the head despite Content-Length")
        XCTAssertEqual(d.outstandingRequestCount, 1)
        guard case .head? = try d.next() else { return XCTFail() }
        XCTAssertEqual(try d.next(), .body(bytes("hi")))
        XCTAssertEqual(try d.next(), .end)
        XCTAssertNil(try d.next())
        XCTAssertEqual(d.outstandingRequestCount, 0)
    }

    func testNoBodyStatuses() {
        for status in [204, 304] {
            let raw = "HTTP/1.1 \(status) X\r\nContent-Length: 10\r\nTransfer-Encoding: chunked\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nz"
            let run = runResponse([bytes(raw)], methods: ["GET", "GET"])
            XCTAssertNil(run.error)
            XCTAssertEqual(run.events.count, 5)
            XCTAssertEqual(head(run.events[0])?.status, status)
            XCTAssertEqual(run.events[1], .end)
            XCTAssertEqual(run.events[3], .body(bytes("z")))
        }
    }

    func testInterimResponsesThenFinal() {
        let raw = "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok"
        for pieces in [[bytes(raw)], bytes(raw).map { [$0] }] {
            let run = runResponse(pieces, methods: ["PUT"])
            XCTAssertNil(run.error)
            XCTAssertEqual(run.events.compactMap { head($0)?.status }, [100, 103, 201])
            XCTAssertEqual(run.events.count, 5, "no .end for 1xx")
            XCTAssertEqual(run.events.suffix(2), [.body(bytes("ok")), .end])
        }
    }

    func testSwitchingProtocolsStopsDecoding() throws {
        var d = HTTPResponseDecoder()
        d.expectResponse(toMethod: "GET")
        let tail: [UInt8] = [0x81, 0x02, 0x68, 0x69, 0x0D, 0x0A]
        d.feed(bytes("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n") + tail)
        guard case .head(let h)? = try d.next() else { return XCTFail() }
        XCTAssertEqual(h.status, 101)
        XCTAssertNil(try d.next(), "no .end and no HTTP parsing of the new protocol")
        XCTAssertEqual(d.bufferedByteCount, tail.count)
        XCTAssertEqual(d.takeBufferedBytes(), tail)
        XCTAssertNil(d.finish())
    }

    func testConnectSuccessIsTunnel() throws {
        var d = HTTPResponseDecoder()
        d.expectResponse(toMethod: "CONNECT")
        d.feed(bytes("HTTP/1.1 200 Connection Established\r\n\r\n\u{16}\u{3}"))
        guard case .head(let h)? = try d.next() else { return XCTFail() }
        XCTAssertEqual(h.status, 200)
        XCTAssertNil(try d.next())
        XCTAssertEqual(d.takeBufferedBytes(), [0x16, 0x03])

        // A refused CONNECT is an ordinary response.
        let run = runResponse([bytes("HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 1\r\n\r\nx")], methods: ["CONNECT"])
        XCTAssertEqual(run.events.dropFirst(), [.body(bytes("x")), .end])
    }

    func testReadUntilEOF() throws {
        var d = HTTPResponseDecoder()
        d.feed(bytes("HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nfirst "))
        guard case .head(let h)? = try d.next() else { return XCTFail() }
        XCTAssertEqual(h.version, .http1_0)
        XCTAssertFalse(h.isKeepAlive)
        XCTAssertEqual(try d.next(), .body(bytes("first ")))
        XCTAssertNil(try d.next())
        d.feed(bytes("second"))
        XCTAssertEqual(try d.next(), .body(bytes("second")))
        XCTAssertNil(try d.next())
        XCTAssertNil(d.finish())
        XCTAssertEqual(try d.next(), .end)
        XCTAssertNil(try d.next())
    }

    func testNonChunkedFinalCodingReadsUntilEOF() {
        let run = runResponse([bytes("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n\u{1f}\u{8b}")], finish: true)
        XCTAssertNil(run.error)
        XCTAssertEqual(run.events.dropFirst(), [.body([0x1F, 0xC2, 0x8B]), .end])
        // gzip then chunked: chunked framing, content left encoded for the caller.
        let chunked = runResponse([bytes("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n")])
        XCTAssertEqual(chunked.events.dropFirst(), [.body(bytes("ab")), .end])
    }

    func testTruncatedResponses() {
        let cases = [
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nabc",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nabcde\r\n",
            "HTTP/1.1 200 OK\r\nContent-Le",
            "HTTP/1.1 20",
            "HTTP/1.1 100 Continue\r\n\r\n",
        ]
        for raw in cases {
            let run = runResponse([bytes(raw)], finish: true)
            XCTAssertEqual(run.error?.code, "INVALID_RESPONSE", raw.debugDescription)
        }
        let clean = runResponse([bytes("HTTP/1.1 204 No Content\r\n\r\n")], finish: true)
        XCTAssertNil(clean.error)
        XCTAssertEqual(clean.events.count, 2)
    }

    func testStatusLineVariants() {
        let noReason = runResponse([bytes("HTTP/1.1 299\r\nContent-Length: 0\r\n\r\n")])
        XCTAssertNil(noReason.error)
        XCTAssertEqual(head(noReason.events.first)?.reason, "")
        let emptyReason = runResponse([bytes("HTTP/1.1 404 \r\nContent-Length: 0\r\n\r\n")])
        XCTAssertEqual(head(emptyReason.events.first)?.reason, "")
        let spaced = runResponse([bytes("HTTP/1.1 500 Internal  Server\tError\r\nContent-Length: 0\r\n\r\n")])
        XCTAssertEqual(head(spaced.events.first)?.reason, "Internal  Server\tError")
    }

    func testInvalidResponses() {
        let invalid: (HTTPParseError) -> Bool = { if case .invalidResponse = $0 { return true } else { return false } }
        for line in ["HTTP/1.1 20 OK", "HTTP/1.1 2000 OK", "HTTP/1.1 099 X", "HTTP/1.1 abc OK", "HTTP/1.1  200 OK",
                     "http/1.1 200 OK", "HTTP/1.1200 OK", "HTTP/1.1 200\u{1}OK", "HTTP/1.1 200 O\u{0}K", "ICY 200 OK",
                     "HTTP/1.1 200 OK\rX"] {
            assertResponseError(line + "\r\nContent-Length: 0\r\n\r\n", invalid)
        }
        assertResponseError("HTTP/2.0 200 OK\r\n\r\n") { $0 == .versionNotSupported }
        assertResponseError("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", invalid)
        assertResponseError("HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", invalid)
        assertResponseError("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", invalid)
        assertResponseError("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", invalid)
        assertResponseError("HTTP/1.1 200 OK\r\nBad Header: 1\r\n\r\n", invalid)
        assertResponseError("HTTP/1.1 200 OK\r\nX: 1\r\n folded\r\n\r\n", invalid)
        assertResponseError("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", invalid)
        assertResponseError("HTTP/1.1 200 OK\r\nContent-Length: 20000000\r\n\r\n") { $0 == .payloadTooLarge }
    }

    func testLimits() {
        let longStatus = bytes("HTTP/1.1 200 ") + [UInt8](repeating: UInt8(ascii: "x"), count: 100_000)
        let run = runResponse(split(longStatus, sizes: [1000]))
        XCTAssertEqual(run.error, .invalidResponse(reason: "status line too long"))

        var raw = "HTTP/1.1 200 OK\r\n"
        for i in 0..<101 { raw += "X-\(i): v\r\n" }
        XCTAssertEqual(runResponse([bytes(raw + "\r\n")]).error, .headersTooLarge)

        let untilEOF = runResponse([bytes("HTTP/1.1 200 OK\r\n\r\n"), [UInt8](repeating: 0, count: 200)],
                                   limits: HTTPLimits(maxBodySize: 100))
        XCTAssertEqual(untilEOF.error, .payloadTooLarge)
        let chunked = runResponse([bytes("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n65\r\n")],
                                  limits: HTTPLimits(maxBodySize: 100))
        XCTAssertEqual(chunked.error, .payloadTooLarge)
    }

    func testPipelinedResponsesWithMixedMethods() {
        let raw = "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc"
            + "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n"  // HEAD
            + "HTTP/1.1 100 Continue\r\n\r\n"
            + "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nz\r\n0\r\n\r\n"
            + "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
        for pieces in [[bytes(raw)], bytes(raw).map { [$0] }, split(bytes(raw), sizes: [5, 11, 3])] {
            let run = runResponse(pieces, methods: ["GET", "HEAD", "POST", "DELETE"])
            XCTAssertNil(run.error)
            XCTAssertEqual(run.events.compactMap { head($0)?.status }, [200, 200, 100, 200, 404])
            XCTAssertEqual(run.events.filter { $0 == .end }.count, 4)
            XCTAssertEqual(run.events.filter { if case .body = $0 { return true } else { return false } },
                           [.body(bytes("abc")), .body(bytes("z"))])
        }
    }

    func testBufferReleasedWhenDrained() throws {
        var d = HTTPResponseDecoder()
        d.feed(bytes("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"))
        while try d.next() != nil {}
        XCTAssertEqual(d.bufferCapacity, 0)
        XCTAssertEqual(d.bufferedByteCount, 0)
    }
}
