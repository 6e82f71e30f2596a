#if os(Linux)
import TetherAuth
import TetherHTTP
import TetherIO
import TetherMetrics

/// The admin listener (127.0.0.1:9464 by default): `GET /metrics`, `/healthz`, `/readyz`,
/// and the bearer-token `/admin` API. Requests are answered one at a time per connection; an
/// answer that needs every worker (a scrape, the session list) pauses reading until it is out.
final class AdminConnection: ConnectionHandler {
    private let context: RelayContext
    private var decoder: HTTPRequestDecoder
    private weak var connection: Connection?
    /// The request being served: its head arrived; the answer goes out once its body is read.
    private var current: HTTPRequestHead?
    /// An answer is being prepared on other workers or threads.
    private var waiting = false
    private var peerFinished = false
    private var closed = false

    init(context: RelayContext) {
        self.context = context
        // Admin requests carry no meaningful body.
        var limits = context.configuration.httpLimits
        limits.maxBodySize = 64 * 1024
        self.decoder = HTTPRequestDecoder(limits: limits)
    }

    func connectionDidOpen(_ connection: Connection) {
        self.connection = connection
        connection.setDeadline(milliseconds: context.configuration.headerTimeoutMilliseconds)
    }

    func connection(_ connection: Connection, didRead bytes: UnsafeRawBufferPointer) {
        connection.setDeadline(milliseconds: context.configuration.idleTimeoutMilliseconds)
        decoder.feed(bytes)
        process()
    }

    func connectionDidReadEOF(_ connection: Connection) {
        peerFinished = true
        process()
    }

    func connectionDeadlineExpired(_ connection: Connection) {
        context.stats.deadlineExpirations.addFromOwner()
        connection.close(.graceful)
    }

    func connectionDidClose(_ connection: Connection, error: IOError?) {
        closed = true
    }

    private func process() {
        guard let connection else { return }
        while connection.isOpen && !waiting {
            let event: HTTPRequestEvent?
            do {
                event = try decoder.next()
            } catch {
                context.stats.badRequests.addFromOwner()
                respond(status: error.status, body: JSON.error(code: error.code, message: error.reason), keepAlive: false)
                return
            }
            guard let event else {
                if peerFinished { connection.close(.graceful) }
                return
            }
            switch event {
            case .head(let head):
                current = head
            case .body:
                break
            case .end:
                guard let head = current else { continue }
                current = nil
                route(head)
            }
        }
    }

    // MARK: routing

    private func route(_ head: HTTPRequestHead) {
        let path = head.path
        let method = head.method
        let keepAlive = head.isKeepAlive && !peerFinished
        let headOnly = method == "HEAD"
        switch (path, method) {
        case ("/healthz", "GET"), ("/healthz", "HEAD"):
            respond(status: 200, body: "{\"status\":\"ok\"}", keepAlive: keepAlive, headOnly: headOnly)
        case ("/readyz", "GET"), ("/readyz", "HEAD"):
            let (status, body) = AdminConnection.readiness(context)
            respond(status: status, body: body, keepAlive: keepAlive, headOnly: headOnly)
        case ("/metrics", "GET"), ("/metrics", "HEAD"):
            waiting = true
            RelayMetrics.scrape(context) { [weak self] text in
                self?.finishAsync(status: 200, body: text, contentType: PrometheusText.contentType,
                                  keepAlive: keepAlive, headOnly: headOnly)
            }
        case ("/healthz", _), ("/readyz", _), ("/metrics", _):
            respondError(405, "METHOD_NOT_ALLOWED", "\(method) is not allowed on \(path)", keepAlive: keepAlive)
        default:
            if path == "/admin" || path.hasPrefix("/admin/") {
                guard authorized(head) else { return }
                admin(head, path: path, keepAlive: keepAlive)
            } else {
                respondError(404, "NOT_FOUND", "no route for \(path)", keepAlive: keepAlive)
            }
        }
    }

    static func readiness(_ context: RelayContext) -> (Int, String) {
        let readiness = context.control.effectiveReadiness
        let reason: String
        switch readiness {
        case .ready: return (200, "{\"status\":\"ready\"}")
        case .starting: reason = "starting: listeners or verification keys not ready yet"
        case .draining: reason = "draining: finishing streams in flight before exit"
        }
        return (503, "{\"status\":\"\(readiness.label)\",\"reason\":\(JSONString.quote(reason))}")
    }

    /// Bearer token, compared in constant time. Refusals are counted and audited.
    private func authorized(_ head: HTTPRequestHead) -> Bool {
        let keepAlive = head.isKeepAlive && !peerFinished
        let presented: Substring?
        if let value = head.headers.first(name: "authorization"), value.count > 7,
           value.prefix(7).lowercased() == "bearer " {
            presented = value.dropFirst(7)
        } else {
            presented = nil
        }
        let expected = context.configuration.adminToken
        let failure: (code: String, message: String)?
        if expected == nil {
            failure = ("ADMIN_DISABLED", "no admin token is configured (admin.token); the admin API is off")
        } else if presented == nil {
            failure = ("ADMIN_AUTH_REQUIRED", "an admin bearer token is required")
        } else if let expected, let presented, AdminConnection.constantTimeEqual(presented.utf8, expected.utf8) {
            failure = nil
        } else {
            failure = ("ADMIN_AUTH_INVALID", "the admin token is wrong")
        }
        guard let failure else { return true }
        context.stats.adminAuthFailures.addFromOwner()
        context.adminLogger.notice("admin call refused", metadata: [
            "reason": "\(failure.code)", "path": "\(head.path)", "peer": "\(connection?.remoteAddress?.host ?? "?")"])
        context.audit.record("admin_auth_failure", [
            "address": .string(connection?.remoteAddress?.host ?? ""), "method": .string(head.method),
            "path": .string(head.path), "reason": .string(failure.code)])
        respond(status: 401, body: JSON.error(code: failure.code, message: failure.message), keepAlive: keepAlive,
                extraHeaders: ["WWW-Authenticate": "Bearer realm=\"tether-admin\""])
        return false
    }

    static func constantTimeEqual<A: Collection, B: Collection>(_ a: A, _ b: B) -> Bool
    where A.Element == UInt8, B.Element == UInt8 {
        var difference = UInt8(truncatingIfNeeded: a.count ^ b.count)
        var ia = a.startIndex
        for byte in b {
            let x = ia == a.endIndex ? ~byte : a[ia]
            difference |= x ^ byte
            if ia != a.endIndex { ia = a.index(after: ia) }
        }
        return difference == 0 && a.count == b.count
    }

    private func admin(_ head: HTTPRequestHead, path: String, keepAlive: Bool) {
        let method = head.method
        let address = connection?.remoteAddress?.host ?? ""
        switch (path, method) {
        case ("/admin/sessions", "GET"):
            listSessions(query: head.query, keepAlive: keepAlive)
        case ("/admin/drain", "POST"):
            context.audit.record("admin_drain", ["address": .string(address)])
            context.adminLogger.info("drain requested through the admin API", metadata: ["peer": "\(address)"])
            let deadline = context.configuration.drainTimeoutSeconds
            respond(status: 202, body: "{\"status\":\"draining\",\"deadline_seconds\":\(JSONNumber.format(deadline))}",
                    keepAlive: false)
            context.control.requestDrain()
        case ("/admin/reload", "POST"):
            reload(address: address, keepAlive: keepAlive)
        case ("/admin/sessions", _), ("/admin/drain", _), ("/admin/reload", _):
            respondError(405, "METHOD_NOT_ALLOWED", "\(method) is not allowed on \(path)", keepAlive: keepAlive)
        default:
            guard path.hasPrefix("/admin/sessions/") else {
                respondError(404, "NOT_FOUND", "no route for \(path)", keepAlive: keepAlive)
                return
            }
            let hex = String(path.dropFirst("/admin/sessions/".count))
            guard let id = SessionID(hex: hex) else {
                respondError(400, "BAD_SESSION_ID", "a session id is 64 lowercase hex digits", keepAlive: keepAlive)
                return
            }
            switch method {
            case "GET": session(id, keepAlive: keepAlive)
            case "DELETE": kick(id, address: address, keepAlive: keepAlive)
            default: respondError(405, "METHOD_NOT_ALLOWED", "\(method) is not allowed on \(path)", keepAlive: keepAlive)
            }
        }
    }

    // MARK: sessions

    private func listSessions(query: String?, keepAlive: Bool) {
        var limit = 100
        var after: String?
        for pair in (query ?? "").split(separator: "&") {
            let parts = pair.split(separator: "=", maxSplits: 1)
            let key = parts.first.map(String.init) ?? ""
            let value = parts.count > 1 ? String(parts[1]) : ""
            switch key {
            case "limit":
                guard let n = Int(value), (1...1000).contains(n) else {
                    respondError(400, "BAD_REQUEST", "limit must be 1...1000", keepAlive: keepAlive)
                    return
                }
                limit = n
            case "after":
                guard SessionID(hex: value) != nil else {
                    respondError(400, "BAD_REQUEST", "after must be a session id (64 lowercase hex digits)", keepAlive: keepAlive)
                    return
                }
                after = value
            default:
                respondError(400, "BAD_REQUEST", "unknown query parameter \(key); use limit and after", keepAlive: keepAlive)
                return
            }
        }
        waiting = true
        context.gather({ context in
            context.sessions.sessions.values.map { SessionSummary($0, context: context) }
        }) { [weak self] perWorker in
            var all = perWorker.compactMap { $0 }.flatMap { $0 }
            all.sort { $0.id < $1.id }
            let total = all.count
            let start = after.map { cursor in all.firstIndex { $0.id > cursor } ?? all.count } ?? 0
            let page = all[start..<min(all.count, start + limit)]
            let next = start + limit < all.count ? page.last.map { "\"\($0.id)\"" } ?? "null" : "null"
            var body = "{\"total\":\(total),\"count\":\(page.count),\"next\":\(next),\"sessions\":["
            for (i, summary) in page.enumerated() {
                if i > 0 { body += "," }
                body += summary.json(detailed: false)
            }
            body += "]}"
            self?.finishAsync(status: 200, body: body, keepAlive: keepAlive)
        }
    }

    private func session(_ id: SessionID, keepAlive: Bool) {
        onHome(of: id, keepAlive: keepAlive, { context in
            context.sessions.existing(id).map { SessionSummary($0, context: context).json(detailed: true) }
        }) { [weak self] body in
            guard let body else {
                self?.finishAsync(status: 404, body: JSON.error(code: "SESSION_NOT_FOUND", message: "no session \(id.hex)"),
                                  keepAlive: keepAlive)
                return
            }
            self?.finishAsync(status: 200, body: body, keepAlive: keepAlive)
        }
    }

    private func kick(_ id: SessionID, address: String, keepAlive: Bool) {
        onHome(of: id, keepAlive: keepAlive, { context in
            context.kickSession(id).map { "{\"removed\":\"\(id.hex)\",\"bridges_closed\":\($0.bridges),\"streams_reset\":\($0.streams)}" }
        }) { [weak self] body in
            guard let body else {
                self?.finishAsync(status: 404, body: JSON.error(code: "SESSION_NOT_FOUND", message: "no session \(id.hex)"),
                                  keepAlive: keepAlive)
                return
            }
            self?.context.adminLogger.info("session removed by the operator", metadata: [
                "session": "\(id.hex)", "peer": "\(address)"])
            self?.finishAsync(status: 200, body: body, keepAlive: keepAlive)
        }
    }

    /// Runs `body` on the worker that owns the session, then `completion` here.
    private func onHome(of id: SessionID, keepAlive: Bool, _ body: @escaping @Sendable (RelayContext) -> String?,
                        completion: @escaping (String?) -> Void) {
        waiting = true
        let home = context.homeWorker(of: id)
        context.gather({ context in context.loop.index == home ? body(context) : nil }) { results in
            completion(results.indices.contains(home) ? results[home] ?? nil : nil)
        }
    }

    // MARK: reload

    private func reload(address: String, keepAlive: Bool) {
        guard let operations = context.control.operations.withLock({ $0 }) else {
            respondError(503, "NOT_READY", "the relay is still starting", keepAlive: keepAlive)
            return
        }
        waiting = true
        let handle = context.workers.handles[context.loop.index]
        let workers = context.workers
        let index = context.loop.index
        let connectionRef = WeakAdmin(self)
        BackgroundThread.run {
            let outcome = operations.reload()
            _ = handle.execute { loop in
                guard workers.context(of: index) != nil else { return }
                connectionRef.value?.finishReload(outcome, address: address, keepAlive: keepAlive)
            }
        }
    }

    private func finishReload(_ outcome: ReloadOutcome, address: String, keepAlive: Bool) {
        context.audit.record("admin_reload", ["address": .string(address), "ok": .bool(outcome.ok)])
        guard outcome.ok else {
            finishAsync(status: 422, body: JSON.error(code: "CONFIG_INVALID", message: outcome.message), keepAlive: keepAlive)
            return
        }
        let changes = outcome.changes.map(JSONString.quote).joined(separator: ",")
        let restart = outcome.restartRequired.map(JSONString.quote).joined(separator: ",")
        finishAsync(status: 200, body: "{\"status\":\"reloaded\",\"changes\":[\(changes)],\"restart_required\":[\(restart)]}",
                    keepAlive: keepAlive)
    }

    // MARK: responses

    private func finishAsync(status: Int, body: String, contentType: String = "application/json", keepAlive: Bool,
                             headOnly: Bool = false) {
        waiting = false
        guard !closed, let connection, connection.isOpen else { return }
        respond(status: status, body: body, contentType: contentType, keepAlive: keepAlive, headOnly: headOnly)
        process()
    }

    private func respondError(_ status: Int, _ code: String, _ message: String, keepAlive: Bool) {
        respond(status: status, body: JSON.error(code: code, message: message), keepAlive: keepAlive)
    }

    private func respond(status: Int, body: String, contentType: String = "application/json", keepAlive: Bool,
                         headOnly: Bool = false, extraHeaders: HTTPHeaders = [:]) {
        guard let connection, connection.isOpen else { return }
        context.stats.countResponse(status, admin: true)
        var headers: HTTPHeaders = [:]
        headers.add(name: "Content-Type", value: contentType)
        headers.add(name: "Content-Length", value: String(body.utf8.count))
        headers.add(name: "Server", value: "tether")
        headers.add(name: "Cache-Control", value: "no-store")
        if !keepAlive { headers.add(name: "Connection", value: "close") }
        for (name, value) in extraHeaders { headers.add(name: name, value: value) }
        var out: [UInt8] = []
        out.reserveCapacity(body.utf8.count + 256)
        HTTPResponseHead(status: status, headers: headers).encode(into: &out)
        if !headOnly { out.append(contentsOf: body.utf8) }
        connection.write(out)
        if !keepAlive {
            connection.close(.graceful)
        } else {
            connection.setDeadline(milliseconds: context.configuration.idleTimeoutMilliseconds)
        }
    }
}

/// Carries a loop-confined handler through a Sendable closure back to its own loop, where
/// alone it is dereferenced.
private final class WeakAdmin: @unchecked Sendable {
    weak var value: AdminConnection?
    init(_ value: AdminConnection) { self.value = value }
}
#endif
