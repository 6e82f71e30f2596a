#if os(Linux)
import Glibc
import Synchronization
import TetherTLS

/// A detached thread for blocking work that must stay off the loops and off the signal thread
/// (reloads). The body travels through the void* argument: the C callback captures nothing.
enum BackgroundThread {
    private final class Box {
        let body: @Sendable () -> Void
        init(_ body: @escaping @Sendable () -> Void) { self.body = body }
    }

    /// Threads started and not yet done: the process waits for them before it exits, so a
    /// reload that arrived during a drain finishes (and frees its OpenSSL thread state).
    private static let running = Atomic<Int>(0)

    /// Runs `body` on a new detached thread; runs it inline if no thread can be created.
    static func run(_ body: @escaping @Sendable () -> Void) {
        let box = Unmanaged.passRetained(Box(body)).toOpaque()
        var thread = pthread_t()
        running.add(1, ordering: .acquiringAndReleasing)
        let rc = pthread_create(&thread, nil, { raw in
            guard let raw else { return nil }
            Unmanaged<Box>.fromOpaque(raw).takeRetainedValue().body()
            releaseOpenSSLThreadState()
            BackgroundThread.running.subtract(1, ordering: .acquiringAndReleasing)
            return nil
        }, box)
        guard rc == 0 else {
            running.subtract(1, ordering: .acquiringAndReleasing)
            Unmanaged<Box>.fromOpaque(box).takeRetainedValue().body()
            return
        }
        pthread_detach(thread)
    }

    /// Waits (bounded: a JWKS fetch can hang) until no background thread is running.
    static func waitForRunning(upToMilliseconds limit: Int) {
        var waited = 0
        while running.load(ordering: .acquiring) > 0 && waited < limit {
            usleep(10_000)
            waited += 10
        }
    }
}
#endif
