#if os(Linux)
import Glibc
import Synchronization
import TetherIO

/// A session's container, started and answering: the control link is connected (blocking
/// connect on the starting thread; hand the descriptor to the session's loop).
public struct StartedContainer: Sendable {
    public let session: String
    public let containerID: String
    public let socketPath: String
    public let controlFD: Int32
    /// Create → worker socket answering.
    public let startNanoseconds: UInt64
}

/// Container lifecycle through the Docker Engine API, on background threads (never a loop):
/// create, start, wait for the worker's socket; remove; list and reap at start-up.
///
/// Operations of one session run one after another (a start never races the removal of the
/// same session's previous container: same name, same directory). Starts are capped
/// (`maxConcurrentStarts`; more wait in a bounded queue) and so are containers
/// (`maxContainers`), so a reconnect storm cannot fork-bomb the engine.
public final class ContainerManager: Sendable {
    public let settings: IsolationSettings
    /// The `tether.relay` label of every container this relay creates.
    public let instance: String
    public let client: DockerClient
    public let counters: IsolationCounters
    /// The worker command line after the binary (log level etc.).
    private let workerArguments: [String]
    private let seccompProfile: String?
    private let state = Mutex(State())

    private enum Operation {
        case start(@Sendable (Result<StartedContainer, IsolationFailure>) -> Void)
        case remove(@Sendable () -> Void)
    }

    private struct Chain {
        var operations: [Operation] = []
        var busy = false
        var queuedForStart = false
    }

    private struct State {
        var chains: [String: Chain] = [:]
        var startsRunning = 0
        /// Sessions whose next operation is a start waiting for a free slot, in arrival order.
        var waitingStarts: [String] = []
        var waitingHead = 0
        /// Sessions holding one of `maxContainers` (starting, running, or being removed).
        var reserved: Set<String> = []
        var containerIDs: [String: String] = [:]
        var closed = false
    }

    public init(settings: IsolationSettings, instance: String, counters: IsolationCounters, seccompProfile: String? = nil) {
        self.settings = settings
        self.instance = instance
        self.counters = counters
        self.client = DockerClient(socketPath: settings.dockerSocket, timeoutSeconds: settings.engineTimeoutSeconds)
        self.workerArguments = ["--log-level", settings.workerLogLevel]
        self.seccompProfile = seccompProfile
    }

    public static let sessionLabel = "tether.session"
    public static let relayLabel = "tether.relay"

    // MARK: operations

    /// Creates and starts the session's container (after any earlier operation on the same
    /// session). `completion` runs on a background thread.
    public func start(session: String, completion: @escaping @Sendable (Result<StartedContainer, IsolationFailure>) -> Void) {
        enqueue(session, .start(completion))
    }

    /// Removes the session's container and directory (a container that is already gone is
    /// fine). `completion` runs on a background thread.
    public func remove(session: String, completion: @escaping @Sendable () -> Void = {}) {
        enqueue(session, .remove(completion))
    }

    private func enqueue(_ session: String, _ operation: Operation) {
        let (run, refused) = state.withLock { state -> ([(String, Operation)], [Operation]) in
            if state.closed { return ([], [operation]) }
            state.chains[session, default: Chain()].operations.append(operation)
            return schedule(&state, session)
        }
        for operation in refused { refuse(operation, IsolationFailure(.engineUnreachable, "the relay is shutting down")) }
        launch(run)
    }

    /// Under the lock: what can run now for `session` (at most its head operation), plus the
    /// operations refused because the start queue is full.
    private func schedule(_ state: inout State, _ session: String) -> ([(String, Operation)], [Operation]) {
        guard var chain = state.chains[session], !chain.busy, let head = chain.operations.first else { return ([], []) }
        switch head {
        case .remove:
            chain.busy = true
            state.chains[session] = chain
            return ([(session, head)], [])
        case .start:
            if state.startsRunning < settings.maxConcurrentStarts && !chain.queuedForStart {
                chain.busy = true
                state.chains[session] = chain
                state.startsRunning += 1
                counters.startsInProgress.store(state.startsRunning, ordering: .relaxed)
                if state.startsRunning > counters.startsInProgressMax.load(ordering: .relaxed) {
                    counters.startsInProgressMax.store(state.startsRunning, ordering: .relaxed)
                }
                return ([(session, head)], [])
            }
            if chain.queuedForStart { return ([], []) }
            guard state.waitingStarts.count - state.waitingHead < settings.startQueue else {
                chain.operations.removeFirst()
                state.chains[session] = chain.operations.isEmpty ? nil : chain
                let (run, refused) = schedule(&state, session)
                return (run, [head] + refused)
            }
            chain.queuedForStart = true
            state.chains[session] = chain
            state.waitingStarts.append(session)
            counters.startsQueued.store(state.waitingStarts.count - state.waitingHead, ordering: .relaxed)
            return ([], [])
        }
    }

    private func refuse(_ operation: Operation, _ failure: IsolationFailure) {
        switch operation {
        case .start(let completion):
            counters.fail(failure.reason)
            completion(.failure(failure))
        case .remove(let completion):
            completion()
        }
    }

    private func launch(_ run: [(String, Operation)]) {
        for (session, operation) in run {
            IsolationThread.run { [self] in
                switch operation {
                case .start(let completion):
                    let result = performStart(session)
                    finished(session, wasStart: true)
                    completion(result)
                case .remove(let completion):
                    performRemove(session)
                    finished(session, wasStart: false)
                    completion()
                }
            }
        }
    }

    private func finished(_ session: String, wasStart: Bool) {
        let (run, refused) = state.withLock { state -> ([(String, Operation)], [Operation]) in
            var run: [(String, Operation)] = []
            var refused: [Operation] = []
            if var chain = state.chains[session] {
                chain.busy = false
                if !chain.operations.isEmpty { chain.operations.removeFirst() }
                state.chains[session] = chain.operations.isEmpty ? nil : chain
            }
            if wasStart {
                state.startsRunning -= 1
                counters.startsInProgress.store(state.startsRunning, ordering: .relaxed)
                // Free slot: the oldest waiting start goes first.
                while state.startsRunning < settings.maxConcurrentStarts, state.waitingHead < state.waitingStarts.count {
                    let next = state.waitingStarts[state.waitingHead]
                    state.waitingHead += 1
                    state.chains[next]?.queuedForStart = false
                    let (r, f) = schedule(&state, next)
                    run += r
                    refused += f
                }
                if state.waitingHead == state.waitingStarts.count {
                    state.waitingStarts = []
                    state.waitingHead = 0
                }
                counters.startsQueued.store(state.waitingStarts.count - state.waitingHead, ordering: .relaxed)
            }
            let (r, f) = schedule(&state, session)
            run += r
            refused += f
            return (run, refused)
        }
        for operation in refused { refuse(operation, IsolationFailure(.queueFull, "too many container starts are waiting; retry later")) }
        launch(run)
    }

    // MARK: start

    private func performStart(_ session: String) -> Result<StartedContainer, IsolationFailure> {
        counters.starts.add(1, ordering: .relaxed)
        let began = IsolationThread.monotonicNanoseconds()
        let reserved = state.withLock { state -> Bool in
            if state.reserved.contains(session) { return true }
            guard state.reserved.count < settings.maxContainers else { return false }
            state.reserved.insert(session)
            counters.containers.store(state.reserved.count, ordering: .relaxed)
            return true
        }
        guard reserved else {
            counters.fail(.capacity)
            return .failure(IsolationFailure(.capacity, "the relay runs its maximum of \(settings.maxContainers) session containers"))
        }
        let result = attemptStart(session, began: began)
        if case .failure(let failure) = result {
            counters.fail(failure.reason)
            cleanUp(session)
        }
        return result
    }

    private func attemptStart(_ session: String, began: UInt64) -> Result<StartedContainer, IsolationFailure> {
        let directory = settings.sessionDirectory(session)
        let socketPath = settings.socketPath(session)
        guard let ids = settings.userIDs else {
            return .failure(IsolationFailure(.setupFailed, "isolation.user must be numeric uid:gid"))
        }
        do {
            try SessionDirectory.prepareRoot(settings.runDirectory)
            try SessionDirectory.prepare(directory, gid: ids.gid)
        } catch {
            return .failure(IsolationFailure(.setupFailed, error.description))
        }
        let api: String
        do {
            api = try client.apiVersion()
        } catch {
            return .failure(engineFailure(error, .engineUnreachable))
        }
        let spec = containerSpec(session)
        var containerID: String
        do {
            containerID = try create(spec, api: api)
        } catch {
            return .failure(error)
        }
        state.withLock { $0.containerIDs[session] = containerID }
        do {
            try DockerAPI.expectNoContent(try client.send(DockerAPI.start(containerID, api: api)))
        } catch {
            return .failure(engineFailure(error, .startFailed))
        }
        // The worker binds its socket within milliseconds; check on the container now and then
        // so one that exits (bad image, seccomp refusing io_uring) fails fast with its reason.
        let deadline = began &+ settings.startTimeoutMilliseconds &* 1_000_000
        var polls = 0
        while IsolationThread.monotonicNanoseconds() < deadline {
            if SessionDirectory.exists(socketPath) {
                SessionDirectory.lock(directory)
                if let fd = try? Socket.connectUnixBlocking(path: socketPath) {
                    let took = IsolationThread.monotonicNanoseconds() &- began
                    counters.observeContainerStart(nanoseconds: took)
                    return .success(StartedContainer(session: session, containerID: containerID, socketPath: socketPath,
                                                     controlFD: fd, startNanoseconds: took))
                }
            }
            polls += 1
            if polls % 50 == 0, let info = try? DockerAPI.decodeInspect(try client.send(DockerAPI.inspect(containerID, api: api))),
               !info.running {
                let detail = info.oomKilled ? "killed for memory" : "exit code \(info.exitCode)"
                let error = info.error.isEmpty ? "" : ": \(info.error)"
                return .failure(IsolationFailure(.containerExited, "the session container stopped while starting (\(info.status), \(detail)\(error))"))
            }
            usleep(polls < 100 ? 1_000 : 10_000)
        }
        return .failure(IsolationFailure(.startTimeout, "the session worker did not answer within \(settings.startTimeoutMilliseconds) ms"))
    }

    /// Create; a leftover container with our name is ours to replace only if it carries our
    /// relay label (an earlier run of this relay), never another relay's.
    private func create(_ spec: ContainerSpec, api: String) throws(IsolationFailure) -> String {
        for attempt in 0..<2 {
            let response: DockerResponse
            do {
                response = try client.send(DockerAPI.create(spec, api: api))
            } catch {
                throw engineFailure(error, .createFailed)
            }
            switch response.status {
            case 201, 200:
                do {
                    return try DockerAPI.decodeCreate(response)
                } catch {
                    throw IsolationFailure(.createFailed, error.description)
                }
            case 404:
                throw IsolationFailure(.imageMissing, "image \(spec.image) not found (build it with deploy/docker/build-image.sh): \(response.message)")
            case 409 where attempt == 0:
                let owner = (try? DockerAPI.decodeInspect(try client.send(DockerAPI.inspect(spec.name, api: api))))?
                    .labels[ContainerManager.relayLabel]
                guard owner == instance else {
                    throw IsolationFailure(.nameConflict, "a container named \(spec.name) belongs to relay \(owner ?? "unknown")")
                }
                _ = try? client.send(DockerAPI.remove(spec.name, api: api))
                counters.reaped.add(1, ordering: .relaxed)
            default:
                throw IsolationFailure(.createFailed, "\(response.status): \(response.message)")
            }
        }
        throw IsolationFailure(.createFailed, "name \(spec.name) still in use")
    }

    public func containerSpec(_ session: String) -> ContainerSpec {
        var spec = ContainerSpec(
            name: IsolationSettings.containerName(session), image: settings.image,
            command: [IsolationSettings.containerBinary, "session-worker",
                      "--socket", IsolationSettings.containerDirectory + "/" + IsolationSettings.socketName,
                      "--session", session] + workerArguments,
            user: settings.user,
            labels: [ContainerManager.sessionLabel: session, ContainerManager.relayLabel: instance],
            memoryBytes: settings.memoryBytes, nanoCPUs: Int((settings.cpus * 1e9).rounded()),
            pidsLimit: settings.pidsLimit,
            binds: ["\(settings.sessionDirectory(session)):\(IsolationSettings.containerDirectory)"])
        spec.readOnlyRootFilesystem = settings.readOnlyRootFilesystem
        spec.capDrop = settings.capDrop
        spec.noNewPrivileges = settings.noNewPrivileges
        spec.seccompProfile = seccompProfile
        spec.fileLimit = settings.fileLimit
        return spec
    }

    private func engineFailure(_ error: DockerError, _ otherwise: IsolationFailureReason) -> IsolationFailure {
        switch error {
        case .unreachable, .timeout: return IsolationFailure(.engineUnreachable, error.description)
        default: return IsolationFailure(otherwise, error.description)
        }
    }

    // MARK: removal

    private func performRemove(_ session: String) {
        counters.removals.add(1, ordering: .relaxed)
        cleanUp(session)
    }

    /// Removes the container (by id if known, else by name) and the directory, and frees the
    /// session's slot. A container the engine no longer knows is fine.
    private func cleanUp(_ session: String) {
        let id = state.withLock { $0.containerIDs.removeValue(forKey: session) } ?? IsolationSettings.containerName(session)
        if let api = try? client.apiVersion() {
            _ = try? client.send(DockerAPI.remove(id, api: api))
        }
        try? SessionDirectory.remove(settings.sessionDirectory(session))
        state.withLock { state in
            state.reserved.remove(session)
            counters.containers.store(state.reserved.count, ordering: .relaxed)
        }
    }

    // MARK: start-up and shutdown

    /// Removes every container labelled with this relay's instance (left by an earlier run
    /// that was killed) and stale session directories. Blocking; returns how many containers
    /// were removed, or the engine's error.
    @discardableResult
    public func reap() throws(DockerError) -> Int {
        try? SessionDirectory.prepareRoot(settings.runDirectory)
        let api = try client.apiVersion()
        let found = try DockerAPI.decodeList(try client.send(DockerAPI.list(labels: [ContainerManager.relayLabel: instance], api: api)))
        var removed = 0
        for container in found {
            if (try? client.send(DockerAPI.remove(container.id, api: api)))?.status == 204 { removed += 1 }
        }
        counters.reaped.add(UInt64(removed), ordering: .relaxed)
        for directory in SessionDirectory.stale(in: settings.runDirectory) {
            try? SessionDirectory.remove(directory)
        }
        return removed
    }

    /// Refuses new work and removes every container this relay started, in parallel, waiting
    /// at most `timeoutMilliseconds`.
    public func shutdown(timeoutMilliseconds: UInt64 = 10_000) {
        let sessions = state.withLock { state -> [String] in
            state.closed = true
            return Array(state.reserved)
        }
        let done = Atomic<Int>(0)
        for session in sessions {
            IsolationThread.run { [self] in
                cleanUp(session)
                done.add(1, ordering: .relaxed)
            }
        }
        let deadline = IsolationThread.monotonicNanoseconds() &+ timeoutMilliseconds &* 1_000_000
        while done.load(ordering: .relaxed) < sessions.count && IsolationThread.monotonicNanoseconds() < deadline {
            usleep(10_000)
        }
    }

    /// Sessions holding a container slot now.
    public var containerCount: Int { state.withLock { $0.reserved.count } }
}

/// Detached threads for blocking engine calls; the body travels through the void* argument.
enum IsolationThread {
    private final class Box {
        let body: @Sendable () -> Void
        init(_ body: @escaping @Sendable () -> Void) { self.body = body }
    }

    static func run(_ body: @escaping @Sendable () -> Void) {
        let box = Unmanaged.passRetained(Box(body)).toOpaque()
        var attributes = pthread_attr_t()
        pthread_attr_init(&attributes)
        // Engine calls need little stack; a start storm then costs little memory.
        pthread_attr_setstacksize(&attributes, 512 * 1024)
        var thread = pthread_t()
        let rc = pthread_create(&thread, &attributes, { raw in
            guard let raw else { return nil }
            Unmanaged<Box>.fromOpaque(raw).takeRetainedValue().body()
            return nil
        }, box)
        pthread_attr_destroy(&attributes)
        guard rc == 0 else {
            Unmanaged<Box>.fromOpaque(box).takeRetainedValue().body()
            return
        }
        pthread_detach(thread)
    }

    static func monotonicNanoseconds() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) &* 1_000_000_000 &+ UInt64(ts.tv_nsec)
    }
}
#endif
