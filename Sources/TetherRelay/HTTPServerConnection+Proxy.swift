#if os(Linux)
import TetherAuth
import TetherHTTP
import TetherIO
import TetherQuota
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
    /// Monotonic nanoseconds when the request was admitted (duration and time to first byte).
    let startedNanos: UInt64
    /// The duration histogram has it (each exchange is observed once).
    var timed = false

    init(bridge: Bridge, stream: StreamID, head: TunnelRequestHead, keepAlive: Bool, headOnly: Bool,
         version: HTTPVersion, session: Session, openedWithoutBody: Bool, startedNanos: UInt64) {
        self.startedNanos = startedNanos
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

/// Response credit an exchange still owed its bridge when it ended (see settleCredit).
struct CreditDebt {
    let bridge: Bridge
    let stream: StreamID
    let session: Session
    var bytes: Int
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
        let headOnly = head.method == "HEAD"
        let started = context.monotonicNanoseconds()
        guard let session = context.sessions.existing(identity.session), session.isConnected else {
            context.stats.streamsFailed.addFromOwner()
            respond(connection, status: 503, code: "TUNNEL_NOT_AVAILABLE",
                    message: "no bridge is connected for this session", keepAlive: keepAlive, headOnly: headOnly)
            phase = .body(.discard(keepAlive: keepAlive))
            return
        }
        let now = context.loop.nowMilliseconds
        if identity.tier != session.tierClaim {
            session.updateTier(identity.tier, tiers: context.shared.tiers.withLock { $0 }, now: now)
        }
        context.activate(session, now: now, cause: "request")
        if session.isolation != nil {
            startIsolatedProxy(head, session, connection)
            return
        }
        if let refusal = admit(head, session, now: now) {
            context.recordQuotaRejection(refusal.quota, session: session.id, peer: clientOrigin(head, connection).address)
            // An oversized body is not read: the connection closes after the answer.
            let keep = keepAlive && refusal.status != 413
            respond(connection, status: refusal.status, code: refusal.code, message: refusal.message, keepAlive: keep,
                    headOnly: headOnly, extraHeaders: refusal.retryAfter.map { ["Retry-After": String($0)] } ?? [:])
            if keep {
                phase = .body(.discard(keepAlive: true))
            } else {
                phase = .done
                connection.close(.graceful)
            }
            return
        }
        guard let bridge = session.pickBridge() else {
            context.stats.streamsFailed.addFromOwner()
            respond(connection, status: 503, code: "TUNNEL_NOT_AVAILABLE",
                    message: "the session's bridges cannot take another stream", keepAlive: keepAlive, headOnly: headOnly)
            phase = .body(.discard(keepAlive: keepAlive))
            return
        }
        session.requestCount &+= 1
        // A chunked body over the tier's limit fails when it gets there (413 or a cut stream).
        decoder.limits.maxBodySize = min(decoder.limits.maxBodySize, session.profile.maxBodyBytes)
        let origin = clientOrigin(head, connection)
        let tunnelHead = HTTPServerConnection.tunnelHead(for: head, remote: origin.address, tls: origin.tls)
        let hasBody = head.hasBody
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
                              openedWithoutBody: !hasBody, startedNanos: started)
        phase = .body(.proxy)
        connection.setDeadline(milliseconds: context.configuration.streamIdleTimeoutMilliseconds)
    }

    struct Refusal {
        let quota: Quota
        let status: Int
        let code: String
        let message: String
        let retryAfter: Int?
    }

    /// The session's quotas for one request, cheapest first. Nothing here cuts a stream that
    /// is already flowing: only new requests are refused.
    private func admit(_ head: HTTPRequestHead, _ session: Session, now: UInt64) -> Refusal? {
        let profile = session.profile
        if profile.maxHeaderBytes < context.configuration.httpLimits.maxHeaderBytes {
            var size = head.target.utf8.count
            for (name, value) in head.headers { size += name.utf8.count + value.utf8.count + 4 }
            if size > profile.maxHeaderBytes {
                return Refusal(quota: .headerSize, status: 431, code: "HEADERS_TOO_LARGE",
                               message: "request headers exceed this session's limit of \(profile.maxHeaderBytes) bytes",
                               retryAfter: nil)
            }
        }
        if let length = head.headers.first(name: "content-length").flatMap({ Int($0) }), length > profile.maxBodyBytes {
            return Refusal(quota: .bodySize, status: 413, code: "PAYLOAD_TOO_LARGE",
                           message: "request body exceeds this session's limit of \(profile.maxBodyBytes) bytes",
                           retryAfter: nil)
        }
        if session.activeStreams >= profile.maxStreams {
            return Refusal(quota: .streams, status: 429, code: "TOO_MANY_STREAMS",
                           message: "this session already has \(profile.maxStreams) streams in flight", retryAfter: 1)
        }
        if var bucket = session.requestBucket {
            let admitted = bucket.take(now: now)
            let wait = admitted ? 0 : bucket.millisecondsUntil(1, now: now)
            session.requestBucket = bucket
            if !admitted {
                return Refusal(quota: .rate, status: 429, code: "RATE_LIMITED",
                               message: "over this session's rate of \(profile.requestsPerSecond) requests per second",
                               retryAfter: Int((wait + 999) / 1000))
            }
        }
        return nil
    }

    /// The head the bridge sees: service prefix and `token` parameter removed, hop-by-hop
    /// fields and the caller's credentials dropped, forwarding fields added.
    static func tunnelHead(for head: HTTPRequestHead, remote: SocketAddress?, tls: Bool) -> TunnelRequestHead {
        let target = stripServicePrefix(TokenExtractor.removingToken(fromTarget: head.target)) ?? "/"
        var headers = endToEndHeaders(of: head)
        if let remote { headers.add(name: "X-Forwarded-For", value: remote.host) }
        headers.add(name: "X-Forwarded-Proto", value: tls ? "https" : "http")
        return TunnelRequestHead(method: head.method, target: target, headers: headers)
    }

    /// The caller's fields that go on towards the service: hop-by-hop fields (and those the
    /// Connection field names), credentials, Expect and forwarding fields dropped. Room is kept
    /// for the two fields each caller adds.
    static func endToEndHeaders(of head: HTTPRequestHead) -> HTTPHeaders {
        var nominated: Set<String> = []
        for value in head.headers["connection"] {
            for token in value.split(separator: ",") {
                nominated.insert(String(token.filter { $0 != " " && $0 != "\t" }).lowercased())
            }
        }
        var headers = HTTPHeaders()
        headers.reserveCapacity(head.headers.count + 2)
        for (name, value) in head.headers {
            let lower = name.lowercased()
            if hopByHop.contains(lower) || nominated.contains(lower) || lower == "authorization"
                || lower == "expect" || lower == "x-forwarded-for" || lower == "x-forwarded-proto" {
                continue
            }
            headers.add(name: name, value: value)
        }
        return headers
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
            let now = context.loop.nowMilliseconds
            // Bandwidth quota: what the bucket does not allow waits here (reading paused), so
            // the client is slowed by TCP rather than buffered.
            let allowed = proxy.session.upstreamAllowance(remaining, now: now)
            if allowed < remaining {
                context.waitForBandwidth(proxy.session, waiter: self, upstream: true, bytes: remaining - allowed) {
                    [weak self] in self?.bandwidthAvailable()
                }
            }
            if allowed > 0 || (remaining == 0 && proxy.heldEnd) {
                let end = proxy.heldEnd && allowed == remaining
                let taken = proxy.held.withUnsafeBytes { raw in
                    proxy.bridge.sendBody(proxy.stream,
                                          UnsafeRawBufferPointer(rebasing: raw[proxy.heldOffset..<(proxy.heldOffset + allowed)]),
                                          endStream: end)
                }
                proxy.heldOffset += taken
                if taken > 0 {
                    proxy.session.chargeUpstream(taken, now: now)
                    context.stats.tunnelBytesUp.addFromOwner(UInt64(taken))
                }
            }
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

    /// The session's bandwidth buckets refilled: move what waited for them.
    func bandwidthAvailable() {
        guard let connection, connection.isOpen else { return }
        settleCredit(connection)
        streamWindowAvailable()
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
        context.stats.timeToFirstByte.observe(nanoseconds: context.monotonicNanoseconds() &- proxy.startedNanos)
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
            // Credit goes back only once the bytes left the relay (settleCredit), so what a
            // session's bridges may send unacknowledged bounds what the relay holds for it.
            proxy.owedCredit += bytes.count
            proxy.session.bytesDown &+= UInt64(bytes.count)
            context.stats.tunnelBytesDown.addFromOwner(UInt64(bytes.count))
            proxy.session.lastActivity = context.loop.nowMilliseconds
            settleCredit(connection)
        }
        if endStream { finishResponse(proxy, connection) }
    }

    /// Returns flow-control credit for response bytes that have left this process: bytes
    /// still queued for the client's socket stay charged to the bridge's window, and the
    /// session's bandwidth bucket must allow the rest. Oldest exchanges are paid first.
    func settleCredit(_ connection: Connection) {
        var owed = proxy?.owedCredit ?? 0
        for debt in creditDebts { owed += debt.bytes }
        guard owed > 0 else { return }
        let queued = connection.isOpen ? connection.pendingWriteBytes : 0
        if queued > 0 { connection.notifyAfterNextSend() }
        var payable = owed - min(owed, queued)
        let now = context.loop.nowMilliseconds
        while payable > 0, !creditDebts.isEmpty {
            let debt = creditDebts[0]
            let paid = pay(debt.bridge, debt.stream, debt.session, min(payable, debt.bytes), now: now)
            payable -= paid
            if paid < debt.bytes {
                creditDebts[0].bytes -= paid
                return
            }
            creditDebts.removeFirst()
        }
        if payable > 0, let proxy, proxy.owedCredit > 0 {
            let paid = pay(proxy.bridge, proxy.stream, proxy.session, min(payable, proxy.owedCredit), now: now)
            proxy.owedCredit -= paid
        }
    }

    private func pay(_ bridge: Bridge, _ stream: StreamID, _ session: Session, _ bytes: Int, now: UInt64) -> Int {
        let allowed = session.downstreamAllowance(bytes, now: now)
        if allowed < bytes {
            context.waitForBandwidth(session, waiter: self, upstream: false, bytes: bytes - allowed) {
                [weak self] in self?.bandwidthAvailable()
            }
        }
        guard allowed > 0 else { return 0 }
        session.chargeDownstream(allowed, now: now)
        bridge.consumed(stream, bytes: allowed)
        return allowed
    }

    /// An exchange ends with credit still owed (bytes queued for the client): the debt stays
    /// with the connection until they are sent, or is settled at once when it closes.
    private func keepCreditDebt(_ proxy: ProxyExchange) {
        guard proxy.owedCredit > 0 else { return }
        creditDebts.append(CreditDebt(bridge: proxy.bridge, stream: proxy.stream, session: proxy.session,
                                      bytes: proxy.owedCredit))
        proxy.owedCredit = 0
    }

    func settleDebtsOnClose() {
        let debts = creditDebts
        creditDebts = []
        for debt in debts { debt.bridge.consumed(debt.stream, bytes: debt.bytes) }
    }

    func proxyWritable(_ connection: Connection) {
        settleCredit(connection)
    }

    private func finishResponse(_ proxy: ProxyExchange, _ connection: Connection) {
        guard case .streaming(let framing) = proxy.response else { return }
        if case .chunked = framing {
            scratch.removeAll(keepingCapacity: true)
            HTTPChunkedEncoding.encodeLastChunk(into: &scratch)
            connection.write(scratch)
        }
        proxy.response = .finished
        settleCredit(connection)
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
        keepCreditDebt(proxy)
        self.proxy = nil
        if finishExchange(keepAlive: proxy.keepAlive, connection) {
            process(connection)
        }
    }

    // MARK: failures

    func streamDidFail(_ failure: StreamFailure) {
        guard let proxy, let connection, connection.isOpen else { return }
        // A bridge that refused a body-less request before touching it: try another one once.
        if !proxy.responseStarted, case .reset(.refusedStream, _) = failure, proxy.openedWithoutBody,
           let other = proxy.session.pickBridge(excluding: proxy.bridge),
           let stream = other.openStream(proxy.head, endStream: true, client: self) {
            proxy.timed = true  // the retry carries the request's clock on
            self.proxy = ProxyExchange(bridge: other, stream: stream, head: proxy.head, keepAlive: proxy.keepAlive,
                                       headOnly: proxy.headOnly, version: proxy.version, session: proxy.session,
                                       openedWithoutBody: true, startedNanos: proxy.startedNanos)
            return
        }
        self.proxy = nil
        if proxy.responseStarted {
            // Too late for an error status: cut the response so the client sees it incomplete.
            context.stats.streamsAborted.addFromOwner()
            phase = .done
            if case .streaming(.untilClose) = proxy.response { connection.close(.abort) } else { connection.close(.graceful) }
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

    /// Observes a finished exchange's duration once (it ends however it ends: complete,
    /// failed, cut, or abandoned by the client).
    func proxyEnded(_ exchange: ProxyExchange) {
        guard !exchange.timed else { return }
        exchange.timed = true
        context.stats.requestDuration.observe(nanoseconds: context.monotonicNanoseconds() &- exchange.startedNanos)
    }

    func proxyClientGone() {
        settleDebtsOnClose()
        guard let proxy else { return }
        self.proxy = nil
        proxy.bridge.cancel(proxy.stream, code: .cancel)
    }
}
#endif
