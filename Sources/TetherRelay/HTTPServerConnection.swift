#if os(Linux)
import TetherAuth
import TetherHTTP
import TetherIO
import TetherQuota
import TetherTunnel
import TetherWebSocket

/// One client connection speaking HTTP/1.1: decodes requests with the sans-I/O decoder, routes
/// them, and hands upgraded connections to a WebSocket handler. The loop only moves bytes.
final class HTTPServerConnection: ConnectionHandler {
    enum Phase {
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
        /// A request forwarded through a bridge; its state is in `proxy` (nil once it failed).
        case proxy
        /// The answer is being gathered from every worker (`GET /metrics`); decoding waits.
        case pending(keepAlive: Bool)
    }

    let context: RelayContext
    var decoder: HTTPRequestDecoder
    var phase = Phase.awaitingHead
    /// The peer half-closed; handled once everything it sent before has been processed.
    var peerFinished = false
    /// The echo response head waits for the first body bytes, so that a body rejected up
    /// front (bad chunk, over the size limit) still gets a clean 4xx.
    private var deferredHead: HTTPResponseHead?
    var responseStarted = false
    var scratch: [UInt8] = []
    /// The exchange in flight through a bridge (see HTTPServerConnection+Proxy.swift).
    var proxy: ProxyExchange? {
        didSet {
            if let old = oldValue, old !== proxy { proxyEnded(old) }
        }
    }
    /// Credit of finished exchanges whose bytes are still queued for this client.
    var creditDebts: [CreditDebt] = []
    weak var connection: Connection?
    /// Set when this handler was built on the session's home worker by a hand-off: the
    /// request head (already decoded) and its verified identity.
    private var resumed: (head: HTTPRequestHead, identity: Identity, route: AuthenticatedRoute)?
    /// In a session worker (Docker isolation): the relay authenticated the caller and says who
    /// it is and where it connected from; no token is checked here.
    var trusted: TrustedCaller?
    /// The current request's client (ClientOrigin), worked out once per request.
    private var origin: ClientOrigin?

    init(context: RelayContext) {
        self.context = context
        self.decoder = HTTPRequestDecoder(limits: context.configuration.httpLimits)
    }

    /// A client exchange attached by the relay to this session worker.
    init(context: RelayContext, trusted: TrustedCaller) {
        self.context = context
        self.decoder = HTTPRequestDecoder(limits: context.configuration.httpLimits)
        self.trusted = trusted
    }

    /// Continues a request that another worker decoded and authenticated.
    init(context: RelayContext, resuming decoder: HTTPRequestDecoder, head: HTTPRequestHead, identity: Identity,
         route: AuthenticatedRoute, peerFinished: Bool) {
        self.context = context
        self.decoder = decoder
        self.peerFinished = peerFinished
        self.resumed = (head, identity, route)
    }

    func connectionDidOpen(_ connection: Connection) {
        self.connection = connection
        if let resumed {
            self.resumed = nil
            serveAuthenticated(resumed.head, resumed.identity, resumed.route, connection)
            process(connection)
            return
        }
        if context.openConnections > context.maxConnections {
            // Answered, not dropped: the client learns why and when to retry.
            context.stats.capacityRejections.addFromOwner()
            phase = .done
            respond(connection, status: 503, code: "CAPACITY_EXCEEDED",
                    message: "the relay is at its connection limit; retry later", keepAlive: false,
                    extraHeaders: ["Retry-After": "1"])
            connection.close(.graceful)
            return
        }
        connection.setDeadline(milliseconds: context.configuration.headerTimeoutMilliseconds)
    }

    func connection(_ connection: Connection, didRead bytes: UnsafeRawBufferPointer) {
        switch phase {
        case .done:
            return
        case .body(.proxy):
            connection.setDeadline(milliseconds: context.configuration.streamIdleTimeoutMilliseconds)
        case .body:
            connection.setDeadline(milliseconds: context.configuration.idleTimeoutMilliseconds)
        case .awaitingHead:
            // A new head starts: it must be complete within the header timeout, however
            // slowly its bytes trickle in (slowloris).
            // (isIdle, not an empty buffer: the decoder consumes complete lines as they come.)
            if decoder.isIdle {
                connection.setDeadline(milliseconds: context.configuration.headerTimeoutMilliseconds)
            }
        }
        decoder.feed(bytes)
        process(connection)
    }

    func connectionWritable(_ connection: Connection) {
        proxyWritable(connection)
        connection.resumeReading()
        process(connection)
    }

    func connectionDidReadEOF(_ connection: Connection) {
        peerFinished = true
        if proxyClientFinished(connection) { return }
        process(connection)
    }

    func connectionDidClose(_ connection: Connection, error: IOError?) {
        proxyClientGone()
    }

    func connectionDeadlineExpired(_ connection: Connection) {
        context.stats.deadlineExpirations.addFromOwner()
        if proxyDeadlineExpired(connection) { return }
        switch phase {
        case .awaitingHead where !decoder.isIdle:
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

    func process(_ connection: Connection) {
        while connection.isOpen {
            if case .done = phase { return }
            if case .body(.pending) = phase { return }
            if !proxyMayDecode(connection) { return }
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
                if case .proxy = route {
                    proxyRequestBody(bytes, end: false, connection)
                } else if case .echo(let chunked, _) = route {
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
                case .proxy:
                    // The exchange decides what follows once its response is done too.
                    proxyRequestBody([], end: true, connection)
                    continue
                case .discard(let k), .pending(let k):
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
                if !finishExchange(keepAlive: keepAlive, connection) { return }
            }
        }
    }

    /// The current request and its response are both complete: wait for the next request on
    /// a keep-alive connection, or close. Returns false when the connection is closing.
    @discardableResult
    func finishExchange(keepAlive: Bool, _ connection: Connection) -> Bool {
        scratch = []
        responseStarted = false
        decoder.limits = context.configuration.httpLimits
        if keepAlive && !peerFinished {
            phase = .awaitingHead
            connection.setDeadline(milliseconds: context.configuration.idleTimeoutMilliseconds)
            return true
        }
        phase = .done
        connection.close(.graceful)
        return false
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
        origin = nil
        context.stats.requests.addFromOwner()
        connection.setDeadline(milliseconds: context.configuration.idleTimeoutMilliseconds)
        let keepAlive = head.isKeepAlive
        let headOnly = head.method == "HEAD"
        let path = head.path
        if let route = HTTPServerConnection.seedRoute(path: path, method: head.method) {
            if refuseWhileDraining(head, connection) { return }
            authenticate(head, route, connection)
            return
        }
        if let forwarded = HTTPServerConnection.stripServicePrefix(path) {
            if refuseWhileDraining(head, connection) { return }
            let route: AuthenticatedRoute = forwarded == "/bridge/status" ? .bridgeStatus : .forward
            authenticate(head, route, connection)
            return
        }
        switch (path, head.method) {
        case ("/readyz", "GET"), ("/readyz", "HEAD"):
            let (status, body) = AdminConnection.readiness(context)
            respondJSON(connection, status: status, body: body, keepAlive: keepAlive, headOnly: headOnly)
            phase = .body(.discard(keepAlive: keepAlive))
        case ("/metrics", "GET") where context.configuration.metricsOnMainListener,
             ("/metrics", "HEAD") where context.configuration.metricsOnMainListener:
            phase = .body(.pending(keepAlive: keepAlive))
            RelayMetrics.scrape(context) { [weak self] text in
                guard let self, let connection = self.connection, connection.isOpen else { return }
                self.respondText(connection, status: 200, body: text, keepAlive: keepAlive, headOnly: headOnly)
                self.phase = .body(.discard(keepAlive: keepAlive))
                self.process(connection)
            }
        case ("/healthz", "GET"), ("/healthz", "HEAD"), ("/health", "GET"), ("/health", "HEAD"),
             ("/api/health", "GET"), ("/api/health", "HEAD"):
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
        case ("/ws/tunnel", "GET"):
            upgradeBridge(head, legacy: false, connection)
        case ("/ws/bridge", "GET"):
            upgradeBridge(head, legacy: true, connection)
        case ("/healthz", _), ("/health", _), ("/api/health", _), ("/readyz", _), ("/echo", _), ("/ws/echo", _),
             ("/ws/tunnel", _), ("/ws/bridge", _), ("/api/proxy/start", _), ("/api/proxy/stop", _),
             ("/api/proxy/status", _):
            respond(connection, status: 405, code: "METHOD_NOT_ALLOWED",
                    message: "\(head.method) is not allowed on \(head.path)", keepAlive: keepAlive, headOnly: headOnly)
            phase = .body(.discard(keepAlive: keepAlive))
        default:
            respond(connection, status: 404, code: "NOT_FOUND", message: "no route for \(head.path)",
                    keepAlive: keepAlive, headOnly: headOnly)
            phase = .body(.discard(keepAlive: keepAlive))
        }
    }

    /// While draining, new work is refused with a reason and `Connection: close`, so that the
    /// client's next attempt opens a connection to another relay (or the restarted one).
    private func refuseWhileDraining(_ head: HTTPRequestHead, _ connection: Connection) -> Bool {
        guard context.draining else { return false }
        context.stats.drainRejections.addFromOwner()
        respond(connection, status: 503, code: "RELAY_DRAINING", message: "this relay is shutting down; retry",
                keepAlive: false, headOnly: head.method == "HEAD", extraHeaders: ["Retry-After": "1"])
        phase = .body(.discard(keepAlive: false))
        return true
    }

    /// `/api/ollama/<path>` and `/ollama/<path>` (the CloudToLocalLLM web app's paths) → `/<path>`.
    static func stripServicePrefix(_ target: String) -> String? {
        for prefix in ["/api/ollama", "/ollama"] where target.hasPrefix(prefix) {
            let rest = target.dropFirst(prefix.count)
            if rest.isEmpty { return "/" }
            if rest.first == "/" { return String(rest) }
            if rest.first == "?" { return "/" + rest }
        }
        return nil
    }

    // MARK: authenticated routes

    enum AuthenticatedRoute: Sendable {
        case forward
        case bridgeStatus
        case proxyStart, proxyStop, proxyStatus
    }

    /// The CloudToLocalLLM web app's seed endpoints for the caller's own session.
    static func seedRoute(path: String, method: String) -> AuthenticatedRoute? {
        switch (path, method) {
        case ("/api/proxy/start", "POST"): return .proxyStart
        case ("/api/proxy/stop", "POST"): return .proxyStop
        case ("/api/proxy/status", "GET"), ("/api/proxy/status", "HEAD"): return .proxyStatus
        default: return nil
        }
    }

    /// Verifies the caller's token, then serves the request on the worker that owns its
    /// session, handing the connection over if that is another worker.
    private func authenticate(_ head: HTTPRequestHead, _ route: AuthenticatedRoute, _ connection: Connection) {
        if let trusted {
            serveAuthenticated(head, trusted.identity, route, connection)
            return
        }
        let keepAlive = head.isKeepAlive
        let origin = clientOrigin(head, connection)
        let address = limitedAddress(origin)
        if let address, let retryAfter = authFailuresExceeded(address) {
            respond(connection, status: 429, code: "AUTH_RATE_LIMITED",
                    message: "too many failed authentications from this address", keepAlive: keepAlive,
                    headOnly: head.method == "HEAD", extraHeaders: ["Retry-After": String(retryAfter)])
            phase = .body(.discard(keepAlive: keepAlive))
            return
        }
        let identity: Identity
        switch verifyToken(TokenExtractor.token(in: head, allowSubprotocol: false)?.token, address: address,
                           peer: origin.address, kind: "http") {
        case .success(let verified):
            identity = verified
        case .failure(let failure):
            respond(connection, status: 401, code: failure.httpCode, message: failure.reason, keepAlive: keepAlive,
                    headOnly: head.method == "HEAD", extraHeaders: ["WWW-Authenticate": "Bearer"])
            phase = .body(.discard(keepAlive: keepAlive))
            return
        }
        let home = context.homeWorker(of: identity.session)
        if home == connection.loop.index {
            serveAuthenticated(head, identity, route, connection)
            return
        }
        context.stats.handOffs.addFromOwner()
        phase = .done
        let workers = context.workers
        let decoder = self.decoder
        let finished = peerFinished
        connection.handOff(to: workers.handles[home]) {
            guard let target = workers.context(of: home) else { return ClosingHandler() }
            return HTTPServerConnection(context: target, resuming: decoder, head: head, identity: identity,
                                        route: route, peerFinished: finished)
        }
    }

    func verifyToken(_ token: Substring?, address: AddressKey?, peer: SocketAddress?,
                     kind: String) -> Result<Identity, AuthFailure> {
        let result: Result<Identity, AuthFailure>
        if let token {
            result = context.tokenCache.verify(token, with: context.verifier, now: context.nowSeconds())
        } else {
            result = .failure(.missing)
        }
        if case .failure(let failure) = result {
            context.stats.countAuthFailure(failure)
            if let address { _ = context.shared.authFailureLimiter.allow(address, now: context.loop.nowMilliseconds) }
            context.recordAuthFailure(failure, peer: peer, kind: kind)
            // The issuer may have just published the key: refetch soon (rate-limited, off-loop).
            if failure == .unknownKey { context.keyRefresher?.requestRefresh() }
        }
        return result
    }

    /// Who sent this request (the peer, or the client a trusted proxy names).
    func clientOrigin(_ head: HTTPRequestHead, _ connection: Connection) -> ClientOrigin {
        if let origin { return origin }
        let found = trusted.map { ClientOrigin(address: $0.peer, tls: $0.tls) }
            ?? ClientOrigin.of(head, peer: connection.remoteAddress, tls: connection.isTLS,
                               trusting: context.configuration.trustedProxies)
        origin = found
        return found
    }

    /// The client's address for per-address limits; nil when limits do not apply to it. Only a
    /// loopback socket peer is exempt: a forwarded address could be anything a client wrote.
    func limitedAddress(_ origin: ClientOrigin) -> AddressKey? {
        guard let remote = origin.address, remote.family != .unix else { return nil }
        let key = AddressKey(remote.bytes)
        if key.isLoopback && !origin.forwarded && context.configuration.addressLimitsExemptLoopback { return nil }
        return key.masked(ipv6PrefixLength: context.configuration.addressLimitsIPv6PrefixLength)
    }

    /// Retry-After seconds while the address has used up its failed authentications.
    func authFailuresExceeded(_ address: AddressKey) -> Int? {
        let limiter = context.shared.authFailureLimiter
        let now = context.loop.nowMilliseconds
        guard limiter.isEnabled, !limiter.wouldAllow(address, now: now) else { return nil }
        context.stats.quotaRejections[Quota.authFailures.rawValue].addFromOwner()
        return limiter.retryAfterSeconds(address, now: now)
    }

    private func serveAuthenticated(_ head: HTTPRequestHead, _ identity: Identity, _ route: AuthenticatedRoute,
                                    _ connection: Connection) {
        let keepAlive = head.isKeepAlive
        switch route {
        case .bridgeStatus:
            let bridges = context.sessions.existing(identity.session)?.bridges.count ?? 0
            let body = "{\"status\":\"\(bridges > 0 ? "connected" : "disconnected")\",\"bridges\":\(bridges)}"
            respondJSON(connection, status: 200, body: body, keepAlive: keepAlive, headOnly: head.method == "HEAD")
            phase = .body(.discard(keepAlive: keepAlive))
        case .forward:
            startProxy(head, identity, connection)
        case .proxyStart, .proxyStop, .proxyStatus:
            serveSeed(route, head, identity, connection)
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

    /// `/ws/tunnel` (tether.v1) and `/ws/bridge` (legacy JSON): completes the upgrade, then
    /// authenticates, so that a refused bridge learns why from a close code (4001) and reason.
    private func upgradeBridge(_ head: HTTPRequestHead, legacy: Bool, _ connection: Connection) {
        let key: String
        let protocols: [String]
        do {
            (key, protocols) = try WebSocketHandshake.validateClientRequest(head)
        } catch {
            context.stats.badRequests.addFromOwner()
            respond(connection, status: error.status, code: error.code, message: error.reason,
                    keepAlive: false, extraHeaders: error.responseHeaders)
            phase = .done
            connection.close(.graceful)
            return
        }
        if !legacy && !protocols.contains(TunnelProtocol.subprotocol) {
            context.stats.badRequests.addFromOwner()
            respond(connection, status: 400, code: "TUNNEL_SUBPROTOCOL",
                    message: "offer the WebSocket subprotocol \(TunnelProtocol.subprotocol)", keepAlive: false)
            phase = .done
            connection.close(.graceful)
            return
        }
        context.stats.webSocketUpgrades.addFromOwner()
        // A browser that offered only `token-<jwt>` fails the handshake unless one offered
        // entry is selected, so a legacy bridge gets its first offer echoed.
        let selected = legacy ? protocols.first : TunnelProtocol.subprotocol
        writeHead(WebSocketHandshake.serverResponse(key: key, subprotocol: selected), connection)
        let leftover = decoder.takeBufferedBytes()
        phase = .done
        // Reconnect storms and brute force, per client address (close 4029 with a reason).
        let origin = clientOrigin(head, connection)
        let address = limitedAddress(origin)
        if let address {
            let limiter = context.shared.handshakeLimiter
            if limiter.isEnabled && !limiter.allow(address, now: context.loop.nowMilliseconds) {
                context.recordQuotaRejection(.handshakes, session: nil)
                refuseBridge(connection, code: 4029, reason: "too many handshakes from this address; retry in \(limiter.retryAfterSeconds(address, now: context.loop.nowMilliseconds)) s")
                return
            }
            if let retryAfter = authFailuresExceeded(address) {
                refuseBridge(connection, code: 4029, reason: "too many failed authentications from this address; retry in \(retryAfter) s")
                return
            }
        }
        let identity: Identity
        switch verifyToken(TokenExtractor.token(in: head, allowSubprotocol: true)?.token,
                           address: address, peer: origin.address, kind: "bridge") {
        case .success(let verified):
            identity = verified
        case .failure(let failure):
            context.authLogger.notice("bridge refused", metadata: [
                "reason": "\(failure.metricLabel)", "peer": "\(origin.address.map { "\($0)" } ?? "?")"])
            refuseBridge(connection, code: 4001, reason: failure.reason)
            return
        }
        let home = context.homeWorker(of: identity.session)
        let peer = origin.address
        let tls = connection.isTLS
        let makeBridge: @Sendable (RelayContext) -> any ConnectionHandler = { target in
            let protocolName = legacy ? "legacy-json" : TunnelProtocol.subprotocol
            guard let session = target.openSession(for: identity, cause: "bridge") else {
                return WebSocketRefusal(code: 1013, reason: "CAPACITY_EXCEEDED: the relay is at its session limit")
            }
            if session.bridges.count >= session.profile.maxBridges {
                target.recordQuotaRejection(.bridges, session: session.id)
                return WebSocketRefusal(code: 4008, reason: "TOO_MANY_BRIDGES: this session already has \(session.profile.maxBridges) bridges connected")
            }
            if target.isolation != nil {
                return IsolatedBridge(context: target, session: session, peer: peer, tls: tls, legacy: legacy)
            }
            return legacy ? LegacyBridgeConnection(context: target, session: session, peer: peer, protocolName: protocolName)
                          : TunnelConnection(context: target, session: session, peer: peer, protocolName: protocolName)
        }
        if home == connection.loop.index {
            let bridge = makeBridge(context)
            connection.handler = bridge
            bridge.connectionDidOpen(connection)
            if !leftover.isEmpty {
                leftover.withUnsafeBytes { bridge.connection(connection, didRead: $0) }
            }
            if peerFinished { bridge.connectionDidReadEOF(connection) }
            return
        }
        context.stats.handOffs.addFromOwner()
        let workers = context.workers
        connection.handOff(to: workers.handles[home], unread: leftover) {
            guard let target = workers.context(of: home) else { return ClosingHandler() }
            return makeBridge(target)
        }
    }

    private func refuseBridge(_ connection: Connection, code: UInt16, reason: String) {
        var socket = WebSocketConnection(role: .server)
        socket.close(code: WebSocketCloseCode(rawValue: code), reason: reason)
        connection.write(socket.takeOutbound())
        connection.close(.graceful)
    }

    // MARK: responses

    private func fail(_ connection: Connection, _ error: HTTPParseError) {
        context.stats.badRequests.addFromOwner()
        if let proxy {
            // The request cannot be completed: the local service must not see a half request.
            self.proxy = nil
            proxy.bridge.cancel(proxy.stream, code: .cancel)
        }
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

    func writeHead(_ head: HTTPResponseHead, _ connection: Connection) {
        responseStarted = true
        context.stats.countResponse(head.status)
        scratch.removeAll(keepingCapacity: true)
        head.encode(into: &scratch)
        connection.write(scratch)
    }

    func respond(_ connection: Connection, status: Int, code: String, message: String,
                         keepAlive: Bool, headOnly: Bool = false, extraHeaders: HTTPHeaders = [:]) {
        respondJSON(connection, status: status, body: JSON.error(code: code, message: message),
                    keepAlive: keepAlive, headOnly: headOnly, extraHeaders: extraHeaders)
    }

    func respondJSON(_ connection: Connection, status: Int, body: String, keepAlive: Bool,
                             headOnly: Bool = false, extraHeaders: HTTPHeaders = [:]) {
        respondText(connection, status: status, body: body, contentType: "application/json", keepAlive: keepAlive,
                    headOnly: headOnly, extraHeaders: extraHeaders)
    }

    func respondText(_ connection: Connection, status: Int, body: String,
                     contentType: String = "text/plain; version=0.0.4; charset=utf-8", keepAlive: Bool,
                     headOnly: Bool = false, extraHeaders: HTTPHeaders = [:]) {
        var headers: HTTPHeaders = [:]
        headers.add(name: "Content-Type", value: contentType)
        headers.add(name: "Content-Length", value: String(body.utf8.count))
        headers.add(name: "Server", value: "tether")
        if !keepAlive { headers.add(name: "Connection", value: "close") }
        for (name, value) in extraHeaders { headers.add(name: name, value: value) }
        scratch.removeAll(keepingCapacity: true)
        HTTPResponseHead(status: status, headers: headers).encode(into: &scratch)
        if !headOnly { scratch.append(contentsOf: body.utf8) }
        connection.write(scratch)
        responseStarted = true
        context.stats.countResponse(status)
    }
}
/// Who the relay says is calling (session workers only).
struct TrustedCaller {
    let identity: Identity
    let peer: SocketAddress?
    let tls: Bool
}

/// A bridge refused after its upgrade (limits): a close frame with code and reason, then EOF.
final class WebSocketRefusal: ConnectionHandler {
    let code: UInt16
    let reason: String
    init(code: UInt16, reason: String) {
        self.code = code
        self.reason = reason
    }
    func connectionDidOpen(_ connection: Connection) {
        var socket = WebSocketConnection(role: .server)
        socket.close(code: WebSocketCloseCode(rawValue: code), reason: reason)
        connection.write(socket.takeOutbound())
        connection.close(.graceful)
    }
    func connection(_ connection: Connection, didRead bytes: UnsafeRawBufferPointer) {}
}

/// Stands in when a hand-off target has no relay context (only while shutting down).
final class ClosingHandler: ConnectionHandler {
    func connectionDidOpen(_ connection: Connection) { connection.close(.abort) }
    func connection(_ connection: Connection, didRead bytes: UnsafeRawBufferPointer) {}
}
#endif
