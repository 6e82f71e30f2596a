import Glibc
import Logging
import TetherAuth
import TetherRelay

/// `tether-relay session-worker --socket PATH --session ID [--log-level LEVEL]`: the process in
/// a Docker-isolated session's container (docs/ISOLATION.md). Started by the relay, never by
/// hand; it has no configuration of its own (the relay sends its settings).
enum SessionWorkerCommand {
    static let usage = "Usage: tether-relay session-worker --socket PATH --session <64 hex> [--log-level LEVEL]\n"

    static func main(_ arguments: [String]) -> Never {
        var socketPath: String?
        var session: SessionID?
        var level = Logger.Level.notice
        var i = 0
        func value() -> String? {
            i += 1
            return i < arguments.count ? arguments[i] : nil
        }
        while i < arguments.count {
            switch arguments[i] {
            case "--socket": socketPath = value()
            case "--session": session = value().flatMap { SessionID(hex: $0) }
            case "--log-level":
                guard let parsed = value().flatMap({ Logger.Level(rawValue: $0) }) else { fail("--log-level: unknown level") }
                level = parsed
            case "-h", "--help":
                Output.standardOutput(usage)
                exit(0)
            default:
                fail("unknown argument \(arguments[i])")
            }
            i += 1
        }
        guard let socketPath, let session else { fail("--socket and --session are required") }
        var logging = LogConfiguration()
        logging.level = level
        RelayLogging.bootstrap(logging)
        let logger = Logger(label: "tether.worker")

        // PID 1 in a container ignores signals it has no handler for: take SIGTERM and SIGINT
        // synchronously so `docker stop` ends it at once. The loop raises SIGTERM to end.
        signal(SIGPIPE, SIG_IGN)
        var signals = sigset_t()
        sigemptyset(&signals)
        for s in [SIGTERM, SIGINT, SIGHUP] { sigaddset(&signals, s) }
        pthread_sigmask(SIG_BLOCK, &signals, nil)

        let worker: SessionWorker
        do {
            worker = try SessionWorker(socketPath: socketPath, session: session, logger: logger)
            try worker.start { _ in kill(getpid(), SIGTERM) }
        } catch {
            logger.critical("session worker cannot start", metadata: ["error": "\(error)"])
            exit(1)
        }
        while true {
            var received: Int32 = 0
            guard sigwait(&signals, &received) == 0 else { continue }
            if received == SIGHUP { continue }
            worker.shutdown()
            exit(0)
        }
    }

    static func fail(_ message: String) -> Never {
        Output.standardError("tether-relay session-worker: \(message)\n" + usage)
        exit(2)
    }
}
