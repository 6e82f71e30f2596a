import TetherHTTP
import TetherWebSocket
import XCTest

final class HandshakeTests: XCTestCase {
    /// The request from RFC 6455 §1.2.
    private func rfcRequest(_ edit: (inout HTTPRequestHead) -> Void = { _ in }) -> HTTPRequestHead {
        var head = HTTPRequestHead(method: "GET", target: "/chat", version: .http1_1, headers: [
            "Host": "server.example.com",
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
            "Origin": "http://example.com",
            "Sec-WebSocket-Protocol": "chat, superchat",
            "Sec-WebSocket-Version": "13",
        ])
        edit(&head)
        return head
    }

    private func assertRejected(_ head: HTTPRequestHead, status: Int, code: String,
                                file: StaticString = #filePath, line: UInt = #line) {
        do {
            _ = try WebSocketHandshake.validateClientRequest(head)
            XCTFail("accepted", file: file, line: line)
        } catch {
            XCTAssertEqual(error.status, status, error.reason, file: file, line: line)
            XCTAssertEqual(error.code, code, file: file, line: line)
            XCTAssertFalse(error.reason.isEmpty, file: file, line: line)
        }
    }

    /// RFC 6455 §1.3 example.
    func testAcceptValueRFCExample() {
        XCTAssertEqual(WebSocketHandshake.acceptValue(forKey: "dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
    }

    func testValidRequest() throws {
        let (key, protocols) = try WebSocketHandshake.validateClientRequest(rfcRequest())
        XCTAssertEqual(key, "dGhlIHNhbXBsZSBub25jZQ==")
        XCTAssertEqual(protocols, ["chat", "superchat"])

        // Case-insensitive tokens, token lists, repeated protocol fields, whitespace.
        let relaxed = rfcRequest {
            $0.headers = ["host": "h", "upgrade": "WebSocket", "connection": "keep-alive, Upgrade",
                          "sec-websocket-key": " dGhlIHNhbXBsZSBub25jZQ== ", "sec-websocket-version": "13",
                          "Sec-WebSocket-Protocol": " a ,b,, "]
            $0.headers.add(name: "Sec-WebSocket-Protocol", value: "c")
        }
        let r = try WebSocketHandshake.validateClientRequest(relaxed)
        XCTAssertEqual(r.key, "dGhlIHNhbXBsZSBub25jZQ==")
        XCTAssertEqual(r.protocols, ["a", "b", "c"])
        let noProtocols = rfcRequest { $0.headers.remove(name: "Sec-WebSocket-Protocol") }
        XCTAssertEqual(try WebSocketHandshake.validateClientRequest(noProtocols).protocols, [])
    }

    func testInvalidRequests() {
        let bad = "WS_BAD_HANDSHAKE"
        assertRejected(rfcRequest { $0.method = "POST" }, status: 400, code: bad)
        assertRejected(rfcRequest { $0.version = .http1_0 }, status: 400, code: bad)
        assertRejected(rfcRequest { $0.headers.remove(name: "Upgrade") }, status: 400, code: bad)
        assertRejected(rfcRequest { $0.headers.replaceOrAdd(name: "Upgrade", value: "h2c") }, status: 400, code: bad)
        assertRejected(rfcRequest { $0.headers.remove(name: "Connection") }, status: 400, code: bad)
        assertRejected(rfcRequest { $0.headers.replaceOrAdd(name: "Connection", value: "keep-alive") }, status: 400, code: bad)
        assertRejected(rfcRequest { $0.headers.remove(name: "Host") }, status: 400, code: bad)
        assertRejected(rfcRequest { $0.headers.replaceOrAdd(name: "Host", value: " ") }, status: 400, code: bad)
        assertRejected(rfcRequest { $0.headers.remove(name: "Sec-WebSocket-Key") }, status: 400, code: bad)
        assertRejected(rfcRequest { $0.headers.add(name: "Sec-WebSocket-Key", value: "dGhlIHNhbXBsZSBub25jZQ==") }, status: 400, code: bad)
        // Base64 of 15 and 17 bytes, not base64 at all, unpadded.
        for key in ["AAAAAAAAAAAAAAAAAAAA", "AAAAAAAAAAAAAAAAAAAAAAA=", "not a key", "dGhlIHNhbXBsZSBub25jZQ", "dGhlIHNhbXBsZSBub25jZQ=!"] {
            assertRejected(rfcRequest { $0.headers.replaceOrAdd(name: "Sec-WebSocket-Key", value: key) }, status: 400, code: bad)
        }
        assertRejected(rfcRequest { $0.headers.remove(name: "Sec-WebSocket-Version") }, status: 426, code: "WS_VERSION")
        assertRejected(rfcRequest { $0.headers.replaceOrAdd(name: "Sec-WebSocket-Version", value: "8") }, status: 426, code: "WS_VERSION")
        assertRejected(rfcRequest { $0.headers.add(name: "Sec-WebSocket-Version", value: "8") }, status: 426, code: "WS_VERSION")
    }

    func testVersionErrorCarriesSupportedVersion() {
        XCTAssertEqual(WebSocketHandshake.versionErrorHeaders.first(name: "Sec-WebSocket-Version"), "13")
        let error = WebSocketHandshakeError.unsupportedVersion(reason: "x")
        XCTAssertEqual(error.responseHeaders.first(name: "sec-websocket-version"), "13")
        XCTAssertTrue(WebSocketHandshakeError.badRequest(reason: "x").responseHeaders.isEmpty)
        let head = WebSocketHandshake.errorResponse(for: error)
        XCTAssertEqual(head.status, 426)
        XCTAssertEqual(head.reason, "Upgrade Required")
        XCTAssertEqual(head.headers["Sec-WebSocket-Version"], ["13"])
        XCTAssertEqual(WebSocketHandshake.errorResponse(for: .badRequest(reason: "x")).status, 400)
    }

    func testServerResponse() throws {
        let response = WebSocketHandshake.serverResponse(key: "dGhlIHNhbXBsZSBub25jZQ==", subprotocol: "chat",
                                                         extraHeaders: ["X-Relay": "1"])
        XCTAssertEqual(response.status, 101)
        XCTAssertEqual(response.version, .http1_1)
        XCTAssertEqual(response.headers.first(name: "Sec-WebSocket-Accept"), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
        XCTAssertTrue(response.headers.containsToken("websocket", in: "Upgrade"))
        XCTAssertTrue(response.headers.containsToken("upgrade", in: "Connection"))
        XCTAssertEqual(response.headers["Sec-WebSocket-Protocol"], ["chat"])
        XCTAssertEqual(response.headers.first(name: "X-Relay"), "1")
        XCTAssertEqual(try WebSocketHandshake.validateServerResponse(response, key: "dGhlIHNhbXBsZSBub25jZQ==",
                                                                     requestedProtocols: ["superchat", "chat"]), "chat")
        XCTAssertFalse(WebSocketHandshake.serverResponse(key: "k").headers.contains(name: "Sec-WebSocket-Protocol"))
    }

    func testClientRequestRoundTrip() throws {
        let (head, key) = WebSocketHandshake.clientRequest(host: "relay.test:8080", target: "/ws?x=1", protocols: ["p1", "p2"],
                                                           extraHeaders: ["Authorization": "Bearer t"])
        XCTAssertEqual(head.method, "GET")
        XCTAssertEqual(head.target, "/ws?x=1")
        XCTAssertEqual(head.headers.first(name: "Host"), "relay.test:8080")
        XCTAssertEqual(head.headers.first(name: "Authorization"), "Bearer t")
        XCTAssertEqual(Base64.decode(key)?.count, 16)
        XCTAssertNotEqual(WebSocketHandshake.clientRequest(host: "h", target: "/").key, key, "keys are random")
        let validated = try WebSocketHandshake.validateClientRequest(head)
        XCTAssertEqual(validated.key, key)
        XCTAssertEqual(validated.protocols, ["p1", "p2"])
        let response = WebSocketHandshake.serverResponse(key: validated.key)
        XCTAssertNil(try WebSocketHandshake.validateServerResponse(response, key: key, requestedProtocols: ["p1", "p2"]))
    }

    func testInvalidServerResponses() {
        let key = "dGhlIHNhbXBsZSBub25jZQ=="
        let good = WebSocketHandshake.serverResponse(key: key)
        func rejected(_ edit: (inout HTTPResponseHead) -> Void, protocols: [String] = [], status: Int = 502,
                      code: String = "WS_BAD_RESPONSE", line: UInt = #line) {
            var head = good
            edit(&head)
            do {
                _ = try WebSocketHandshake.validateServerResponse(head, key: key, requestedProtocols: protocols)
                XCTFail("accepted", line: line)
            } catch {
                XCTAssertEqual(error.status, status, line: line)
                XCTAssertEqual(error.code, code, line: line)
            }
        }
        rejected({ $0.status = 200 }, status: 200, code: "WS_UNEXPECTED_STATUS")
        rejected({ $0.status = 401 }, status: 401, code: "WS_UNEXPECTED_STATUS")
        rejected({ $0.headers.remove(name: "Upgrade") })
        rejected({ $0.headers.remove(name: "Connection") })
        rejected({ $0.headers.replaceOrAdd(name: "Sec-WebSocket-Accept", value: "s3pPLMBiTxaQ9kYGzzhZRbK+xOo") })
        rejected({ $0.headers.remove(name: "Sec-WebSocket-Accept") })
        rejected({ $0.headers.add(name: "Sec-WebSocket-Protocol", value: "chat") })
        rejected({ $0.headers.add(name: "Sec-WebSocket-Protocol", value: "a, b") }, protocols: ["a", "b"])
        rejected({ $0.headers.add(name: "Sec-WebSocket-Extensions", value: "permessage-deflate") })
    }
}
