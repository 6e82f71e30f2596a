#if os(Linux)
import TetherAuth
import TetherIO
import TetherIsolation
import TetherTunnel
import TetherWebSocket

/// A bridge of a Docker-isolated session, on the session's home loop. The relay keeps its TCP
/// connection (and TLS) for good; its protocol lives in one of two places:
///
/// * **parked**: in the relay (`ParkedBridgeState`), while no container holds the session, or
///   for a new bridge until its HELLO;
/// * **with the worker**: its raw WebSocket bytes spliced both ways to the session's worker
///   over a unix connection announced by a `WorkerPreamble` carrying the tunnel's state.
///
/// Moving between the two happens at message boundaries only: towards the worker, bytes after
/// the last complete message go along raw; back from it, the relay stops feeding the worker at
/// a boundary, half-closes, and takes the state the worker reports on its control link once
/// the worker's last bytes are through. Backpressure: each side's reading pauses while the
/// other side's queue is full.
final class IsolatedBridge: ConnectionHandler, Bridge {
    enum Phase {
        case parked
        /// The unix connection to the worker is being opened; bridge input waits.
        case attaching
        case withWorker
        /// Bridge input stopped at a boundary; waiting for the worker's state and EOF.
        case parking
        case closed
    }

    private unowned let context: RelayContext
    private let session: Session
    private let peer: SocketAddress?
    private let tls: Bool
    let protocolName: String
    private let legacy: Bool
    private(set) var phase = Phase.parked
    private var parked: ParkedBridgeState?
    private weak var connection: Connection?
    private var link: Connection?
    private var registered = false
    private(set) var attachID: UInt64 = 0
    /// Bridge → worker: boundaries of what went through, to stop at one when parking.
    private var scanner: WebSocketFrameScanner
    private var stopAtBoundary = false
    /// Bridge bytes after the park boundary (they go to the parked state).
    private var held: [UInt8] = []
    private var parkState: BridgeState?
    private var parkStateArrived = false
    private var linkFinished = false
    private var pendingPreamble: [UInt8] = []
    private var pingTimer: TimerID?
    private var pingsUnanswered = 0
    private var pingCounter: UInt64 = 0
    private var draining = false
    private var closeReason = "connection closed"
    private var closeKind: BridgeDisconnectReason?

    init(context: RelayContext, session: Session, peer: SocketAddress?, tls: Bool, legacy: Bool) {
        self.context = context
        self.session = session
        self.peer = peer
        self.tls = tls
        self.legacy = legacy
        self.protocolName = legacy ? "legacy-json" : TunnelProtocol.subprotocol
        self.scanner = WebSocketFrameScanner(maxMessageSize: IsolatedBridge.maxMessage(context))
    }

    private static func maxMessage(_ context: RelayContext) -> Int {
        max(context.configuration.webSocketMaxMessage, context.configuration.tunnel.maxMessageSize)
    }

    var isWithWorker: Bool { if case .withWorker = phase { return true } else { return false } }
    /// With the worker, or on the way back from it.
    var isOutsideRelay: Bool {
        switch phase {
        case .withWorker, .parking, .attaching: return true
        case .parked, .closed: return false
        }
    }
    var isParkedInRelay: Bool { if case .parked = phase { return true } else { return false } }

    // MARK: Bridge (streams go to the worker, never through here)

    var canOpenStream: Bool { false }
    var activeStreams: Int { 0 }
    var protocolKind: BridgeProtocol { legacy ? .legacy : .tunnel }
    var remoteAddress: SocketAddress? { peer }
    func openStream(_ head: TunnelRequestHead, endStream: Bool, client: StreamClient) -> StreamID? { nil }
    func sendBody(_ stream: StreamID, _ bytes: UnsafeRawBufferPointer, endStream: Bool) -> Int { 0 }
    func consumed(_ stream: StreamID, bytes: Int) {}
    func cancel(_ stream: StreamID, code: TunnelErrorCode) {}

    func goAway() {
        guard !draining else { return }
        draining = true
        switch phase {
        case .parked:
            parked?.goAway()
            flushParked()
        case .withWorker:
            session.isolation?.control?.send(.goAway(attachID: attachID))
        case .attaching, .parking, .closed:
            break
        }
    }

    func close(code: UInt16, reason: String, kind: BridgeDisconnectReason) {
        if closeKind == nil { closeKind = kind }
        if closeReason == "connection closed" { closeReason = reason }
        switch phase {
        case .parked:
            parked?.close(code: code, reason: reason)
            flushParked()
            connection?.close(.graceful)
        case .withWorker:
            // The worker owns the WebSocket: it sends the close frame; its EOF ends us.
            session.isolation?.control?.send(.close(attachID: attachID, code: code, reason: reason))
            context.loop.schedule(afterMilliseconds: 2_000) { [weak self] in self?.connection?.close(.abort) }
        case .attaching, .parking:
            connection?.close(.abort)
        case .closed:
            break
        }
    }

    // MARK: the bridge's connection

    func connectionDidOpen(_ connection: Connection) {
        self.connection = connection
        context.stats.tunnelsOpened.addFromOwner()
        let maxMessage = IsolatedBridge.maxMessage(context)
        if legacy {
            context.stats.legacyBridgesOpened.addFromOwner()
            parked = ParkedBridgeState(legacyBridgeID: LegacyBridgeConnection.uuid(), maxMessage: maxMessage)
            flushParked()
            register()
        } else {
            parked = ParkedBridgeState(tunnel: context.tunnelSettings(for: session.profile), maxMessage: maxMessage)
            connection.setDeadline(milliseconds: context.configuration.bridgeHandshakeTimeoutMilliseconds)
            flushParked()
        }
        schedulePing()
    }

    func connection(_ connection: Connection, didRead bytes: UnsafeRawBufferPointer) {
        switch phase {
        case .parked:
            guard let parked else { return }
            if registered { connection.setDeadline(milliseconds: idleTimeout) }
            pingsUnanswered = 0
            handle(parked.receive(bytes))
            flushParked()
        case .withWorker:
            forward(bytes, connection)
        case .parking where stopAtBoundary:
            forward(bytes, connection)
        case .attaching, .parking:
            held.append(contentsOf: bytes)
        case .closed:
            break
        }
    }

    private var idleTimeout: UInt64 { context.configuration.webSocketIdleTimeoutMilliseconds }

    private func handle(_ events: [ParkedBridgeState.Event]) {
        for event in events {
            switch event {
            case .hello:
                guard !registered else { continue }
                guard context.sessions.existing(session.id) === session else {
                    fail(1013, "session ended while connecting; reconnect", .shutdown)
                    return
                }
                if session.bridges.count >= session.profile.maxBridges {
                    context.recordQuotaRejection(.bridges, session: session.id, peer: peer)
                    fail(4008, "TOO_MANY_BRIDGES: this session already has \(session.profile.maxBridges) bridges connected",
                         .closedByBridge)
                    return
                }
                register()
            case .pong:
                pingsUnanswered = 0
            case .goAway:
                draining = true
            case .fail(let code, let reason, let kind):
                if kind == .protocolError {
                    if parked?.failedInWebSocket == true {
                        context.stats.webSocketProtocolErrors.addFromOwner()
                    } else {
                        context.stats.tunnelProtocolErrors.addFromOwner()
                    }
                }
                fail(code, reason, kind)
                return
            case .peerClosed:
                if closeKind == nil { closeKind = .closedByBridge }
                closeReason = "closed by bridge"
            }
        }
    }

    private func register() {
        registered = true
        session.add(self)
        context.activate(session, now: context.loop.nowMilliseconds, cause: "bridge")
        connection?.setDeadline(milliseconds: idleTimeout)
        context.bridgeConnected(session, peer: peer, protocolName: protocolName)
        if context.draining { goAway() }
        context.bridgeReadyForWorker(self, session)
    }

    private func fail(_ code: UInt16, _ reason: String, _ kind: BridgeDisconnectReason) {
        if closeKind == nil { closeKind = kind }
        if closeReason == "connection closed" { closeReason = reason }
        parked?.close(code: code, reason: reason)
        flushParked()
        connection?.close(.graceful)
    }

    private func flushParked() {
        guard let parked, let connection, connection.isOpen else { return }
        if let bytes = parked.takeOutbound() { connection.write(bytes) }
        if parked.shouldCloseTransport { connection.close(.graceful) }
    }

    func connectionWritable(_ connection: Connection) {
        if let link, link.isOpen { link.resumeReading() }
        if case .parked = phase { connection.resumeReading() }
    }

    func connectionDidReadEOF(_ connection: Connection) {
        if closeKind == nil { closeKind = .closedByBridge }
        link?.close(.graceful)
        connection.close(.graceful)
    }

    func connectionDeadlineExpired(_ connection: Connection) {
        context.stats.deadlineExpirations.addFromOwner()
        if registered {
            fail(1001, "idle timeout", .idleTimeout)
        } else {
            fail(1008, "HELLO not received in time", .idleTimeout)
        }
    }

    func connectionDidClose(_ connection: Connection, error: IOError?) {
        let previous = phase
        phase = .closed
        if let pingTimer { context.loop.cancel(pingTimer) }
        pingTimer = nil
        link?.close(.abort)
        link = nil
        if closeKind == nil { closeKind = error == nil ? .closedByBridge : .connectionError }
        if registered {
            registered = false
            session.remove(self)
            context.bridgeDisconnected(session, peer: peer, protocolName: protocolName,
                                       reason: error.map { "\($0)" } ?? closeReason, kind: closeKind ?? .closedByBridge)
        }
        context.stats.tunnelsClosed.addFromOwner()
        switch previous {
        case .attaching: context.bridgeAttachFailed(session, attachID)
        case .parking: context.bridgeParkEnded(session, attachID)
        case .parked, .withWorker, .closed: break
        }
    }

    // MARK: to the worker

    /// Hands the bridge to the worker listening at `socketPath`. False if it cannot move now
    /// (no HELLO yet, closing, already there).
    func attach(socketPath: String, attachID: UInt64) -> Bool {
        guard case .parked = phase, registered, let parked, let connection, connection.isOpen,
              let address = SocketAddress(unixPath: socketPath) else { return false }
        flushParked()
        guard let (state, raw) = parked.handOver() else { return false }
        self.attachID = attachID
        let peerInfo = WorkerPeer(host: peer?.host ?? "", port: peer?.port ?? 0, tls: tls)
        pendingPreamble = WorkerPreamble.bridge(session: session.id.hex, attachID: attachID, tier: context.workerTier(session),
                                                peer: peerInfo, state: state).encoded()
        scanner = WebSocketFrameScanner(maxMessageSize: IsolatedBridge.maxMessage(context))
        held = raw
        phase = .attaching
        if let pingTimer { context.loop.cancel(pingTimer) }
        pingTimer = nil
        connection.pauseReading()
        connection.setDeadline(milliseconds: nil)
        guard let opening = context.loop.connect(to: address, handler: BridgeLink(owner: self)) else {
            returnToRelay()
            return false
        }
        link = opening
        return true
    }

    /// The hand-over did not happen: the relay keeps serving the bridge.
    private func returnToRelay() {
        phase = .parked
        pendingPreamble = []
        held = []  // the parked state still holds its raw tail; later input waits in the connection
        connection?.setDeadline(milliseconds: idleTimeout)
        connection?.resumeReading()
        schedulePing()
    }

    fileprivate func linkOpened(_ link: Connection) {
        guard case .attaching = phase, let connection else {
            link.close(.abort)
            return
        }
        link.write(pendingPreamble)
        pendingPreamble = []
        phase = .withWorker
        parked = nil
        let raw = held
        held = []
        if !raw.isEmpty { forward(raw) }
        connection.resumeReading()
    }

    /// Bridge → worker, raw. While parking, only up to the next message boundary.
    private func forward(_ bytes: UnsafeRawBufferPointer, _ connection: Connection) {
        guard let link, link.isOpen else { return }
        let scanned: Int
        let boundary: Int?
        do {
            (scanned, boundary) = try scanner.scan(bytes, stopAtFirstBoundary: stopAtBoundary)
        } catch {
            // Too big for any message we accept: the worker would refuse it too.
            fail(1009, "message too big", .protocolError)
            return
        }
        if stopAtBoundary, boundary != nil {
            if scanned > 0 { link.write(UnsafeRawBufferPointer(rebasing: bytes[0..<scanned])) }
            held.append(contentsOf: UnsafeRawBufferPointer(rebasing: bytes[scanned...]))
            stopFeedingWorker(link, connection)
            return
        }
        link.write(bytes)
        if !link.isWritable { connection.pauseReading() }
    }

    private func forward(_ bytes: [UInt8]) {
        guard let connection else { return }
        bytes.withUnsafeBytes { forward($0, connection) }
    }

    fileprivate func linkRead(_ bytes: UnsafeRawBufferPointer, _ link: Connection) {
        guard let connection, connection.isOpen else { return }
        connection.write(bytes)
        if !connection.isWritable { link.pauseReading() }
    }

    fileprivate func linkWritable() {
        guard let connection else { return }
        switch phase {
        case .withWorker: connection.resumeReading()
        case .parking where stopAtBoundary: connection.resumeReading()
        default: break
        }
    }

    fileprivate func linkEOF(_ link: Connection) {
        switch phase {
        case .parking:
            linkFinished = true
            link.close(.abort)
            finishParkIfComplete()
        case .withWorker:
            // The worker ended the WebSocket (its close frame went out just before).
            if closeReason == "connection closed" { closeReason = "closed by the session worker" }
            if closeKind == nil { closeKind = .shutdown }
            link.close(.abort)
            connection?.close(.graceful)
        case .parked, .attaching, .closed:
            link.close(.abort)
        }
    }

    fileprivate func linkClosed(_ link: Connection, error: IOError?) {
        guard self.link === link else { return }
        self.link = nil
        switch phase {
        case .attaching:
            // The worker is not reachable: stay parked in the relay.
            context.tunnelLogger.notice("bridge not handed to the session worker", metadata: [
                "session": "\(session.id)", "error": "\(error.map { "\($0)" } ?? "closed")"])
            returnToRelay()
            context.bridgeAttachFailed(session, attachID)
        case .withWorker:
            if closeKind == nil { closeKind = .shutdown }
            connection?.close(.graceful)
        case .parking:
            linkFinished = true
            finishParkIfComplete()
        case .parked, .closed:
            break
        }
    }

    // MARK: back from the worker

    /// The worker is ready to hand the bridge back: stop feeding it at the next boundary.
    func beginPark() -> Bool {
        guard case .withWorker = phase, let link, let connection else { return false }
        phase = .parking
        parkState = nil
        parkStateArrived = false
        linkFinished = false
        if scanner.isAtMessageBoundary {
            stopFeedingWorker(link, connection)
        } else {
            stopAtBoundary = true
            connection.resumeReading()
        }
        return true
    }

    private func stopFeedingWorker(_ link: Connection, _ connection: Connection) {
        stopAtBoundary = false
        connection.pauseReading()
        link.finishWriting()
    }

    /// The worker's report (nil: it could not hand the bridge back).
    func parkStateArrived(_ state: BridgeState?) {
        guard case .parking = phase else { return }
        parkState = state
        parkStateArrived = true
        finishParkIfComplete()
    }

    private func finishParkIfComplete() {
        guard case .parking = phase, parkStateArrived, linkFinished else { return }
        link?.close(.abort)
        link = nil
        guard let connection, connection.isOpen else { return }
        guard let state = parkState else {
            // The worker's last frame is out, so a close frame can follow it.
            context.isolation?.counters.bridgeHandoverFailures.add(1, ordering: .relaxed)
            if closeKind == nil { closeKind = .shutdown }
            closeReason = "session parked; reconnect"
            var socket = WebSocketConnection(role: .server)
            socket.close(code: .goingAway, reason: closeReason)
            connection.write(socket.takeOutbound())
            connection.close(.graceful)
            context.bridgeParkEnded(session, attachID)
            return
        }
        let restored = ParkedBridgeState(restoring: state, maxMessage: IsolatedBridge.maxMessage(context))
        parked = restored
        phase = .parked
        let rest = held
        held = []
        if !rest.isEmpty {
            let events = rest.withUnsafeBytes { restored.receive($0) }
            handle(events)
        }
        flushParked()
        connection.setDeadline(milliseconds: idleTimeout)
        connection.resumeReading()
        schedulePing()
        context.bridgeParkEnded(session, attachID)
    }

    // MARK: keepalive while parked

    private func schedulePing() {
        let interval = legacy ? context.configuration.legacyPingIntervalMilliseconds
                              : context.configuration.tunnelPingIntervalMilliseconds
        guard interval > 0, pingTimer == nil else { return }
        pingTimer = context.loop.schedule(afterMilliseconds: interval) { [weak self] in
            self?.pingTick()
        }
    }

    private func pingTick() {
        pingTimer = nil
        guard case .parked = phase, let parked, let connection, connection.isOpen else { return }
        if pingsUnanswered >= 2 {
            context.stats.tunnelPingTimeouts.addFromOwner()
            fail(1001, "ping timeout", .pingTimeout)
            return
        }
        if parked.greeted || parked.isLegacy {
            pingsUnanswered += 1
            pingCounter &+= 1
            parked.ping(pingCounter)
            flushParked()
        }
        schedulePing()
    }
}

/// The unix connection carrying one bridge's bytes to and from the worker.
private final class BridgeLink: ConnectionHandler {
    weak var owner: IsolatedBridge?

    init(owner: IsolatedBridge) {
        self.owner = owner
    }

    func connectionDidOpen(_ connection: Connection) {
        guard let owner else { return connection.close(.abort) }
        owner.linkOpened(connection)
    }

    func connection(_ connection: Connection, didRead bytes: UnsafeRawBufferPointer) {
        owner?.linkRead(bytes, connection)
    }

    func connectionWritable(_ connection: Connection) {
        owner?.linkWritable()
    }

    func connectionDidReadEOF(_ connection: Connection) {
        guard let owner else { return connection.close(.abort) }
        owner.linkEOF(connection)
    }

    func connectionDidClose(_ connection: Connection, error: IOError?) {
        owner?.linkClosed(connection, error: error)
    }
}
#endif
