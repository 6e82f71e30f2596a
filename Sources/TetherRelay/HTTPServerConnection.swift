#if os(Linux)
import TetherHTTP
import TetherIO
import TetherWebSocket

/// One client connection speaking HTTP/1.1: decodes requests with the sans-I/O decoder, routes
/// them, and hands upgraded connections to a WebSocket handler. The loop only moves bytes.
final class HTTPServerConnection: ConnectionHandler {
    private enum Phase {
        /// Waiting for (the rest of) a request head; the header deadline runs once it starts.
        case awaitingHead
        /// Streaming the current request's body to `route`; its response has started.
        case body(Route)
        /// Errored or upgraded: input is no longer for us.
        case done
    }

    enum Route {
        /// Response already sent at head time; the body is read and dropped.
        case discard(keepAlive: Bool)
        /// POST /echo: the body streams straight back.
        case echo(chunked: Bool, keepAlive: Bool)
    }

    private let context: RelayContext
    private var decoder: HTTPRequestDecoder
    private var phase = Phase.awaitingHead
    /// The peer half-closed; handled once everything it sent before has been processed.
    private var peerFinished = false
    /// The echo response head waits for the first body bytes, so that a body rejected up
    /// front (bad chunk, over the size limit) still gets a clean 4xx.
    private var deferredHead: HTTPResponseHead?
    private var responseStarted = false
    private var scratch: [UInt8] = []

    init(context: RelayContext) {
        self.context = context
        self.decoder = HTTPRequestDecoder(limits: context.configuration.httpLimits)
    }

    func connectionDidOpen(_ connection: Connection) {
        connection.setDeadline(milliseconds: context.configuration.headerTimeoutMilliseconds)
    }

    func connection(_ connection: Connection, didRead bytes: UnsafeRawBufferPointer) {
        switch phase {
        case .done:
            return
        case .body:
            connection.setDeadline(milliseconds: context.configuration.idleTimeoutMilliseconds)
        case .awaitingHead:
            // A new head starts: it must be complete within the header timeout, however
            // slowly its bytes trickle in (slowloris).
            if decoder.bufferedByteCount == 0 {
                connection.setDeadline(milliseconds: context.configuration.headerTimeoutMilliseconds)
            }
        }
        decoder.feed(bytes)
        process(connection)
    }

    func connectionWritable(_ connection: Connection) {
        connection.resumeReading()
        process(connection)
    }

    func connectionDidReadEOF(_ connection: Connection) {
        peerFinished = true
        process(connection)
    }

    func connectionDeadlineExpired(_ connection: Connection) {
        context.stats.deadlineExpirations.addFromOwner()
        switch phase {
        case .awaitingHead where decoder.bufferedByteCount > 0:
            phase = .done
            respond(connection, status: 408, code: "REQUEST_TIMEOUT",
                    message: "the request head did not arrive in time", keepAlive: false)
            connection.close(.graceful)
        case .body where !responseStarted:
            phase = .done
            deferredHead = nil
            respond(connection, status: 408, code: "REQUEST_TIMEOUT",
                    message: "the request body stalled", keepAlive: false)
            connection.close(.graceful)
        case .body:
            // The response is under way: no clean error can be sent any more.
            phase = .done
            connection.close(.abort)
        default:
            phase = .done
            connection.close(.graceful)
        }
    }

    // MARK: request processing

    private func process(_ connection: Connection) {
        while connection.isOpen {
            if case .done = phase { return }
            // Backpressure: a client that does not read its responses stops our reading too.
            if !connection.isWritable {
                connection.pauseReading()
                return
            }
            let event: HTTPRequestEvent?
            do {
                event = try decoder.next()
            } catch {
                fail(connection, error)
                return
            }
            guard let event else {
                if peerFinished { finishInput(connection) }
                return
            }
            switch event {
            case .head(let head):
                handleHead(head, connection)
            case .body(let bytes):
                guard case .body(let route) = phase else { continue }
                if case .echo(let chunked, _) = route {
                    writeDeferredHead(connection)
                    if chunked {
                        scratch.removeAll(keepingCapacity: true)
                        bytes.withUnsafeBytes { HTTPChunkedEncoding.encodeChunk($0, into: &scratch) }
                        connection.write(scratch)
                    } else {
                        connection.write(bytes)
                    }
                }
            case .end:
                guard case .body(let route) = phase else { continue }
                let keepAlive: Bool
                switch route {
                case .discard(let k):
                    keepAlive = k
                case .echo(let chunked, let k):
                    keepAlive = k
                    writeDeferredHead(connection)
                    if chunked {
                        scratch.removeAll(keepingCapacity: true)
                        HTTPChunkedEncoding.encodeLastChunk(into: &scratch)
                        connection.write(scratch)
                    }
                }
                scratch = []
                responseStarted = false
                if keepAlive && !peerFinished {
                    phase = .awaitingHead
                    connection.setDeadline(milliseconds: context.configuration.idleTimeoutMilliseconds)
                } else {
                    phase = .done
                    connection.close(.graceful)
                    return
                }
            }
        }
    }

    /// Everything the peer sent before its EOF has been processed.
    private func finishInput(_ connection: Connection) {
        if let error = decoder.finish() {
            fail(connection, error)
        } else {
            phase = .done
            connection.close(.graceful)
        }
    }

    private func handleHead(_ head: HTTPRequestHead, _ connection: Connection) {
        context.stats.requests.addFromOwner()
        connection.setDeadline(milliseconds: context.configuration.idleTimeoutMilliseconds)
        let keepAlive = head.isKeepAlive
        let headOnly = head.method == "HEAD"
        switch (head.path, head.method) {
        case ("/healthz", "GET"), ("/healthz", "HEAD"):
            respondJSON(connection, status: 200, body: "{\"status\":\"ok\"}", keepAlive: keepAlive, headOnly: headOnly)
            phase = .body(.discard(keepAlive: keepAlive))
        case ("/echo", "POST"):
            if head.expectsContinue {
                connection.write(Array("HTTP/1.1 100 Continue\r\n\r\n".utf8))
            }
            // Chunked in, chunked out; otherwise the length is known up front (a request with
            // neither header has an empty body, RFC 9112 6.3).
            let chunked = head.headers.containsToken("chunked", in: "transfer-encoding")
            var headers: HTTPHeaders = [:]
            headers.add(name: "Content-Type", value: "application/octet-stream")
            headers.add(name: "Server", value: "tether")
            if chunked {
                headers.add(name: "Transfer-Encoding", value: "chunked")
            } else {
                let length = head.headers.first(name: "content-length").flatMap { Int($0) } ?? 0
                headers.add(name: "Content-Length", value: String(length))
            }
            if !keepAlive { headers.add(name: "Connection", value: "close") }
            deferredHead = HTTPResponseHead(status: 200, headers: headers)
            phase = .body(.echo(chunked: chunked, keepAlive: keepAlive))
        case ("/ws/echo", "GET"):
            upgradeToWebSocket(head, connection)
        case ("/healthz", _), ("/echo", _), ("/ws/echo", _):
            respond(connection, status: 405, code: "METHOD_NOT_ALLOWED",
                    message: "\(head.method) is not allowed on \(head.path)", keepAlive: keepAlive, headOnly: headOnly)
            phase = .body(.discard(keepAlive: keepAlive))
        default:
            respond(connection, status: 404, code: "NOT_FOUND", message: "no route for \(head.path)",
                    keepAlive: keepAlive, headOnly: headOnly)
            phase = .body(.discard(keepAlive: keepAlive))
        }
    }

    private func upgradeToWebSocket(_ head: HTTPRequestHead, _ connection: Connection) {
        let key: String
        do {
            key = try WebSocketHandshake.validateClientRequest(head).key
        } catch {
            context.stats.badRequests.addFromOwner()
            respond(connection, status: error.status, code: error.code, message: error.reason,
                    keepAlive: false, extraHeaders: error.responseHeaders)
            phase = .done
            connection.close(.graceful)
            return
        }
        context.stats.webSocketUpgrades.addFromOwner()
        writeHead(WebSocketHandshake.serverResponse(key: key), connection)
        let leftover = decoder.takeBufferedBytes()
        phase = .done
        let ws = WebSocketEchoConnection(context: context)
        connection.handler = ws
        ws.connectionDidOpen(connection)
        if !leftover.isEmpty {
            leftover.withUnsafeBytes { ws.connection(connection, didRead: $0) }
        }
        if peerFinished { ws.connectionDidReadEOF(connection) }
    }

    // MARK: responses

    private func fail(_ connection: Connection, _ error: HTTPParseError) {
        context.stats.badRequests.addFromOwner()
        deferredHead = nil
        if responseStarted {
            // A response is already on the wire: an error message would corrupt it. Close
            // after what was sent, leaving the body unterminated, which clients see as failed.
            phase = .done
            connection.close(.graceful)
            return
        }
        phase = .done
        respond(connection, status: error.status, code: error.code, message: error.reason, keepAlive: false)
        connection.close(.graceful)
    }

    private func writeDeferredHead(_ connection: Connection) {
        guard let head = deferredHead else { return }
        deferredHead = nil
        writeHead(head, connection)
    }

    private func writeHead(_ head: HTTPResponseHead, _ connection: Connection) {
        responseStarted = true
        scratch.removeAll(keepingCapacity: true)
        head.encode(into: &scratch)
        connection.write(scratch)
    }

    private func respond(_ connection: Connection, status: Int, code: String, message: String,
                         keepAlive: Bool, headOnly: Bool = false, extraHeaders: HTTPHeaders = [:]) {
        respondJSON(connection, status: status, body: JSON.error(code: code, message: message),
                    keepAlive: keepAlive, headOnly: headOnly, extraHeaders: extraHeaders)
    }

    private func respondJSON(_ connection: Connection, status: Int, body: String, keepAlive: Bool,
                             headOnly: Bool = false, extraHeaders: HTTPHeaders = [:]) {
        var headers: HTTPHeaders = [:]
        headers.add(name: "Content-Type", value: "application/json")
        headers.add(name: "Content-Length", value: String(body.utf8.count))
        headers.add(name: "Server", value: "tether")
        if !keepAlive { headers.add(name: "Connection", value: "close") }
        for (name, value) in extraHeaders { headers.add(name: name, value: value) }
        scratch.removeAll(keepingCapacity: true)
        HTTPResponseHead(status: status, headers: headers).encode(into: &scratch)
        if !headOnly { scratch.append(contentsOf: body.utf8) }
        connection.write(scratch)
        responseStarted = true
    }
}
#endif
