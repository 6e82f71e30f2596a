#if os(Linux)
import Synchronization
import TetherAuth
import TetherIO
import TetherQuota
import TetherTunnel

/// What all workers share: process-wide limits and the audit log. Touched when sessions and
/// connections come and go, never per byte.
final class RelayShared: Sendable {
    let tiers: Mutex<TierTable>
    let audit: AuditLog
    let sessionCount = Atomic<Int>(0)
    let control: RelayControl
    /// Replaced whole by a reload that changes their rates (buckets start over): a lock to
    /// read the reference, on the handshake path only, where the limiter locks a shard anyway.
    private let limiters: Mutex<(handshake: AddressLimiter, authFailure: AddressLimiter)>

    init(configuration: RelayConfiguration, audit: AuditLog, control: RelayControl) {
        tiers = Mutex(configuration.tiers)
        self.audit = audit
        self.control = control
        limiters = Mutex(RelayShared.makeLimiters(configuration))
    }

    var handshakeLimiter: AddressLimiter { limiters.withLock { $0.handshake } }
    var authFailureLimiter: AddressLimiter { limiters.withLock { $0.authFailure } }

    private static func makeLimiters(_ c: RelayConfiguration) -> (handshake: AddressLimiter, authFailure: AddressLimiter) {
        (AddressLimiter(ratePerSecond: c.handshakesPerSecondPerAddress, burst: c.handshakeBurstPerAddress),
         AddressLimiter(ratePerSecond: c.authFailuresPerSecondPerAddress, burst: c.authFailureBurstPerAddress))
    }

    /// A reload: new per-address limiters when their settings changed.
    func applyAddressLimits(old: RelayConfiguration, new: RelayConfiguration) {
        guard old.handshakesPerSecondPerAddress != new.handshakesPerSecondPerAddress
            || old.handshakeBurstPerAddress != new.handshakeBurstPerAddress
            || old.authFailuresPerSecondPerAddress != new.authFailuresPerSecondPerAddress
            || old.authFailureBurstPerAddress != new.authFailureBurstPerAddress else { return }
        let fresh = RelayShared.makeLimiters(new)
        limiters.withLock { $0 = fresh }
    }

    /// Counts a new session unless that would pass `max`.
    func reserveSession(max: Int) -> Bool {
        var current = sessionCount.load(ordering: .relaxed)
        while current < max {
            let (exchanged, original) = sessionCount.compareExchange(expected: current, desired: current + 1,
                                                                    ordering: .relaxed)
            if exchanged { return true }
            current = original
        }
        return false
    }
}

/// Session lifecycle on the home worker: created by a bridge or the seed API, revived by
/// traffic, parked or removed by one idle timer per session (re-armed lazily when it fires, so
/// activity costs a store and there is never a scan of all sessions).
extension RelayContext {
    var audit: AuditLog { shared.audit }

    /// The caller's session, revived if parked; created if needed. nil at the session limit.
    func openSession(for identity: Identity, cause: String) -> Session? {
        let now = loop.nowMilliseconds
        if let session = sessions.existing(identity.session) {
            session.updateTier(identity.tier, tiers: shared.tiers.withLock { $0 }, now: now)
            activate(session, now: now, cause: cause)
            if cause == "api" { ensureContainer(session) }
            return session
        }
        guard shared.reserveSession(max: configuration.maxSessions) else {
            stats.capacityRejections.addFromOwner()
            audit.record("capacity_exceeded", ["limit": "sessions", "session": .string("\(identity.session)")])
            return nil
        }
        let session = Session(id: identity.session, subject: identity.subject, tier: identity.tier,
                              tiers: shared.tiers.withLock { $0 }, createdAt: nowSeconds(), now: now)
        session.isolation = makeSessionIsolation(identity.session)
        session.makeBuckets(now: now)
        sessions.insert(session)
        stats.sessionsCreated.addFromOwner()
        scheduleIdleCheck(session, afterMilliseconds: configuration.sessionIdleTimeoutMilliseconds)
        // The one line binding the user id to its session id; elsewhere only the id appears.
        audit.record("session_created", [
            "session": .string("\(session.id)"), "sub": .string(identity.subject), "iss": .string(identity.issuer),
            "tier": .string(session.tierName), "cause": .string(cause)])
        if cause == "api" { ensureContainer(session) }
        return session
    }

    /// Stream traffic: the session is active from now on.
    func activate(_ session: Session, now: UInt64, cause: String) {
        session.lastActivity = now
        guard session.state == .parked else { return }
        session.state = .active
        session.makeBuckets(now: now)
        stats.sessionsRevived.addFromOwner()
        scheduleIdleCheck(session, afterMilliseconds: configuration.sessionIdleTimeoutMilliseconds)
        audit.record("session_revived", ["session": .string("\(session.id)"), "cause": .string(cause)])
        if session.isolation != nil { ensureContainer(session) }
    }

    private func scheduleIdleCheck(_ session: Session, afterMilliseconds ms: UInt64) {
        if let timer = session.idleTimer { loop.cancel(timer) }
        session.idleTimer = loop.schedule(afterMilliseconds: max(ms, 1)) { [weak self, weak session] in
            guard let self, let session else { return }
            session.idleTimer = nil
            self.idleCheck(session)
        }
    }

    private func idleCheck(_ session: Session) {
        guard sessions.existing(session.id) === session, session.state == .active else { return }
        let now = EventLoop.monotonicMilliseconds()
        let timeout = configuration.sessionIdleTimeoutMilliseconds
        let deadline = session.lastActivity &+ timeout
        if now < deadline {
            scheduleIdleCheck(session, afterMilliseconds: deadline - now)
        } else if session.activeStreams > 0 {
            // A stream in flight is activity, however quiet (its own idle timeout cuts it).
            scheduleIdleCheck(session, afterMilliseconds: timeout)
        } else if session.bridges.isEmpty {
            removeSession(session, reason: .idle)
        } else {
            park(session, reason: "idle")
        }
    }

    /// Releases the session's quota state; its bridges stay connected.
    func park(_ session: Session, reason: String) {
        guard session.state == .active else { return }
        session.state = .parked
        if let timer = session.idleTimer { loop.cancel(timer) }
        session.idleTimer = nil
        wakeShapingWaiters(session)
        session.releaseBuckets()
        stats.sessionsParked.addFromOwner()
        audit.record("session_idled", ["session": .string("\(session.id)"), "reason": .string(reason),
                                       "bridges": .int(session.bridges.count)])
        if session.isolation != nil { parkContainer(session) }
    }

    /// The tunnel settings a bridge of this session gets: its windows are the session's memory
    /// budget. What the relay holds for a session is at most the bytes its bridges may send
    /// unacknowledged (credit comes back only once bytes left the relay), plus, on the request
    /// side, one tunnel socket queue per bridge and one read buffer per stream.
    func tunnelSettings(for profile: QuotaProfile) -> TunnelSettings {
        var settings = configuration.tunnel
        let reserve = profile.maxBridges * loop.configuration.writeHighWatermark
            + profile.maxStreams * loop.configuration.receiveBufferSize
        let perBridge = max(65_536, (profile.memoryBytes - reserve) / max(1, profile.maxBridges))
        settings.tunnelWindow = min(settings.tunnelWindow, perBridge)
        settings.streamWindow = min(settings.streamWindow, settings.tunnelWindow)
        settings.maxStreams = min(settings.maxStreams, profile.maxStreams)
        return settings
    }

    /// host:port, or the host alone for an address from X-Forwarded-For (no port known).
    static func auditAddress(_ peer: SocketAddress) -> String {
        peer.port == 0 ? peer.host : peer.description
    }

    func bridgeConnected(_ session: Session, peer: SocketAddress?, protocolName: String) {
        tunnelLogger.debug("bridge connected", metadata: [
            "session": "\(session.id)", "protocol": "\(protocolName)", "peer": "\(peer?.description ?? "?")",
            "bridges": "\(session.bridges.count)"])
        if let kind = BridgeProtocol.allCases.first(where: { $0.label == protocolName }) {
            stats.bridgeConnects[kind.rawValue].addFromOwner()
        }
        audit.record("bridge_connected", ["session": .string("\(session.id)"), "address": .string(peer.map(Self.auditAddress) ?? ""),
                                          "protocol": .string(protocolName), "bridges": .int(session.bridges.count)])
    }

    func bridgeDisconnected(_ session: Session, peer: SocketAddress?, protocolName: String, reason: String,
                            kind: BridgeDisconnectReason) {
        stats.bridgeDisconnects[kind.rawValue].addFromOwner()
        tunnelLogger.debug("bridge disconnected", metadata: [
            "session": "\(session.id)", "protocol": "\(protocolName)", "reason": "\(kind.label)", "detail": "\(reason)"])
        audit.record("bridge_disconnected", ["session": .string("\(session.id)"), "address": .string(peer.map(Self.auditAddress) ?? ""),
                                             "protocol": .string(protocolName), "reason": .string(reason),
                                             "kind": .string(kind.label),
                                             "bridges": .int(session.bridges.count)])
        bridgeLeft(session)
    }

    /// A bridge left. A parked session (idle past the timeout) without bridges goes at once;
    /// an active one keeps its idle timer.
    func bridgeLeft(_ session: Session) {
        if session.bridges.isEmpty && session.state == .parked {
            removeSession(session, reason: .idle)
        }
    }

    func removeSession(_ session: Session, reason: SessionRemovalReason) {
        guard sessions.existing(session.id) === session else { return }
        stats.sessionRemovals[reason.rawValue].addFromOwner()
        if let timer = session.idleTimer { loop.cancel(timer) }
        session.idleTimer = nil
        wakeShapingWaiters(session)
        sessions.remove(session)
        if session.isolation != nil { removeIsolation(session) }
        shared.sessionCount.subtract(1, ordering: .relaxed)
        stats.sessionsRemoved.addFromOwner()
        audit.record("session_removed", ["session": .string("\(session.id)"), "reason": .string(reason.label)])
    }

    // MARK: bandwidth shaping

    /// `wake` runs once the session's bandwidth buckets may have tokens again (one timer per
    /// session, however many of its streams wait).
    func waitForBandwidth(_ session: Session, waiter: AnyObject, upstream: Bool, bytes: Int, wake: @escaping () -> Void) {
        session.shapingWaiters[ObjectIdentifier(waiter)] = wake
        guard session.shapingTimer == nil else { return }
        let now = loop.nowMilliseconds
        let bucket = upstream ? session.upstreamBucket : session.downstreamBucket
        // Wait for a useful amount (16 KiB or what is wanted), not for a single byte.
        let want = Double(min(max(bytes, 1), 16_384))
        let delay = bucket?.millisecondsUntil(want, now: now) ?? 1
        session.shapingTimer = loop.schedule(afterMilliseconds: max(delay, 1)) { [weak self, weak session] in
            guard let self, let session else { return }
            session.shapingTimer = nil
            self.wakeShapingWaiters(session)
        }
    }

    func wakeShapingWaiters(_ session: Session) {
        if let timer = session.shapingTimer { loop.cancel(timer) }
        session.shapingTimer = nil
        let waiters = session.shapingWaiters
        session.shapingWaiters = [:]
        for (_, wake) in waiters { wake() }
    }

    // MARK: quota rejections

    /// Counted always; audited at most a few lines a second per worker (a client hammering a
    /// quota must not flood the log), with the number of lines skipped.
    func recordQuotaRejection(_ quota: Quota, session: SessionID?, peer: SocketAddress? = nil) {
        stats.quotaRejections[quota.rawValue].addFromOwner()
        guard let skipped = takeAuditSlot() else { return }
        audit.record("quota_rejected", ["session": .string(session.map { "\($0)" } ?? ""), "quota": .string(quota.label),
                                        "address": .string(peer?.host ?? ""), "skipped_since_last": .int(skipped)])
    }

    func recordAuthFailure(_ failure: AuthFailure, peer: SocketAddress?, kind: String) {
        authLogger.debug("authentication failed", metadata: [
            "reason": "\(failure.metricLabel)", "kind": "\(kind)", "peer": "\(peer?.host ?? "?")"])
        guard let skipped = takeAuditSlot() else { return }
        audit.record("auth_failure", ["reason": .string(failure.metricLabel), "address": .string(peer?.host ?? ""),
                                      "kind": .string(kind), "skipped_since_last": .int(skipped)])
    }

    /// Rejection-type lines share one budget per worker; returns how many were skipped before.
    private func takeAuditSlot() -> Int? {
        guard audit.isEnabled else { return nil }
        guard auditQuotaBucket.take(now: loop.nowMilliseconds) else {
            auditQuotaSkipped += 1
            return nil
        }
        defer { auditQuotaSkipped = 0 }
        return auditQuotaSkipped
    }
}

#endif
