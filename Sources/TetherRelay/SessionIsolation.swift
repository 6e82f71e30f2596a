#if os(Linux)
import Glibc
import Logging
import Synchronization
import TetherAuth
import TetherIO
import TetherIsolation

/// The Docker isolation mode, process-wide: the settings, the container manager (engine calls
/// on background threads) and the `tether_isolation_*` figures.
final class IsolationRuntime: Sendable {
    let settings: IsolationSettings
    let manager: ContainerManager
    let counters: IsolationCounters
    /// The relay is stopping: control links closing now are not containers dying.
    let stopping = Atomic<Bool>(false)

    init(settings: IsolationSettings, instance: String, seccompProfile: String?) {
        self.settings = settings
        self.counters = IsolationCounters()
        self.manager = ContainerManager(settings: settings, instance: instance, counters: counters,
                                        seccompProfile: seccompProfile)
    }

    static func hostName() -> String {
        var buffer = [CChar](repeating: 0, count: 256)
        guard gethostname(&buffer, buffer.count - 1) == 0 else { return "tether" }
        let name = String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return name.isEmpty ? "tether" : name
    }
}

/// A Docker-isolated session's container, on the session's home loop: where it is in its life,
/// and the requests waiting for it.
final class SessionIsolation {
    enum Container {
        /// No container: new session, parked, or the last one is gone.
        case none
        /// The engine is creating and starting it (background thread).
        case starting(generation: UInt64)
        /// The worker answers; the parked bridges are being attached.
        case attaching(ControlLink)
        case running(ControlLink)
        /// Idle: the bridges are coming back from the worker, then it is removed.
        case parking(ControlLink)
        /// The last start failed; requests get 503 until `retryAt` (loop milliseconds).
        case failed(IsolationFailure, retryAt: UInt64)
    }

    let socketPath: String
    /// Where each client exchange connects (worked out once, not per request).
    let workerAddress: SocketAddress?
    var container = Container.none
    var generation: UInt64 = 0
    /// Client requests waiting for the worker (bounded by the session's stream quota).
    var waiters: [(Result<Void, IsolationFailure>) -> Void] = []
    /// Client exchanges attached to the worker now (they count as the session's streams).
    var exchanges = 0
    var consecutiveFailures = 0
    var nextAttachID: UInt64 = 1
    /// Bridges handed to the worker whose registration it has not confirmed yet.
    var pendingAttach: Set<UInt64> = []
    /// Bridges whose state is on its way back from the worker.
    var pendingPark: Set<UInt64> = []
    /// A request (or a bridge) needs the container again while it is being parked.
    var restartAfterPark = false
    /// When the session needed its container (for the cold-start histogram).
    var neededSinceNanos: UInt64 = 0
    var attachTimer: TimerID?
    var parkTimer: TimerID?

    init(socketPath: String) {
        self.socketPath = socketPath
        workerAddress = SocketAddress(unixPath: socketPath)
    }

    /// Whole seconds (at least 1) until `retryAt`, for Retry-After.
    static func retryAfterSeconds(until retryAt: UInt64, now: UInt64) -> Int {
        max(1, Int(((retryAt > now ? retryAt - now : 0) + 999) / 1000))
    }

    var control: ControlLink? {
        switch container {
        case .attaching(let link), .running(let link), .parking(let link): return link
        case .none, .starting, .failed: return nil
        }
    }

    var isRunning: Bool {
        if case .running = container { return true }
        return false
    }
}

/// The answer to "can this request go to the worker now?".
enum IsolationReadiness {
    case ready
    case wait
    case unavailable(IsolationFailure, retryAfterSeconds: Int)
}

/// The container state machine, on the session's home loop. Engine calls run on background
/// threads (ContainerManager) and post their results back here.
extension RelayContext {
    var isolatedSessions: Bool { isolation != nil }

    func makeSessionIsolation(_ id: SessionID) -> SessionIsolation? {
        guard let isolation else { return nil }
        return SessionIsolation(socketPath: isolation.settings.socketPath(id.hex))
    }

    /// Where a request stands; starts the container if it is needed and allowed.
    func isolationReadiness(_ session: Session) -> IsolationReadiness {
        guard let iso = session.isolation else { return .unavailable(IsolationFailure(.setupFailed, "not isolated"), retryAfterSeconds: 1) }
        ensureContainer(session)
        switch iso.container {
        case .running where !iso.pendingAttach.isEmpty && !hasBridgeWithWorker(session):
            // The session's only bridges are on their way to the worker: a request now would
            // find none there.
            return .wait
        case .running:
            return .ready
        case .failed(let failure, let retryAt):
            return .unavailable(failure, retryAfterSeconds: SessionIsolation.retryAfterSeconds(until: retryAt, now: loop.nowMilliseconds))
        case .none, .starting, .attaching, .parking:
            return .wait
        }
    }

    /// Starts the session's container unless it runs, is on its way, or failed too recently.
    func ensureContainer(_ session: Session) {
        guard let iso = session.isolation, sessions.existing(session.id) === session else { return }
        switch iso.container {
        case .none:
            startContainer(session, iso)
        case .failed(_, let retryAt) where loop.nowMilliseconds >= retryAt:
            startContainer(session, iso)
        case .parking:
            iso.restartAfterPark = true
        case .failed, .starting, .attaching, .running:
            break
        }
    }

    private func startContainer(_ session: Session, _ iso: SessionIsolation) {
        guard let isolation else { return }
        iso.generation &+= 1
        let generation = iso.generation
        iso.container = .starting(generation: generation)
        iso.neededSinceNanos = monotonicNanoseconds()
        let id = session.id
        let handle = workers.handles[loop.index]
        let directory = workers
        let logger = tunnelLogger
        isolation.manager.start(session: id.hex) { result in
            let posted = handle.execute { loop in
                directory.context(of: loop.index)?.containerStarted(id, generation: generation, result)
            }
            if !posted, case .success(let started) = result {
                close(started.controlFD)
                logger.debug("container started while the relay stops", metadata: ["session": "\(id)"])
            }
        }
    }

    private func containerStarted(_ id: SessionID, generation: UInt64, _ result: Result<StartedContainer, IsolationFailure>) {
        guard let isolation else { return }
        guard let session = sessions.existing(id), let iso = session.isolation,
              case .starting(let expected) = iso.container, expected == generation else {
            // The session went away while its container started: nothing needs it.
            if case .success(let started) = result {
                close(started.controlFD)
                isolation.manager.remove(session: id.hex)
            }
            return
        }
        switch result {
        case .success(let started):
            let link = ControlLink(context: self, session: session)
            iso.container = .attaching(link)
            loop.adopt(fileDescriptor: started.controlFD, handler: link)
            tunnelLogger.debug("session container started", metadata: [
                "session": "\(id)", "container": "\(started.containerID.prefix(12))",
                "ms": "\(started.startNanoseconds / 1_000_000)"])
        case .failure(let failure):
            containerFailed(session, iso, failure)
        }
    }

    private func containerFailed(_ session: Session, _ iso: SessionIsolation, _ failure: IsolationFailure) {
        guard let isolation else { return }
        iso.consecutiveFailures += 1
        let exponent = min(iso.consecutiveFailures - 1, 20)
        let backoff = min(isolation.settings.retryMaxMilliseconds,
                          isolation.settings.retryInitialMilliseconds &* (UInt64(1) << UInt64(exponent)))
        iso.container = .failed(failure, retryAt: loop.nowMilliseconds &+ backoff)
        logger.warning("session container unavailable", metadata: [
            "session": "\(session.id)", "reason": "\(failure.reason.label)", "detail": "\(failure.message)",
            "retry_ms": "\(backoff)"])
        audit.record("isolation_failed", ["session": .string("\(session.id)"), "reason": .string(failure.reason.label),
                                          "message": .string(failure.message)])
        releaseWaiters(iso, .failure(failure))
    }

    private func releaseWaiters(_ iso: SessionIsolation, _ outcome: Result<Void, IsolationFailure>) {
        let waiting = iso.waiters
        iso.waiters = []
        for waiter in waiting { waiter(outcome) }
    }

    // MARK: control link events

    /// The worker took its settings: hand it the session's bridges.
    func workerReady(_ session: Session, _ link: ControlLink) {
        guard let iso = session.isolation, case .attaching(let current) = iso.container, current === link else { return }
        for case let bridge as IsolatedBridge in session.bridges {
            attachBridge(bridge, iso)
        }
        if iso.pendingAttach.isEmpty {
            becomeRunning(session, iso, link)
        } else {
            // A bridge that never confirms must not hold the session's requests forever.
            iso.attachTimer = loop.schedule(afterMilliseconds: 5_000) { [weak self, weak session] in
                guard let self, let session, let iso = session.isolation, case .attaching(let link) = iso.container else { return }
                iso.attachTimer = nil
                iso.pendingAttach = []
                self.becomeRunning(session, iso, link)
            }
        }
    }

    /// A bridge can be handed to the worker (it just greeted, or the worker just got ready).
    func bridgeReadyForWorker(_ bridge: IsolatedBridge, _ session: Session) {
        guard let iso = session.isolation else { return }
        switch iso.container {
        case .attaching, .running:
            attachBridge(bridge, iso)
        case .none, .failed, .parking, .starting:
            ensureContainer(session)
        }
    }

    private func attachBridge(_ bridge: IsolatedBridge, _ iso: SessionIsolation) {
        let id = iso.nextAttachID
        guard bridge.attach(socketPath: iso.socketPath, attachID: id) else { return }
        iso.nextAttachID &+= 1
        iso.pendingAttach.insert(id)
        if case .running = iso.container, iso.attachTimer == nil {
            // Requests wait for the confirmation; never for long.
            iso.attachTimer = loop.schedule(afterMilliseconds: 5_000) { [weak self, weak iso] in
                guard let self, let iso else { return }
                iso.attachTimer = nil
                iso.pendingAttach = []
                if case .running = iso.container { self.releaseWaiters(iso, .success(())) }
            }
        }
    }

    private func hasBridgeWithWorker(_ session: Session) -> Bool {
        session.bridges.contains { ($0 as? IsolatedBridge)?.isWithWorker == true }
    }

    func bridgeAttached(_ session: Session, _ attachID: UInt64) {
        guard let iso = session.isolation else { return }
        isolation?.counters.resumes.add(1, ordering: .relaxed)
        attachSettled(session, iso, attachID)
    }

    /// A bridge could not be handed over (its link failed): it stays parked in the relay.
    func bridgeAttachFailed(_ session: Session, _ attachID: UInt64) {
        guard let iso = session.isolation else { return }
        isolation?.counters.bridgeHandoverFailures.add(1, ordering: .relaxed)
        attachSettled(session, iso, attachID)
    }

    private func attachSettled(_ session: Session, _ iso: SessionIsolation, _ attachID: UInt64) {
        guard iso.pendingAttach.remove(attachID) != nil else { return }
        switch iso.container {
        case .attaching(let link) where iso.pendingAttach.isEmpty:
            becomeRunning(session, iso, link)
        case .running where !iso.waiters.isEmpty && (iso.pendingAttach.isEmpty || hasBridgeWithWorker(session)):
            releaseWaiters(iso, .success(()))
        default:
            break
        }
    }

    private func becomeRunning(_ session: Session, _ iso: SessionIsolation, _ link: ControlLink) {
        if let timer = iso.attachTimer { loop.cancel(timer) }
        iso.attachTimer = nil
        iso.pendingAttach = []
        iso.container = .running(link)
        iso.consecutiveFailures = 0
        isolation?.counters.observeColdStart(nanoseconds: monotonicNanoseconds() &- iso.neededSinceNanos)
        audit.record("isolation_started", ["session": .string("\(session.id)"), "bridges": .int(session.bridges.count),
                                           "ms": .int(Int((monotonicNanoseconds() &- iso.neededSinceNanos) / 1_000_000))])
        releaseWaiters(iso, .success(()))
        // Stopped (proxy stop, idle) while it was starting, and nobody waits: park it again.
        if session.state == .parked && iso.exchanges == 0 { parkContainer(session) }
    }

    // MARK: parking

    /// The session is parked (idle, or proxy stop): take the bridges back and remove the
    /// container. Requests that arrive meanwhile wait and start a new one.
    func parkContainer(_ session: Session) {
        guard let iso = session.isolation else { return }
        switch iso.container {
        case .running(let link):
            iso.container = .parking(link)
            iso.restartAfterPark = false
            link.send(.park)
            // A worker that does not answer is removed, and its bridges with it.
            iso.parkTimer = loop.schedule(afterMilliseconds: 10_000) { [weak self, weak session] in
                guard let self, let session, let iso = session.isolation, case .parking = iso.container else { return }
                iso.parkTimer = nil
                self.logger.warning("session container did not park in time", metadata: ["session": "\(session.id)"])
                for case let bridge as IsolatedBridge in session.bridges where bridge.isOutsideRelay {
                    bridge.close(code: 1001, reason: "session parked; reconnect", kind: .shutdown)
                }
                self.finishPark(session, iso)
            }
        case .failed:
            iso.container = .none
        case .none, .starting, .attaching, .parking:
            break
        }
    }

    func workerParkReady(_ session: Session) {
        guard let iso = session.isolation, case .parking = iso.container else { return }
        for case let bridge as IsolatedBridge in session.bridges where bridge.isWithWorker {
            if bridge.beginPark() { iso.pendingPark.insert(bridge.attachID) }
        }
        if iso.pendingPark.isEmpty { finishPark(session, iso) }
    }

    /// Streams still in flight in the worker: the park waits for the next idle check.
    func workerParkBusy(_ session: Session) {
        guard let iso = session.isolation, case .parking(let link) = iso.container else { return }
        if let timer = iso.parkTimer { loop.cancel(timer) }
        iso.parkTimer = nil
        iso.container = .running(link)
        // Active again; the idle timer comes back with it.
        activate(session, now: loop.nowMilliseconds, cause: "busy")
    }

    func workerSnapshot(_ session: Session, _ attachID: UInt64, _ state: BridgeState?) {
        for case let bridge as IsolatedBridge in session.bridges where bridge.attachID == attachID {
            bridge.parkStateArrived(state)
        }
    }

    /// One bridge is back in the relay (or closed): when all are, the container goes.
    func bridgeParkEnded(_ session: Session, _ attachID: UInt64) {
        guard let iso = session.isolation else { return }
        iso.pendingPark.remove(attachID)
        if iso.pendingPark.isEmpty, case .parking = iso.container { finishPark(session, iso) }
    }

    private func finishPark(_ session: Session, _ iso: SessionIsolation) {
        if let timer = iso.parkTimer { loop.cancel(timer) }
        iso.parkTimer = nil
        iso.pendingPark = []
        let link = iso.control
        iso.container = .none
        link?.close()
        isolation?.counters.parks.add(1, ordering: .relaxed)
        isolation?.manager.remove(session: session.id.hex)
        audit.record("isolation_parked", ["session": .string("\(session.id)"), "bridges": .int(session.bridges.count)])
        if iso.restartAfterPark || !iso.waiters.isEmpty {
            iso.restartAfterPark = false
            ensureContainer(session)
        }
    }

    // MARK: loss and removal

    /// The control link is gone: the worker exited (killed, out of memory, engine stopped) or
    /// the relay closed it. Bridges with the worker lose their tunnel and reconnect.
    func controlLinkClosed(_ session: Session, _ link: ControlLink, reason: String) {
        guard let iso = session.isolation, iso.control === link,
              isolation?.stopping.load(ordering: .relaxed) == false else { return }
        switch iso.container {
        case .parking:
            for case let bridge as IsolatedBridge in session.bridges where bridge.isOutsideRelay {
                bridge.close(code: 1001, reason: "session parked; reconnect", kind: .shutdown)
            }
            finishPark(session, iso)
        case .attaching, .running:
            if let timer = iso.attachTimer { loop.cancel(timer) }
            iso.attachTimer = nil
            iso.pendingAttach = []
            iso.container = .none
            isolation?.counters.fail(.containerDied)
            logger.warning("session container lost", metadata: ["session": "\(session.id)", "reason": "\(reason)"])
            audit.record("isolation_lost", ["session": .string("\(session.id)"), "reason": .string(reason)])
            isolation?.manager.remove(session: session.id.hex)
            releaseWaiters(iso, .failure(IsolationFailure(.containerDied, "the session's container stopped (\(reason))")))
            // Parked bridges (not yet handed over) keep the session alive: start again.
            if session.bridges.contains(where: { ($0 as? IsolatedBridge)?.isParkedInRelay == true }) {
                ensureContainer(session)
            }
        case .none, .starting, .failed:
            break
        }
    }

    /// The session is removed (idle without bridges, proxy stop, kick): so is its container.
    func removeIsolation(_ session: Session) {
        guard let iso = session.isolation else { return }
        if let timer = iso.attachTimer { loop.cancel(timer) }
        if let timer = iso.parkTimer { loop.cancel(timer) }
        iso.attachTimer = nil
        iso.parkTimer = nil
        let link = iso.control
        let hadContainer: Bool
        switch iso.container {
        case .none, .failed: hadContainer = false
        case .starting, .attaching, .running, .parking: hadContainer = true
        }
        iso.container = .none
        iso.generation &+= 1  // a start in flight finds nobody and removes its container
        link?.close()
        if hadContainer { isolation?.manager.remove(session: session.id.hex) }
        releaseWaiters(iso, .failure(IsolationFailure(.containerDied, "the session was removed")))
    }

    /// A reload: running workers take the new limits and timeouts.
    func reconfigureWorkers() {
        let settings = configuration.workerSettings
        for session in sessions.sessions.values {
            session.isolation?.control?.send(.configure(settings))
        }
    }

    /// The worker-side view of the caller's tier.
    func workerTier(_ session: Session) -> WorkerTier {
        WorkerTier(name: session.tierName, profile: session.profile)
    }

}
#endif
