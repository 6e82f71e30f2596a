#if os(Linux)
import Glibc
import Logging
import Synchronization
import TetherAuth
import TetherIO
import TetherTLS

/// Key refresh counters, per process: a refresh happens every few minutes, not per request.
public final class KeyRefreshStats: Sendable {
    /// Refreshes that read every configured source (changed keys or not).
    public let keyRefreshes = Atomic<UInt64>(0)
    /// Refreshes where a source failed (unreachable URL, bad JSON, empty set); old keys stay.
    public let keyRefreshFailures = Atomic<UInt64>(0)
    /// New key sets installed on the workers.
    public let keySetChanges = Atomic<UInt64>(0)
    public init() {}
}

/// Keeps the verification keys current: a dedicated thread re-reads the JWKS file and
/// re-fetches the JWKS URL every `jwksRefreshSeconds`, sooner (at most once per
/// `jwksMinRefreshSeconds`) when a worker meets an unknown `kid`, and at once on `reload()`
/// (SIGHUP). A changed key set becomes a new `TokenVerifier`, posted to every loop; the
/// workers' token caches drop their entries when they see it. All blocking work (file, DNS,
/// network, jwt-kit's actor) happens here, never on an event loop.
final class KeyRefresher: Sendable {
    let configuration: AuthConfiguration
    let logger: Logger
    /// Shared with the refresher this one replaces after a reload, so counters continue.
    let stats: KeyRefreshStats
    private let fetcher: JWKSFetcher?
    /// Hands a new verifier to the workers (posts to every loop).
    private let install: @Sendable (TokenVerifier) -> Void
    private let refreshInterval: Double
    private let minRefreshInterval: Double

    private struct Sources {
        /// The last URL body that built, so a failing URL keeps its keys while the file is
        /// still refreshed (and the other way round).
        var remote: [UInt8]?
        /// Monotonic seconds of the last refresh attempt (the rate limit's reference).
        var lastAttempt: Double
        var failing: Bool
    }

    /// Held for a whole refresh: the thread and `reload()` never interleave.
    private let sources: Mutex<Sources>
    private let verifier: Mutex<TokenVerifier>
    /// Set by `requestRefresh`, cleared by the thread when it refreshes.
    private let requested = Atomic<Bool>(false)
    private let stopping = Atomic<Bool>(false)
    private let running = Atomic<Bool>(false)
    /// Pipes (read end, write end): `wake` nudges the thread; `stop` is written once and never
    /// drained, so a fetch in flight sees it too and gives up. Closed in deinit, when neither
    /// the thread nor the relay can use them any more.
    private let wakeFDs: (read: Int32, write: Int32)
    private let stopFDs: (read: Int32, write: Int32)

    /// Loads the keys once, blocking (startup, main thread). A bad secret or JWKS file throws,
    /// as before; an unreachable or invalid URL does not: the relay starts with the other keys
    /// (or none, refusing every token) and the thread keeps retrying.
    init(configuration: AuthConfiguration, logger: Logger, stats: KeyRefreshStats = KeyRefreshStats(),
         install: @escaping @Sendable (TokenVerifier) -> Void) throws {
        self.configuration = configuration
        self.stats = stats
        self.logger = logger
        self.install = install
        self.refreshInterval = max(1, configuration.jwksRefreshSeconds)
        self.minRefreshInterval = max(0, configuration.jwksMinRefreshSeconds)
        if let url = configuration.jwksURL, !url.isEmpty {
            fetcher = try JWKSFetcher(url: url, caFile: configuration.jwksCAFile)
        } else {
            fetcher = nil
        }
        let wake = try Self.makePipe()
        let stop: (read: Int32, write: Int32)
        do {
            stop = try Self.makePipe()
        } catch {
            close(wake.read)
            close(wake.write)
            throw error
        }
        wakeFDs = wake
        stopFDs = stop
        let closeWake = { for fd in [wake.read, wake.write, stop.read, stop.write] { close(fd) } }

        var remote: [UInt8]?
        var failure: String?
        if let fetcher {
            do {
                remote = try fetcher.fetch()
            } catch {
                failure = error.message
            }
        }
        let initial: TokenVerifier
        do {
            initial = try TokenVerifier(configuration: configuration, remoteJWKS: remote)
        } catch where remote != nil {
            // The URL's body is unusable; the file and secret must still load.
            failure = "\(error)"
            remote = nil
            do {
                initial = try TokenVerifier(configuration: configuration)
            } catch {
                closeWake()
                throw error
            }
        } catch {
            closeWake()
            throw error
        }
        verifier = Mutex(initial)
        sources = Mutex(Sources(remote: remote, lastAttempt: Self.now(), failing: failure != nil))
        for warning in initial.warnings { logger.warning("JWT keys: \(warning)") }
        logger.info("JWT keys loaded", metadata: ["keys": "\(initial.keySummary.joined(separator: ", "))"])
        if let failure {
            stats.keyRefreshFailures.add(1, ordering: .relaxed)
            logger.error("JWKS URL could not be used at startup; starting without its keys and retrying", metadata: [
                "error": "\(failure)", "retry_s": "\(retryInterval)",
            ])
        } else if fetcher != nil {
            stats.keyRefreshes.add(1, ordering: .relaxed)
        }
        if initial.keyCount == 0 {
            if fetcher == nil {
                logger.warning("no JWT keys configured (--jwt-secret / --jwks-file / --jwks-url): every token will be refused")
            } else {
                logger.warning("no JWT keys yet: every token is refused until the JWKS URL answers")
            }
        }
    }

    /// Non-blocking and close-on-exec.
    private static func makePipe() throws -> (read: Int32, write: Int32) {
        var fds: [Int32] = [-1, -1]
        guard pipe(&fds) == 0 else {
            throw AuthConfigurationError("pipe for the key refresher: \(String(cString: strerror(errno)))")
        }
        for fd in fds {
            _ = fcntl(fd, F_SETFL, O_NONBLOCK)
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        }
        return (fds[0], fds[1])
    }

    deinit {
        for fd in [wakeFDs.read, wakeFDs.write, stopFDs.read, stopFDs.write] { close(fd) }
    }

    /// The verifier new workers start with.
    var current: TokenVerifier { verifier.withLock { $0 } }

    private var retryInterval: Double { min(refreshInterval, max(1, minRefreshInterval)) }

    /// Starts the refresh thread (after the loops are up, so installs reach every worker).
    func start() throws {
        guard configuration.jwksFile != nil || fetcher != nil else { return }  // nothing can change
        guard !running.exchange(true, ordering: .acquiringAndReleasing) else { return }
        let box = Unmanaged.passRetained(self).toOpaque()
        var thread = pthread_t()
        let rc = pthread_create(&thread, nil, { raw in
            guard let raw else { return nil }
            let refresher = Unmanaged<KeyRefresher>.fromOpaque(raw).takeRetainedValue()
            refresher.run()
            releaseOpenSSLThreadState()
            refresher.running.store(false, ordering: .releasing)
            return nil
        }, box)
        guard rc == 0 else {
            Unmanaged<KeyRefresher>.fromOpaque(box).release()
            running.store(false, ordering: .releasing)
            throw AuthConfigurationError("cannot start the key refresh thread: \(String(cString: strerror(rc)))")
        }
        // Detached: `stop()` waits for it, but only so long (name resolution cannot be cut short).
        pthread_detach(thread)
    }

    /// Asks for a refresh soon (a token named a kid we do not know). Any thread, never blocks:
    /// one atomic load while a request is pending, one pipe write per refresh otherwise.
    func requestRefresh() {
        guard !requested.load(ordering: .relaxed) else { return }
        if !requested.exchange(true, ordering: .acquiringAndReleasing) { wake() }
    }

    /// Refreshes now, ignoring the rate limit (SIGHUP). Returns false if a source failed.
    @discardableResult
    func reload() -> Bool {
        refresh(reason: "reload")
    }

    /// Stops the thread and waits for it (up to 5 s): a fetch in flight is cancelled, and the
    /// thread's OpenSSL state is freed before the process exits.
    func stop() {
        guard !stopping.exchange(true, ordering: .acquiringAndReleasing) else { return }
        var one: UInt8 = 1
        _ = write(stopFDs.write, &one, 1)
        for _ in 0..<500 where running.load(ordering: .acquiring) { usleep(10_000) }
    }

    private func wake() {
        var one: UInt8 = 1
        _ = write(wakeFDs.write, &one, 1)  // a full pipe already means "wake up"
    }

    private func run() {
        while !stopping.load(ordering: .acquiring) {
            let (last, failing) = sources.withLock { ($0.lastAttempt, $0.failing) }
            var due = last + (failing ? retryInterval : refreshInterval)
            let asked = requested.load(ordering: .acquiring)
            if asked { due = min(due, last + minRefreshInterval) }
            let now = Self.now()
            if now >= due {
                if asked { requested.store(false, ordering: .releasing) }
                refresh(reason: asked ? "unknown kid" : "periodic")
                continue
            }
            var pfds = [pollfd(fd: wakeFDs.read, events: Int16(POLLIN), revents: 0),
                        pollfd(fd: stopFDs.read, events: Int16(POLLIN), revents: 0)]
            let ms = Int32(min((due - now) * 1000 + 1, 3_600_000))
            if poll(&pfds, 2, ms) > 0, pfds[0].revents != 0 {
                var drain = [UInt8](repeating: 0, count: 64)
                while read(wakeFDs.read, &drain, drain.count) > 0 {}
            }
        }
    }

    /// Reads every source and installs the result if the keys changed. A failing source keeps
    /// its previous keys; the others are still refreshed.
    @discardableResult
    private func refresh(reason: String) -> Bool {
        sources.withLock { state in
            var failures: [String] = []
            var remote = state.remote
            if let fetcher {
                do {
                    remote = try fetcher.fetch(cancelFD: stopFDs.read)
                } catch {
                    failures.append("\(error)")
                }
            }
            if stopping.load(ordering: .acquiring) { return false }  // cancelled: not a failure
            var built: TokenVerifier?
            do {
                built = try TokenVerifier(configuration: configuration, remoteJWKS: remote)
                state.remote = remote
            } catch {
                failures.append("\(error)")
                if remote != state.remote {
                    // Maybe only the new URL body is bad: keep its previous keys, take the file's.
                    built = try? TokenVerifier(configuration: configuration, remoteJWKS: state.remote)
                }
            }
            state.lastAttempt = Self.now()
            state.failing = !failures.isEmpty
            if failures.isEmpty {
                stats.keyRefreshes.add(1, ordering: .relaxed)
            } else {
                stats.keyRefreshFailures.add(1, ordering: .relaxed)
                logger.warning("JWT key refresh failed; keeping the previous keys", metadata: [
                    "reason": "\(reason)", "error": "\(failures.joined(separator: "; "))",
                    "retry_s": "\(retryInterval)",
                ])
            }
            guard let built, !stopping.load(ordering: .acquiring) else { return failures.isEmpty }
            let changed = verifier.withLock { current in
                guard !built.hasSameKeys(as: current) else { return false }
                current = built
                return true
            }
            if changed {
                stats.keySetChanges.add(1, ordering: .relaxed)
                for warning in built.warnings { logger.warning("JWT keys: \(warning)") }
                logger.info("JWT keys updated", metadata: [
                    "reason": "\(reason)", "keys": "\(built.keySummary.joined(separator: ", "))",
                ])
                install(built)
            } else {
                logger.debug("JWT keys unchanged", metadata: ["reason": "\(reason)"])
            }
            return failures.isEmpty
        }
    }

    private static func now() -> Double {
        Double(EventLoop.monotonicMilliseconds()) / 1000
    }
}
#endif
