#if os(Linux)
import Glibc
import Logging
import Synchronization
import TetherAuth
import TetherIO
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

/// The relay process: worker loops with SO_REUSEPORT listeners (plaintext and optional TLS).
public final class Relay: Sendable {
    public let configuration: RelayConfiguration
    public let logger: Logger
    private let group: EventLoopGroup
    private let tlsBox: TLSContextBox?
    private let workerStats: [RelayStats]
    private let bound = Mutex<(http: SocketAddress?, tls: SocketAddress?)>((nil, nil))
    private let keys: KeyRefresher
    private let workers: WorkerDirectory
    private let shared: RelayShared
    private let maxConnections: Int
    /// Reads the configuration again (file, environment, the original flags) for a reload.
    private let reloadSource: (@Sendable () throws -> RelayConfiguration)?

    public init(configuration: RelayConfiguration, logger: Logger,
                reload: (@Sendable () throws -> RelayConfiguration)? = nil) throws {
        self.configuration = configuration
        self.reloadSource = reload
        self.logger = logger
        self.shared = RelayShared(configuration: configuration, audit: try AuditLog(destination: configuration.auditLog))
        self.maxConnections = configuration.maxConnections ?? Relay.defaultMaxConnections()
        var io = configuration.io
        io.workers = max(1, configuration.workers)
        self.group = try EventLoopGroup(configuration: io)
        self.workerStats = (0..<io.workers).map { _ in RelayStats() }
        let workers = WorkerDirectory(handles: group.handles)
        self.workers = workers
        self.keys = try KeyRefresher(configuration: configuration.auth, logger: logger) { verifier in
            for handle in workers.handles {
                handle.execute { loop in workers.context(of: loop.index)?.verifier = verifier }
            }
        }
        if configuration.tlsPort != nil {
            self.tlsBox = TLSContextBox(try Relay.loadTLS(configuration))
        } else {
            self.tlsBox = nil
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
    public var ioStats: [IOStats] { group.handles.map(\.stats) }
    public var stats: [RelayStats] { workerStats }

    /// Binds every worker's listeners and starts the loops. Port 0 picks a free port once and
    /// the other workers join it with SO_REUSEPORT.
    public func start() throws {
        guard let httpAddress = SocketAddress(host: configuration.host, port: configuration.port) else {
            throw RelayError.invalidAddress("\(configuration.host):\(configuration.port)")
        }
        let workers = group.handles.count
        let (httpFDs, httpBound) = try Socket.listen(on: httpAddress, count: workers)
        var tlsFDs: [Int32] = []
        var tlsBound: SocketAddress?
        if let tlsPort = configuration.tlsPort {
            do {
                guard let want = SocketAddress(host: configuration.host, port: tlsPort) else {
                    throw RelayError.invalidAddress("\(configuration.host):\(tlsPort)")
                }
                (tlsFDs, tlsBound) = try Socket.listen(on: want, count: workers)
            } catch {
                for fd in httpFDs { close(fd) }
                throw error
            }
        }
        bound.withLock { $0 = (httpBound, tlsBound) }
        let configuration = self.configuration
        let stats = workerStats
        let tlsBox = self.tlsBox
        let (httpListeners, tlsListeners) = (httpFDs, tlsFDs)
        let (logger, keys, directory) = (self.logger, self.keys, self.workers)
        let (shared, maxConnections) = (self.shared, self.maxConnections)
        try group.start { loop in
            let context = RelayContext(configuration: configuration, stats: stats[loop.index], logger: logger,
                                       verifier: keys.current, shared: shared, loop: loop, workers: directory,
                                       maxConnections: maxConnections)
            context.keyRefresher = keys
            directory.slots[loop.index].context = context
            loop.startAccepting(listenFD: httpListeners[loop.index]) { _ in HTTPServerConnection(context: context) }
            if !tlsListeners.isEmpty {
                loop.startAccepting(listenFD: tlsListeners[loop.index], tls: tlsBox) { _ in HTTPServerConnection(context: context) }
            }
        }
        logger.info("tether-relay listening", metadata: [
            "http": "\(httpBound)",
            "tls": "\(tlsBound.map { "\($0)" } ?? "off")",
            "workers": "\(group.handles.count)",
            "max_connections": "\(maxConnections)",
        ])
        try keys.start()
        shared.audit.record("relay_started", ["http": .string("\(httpBound)"), "workers": .int(group.handles.count)])
    }

    /// Re-reads the JWKS file and re-fetches the JWKS URL now (SIGHUP; blocks for the fetch).
    /// Changed keys reach every worker; a failing source keeps its previous keys.
    @discardableResult
    public func reloadKeys() -> Bool {
        keys.reload()
    }

    public var keyStats: KeyRefreshStats { keys.stats }

    /// SIGHUP and POST /admin/reload: reloads off the calling thread (a slow JWKS server must
    /// not hold up the signal thread, and a SIGTERM behind it).
    public func requestReload() {
        let relay = self
        BackgroundThread.run { _ = relay.reloadTLS(); _ = relay.reloadKeys() }
    }

    /// Re-reads the TLS certificate and key. New connections use them; established ones keep
    /// the context they started with. A broken file leaves the old context in force.
    @discardableResult
    public func reloadTLS() -> Bool {
        guard let tlsBox else { return true }
        do {
            tlsBox.current = try Relay.loadTLS(configuration)
            logger.info("TLS certificate reloaded", metadata: ["cert": "\(configuration.tlsCertificateFile ?? "")"])
            return true
        } catch {
            logger.error("TLS reload failed; keeping the previous certificate", metadata: ["error": "\(error)"])
            return false
        }
    }

    /// Graceful drain: stop accepting, send GOAWAY to every bridge (they reconnect elsewhere),
    /// let streams in flight finish until `deadlineSeconds`, close the bridges, then stop.
    public func drain(deadlineSeconds: Double) {
        let directory = workers
        for handle in group.handles {
            _ = handle.execute { loop in
                loop.stopAccepting()
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
        let remaining = activeStreams()
        if remaining > 0 {
            logger.warning("drain deadline reached", metadata: ["streams": "\(remaining)"])
        }
        for handle in group.handles {
            _ = handle.execute { loop in
                guard let context = directory.context(of: loop.index) else { return }
                for session in Array(context.sessions.sessions.values) {
                    for bridge in session.bridges { bridge.close(reason: "relay shutting down") }
                }
            }
        }
        usleep(100_000)  // lets the close frames go out
        shutdown()
    }

    /// Streams in flight on all workers (asks each loop; for drain, not the data path).
    func activeStreams() -> Int {
        let total = Atomic<Int>(0)
        let done = Atomic<Int>(0)
        let directory = workers
        var posted = 0
        for handle in group.handles {
            let accepted = handle.execute { loop in
                let count = directory.context(of: loop.index)?.sessions.sessions.values.reduce(0) { $0 + $1.activeStreams } ?? 0
                total.add(count, ordering: .relaxed)
                done.add(1, ordering: .releasing)
            }
            if accepted { posted += 1 }
        }
        for _ in 0..<200 where done.load(ordering: .acquiring) < posted { usleep(1_000) }
        return total.load(ordering: .relaxed)
    }

    public func shutdown() {
        group.shutdown()
        keys.stop()
        // The directory and the contexts point at each other; with the loops joined, nothing
        // else uses them, and breaking the cycle frees every worker's state.
        for slot in workers.slots { slot.context = nil }
        shared.audit.record("relay_stopped")
        shared.audit.close()
    }

}
#endif
