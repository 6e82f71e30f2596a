#if os(Linux)
import TetherAuth
import TetherHTTP
import TetherIO
import TetherTunnel

/// One request forwarded through a bridge: the web client's half of a tunnel stream.
final class ProxyExchange {
    enum Framing {
        /// The bridge gave a Content-Length: bytes pass through as they are.
        case length
        case chunked
        /// HTTP/1.0 client without a length: the end of the body is the end of the connection.
        case untilClose
        /// HEAD, 1xx, 204, 304: whatever body the bridge sends is dropped.
        case none
    }

    enum ResponseState {
        case awaitingHead
        case streaming(Framing)
        case finished
    }

    let bridge: Bridge
    var stream: StreamID
    let head: TunnelRequestHead
    var keepAlive: Bool
    let headOnly: Bool
    let version: HTTPVersion
    let session: Session
    /// The request went out with END_STREAM on OPEN (no body), so it can be retried elsewhere.
    let openedWithoutBody: Bool
    var requestEnded: Bool
    var response = ResponseState.awaitingHead
    /// Request body bytes the windows did not take yet, and whether the end follows them.
    var held: [UInt8] = []
    var heldOffset = 0
    var heldEnd = false
    /// Response bytes written to the client but not yet credited back to the bridge.
    var owedCredit = 0

    init(bridge: Bridge, stream: StreamID, head: TunnelRequestHead, keepAlive: Bool, headOnly: Bool,
         version: HTTPVersion, session: Session, openedWithoutBody: Bool) {
        self.bridge = bridge
        self.stream = stream
        self.head = head
        self.keepAlive = keepAlive
        self.headOnly = headOnly
        self.version = version
        self.session = session
        self.openedWithoutBody = openedWithoutBody
        self.requestEnded = openedWithoutBody
    }

    var responseStarted: Bool {
        if case .awaitingHead = response { return false }
        return true
    }
    var isBlocked: Bool { heldOffset < held.count || (heldEnd && !requestEnded) }
}

/// Headers that describe one hop's connection, never forwarded (RFC 9110 7.6.1).
private let hopByHop: Set<String> = [
    "connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization",
    "te", "trailer", "transfer-encoding", "upgrade",
]

extension HTTPServerConnection: StreamClient {
    // MARK: starting

    func startProxy(_ head: HTTPRequestHead, _ identity: Identity, _ connection: Connection) {
        let keepAlive = head.isKeepAlive
        guard let session = context.sessions.existing(identity.session), let bridge = session.pickBridge() else {
            context.stats.streamsFailed.addFromOwner()
            respond(connection, status: 503, code: "TUNNEL_NOT_AVAILABLE",
                    message: "no bridge is connected for this session", keepAlive: keepAlive,
                    headOnly: head.method == "HEAD")
            phase = .body(.discard(keepAlive: keepAlive))
            return
        }
        let tunnelHead = HTTPServerConnection.tunnelHead(for: head, remote: connection.remoteAddress,
                                                         tls: connection.isTLS)
        let hasBody = head.headers.containsToken("chunked", in: "transfer-encoding")
            || (head.headers.first(name: "content-length").flatMap { Int($0) } ?? 0) > 0
        guard let stream = bridge.openStream(tunnelHead, endStream: !hasBody, client: self) else {
            context.stats.streamsFailed.addFromOwner()
            respond(connection, status: 503, code: "TUNNEL_NOT_AVAILABLE",
                    message: "the session's bridges cannot take another stream", keepAlive: keepAlive,
                    headOnly: head.method == "HEAD")
            phase = .body(.discard(keepAlive: keepAlive))
            return
        }
        if hasBody && head.expectsContinue {
            connection.write(Array("HTTP/1.1 100 Continue\r\n\r\n".utf8))
        }
        proxy = ProxyExchange(bridge: bridge, stream: stream, head: tunnelHead, keepAlive: keepAlive,
                              headOnly: head.method == "HEAD", version: head.version, session: session,
                              openedWithoutBody: !hasBody)
        phase = .body(.proxy)
        connection.setDeadline(milliseconds: context.configuration.streamIdleTimeoutMilliseconds)
    }

    /// The head the bridge sees: service prefix and `token` parameter removed, hop-by-hop
    /// fields and the caller's credentials dropped, forwarding fields added.
    static func tunnelHead(for head: HTTPRequestHead, remote: SocketAddress?, tls: Bool) -> TunnelRequestHead {
        let target = stripServicePrefix(TokenExtractor.removingToken(fromTarget: head.target)) ?? "/"
        var connectionTokens: Set<String> = []
        for value in head.headers["connection"] {
            for token in value.split(separator: ",") {
                connectionTokens.insert(String(token.filter { $0 != " " && $0 != "\t" }).lowercased())
            }
        }
        var headers = HTTPHeaders()
        headers.reserveCapacity(head.headers.count + 2)
        for (name, value) in head.headers {
            let lower = name.lowercased()
            if hopByHop.contains(lower) || connectionTokens.contains(lower) || lower == "authorization"
                || lower == "expect" || lower == "x-forwarded-for" || lower == "x-forwarded-proto" {
                continue
            }
            headers.add(name: name, value: value)
        }
        if let remote { headers.add(name: "X-Forwarded-For", value: remote.host) }
        headers.add(name: "X-Forwarded-Proto", value: tls ? "https" : "http")
        return TunnelRequestHead(method: head.method, target: target, headers: headers)
    }

    // MARK: request body (client → bridge)

    /// False while the exchange cannot take more request input (window closed, or the
    /// request is complete and its response still flowing).
    func proxyMayDecode(_ connection: Connection) -> Bool {
        guard case .body(.proxy) = phase, let proxy else { return true }
        if proxy.isBlocked {
            connection.pauseReading()
            return false
        }
        if proxy.requestEnded {
            // Pipelined requests wait; a client that floods them is paused.
            if decoder.bufferedByteCount > 65_536 { connection.pauseReading() }
            return false
        }
        return true
    }

    func proxyRequestBody(_ bytes: [UInt8], end: Bool, _ connection: Connection) {
        guard let proxy else { return }
        if end && proxy.requestEnded {
            // OPEN already carried END_STREAM; nothing to send.
            proxyMaybeComplete(connection)
            return
        }
        proxy.held = bytes
        proxy.heldOffset = 0
        proxy.heldEnd = end
        pushHeldBody(proxy, connection)
    }

    private func pushHeldBody(_ proxy: ProxyExchange, _ connection: Connection) {
        let remaining = proxy.held.count - proxy.heldOffset
        if remaining > 0 || proxy.heldEnd {
            let taken = proxy.held.withUnsafeBytes { raw in
                proxy.bridge.sendBody(proxy.stream, UnsafeRawBufferPointer(rebasing: raw[proxy.heldOffset...]),
                                      endStream: proxy.heldEnd)
            }
            proxy.heldOffset += taken
        }
        guard proxy.heldOffset >= proxy.held.count else {
            connection.pauseReading()
            return
        }
        proxy.held = []
        proxy.heldOffset = 0
        if proxy.heldEnd {
            proxy.heldEnd = false
            proxy.requestEnded = true
            proxyMaybeComplete(connection)
        }
    }

    func streamWindowAvailable() {
        guard let proxy, let connection, proxy.isBlocked else { return }
        pushHeldBody(proxy, connection)
        if !proxy.isBlocked {
            connection.resumeReading()
            process(connection)
        }
    }

    // MARK: response (bridge → client)

    func streamDidReceiveResponse(_ head: TunnelResponseHead, endStream: Bool) {
        guard let proxy, let connection, connection.isOpen, case .awaitingHead = proxy.response else { return }
        connection.setDeadline(milliseconds: context.configuration.streamIdleTimeoutMilliseconds)
        var headers = HTTPHeaders()
        headers.reserveCapacity(head.headers.count + 2)
        var hasLength = false
        for (name, value) in head.headers {
            let lower = name.lowercased()
            if hopByHop.contains(lower) { continue }
            if lower == "content-length" { hasLength = true }
            headers.add(name: name, value: value)
        }
        let bodyless = proxy.headOnly || head.status < 200 || head.status == 204 || head.status == 304
        var keepAlive = proxy.keepAlive
        let framing: ProxyExchange.Framing
        if bodyless {
            framing = .none
        } else if hasLength {
            framing = .length
        } else if proxy.version >= .http1_1 {
            framing = .chunked
            headers.add(name: "Transfer-Encoding", value: "chunked")
        } else {
            framing = .untilClose
            keepAlive = false
        }
        if !keepAlive || !proxy.requestEnded { headers.add(name: "Connection", value: "close") }
        writeHead(HTTPResponseHead(status: head.status, headers: headers), connection)
        proxy.response = .streaming(framing)
        proxy.keepAlive = keepAlive
        if endStream { finishResponse(proxy, connection) }
    }

    func streamDidReceiveData(_ bytes: ArraySlice<UInt8>, endStream: Bool) {
        guard let proxy, let connection, connection.isOpen, case .streaming(let framing) = proxy.response else { return }
        connection.setDeadline(milliseconds: context.configuration.streamIdleTimeoutMilliseconds)
        if !bytes.isEmpty {
            switch framing {
            case .length, .untilClose:
                bytes.withUnsafeBytes { connection.write($0) }
            case .chunked:
                scratch.removeAll(keepingCapacity: true)
                bytes.withUnsafeBytes { HTTPChunkedEncoding.encodeChunk($0, into: &scratch) }
                connection.write(scratch)
            case .none:
                break
            }
            // Credit goes back only once the client's socket keeps up: a client that stops
            // reading holds at most one stream window (plus the socket's watermark) here.
            proxy.owedCredit += bytes.count
            if connection.isWritable { returnCredit(proxy) }
        }
        if endStream { finishResponse(proxy, connection) }
    }

    private func returnCredit(_ proxy: ProxyExchange) {
        guard proxy.owedCredit > 0 else { return }
        let owed = proxy.owedCredit
        proxy.owedCredit = 0
        proxy.bridge.consumed(proxy.stream, bytes: owed)
    }

    func proxyWritable(_ connection: Connection) {
        if let proxy { returnCredit(proxy) }
    }

    private func finishResponse(_ proxy: ProxyExchange, _ connection: Connection) {
        guard case .streaming(let framing) = proxy.response else { return }
        if case .chunked = framing {
            scratch.removeAll(keepingCapacity: true)
            HTTPChunkedEncoding.encodeLastChunk(into: &scratch)
            connection.write(scratch)
        }
        proxy.response = .finished
        returnCredit(proxy)
        if !proxy.requestEnded {
            // The response is complete while the client is still sending: stop the upload
            // and close after the response rather than drain an unbounded body.
            self.proxy = nil
            proxy.bridge.cancel(proxy.stream, code: .cancel)
            phase = .done
            connection.close(.graceful)
            return
        }
        proxyMaybeComplete(connection)
    }

    /// Both directions are done: the connection is free for the next request.
    private func proxyMaybeComplete(_ connection: Connection) {
        guard let proxy, proxy.requestEnded, case .finished = proxy.response else { return }
        self.proxy = nil
        if finishExchange(keepAlive: proxy.keepAlive, connection) {
            process(connection)
        }
    }

    // MARK: failures

    func streamDidFail(_ failure: StreamFailure) {
        guard let proxy, let connection, connection.isOpen else { return }
        self.proxy = nil
        if proxy.responseStarted {
            // Too late for an error status: cut the response so the client sees it incomplete.
            context.stats.streamsAborted.addFromOwner()
            phase = .done
            if case .streaming(.untilClose) = proxy.response { connection.close(.abort) } else { connection.close(.graceful) }
            return
        }
        // A bridge that refused a body-less request before touching it: try another one once.
        if case .reset(.refusedStream, _) = failure, proxy.openedWithoutBody,
           let other = proxy.session.pickBridge(excluding: proxy.bridge),
           let stream = other.openStream(proxy.head, endStream: true, client: self) {
            self.proxy = ProxyExchange(bridge: other, stream: stream, head: proxy.head, keepAlive: proxy.keepAlive,
                                       headOnly: proxy.headOnly, version: proxy.version, session: proxy.session,
                                       openedWithoutBody: true)
            return
        }
        context.stats.streamsFailed.addFromOwner()
        let (status, code, message) = failure.response
        respondError(proxy, status: status, code: code, message: message, connection)
    }

    private func respondError(_ proxy: ProxyExchange, status: Int, code: String, message: String, _ connection: Connection) {
        let keepAlive = proxy.keepAlive && proxy.requestEnded && !peerFinished
        respond(connection, status: status, code: code, message: message, keepAlive: keepAlive, headOnly: proxy.headOnly)
        if keepAlive {
            if finishExchange(keepAlive: true, connection) { process(connection) }
        } else {
            phase = .done
            connection.close(.graceful)
        }
    }

    /// Idle deadline while proxying. Returns true when handled here.
    func proxyDeadlineExpired(_ connection: Connection) -> Bool {
        guard let proxy else { return false }
        self.proxy = nil
        proxy.bridge.cancel(proxy.stream, code: .cancel)
        if proxy.responseStarted {
            context.stats.streamsAborted.addFromOwner()
            phase = .done
            connection.close(.abort)
        } else {
            context.stats.streamsFailed.addFromOwner()
            respondError(proxy, status: 504, code: "LOCAL_TIMEOUT",
                         message: "no response from the local service within the idle timeout", connection)
        }
        return true
    }

    /// The client half-closed. Returns true when handled here.
    func proxyClientFinished(_ connection: Connection) -> Bool {
        guard let proxy, proxy.requestEnded else { return false }
        // A client that stops sending after a complete request has gone away (browsers,
        // curl and SDKs never half-close): the local request is aborted.
        self.proxy = nil
        proxy.bridge.cancel(proxy.stream, code: .cancel)
        phase = .done
        connection.close(.abort)
        return true
    }

    func proxyClientGone() {
        guard let proxy else { return }
        self.proxy = nil
        proxy.bridge.cancel(proxy.stream, code: .cancel)
    }
}
#endif
