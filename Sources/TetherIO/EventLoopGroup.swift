#if os(Linux)
import Glibc
internal import CURing
import Synchronization

/// Cross-thread job queue of one loop. Posting to an empty queue writes the loop's eventfd;
/// the loop keeps a read armed on it, so a sleeping ring wakes within microseconds.
final class Mailbox: Sendable {
    /// Stays open until the mailbox itself goes away, so a late post never writes to a
    /// descriptor number that was reused for something else.
    let eventFD: Int32
    private let jobs = Mutex<(queue: [@Sendable (EventLoop) -> Void], closed: Bool)>(([], false))

    init() throws(IOError) {
        let fd = tether_eventfd_cloexec()
        guard fd >= 0 else { throw IOError(errno: tether_errno(), operation: "eventfd") }
        eventFD = fd
    }

    deinit { Glibc.close(eventFD) }

    /// Queues `job`; false if the loop has stopped (the job will never run).
    @discardableResult
    func post(_ job: @escaping @Sendable (EventLoop) -> Void) -> Bool {
        let (accepted, wasEmpty) = jobs.withLock { state -> (Bool, Bool) in
            guard !state.closed else { return (false, false) }
            let empty = state.queue.isEmpty
            state.queue.append(job)
            return (true, empty)
        }
        if wasEmpty {
            var one: UInt64 = 1
            _ = Glibc.write(eventFD, &one, 8)
        }
        return accepted
    }

    func drain() -> [@Sendable (EventLoop) -> Void] {
        jobs.withLock { state in
            let out = state.queue
            state.queue.removeAll()
            return out
        }
    }

    /// Refuses further posts and returns what was still queued.
    func close() -> [@Sendable (EventLoop) -> Void] {
        jobs.withLock { state in
            state.closed = true
            let out = state.queue
            state.queue.removeAll()
            return out
        }
    }
}

/// A Sendable reference to a loop: the only way other threads talk to it.
public struct EventLoopHandle: Sendable {
    public let index: Int
    public let stats: IOStats
    let mailbox: Mailbox

    /// Runs `job` on the loop's thread (a connection or request handed to the worker that owns
    /// it). Returns false if the loop has stopped, in which case the job never runs.
    @discardableResult
    public func execute(_ job: @escaping @Sendable (EventLoop) -> Void) -> Bool {
        mailbox.post(job)
    }
}

private final class ThreadStart {
    let body: () -> Void
    init(_ body: @escaping () -> Void) { self.body = body }
}

/// N worker threads, one ring each. `initializer` runs on each worker's thread before its loop
/// starts (to start listeners); an error there fails `start()`.
public final class EventLoopGroup: Sendable {
    public let configuration: IOConfiguration
    public let handles: [EventLoopHandle]
    private let threads = Mutex<[pthread_t]>([])
    private let startup = Mutex<(ready: Int, error: IOError?)>((0, nil))

    public init(configuration: IOConfiguration = IOConfiguration()) throws(IOError) {
        self.configuration = configuration
        var handles: [EventLoopHandle] = []
        for i in 0..<Swift.max(1, configuration.workers) {
            handles.append(EventLoopHandle(index: i, stats: IOStats(), mailbox: try Mailbox()))
        }
        self.handles = handles
    }

    public func start(_ initializer: @escaping @Sendable (EventLoop) throws -> Void) throws {
        for handle in handles {
            let configuration = self.configuration
            let start = ThreadStart {
                let loop: EventLoop
                do {
                    loop = try EventLoop(index: handle.index, configuration: configuration,
                                         mailbox: handle.mailbox, stats: handle.stats)
                    try initializer(loop)
                } catch {
                    let ioError = (error as? IOError) ?? IOError(errno: EINVAL, operation: "\(error)")
                    self.startup.withLock { $0.error = $0.error ?? ioError; $0.ready += 1 }
                    return
                }
                self.startup.withLock { $0.ready += 1 }
                loop.run()
            }
            var tid = pthread_t()
            let arg = Unmanaged.passRetained(start).toOpaque()
            let rc = pthread_create(&tid, nil, { raw in
                guard let raw else { return nil }
                let start = Unmanaged<ThreadStart>.fromOpaque(raw).takeRetainedValue()
                start.body()
                return nil
            }, arg)
            guard rc == 0 else {
                Unmanaged<ThreadStart>.fromOpaque(arg).release()
                throw IOError(errno: rc, operation: "pthread_create")
            }
            threads.withLock { $0.append(tid) }
        }
        // Wait until every loop has set up (or failed to).
        while true {
            let state = startup.withLock { $0 }
            if state.ready == handles.count {
                if let error = state.error {
                    shutdown()
                    throw error
                }
                return
            }
            usleep(1000)
        }
    }

    /// Stops every loop (closing its connections) and joins the threads.
    public func shutdown() {
        for handle in handles { handle.execute { $0.stop() } }
        wait()
    }

    /// Blocks until every worker thread has exited.
    public func wait() {
        let joined = threads.withLock { list in
            let out = list
            list.removeAll()
            return out
        }
        for tid in joined { pthread_join(tid, nil) }
    }
}
#endif
