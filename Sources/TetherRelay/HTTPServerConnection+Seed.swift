#if os(Linux)
import TetherAuth
import TetherHTTP
import TetherIO

/// `POST /api/proxy/start`, `POST /api/proxy/stop`, `GET /api/proxy/status`: the
/// CloudToLocalLLM web app's view of the caller's own session (its "proxy").
extension HTTPServerConnection {
    func serveSeed(_ route: AuthenticatedRoute, _ head: HTTPRequestHead, _ identity: Identity, _ connection: Connection) {
        let keepAlive = head.isKeepAlive
        let headOnly = head.method == "HEAD"
        phase = .body(.discard(keepAlive: keepAlive))
        switch route {
        case .proxyStart:
            guard let session = context.openSession(for: identity, cause: "api") else {
                respond(connection, status: 503, code: "CAPACITY_EXCEEDED",
                        message: "the relay is at its session limit; retry later", keepAlive: keepAlive,
                        extraHeaders: ["Retry-After": "5"])
                return
            }
            context.audit.record("proxy_start", ["session": .string("\(session.id)")])
            let body = "{\"success\":true,\"message\":\"proxy running\",\"proxy\":{\"proxyId\":\"\(session.id)\","
                + "\"status\":\"running\",\"createdAt\":\"\(AuditLog.timestamp(session.createdAt))\","
                + "\"tier\":\(JSONString.quote(session.tierName)),\"bridges\":\(session.bridges.count)}}"
            respondJSON(connection, status: 200, body: body, keepAlive: keepAlive)
        case .proxyStop:
            guard let session = context.sessions.existing(identity.session) else {
                respond(connection, status: 404, code: "SESSION_NOT_FOUND", message: "no session exists for this user",
                        keepAlive: keepAlive)
                return
            }
            context.audit.record("proxy_stop", ["session": .string("\(session.id)")])
            // Without a bridge nothing is worth keeping; with bridges they stay parked, ready
            // for the next request.
            if session.bridges.isEmpty {
                context.removeSession(session, reason: .stopped)
            } else {
                context.park(session, reason: "stopped")
            }
            let body = "{\"success\":true,\"message\":\"proxy stopped\",\"proxyId\":\"\(session.id)\"}"
            respondJSON(connection, status: 200, body: body, keepAlive: keepAlive)
        case .proxyStatus:
            respondJSON(connection, status: 200, body: statusDocument(identity), keepAlive: keepAlive, headOnly: headOnly)
        case .forward, .bridgeStatus:
            break
        }
    }

    private func statusDocument(_ identity: Identity) -> String {
        guard let session = context.sessions.existing(identity.session) else {
            return "{\"status\":\"not-found\",\"userId\":\(JSONString.quote(identity.subject)),\"proxyId\":null,"
                + "\"createdAt\":null,\"lastActivity\":null}"
        }
        let status = session.state == .active ? "running" : "stopped"
        let idleSeconds = Double(context.loop.nowMilliseconds &- min(session.lastActivity, context.loop.nowMilliseconds)) / 1000
        let lastActivity = AuditLog.timestamp(context.nowSeconds() - idleSeconds)
        return "{\"status\":\"\(status)\",\"userId\":\(JSONString.quote(identity.subject)),\"proxyId\":\"\(session.id)\","
            + "\"createdAt\":\"\(AuditLog.timestamp(session.createdAt))\",\"lastActivity\":\"\(lastActivity)\","
            + "\"tier\":\(JSONString.quote(session.tierName)),\"bridges\":\(session.bridges.count),"
            + "\"activeStreams\":\(session.activeStreams)}"
    }
}
#endif
