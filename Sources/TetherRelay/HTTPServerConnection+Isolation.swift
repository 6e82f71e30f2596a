#if os(Linux)
import TetherAuth
import TetherHTTP
import TetherIO
import TetherIsolation
import TetherTunnel

/// Requests of a Docker-isolated session: the relay authenticated the caller; the request goes
/// to the session's worker (which applies the quotas and talks to the bridges) once its
/// container runs. Until then it waits (reading paused); if the container cannot run, the
/// caller gets 503 ISOLATION_UNAVAILABLE with the reason.
extension HTTPServerConnection {
    func startIsolatedProxy(_ head: HTTPRequestHead, _ session: Session, _ connection: Connection) {
        let keepAlive = head.isKeepAlive
        switch context.isolationReadiness(session) {
        case .ready:
            attachIsolated(head, session, connection)
        case .unavailable(let failure, let retryAfter):
            refuseIsolated(head, failure, retryAfter: retryAfter, connection)
        case .wait:
            guard let iso = session.isolation, iso.waiters.count < session.profile.maxStreams else {
                context.stats.streamsFailed.addFromOwner()
                respond(connection, status: 503, code: "ISOLATION_UNAVAILABLE",
                        message: "too many requests are waiting for this session's container", keepAlive: keepAlive,
                        headOnly: head.method == "HEAD", extraHeaders: ["Retry-After": "1"])
                phase = .body(.discard(keepAlive: keepAlive))
                return
            }
            // Nothing is read while waiting: a body stays in the client's TCP window.
            phase = .body(.pending(keepAlive: keepAlive))
            connection.pauseReading()
            iso.waiters.append { [weak self, weak session] outcome in
                guard let self, let connection = self.connection, connection.isOpen else { return }
                connection.resumeReading()
                switch outcome {
                case .success:
                    if let session, self.context.sessions.existing(session.id) === session {
                        self.attachIsolated(head, session, connection)
                    } else {
                        self.refuseIsolated(head, IsolationFailure(.containerDied, "the session was removed"), retryAfter: 1, connection)
                    }
                case .failure(let failure):
                    self.refuseIsolated(head, failure, retryAfter: self.retryAfter(session), connection)
                }
                self.process(connection)
            }
        }
    }

    private func retryAfter(_ session: Session?) -> Int {
        guard let iso = session?.isolation, case .failed(_, let retryAt) = iso.container else { return 1 }
        return SessionIsolation.retryAfterSeconds(until: retryAt, now: context.loop.nowMilliseconds)
    }

    private func refuseIsolated(_ head: HTTPRequestHead, _ failure: IsolationFailure, retryAfter: Int, _ connection: Connection) {
        let keepAlive = head.isKeepAlive
        context.stats.streamsFailed.addFromOwner()
        respond(connection, status: 503, code: "ISOLATION_UNAVAILABLE",
                message: "this session's container is unavailable (\(failure.reason.label)): \(failure.message)",
                keepAlive: keepAlive, headOnly: head.method == "HEAD", extraHeaders: ["Retry-After": String(retryAfter)])
        phase = .body(.discard(keepAlive: keepAlive))
    }

    /// The worker runs: the request goes to it over a fresh unix connection.
    private func attachIsolated(_ head: HTTPRequestHead, _ session: Session, _ connection: Connection) {
        let keepAlive = head.isKeepAlive
        let started = context.monotonicNanoseconds()
        let hasBody = head.hasBody
        session.requestCount &+= 1
        decoder.limits.maxBodySize = min(decoder.limits.maxBodySize, session.profile.maxBodyBytes)
        let origin = clientOrigin(head, connection)
        let link = WorkerLink(context: context, session: session, head: head, peer: origin.address,
                              tls: origin.tls, hasBody: hasBody)
        let tunnelHead = TunnelRequestHead(method: head.method, target: head.target)
        guard let stream = link.openStream(tunnelHead, endStream: !hasBody, client: self) else {
            refuseIsolated(head, IsolationFailure(.containerDied, "the session's container is not answering"),
                           retryAfter: 1, connection)
            return
        }
        if hasBody && head.expectsContinue {
            connection.write(Array("HTTP/1.1 100 Continue\r\n\r\n".utf8))
        }
        proxy = ProxyExchange(bridge: link, stream: stream, head: tunnelHead, keepAlive: keepAlive,
                              headOnly: head.method == "HEAD", version: head.version, session: session,
                              openedWithoutBody: !hasBody, startedNanos: started)
        phase = .body(.proxy)
        connection.setDeadline(milliseconds: context.configuration.streamIdleTimeoutMilliseconds)
    }
}
#endif
