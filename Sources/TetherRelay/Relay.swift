#if os(Linux)
import Glibc
import Logging
import Synchronization
import TetherAuth
import TetherIO
import TetherIsolation
import TetherQuota
import TetherTLS

public enum RelayError: Error, CustomStringConvertible {
    case invalidAddress(String)
    case tlsMisconfigured(String)
    case invalidConfiguration(String, String)

    public var description: String {
        switch self {
        case .invalidAddress(let a): return "invalid listen address: \(a)"
        case .tlsMisconfigured(let m): return m
        case .invalidConfiguration(let key, let problem): return "\(key): \(problem)"
        }
    }
}

/// The relay process: worker loops with SO_REUSEPORT listeners (plaintext, optional TLS, and
/// the admin listener), reload and drain.
public final class Relay: Sendable {
    public let logger: Logger
    private let group: EventLoopGroup
    private let tlsBox: TLSContextBox?
    private let workerStats: [RelayStats]
    private let bound = Mutex<Bound>(Bound())
    private let keys: Mutex<KeyRefresher>
    private let keyStatsStore = KeyRefreshStats()
    private let workers: WorkerDirectory
    private let shared: RelayShared
    /// The configuration in force: the start one, then each reload that was applied.
    private let current: Mutex<RelayConfiguration>
    /// Reads the configuration again (file, environment, the original flags) for a reload.
    private let reloadSource: (@Sendable () throws -> RelayConfiguration)?
    /// One reload at a time (SIGHUP and POST /admin/reload may race).
    private let reloadLock = Mutex<Void>(())
    /// The Docker isolation mode's engine client and containers (nil in process mode).
    private let isolation: IsolationRuntime?

    private struct Bound {
        var http: SocketAddress?
        var tls: SocketAddress?
        var admin: SocketAddress?
        /// The public listeners' descriptors: a drain closes these and keeps the admin one.
        var publicFDs: Set<Int32> = []
    }

    public init(configuration: RelayConfiguration, logger: Logger,
                reload: (@Sendable () throws -> RelayConfiguration)? = nil) throws {
        self.current = Mutex(configuration)
        self.reloadSource = reload
        self.logger = logger
        var io = configuration.io
        io.workers = max(1, configuration.workers)
        self.group = try EventLoopGroup(configuration: io)
        let workerStats = (0..<io.workers).map { _ in RelayStats() }
        self.workerStats = workerStats
        self.shared = RelayShared(configuration: configuration, audit: try AuditLog(destination: configuration.auditLog),
                                  control: RelayControl(workerStats: workerStats))
        let workers = WorkerDirectory(handles: group.handles)
        self.workers = workers
        self.keys = Mutex(try KeyRefresher(configuration: configuration.auth, logger: Logger(label: "tether.auth"),
                                           stats: keyStatsStore,
                                           install: Relay.installer(workers)))
        if configuration.tlsPort != nil {
            self.tlsBox = TLSContextBox(try Relay.loadTLS(configuration))
        } else {
            self.tlsBox = nil
        }
        self.isolation = try Relay.makeIsolation(configuration.isolation)
        shared.control.reloads.lastSuccessBits.store(shared.control.startedAt.bitPattern, ordering: .relaxed)
    }

    /// Posts a new verifier to every loop.
    private static func installer(_ workers: WorkerDirectory) -> @Sendable (TokenVerifier) -> Void {
        { verifier in
            for handle in workers.handles {
                handle.execute { loop in workers.context(of: loop.index)?.verifier = verifier }
            }
        }
    }

    public var configuration: RelayConfiguration { current.withLock { $0 } }

    private static func makeIsolation(_ settings: IsolationSettings) throws -> IsolationRuntime? {
        guard settings.isDocker else { return nil }
        var seccomp: String?
        if let file = settings.seccompProfileFile {
            guard let bytes = readSmallFile(file, maxBytes: 4 << 20) else {
                throw RelayError.invalidConfiguration("isolation.seccomp_profile", "cannot read \(file)")
            }
            seccomp = String(decoding: bytes, as: UTF8.self)
        }
        return IsolationRuntime(settings: settings, instance: settings.instance ?? IsolationRuntime.hostName(),
                                seccompProfile: seccomp)
    }

    /// Docker isolation: removes containers an earlier run of this relay left (it was killed),
    /// before any session can need its name.
    private func reapContainers() {
        guard let isolation else { return }
        do {
            let removed = try isolation.manager.reap()
            logger.info("docker isolation ready", metadata: [
                "instance": "\(isolation.manager.instance)", "image": "\(isolation.settings.image)",
                "reaped": "\(removed)"])
            if removed > 0 { shared.audit.record("isolation_reaped", ["containers": .int(removed)]) }
        } catch {
            // The relay still starts: sessions get 503 ISOLATION_UNAVAILABLE until the engine
            // answers, and a leftover container is replaced when its name is needed.
            logger.error("docker engine not reachable at start; sessions will get 503 until it is",
                         metadata: ["error": "\(error)"])
        }
    }

    /// The descriptor limit minus a reserve for listeners, the rings, files and the audit log,
    /// so that the relay answers 503 before the kernel refuses an accept.
    static func defaultMaxConnections() -> Int {
        var limit = rlimit()
        guard getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return 1_000 }
        let soft = limit.rlim_cur > 1 << 30 ? 1 << 30 : Int(limit.rlim_cur)
        return max(16, soft - max(64, soft / 50))
    }

    static func loadTLS(_ configuration: RelayConfiguration) throws -> TLSContext {
        guard let cert = configuration.tlsCertificateFile, let key = configuration.tlsKeyFile else {
            throw RelayError.tlsMisconfigured("a TLS listener needs --tls-cert and --tls-key")
        }
        return try TLSContext(configuration: .server(certificateChainFile: cert, privateKeyFile: key))
    }

    public var httpAddress: SocketAddress? { bound.withLock { $0.http } }
    public var tlsAddress: SocketAddress? { bound.withLock { $0.tls } }
    public var adminAddress: SocketAddress? { bound.withLock { $0.admin } }
    public var ioStats: [IOStats] { group.handles.map(\.stats) }
    public var stats: [RelayStats] { workerStats }
    public var keyStats: KeyRefreshStats { keyStatsStore }
    public var readiness: Readiness { shared.control.readiness }

    /// Binds every worker's listeners and starts the loops. Port 0 picks a free port once and
    /// the other workers join it with SO_REUSEPORT.
    public func start() throws {
        let configuration = self.configuration
        guard let httpAddress = SocketAddress(host: configuration.host, port: configuration.port) else {
            throw RelayError.invalidAddress("\(configuration.host):\(configuration.port)")
        }
        let workerCount = group.handles.count
        var opened: [Int32] = []
        func listen(_ address: SocketAddress) throws -> ([Int32], SocketAddress) {
            let (fds, boundAddress) = try Socket.listen(on: address, count: workerCount)
            opened += fds
            return (fds, boundAddress)
        }
        let httpFDs: [Int32], httpBound: SocketAddress
        var tlsFDs: [Int32] = [], adminFD: Int32?
        var tlsBound: SocketAddress?, adminBound: SocketAddress?
        do {
            (httpFDs, httpBound) = try listen(httpAddress)
            if let tlsPort = configuration.tlsPort {
                guard let want = SocketAddress(host: configuration.host, port: tlsPort) else {
                    throw RelayError.invalidAddress("\(configuration.host):\(tlsPort)")
                }
                (tlsFDs, tlsBound) = try listen(want)
            }
            if let adminPort = configuration.adminPort {
                guard let want = SocketAddress(host: configuration.adminHost, port: adminPort) else {
                    throw RelayError.invalidAddress("admin \(configuration.adminHost):\(adminPort)")
                }
                // One exclusive socket (no SO_REUSEPORT), served by the first worker: a second
                // relay on the same host must fail loudly here, not share the scrapes.
                let (fd, address) = try Socket.listen(on: want, backlog: 512, reusePort: false)
                opened.append(fd)
                (adminFD, adminBound) = (fd, address)
            }
        } catch {
            for fd in opened { close(fd) }
            throw error
        }
        bound.withLock { $0 = Bound(http: httpBound, tls: tlsBound, admin: adminBound, publicFDs: Set(httpFDs + tlsFDs)) }
        let (tlsListeners, adminListener) = (tlsFDs, adminFD)
        let stats = workerStats
        let tlsBox = self.tlsBox
        let (logger, directory, shared) = (self.logger, self.workers, self.shared)
        let refresher = keys.withLock { $0 }
        let maxConnections = configuration.maxConnections ?? Relay.defaultMaxConnections()
        reapContainers()
        let isolation = self.isolation
        try group.start { loop in
            let context = RelayContext(configuration: configuration, stats: stats[loop.index], logger: logger,
                                       verifier: refresher.current, shared: shared, loop: loop, workers: directory,
                                       maxConnections: maxConnections)
            context.keyRefresher = refresher
            context.isolation = isolation
            directory.slots[loop.index].context = context
            loop.startAccepting(listenFD: httpFDs[loop.index]) { _ in HTTPServerConnection(context: context) }
            if !tlsListeners.isEmpty {
                loop.startAccepting(listenFD: tlsListeners[loop.index], tls: tlsBox) { _ in HTTPServerConnection(context: context) }
            }
            if let adminListener, loop.index == 0 {
                loop.startAccepting(listenFD: adminListener) { _ in AdminConnection(context: context) }
            }
        }
        logger.info("tether-relay listening", metadata: [
            "http": "\(httpBound)",
            "tls": "\(tlsBound.map { "\($0)" } ?? "off")",
            "admin": "\(adminBound.map { "\($0)" } ?? "off")",
            "workers": "\(group.handles.count)",
            "max_connections": "\(maxConnections)",
        ])
        try refresher.start()
        let keyStore = keyStatsStore
        shared.control.operations.withLock {
            $0 = RelayControl.Operations(reload: { [self] in self.reload() }, keyStats: { keyStore },
                                         hasKeys: { [self] in self.hasKeys })
        }
        shared.control.markReady()
        shared.audit.record("relay_started", ["http": .string("\(httpBound)"), "workers": .int(group.handles.count)])
    }

    /// False only while keys are configured but none could be loaded yet (a JWKS URL that has
    /// not answered): the relay would refuse every token, so it is not ready.
    var hasKeys: Bool {
        let refresher = keys.withLock { $0 }
        let auth = refresher.configuration
        let expectsKeys = auth.hs256Secret != nil || auth.jwksFile != nil || auth.jwksURL != nil
        return !expectsKeys || refresher.current.keyCount > 0
    }

    // MARK: reload

    /// SIGHUP and POST /admin/reload: reloads off the calling thread (a slow JWKS server must
    /// not hold up the signal thread, and a SIGTERM behind it).
    public func requestReload() {
        let relay = self
        BackgroundThread.run { _ = relay.reload() }
    }

    /// Reads the configuration again and applies what can change while running: TLS certificate
    /// and key, JWT keys and their settings, quota profiles, log levels, limits and timeouts.
    /// Everything is checked before anything is applied: an invalid file changes nothing.
    /// Blocking (files, a JWKS fetch): never call it on a loop.
    @discardableResult
    public func reload() -> ReloadOutcome {
        let outcome = reloadLock.withLock { _ in reloadLocked() }
        let reloads = shared.control.reloads
        if outcome.ok {
            reloads.succeeded.add(1, ordering: .relaxed)
            reloads.lastSucceeded.store(true, ordering: .relaxed)
            reloads.lastSuccessBits.store(Relay.wallClock().bitPattern, ordering: .relaxed)
            logger.info("configuration reloaded", metadata: [
                "changes": "\(outcome.changes.joined(separator: ", "))",
                "restart_required": "\(outcome.restartRequired.joined(separator: ", "))"])
            if !outcome.restartRequired.isEmpty {
                logger.warning("some changed settings only take effect after a restart",
                               metadata: ["settings": "\(outcome.restartRequired.joined(separator: ", "))"])
            }
        } else {
            reloads.failed.add(1, ordering: .relaxed)
            reloads.lastSucceeded.store(false, ordering: .relaxed)
            logger.error("configuration reload refused; the previous configuration stays in force",
                         metadata: ["error": "\(outcome.message)"])
        }
        shared.audit.record(outcome.ok ? "config_reloaded" : "config_reload_failed", [
            "changes": .string(outcome.changes.joined(separator: ",")), "message": .string(outcome.message)])
        return outcome
    }

    private func reloadLocked() -> ReloadOutcome {
        let old = configuration
        var new: RelayConfiguration
        if let reloadSource {
            do {
                new = try reloadSource()
            } catch {
                return ReloadOutcome(ok: false, message: "\(error)")
            }
        } else {
            new = old  // no file to re-read: certificates and keys are still re-read below
        }
        var restart: [String] = []
        func keep<T: Equatable>(_ name: String, _ path: WritableKeyPath<RelayConfiguration, T>) {
            if new[keyPath: path] != old[keyPath: path] { restart.append(name) }
            new[keyPath: path] = old[keyPath: path]
        }
        // Named as in docs/CONFIGURATION.md (the settings marked "restart").
        keep("listen.host", \.host)
        keep("listen.port", \.port)
        keep("listen.workers", \.workers)
        keep("tls.port", \.tlsPort)
        keep("admin.host", \.adminHost)
        keep("admin.port", \.adminPort)
        keep("audit.log", \.auditLog)
        keep("isolation", \.isolation)
        new.io = old.io

        // Check everything first.
        var tls: TLSContext?
        if tlsBox != nil {
            do {
                tls = try Relay.loadTLS(new)
            } catch {
                return ReloadOutcome(ok: false, message: "tls: \(error)")
            }
        }
        var replacement: KeyRefresher?
        if new.auth != old.auth {
            do {
                replacement = try KeyRefresher(configuration: new.auth, logger: Logger(label: "tether.auth"),
                                               stats: keyStatsStore,
                                               install: Relay.installer(workers))
            } catch {
                return ReloadOutcome(ok: false, message: "auth: \(error)")
            }
        }

        // Apply.
        var changes = Relay.differences(old, new)
        if let tls, let tlsBox {
            tlsBox.current = tls
            changes.append("tls.certificate")
        }
        if let replacement {
            let previous = keys.withLock { keys in
                defer { keys = replacement }
                return keys
            }
            previous.stop()
            do {
                try replacement.start()
            } catch {
                logger.error("key refresh thread did not start", metadata: ["error": "\(error)"])
            }
            let verifier = replacement.current
            for handle in workers.handles {
                let directory = workers
                handle.execute { loop in
                    guard let context = directory.context(of: loop.index) else { return }
                    context.verifier = verifier
                    context.keyRefresher = replacement
                }
            }
        } else if !keys.withLock({ $0 }).reload() {
            changes.append("auth.keys (a source failed: its previous keys stay)")
        }
        shared.tiers.withLock { $0 = new.tiers }
        shared.applyAddressLimits(old: old, new: new)
        RelayLogging.update(new.logging)
        let maxConnections = new.maxConnections ?? Relay.defaultMaxConnections()
        let applied = new
        let directory = workers
        for handle in workers.handles {
            handle.execute { loop in
                guard let context = directory.context(of: loop.index) else { return }
                context.configuration = applied
                context.maxConnections = maxConnections
                context.reconfigureWorkers()
                let now = loop.nowMilliseconds
                for session in context.sessions.sessions.values {
                    session.applyTiers(applied.tiers, now: now)
                }
            }
        }
        current.withLock { $0 = new }
        return ReloadOutcome(ok: true, message: changes.isEmpty ? "no changes" : "applied",
                             changes: changes, restartRequired: restart)
    }

    /// Names of the reloadable settings that differ (for the log and the admin API).
    private static func differences(_ a: RelayConfiguration, _ b: RelayConfiguration) -> [String] {
        var out: [String] = []
        func check<T: Equatable>(_ name: String, _ path: KeyPath<RelayConfiguration, T>) {
            if a[keyPath: path] != b[keyPath: path] { out.append(name) }
        }
        check("tls.cert", \.tlsCertificateFile)
        check("tls.key", \.tlsKeyFile)
        check("auth", \.auth)
        check("quotas", \.tiers)
        check("log", \.logging)
        check("limits.max_body_size", \.httpLimits.maxBodySize)
        check("limits.http", \.httpLimits)
        check("limits.ws_max_message", \.webSocketMaxMessage)
        check("limits.header_timeout", \.headerTimeoutMilliseconds)
        check("limits.idle_timeout", \.idleTimeoutMilliseconds)
        check("limits.ws_idle_timeout", \.webSocketIdleTimeoutMilliseconds)
        check("tunnel.stream_idle_timeout", \.streamIdleTimeoutMilliseconds)
        check("tunnel.ping_interval", \.tunnelPingIntervalMilliseconds)
        check("tunnel.legacy_ping_interval", \.legacyPingIntervalMilliseconds)
        check("tunnel.handshake_timeout", \.bridgeHandshakeTimeoutMilliseconds)
        check("tunnel", \.tunnel)
        check("sessions.idle_timeout", \.sessionIdleTimeoutMilliseconds)
        check("limits.max_sessions", \.maxSessions)
        check("limits.max_connections", \.maxConnections)
        check("limits.handshake_rate", \.handshakesPerSecondPerAddress)
        check("limits.handshake_burst", \.handshakeBurstPerAddress)
        check("limits.auth_failure_rate", \.authFailuresPerSecondPerAddress)
        check("limits.auth_failure_burst", \.authFailureBurstPerAddress)
        check("limits.limit_loopback", \.addressLimitsExemptLoopback)
        check("limits.ipv6_prefix", \.addressLimitsIPv6PrefixLength)
        check("limits.trusted_proxies", \.trustedProxies)
        check("admin.token", \.adminToken)
        check("admin.metrics_on_main", \.metricsOnMainListener)
        check("drain.timeout", \.drainTimeoutSeconds)
        return out
    }

    static func wallClock() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }

    /// Re-reads the JWKS file and re-fetches the JWKS URL now. Changed keys reach every
    /// worker; a failing source keeps its previous keys.
    @discardableResult
    public func reloadKeys() -> Bool {
        keys.withLock { $0 }.reload()
    }

    /// Re-reads the TLS certificate and key. New connections use them; established ones keep
    /// the context they started with. A broken file leaves the old context in force.
    @discardableResult
    public func reloadTLS() -> Bool {
        guard let tlsBox else { return true }
        do {
            tlsBox.current = try Relay.loadTLS(configuration)
            return true
        } catch {
            logger.error("TLS reload failed; keeping the previous certificate", metadata: ["error": "\(error)"])
            return false
        }
    }

    // MARK: drain

    /// Graceful drain: readiness goes false, the public listeners stop accepting (the admin
    /// listener stays up for probes and scrapes), every bridge gets GOAWAY (it reconnects
    /// elsewhere), new requests get 503 RELAY_DRAINING, streams in flight finish until
    /// `deadlineSeconds`; then the bridges are closed and the loops stop.
    public func drain(deadlineSeconds: Double) {
        shared.control.readiness = .draining
        shared.audit.record("relay_draining", ["deadline_s": .double(deadlineSeconds)])
        let directory = workers
        let publicFDs = bound.withLock { $0.publicFDs }
        for handle in group.handles {
            _ = handle.execute { loop in
                loop.stopAccepting(where: { publicFDs.contains($0) })
                guard let context = directory.context(of: loop.index) else { return }
                context.draining = true
                for session in Array(context.sessions.sessions.values) {
                    for bridge in session.bridges { bridge.goAway() }
                }
            }
        }
        logger.info("draining", metadata: ["deadline_s": "\(deadlineSeconds)"])
        let start = EventLoop.monotonicMilliseconds()
        let deadline = start + UInt64(max(0, deadlineSeconds) * 1000)
        while EventLoop.monotonicMilliseconds() < deadline {
            if activeStreams() == 0 { break }
            usleep(50_000)
        }
        let remaining = activeStreams() ?? -1
        if remaining != 0 {
            logger.warning("drain deadline reached", metadata: ["streams": "\(remaining)"])
        }
        for handle in group.handles {
            _ = handle.execute { loop in
                guard let context = directory.context(of: loop.index) else { return }
                for session in Array(context.sessions.sessions.values) {
                    for bridge in session.bridges {
                        bridge.close(code: 1001, reason: "relay shutting down", kind: .shutdown)
                    }
                }
            }
        }
        // Bridges held by a session worker close through it: give their close frames a moment.
        let bridgesDeadline = EventLoop.monotonicMilliseconds() + 1_500
        while EventLoop.monotonicMilliseconds() < bridgesDeadline, countOnLoops({ $0.sessions.sessions.values.reduce(0) { $0 + $1.bridges.count } }) != 0 {
            usleep(20_000)
        }
        // A finished stream's last bytes may still be queued for its client: flush them, then
        // wait for clients and bridges to close their ends (bounded: a peer that never reads is
        // cut when the loops stop).
        for handle in group.handles {
            _ = handle.execute { loop in loop.closeAllConnections() }
        }
        let flushDeadline = EventLoop.monotonicMilliseconds() + 2_000
        while EventLoop.monotonicMilliseconds() < flushDeadline,
              group.handles.contains(where: { $0.stats.openConnections.load(ordering: .relaxed) > 0 }) {
            usleep(20_000)
        }
        shutdown()
    }

    /// Streams in flight on all workers (for drain, not the data path). nil when a loop did not
    /// answer in time: unknown is not zero.
    func activeStreams() -> Int? {
        countOnLoops { $0.sessions.sessions.values.reduce(0) { $0 + $1.activeStreams } }
    }

    /// Sums `count` over every worker, asking each loop (blocking, up to a second; nil when a
    /// loop did not answer).
    private func countOnLoops(_ count: @escaping @Sendable (RelayContext) -> Int) -> Int? {
        let total = Atomic<Int>(0)
        let done = Atomic<Int>(0)
        let directory = workers
        var posted = 0
        for handle in group.handles {
            let accepted = handle.execute { loop in
                total.add(directory.context(of: loop.index).map(count) ?? 0, ordering: .relaxed)
                done.add(1, ordering: .releasing)
            }
            if accepted { posted += 1 }
        }
        for _ in 0..<1000 where done.load(ordering: .acquiring) < posted { usleep(1_000) }
        guard done.load(ordering: .acquiring) == posted else { return nil }
        return total.load(ordering: .relaxed)
    }

    public func shutdown() {
        // A reload still running (a SIGHUP during the drain) finishes first: it may touch the
        // loops and the key refresher, and its thread's OpenSSL state must be freed before exit.
        BackgroundThread.waitForRunning(upToMilliseconds: 5_000)
        isolation?.stopping.store(true, ordering: .relaxed)
        group.shutdown()
        // The workers exit with their control links; their containers go too.
        isolation?.manager.shutdown()
        keys.withLock { $0 }.stop()
        // The directory and the contexts point at each other, and the control's operations hold
        // this relay; with the loops joined nothing else uses them, and breaking the cycles
        // frees every worker's state.
        shared.control.operations.withLock { $0 = nil }
        for slot in workers.slots { slot.context = nil }
        shared.audit.record("relay_stopped")
        shared.audit.close()
    }
}
#endif
