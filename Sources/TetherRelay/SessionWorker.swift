#if os(Linux)
import Glibc
import Logging
import Synchronization
import TetherAuth
import TetherIO
import TetherIsolation
import TetherQuota

/// `tether-relay session-worker`: the process inside a Docker-isolated session's container. It
/// runs the relay's own session code (HTTPServerConnection, TunnelConnection, Session, quotas,
/// the multiplexer) on one io_uring loop for ONE session, and listens on a unix socket in the
/// session's directory. The relay attaches connections to it, each announced by a
/// `WorkerPreamble`: its control link first, then client exchanges and parked bridges. The
/// relay authenticated everything; the worker trusts the preamble and enforces the session's
/// quotas. It exits when the control link goes (relay gone, or the session parked).
public final class SessionWorker: Sendable {
    public let socketPath: String
    public let session: SessionID
    private let group: EventLoopGroup
    private let logger: Logger
    private let listenFD: Int32

    /// The relay must connect within this long after the worker starts, or it exits.
    static let controlDeadlineMilliseconds: UInt64 = 60_000

    public init(socketPath: String, session: SessionID, logger: Logger) throws {
        self.socketPath = socketPath
        self.session = session
        self.logger = logger
        var io = IOConfiguration()
        io.workers = 1
        // One session: a small ring and a small buffer pool keep an idle worker cheap.
        io.ringEntries = 256
        io.receiveBufferCount = 64
        self.group = try EventLoopGroup(configuration: io)
        // Group-accessible: the relay may run as another user of the container's group.
        self.listenFD = try Socket.listenUnix(path: socketPath, backlog: 512, mode: 0o660)
    }

    /// Worker-side configuration until the relay's settings arrive: the relay decides when a
    /// session is idle, so the worker's own idle timer never fires.
    static func configuration() -> RelayConfiguration {
        var c = RelayConfiguration()
        c.workers = 1
        c.sessionIdleTimeoutMilliseconds = 10 * 86_400_000
        c.maxSessions = 1
        c.auditLog = .off
        c.adminPort = nil
        c.handshakesPerSecondPerAddress = 0
        c.authFailuresPerSecondPerAddress = 0
        return c
    }

    /// Starts the loop. `exit` is called (on the loop) when the worker should end.
    public func start(exit: @escaping @Sendable (String) -> Void) throws {
        let configuration = SessionWorker.configuration()
        let stats = RelayStats()
        let shared = RelayShared(configuration: configuration, audit: try AuditLog(destination: .off),
                                 control: RelayControl(workerStats: [stats]))
        let verifier = try TokenVerifier(configuration: AuthConfiguration())
        let directory = WorkerDirectory(handles: group.handles)
        let (logger, session, listenFD) = (self.logger, self.session, self.listenFD)
        try group.start { loop in
            let context = RelayContext(configuration: configuration, stats: stats, logger: logger, verifier: verifier,
                                       shared: shared, loop: loop, workers: directory, maxConnections: 4096)
            directory.slots[loop.index].context = context
            let worker = WorkerState(session: session, logger: logger, exit: exit)
            context.worker = worker
            loop.startAccepting(listenFD: listenFD) { _ in WorkerAttachHandler(context: context) }
            loop.schedule(afterMilliseconds: SessionWorker.controlDeadlineMilliseconds) { [weak worker] in
                if let worker, worker.control == nil { worker.exit("no control link from the relay") }
            }
        }
        logger.info("session worker listening", metadata: ["socket": "\(socketPath)", "session": "\(session)"])
    }

    public func shutdown() {
        group.shutdown()
        unlink(socketPath)
    }
}

/// The worker's own state, on its loop: the bridges the relay attached (by the relay's ids)
/// and whether a park is under way.
final class WorkerState {
    let session: SessionID
    let logger: Logger
    private let exitHandler: @Sendable (String) -> Void
    weak var control: WorkerControl?
    var bridges: [UInt64: Bridge] = [:]
    /// Set once the relay announced a park and no stream was in flight: an EOF on a bridge now
    /// means "hand it back", not "the bridge left".
    var parking = false
    private var exited = false

    init(session: SessionID, logger: Logger, exit: @escaping @Sendable (String) -> Void) {
        self.session = session
        self.logger = logger
        self.exitHandler = exit
    }

    func exit(_ reason: String) {
        guard !exited else { return }
        exited = true
        logger.notice("session worker exiting", metadata: ["reason": "\(reason)"])
        exitHandler(reason)
    }

    func bridgeAttached(_ id: UInt64, _ bridge: Bridge) {
        bridges[id] = bridge
        control?.send(.attached(attachID: id))
    }

    func bridgeDetached(_ id: UInt64) {
        bridges[id] = nil
    }

    func bridgeParked(_ id: UInt64, state: BridgeState?, reason: String) {
        bridges[id] = nil
        if let state {
            control?.send(.snapshot(attachID: id, state: state))
        } else {
            control?.send(.parkFailed(attachID: id, reason: reason))
        }
    }
}

extension RelayConfiguration {
    /// A worker takes the relay's limits and timeouts as they are.
    mutating func apply(_ s: WorkerSettings) {
        httpLimits = s.httpLimits
        webSocketMaxMessage = s.webSocketMaxMessage
        headerTimeoutMilliseconds = s.headerTimeoutMilliseconds
        idleTimeoutMilliseconds = s.idleTimeoutMilliseconds
        webSocketIdleTimeoutMilliseconds = s.webSocketIdleTimeoutMilliseconds
        streamIdleTimeoutMilliseconds = s.streamIdleTimeoutMilliseconds
        tunnelPingIntervalMilliseconds = s.tunnelPingIntervalMilliseconds
        legacyPingIntervalMilliseconds = s.legacyPingIntervalMilliseconds
        bridgeHandshakeTimeoutMilliseconds = s.bridgeHandshakeTimeoutMilliseconds
        tunnel = s.tunnel
    }

    /// What the relay sends its workers.
    var workerSettings: WorkerSettings {
        var s = WorkerSettings()
        s.httpLimits = httpLimits
        s.webSocketMaxMessage = webSocketMaxMessage
        s.headerTimeoutMilliseconds = headerTimeoutMilliseconds
        s.idleTimeoutMilliseconds = idleTimeoutMilliseconds
        s.webSocketIdleTimeoutMilliseconds = webSocketIdleTimeoutMilliseconds
        s.streamIdleTimeoutMilliseconds = streamIdleTimeoutMilliseconds
        s.tunnelPingIntervalMilliseconds = tunnelPingIntervalMilliseconds
        s.legacyPingIntervalMilliseconds = legacyPingIntervalMilliseconds
        s.bridgeHandshakeTimeoutMilliseconds = bridgeHandshakeTimeoutMilliseconds
        s.tunnel = tunnel
        return s
    }
}

/// A fresh connection from the relay: waits for its preamble, then becomes what it announces.
final class WorkerAttachHandler: ConnectionHandler {
    private let context: RelayContext
    private var buffer: [UInt8] = []

    init(context: RelayContext) {
        self.context = context
    }

    func connectionDidOpen(_ connection: Connection) {
        connection.setDeadline(milliseconds: 10_000)
    }

    func connection(_ connection: Connection, didRead bytes: UnsafeRawBufferPointer) {
        buffer.append(contentsOf: bytes)
        let parsed: (WorkerPreamble, consumed: Int)?
        do {
            parsed = try WorkerPreamble.parse(buffer[...])
        } catch {
            refuse(connection, "bad preamble: \(error)")
            return
        }
        guard let (preamble, consumed) = parsed else { return }
        let rest = Array(buffer[consumed...])
        buffer = []
        guard let worker = context.worker, preamble.session == worker.session.hex else {
            refuse(connection, "preamble for another session")
            return
        }
        connection.setDeadline(milliseconds: nil)
        let handler: any ConnectionHandler
        switch preamble {
        case .control(_, let settings):
            guard worker.control == nil else {
                refuse(connection, "a second control link")
                return
            }
            context.configuration.apply(settings)
            let control = WorkerControl(context: context, worker: worker)
            worker.control = control
            handler = control
        case .client(_, let tier, let peer):
            guard let session = workerSession(tier) else {
                refuse(connection, "no session")
                return
            }
            handler = HTTPServerConnection(context: context, trusted: TrustedCaller(
                identity: Identity(session: session.id), peer: peer.address, tls: peer.tls))
        case .bridge(_, let attachID, let tier, let peer, let state):
            guard let session = workerSession(tier) else {
                refuse(connection, "no session")
                return
            }
            switch state {
            case .tunnel(let snapshot):
                handler = TunnelConnection(context: context, session: session, peer: peer.address, protocolName: "tether.v1",
                                           attachID: attachID, resuming: snapshot)
            case .legacy(let bridgeID):
                handler = LegacyBridgeConnection(context: context, session: session, peer: peer.address,
                                                 protocolName: "legacy-json", attachID: attachID, bridgeID: bridgeID)
            }
        }
        connection.handler = handler
        handler.connectionDidOpen(connection)
        if !rest.isEmpty, connection.isOpen {
            rest.withUnsafeBytes { handler.connection(connection, didRead: $0) }
        }
    }

    /// The one session this worker serves, following the tier the relay reports.
    private func workerSession(_ tier: WorkerTier) -> Session? {
        guard let worker = context.worker else { return nil }
        let now = context.loop.nowMilliseconds
        var table = context.shared.tiers.withLock { $0 }
        if table.defaultProfile != tier.profile {
            table.defaultProfile = tier.profile
            let updated = table
            context.shared.tiers.withLock { $0 = updated }
            context.sessions.existing(worker.session)?.applyTiers(updated, now: now)
        }
        return context.openSession(for: Identity(session: worker.session), cause: "bridge")
    }

    private func refuse(_ connection: Connection, _ why: String) {
        context.logger.warning("session worker refused a connection", metadata: ["reason": "\(why)"])
        connection.close(.abort)
    }

    func connectionDidReadEOF(_ connection: Connection) {
        connection.close(.abort)
    }
}

/// The worker's end of the control link: settings, park, goaway and close commands in;
/// readiness, attached bridges and park results out. Its loss ends the worker.
final class WorkerControl: ConnectionHandler {
    private let context: RelayContext
    private let worker: WorkerState
    private var decoder = ControlMessageDecoder()
    private weak var connection: Connection?
    private var reportedTotals: [UInt64] = []

    /// How often counter totals go to the relay (when they changed): a scrape lags by at most this.
    static let counterIntervalMilliseconds: UInt64 = 250

    init(context: RelayContext, worker: WorkerState) {
        self.context = context
        self.worker = worker
    }

    func send(_ message: ControlMessage) {
        guard let connection, connection.isOpen else { return }
        connection.write(message.encoded())
    }

    func connectionDidOpen(_ connection: Connection) {
        self.connection = connection
        // The session exists from the start: its quotas apply to the first request.
        _ = context.openSession(for: Identity(session: worker.session), cause: "api")
        send(.ready(version: ControlMessage.protocolVersion))
        scheduleCounterReport()
    }

    private func scheduleCounterReport() {
        _ = context.loop.schedule(afterMilliseconds: WorkerControl.counterIntervalMilliseconds) { [weak self] in
            guard let self, let connection = self.connection, connection.isOpen else { return }
            self.reportCounters()
            self.scheduleCounterReport()
        }
    }

    /// Sends the totals if they changed (also right before a park, since the worker exits soon after).
    private func reportCounters() {
        let totals = context.stats.workerTotals
        guard totals != reportedTotals else { return }
        reportedTotals = totals
        send(.counters(totals))
    }

    func connection(_ connection: Connection, didRead bytes: UnsafeRawBufferPointer) {
        decoder.feed(bytes)
        do {
            while let message = try decoder.next() { handle(message) }
        } catch {
            context.logger.error("control link broken", metadata: ["error": "\(error)"])
            connection.close(.abort)
        }
    }

    private func handle(_ message: ControlMessage) {
        switch message {
        case .configure(let settings):
            context.configuration.apply(settings)
        case .park:
            let streams = context.sessions.existing(worker.session)?.activeStreams ?? 0
            if streams == 0 {
                worker.parking = true
                reportCounters()
                send(.parkReady)
            } else {
                send(.parkBusy(streams: UInt32(clamping: streams)))
            }
        case .goAway(let id):
            if id == 0 {
                for bridge in worker.bridges.values { bridge.goAway() }
            } else {
                worker.bridges[id]?.goAway()
            }
        case .close(let id, let code, let reason):
            worker.bridges[id]?.close(code: code, reason: reason, kind: .shutdown)
        case .ready, .attached, .parkReady, .parkBusy, .snapshot, .parkFailed, .counters:
            context.logger.warning("unexpected control message from the relay")
        }
    }

    func connectionDidReadEOF(_ connection: Connection) {
        connection.close(.graceful)
    }

    func connectionDidClose(_ connection: Connection, error: IOError?) {
        worker.exit(error.map { "control link lost: \($0)" } ?? "control link closed")
    }
}

extension WorkerPeer {
    var address: SocketAddress? { SocketAddress(host: host, port: Int(port)) }
}
#endif
