import Foundation
import Logging
import NIOConcurrencyHelpers
import TetherHTTP

/// Counters and state shared by the supervisor and every tunnel (tunnels live on different
/// event loops, hence the lock; it is taken a few times per stream, never per byte).
final class BridgeStatus: Sendable {
    enum State: String, Sendable {
        case connecting, connected, disconnected
    }

    struct Snapshot: Sendable {
        var state = State.disconnected
        var tunnels = 0
        var streamsActive = 0
        var streamsServed = 0
        var streamsFailed = 0
        var streamsCancelled = 0
        var reconnects = 0
        /// Bumped on every change, so the reporter can skip rewriting an unchanged file.
        var version = 0
    }

    let relay: String
    private let box = NIOLockedValueBox(Snapshot())
    /// Called (outside the lock) whenever `state` changes, to rewrite the status file at once.
    private let onStateChange: NIOLockedValueBox<(@Sendable () -> Void)?> = .init(nil)

    init(relay: String) { self.relay = relay }

    var snapshot: Snapshot { box.withLockedValue { $0 } }

    func setStateChangeHandler(_ handler: @escaping @Sendable () -> Void) {
        onStateChange.withLockedValue { $0 = handler }
    }

    func setState(_ state: State) {
        let changed = box.withLockedValue { s -> Bool in
            guard s.state != state else { return false }
            s.state = state
            s.version += 1
            return true
        }
        if changed { onStateChange.withLockedValue { $0 }?() }
    }

    func update(_ body: (inout Snapshot) -> Void) {
        box.withLockedValue {
            body(&$0)
            $0.version += 1
        }
    }

    func streamStarted() { update { $0.streamsActive += 1 } }

    enum StreamOutcome { case served, failed, cancelled }

    func streamEnded(_ outcome: StreamOutcome) {
        update {
            $0.streamsActive -= 1
            switch outcome {
            case .served: $0.streamsServed += 1
            case .failed: $0.streamsFailed += 1
            case .cancelled: $0.streamsCancelled += 1
            }
        }
    }

    /// `status: connected tunnels=1 streams=3 served=120 failed=2`
    var statusLine: String {
        let s = snapshot
        return "status: \(s.state.rawValue) tunnels=\(s.tunnels) streams=\(s.streamsActive) served=\(s.streamsServed) "
            + "failed=\(s.streamsFailed) cancelled=\(s.streamsCancelled) reconnects=\(s.reconnects)"
    }

    var json: String { json(snapshot) }

    func json(_ s: Snapshot) -> String {
        return "{\"state\":\"\(s.state.rawValue)\",\"relay\":\(JSONString.quote(relay)),\"tunnels\":\(s.tunnels),"
            + "\"streamsActive\":\(s.streamsActive),\"streamsServed\":\(s.streamsServed),"
            + "\"streamsFailed\":\(s.streamsFailed),\"streamsCancelled\":\(s.streamsCancelled),"
            + "\"reconnects\":\(s.reconnects),\"pid\":\(ProcessInfo.processInfo.processIdentifier)}\n"
    }
}

/// Writes the status file (every second and on each state change) and logs the status line.
final class StatusReporter: Sendable {
    private let status: BridgeStatus
    private let path: String?
    private let lineInterval: Double
    private let logger: Logger
    /// Serialises writers (the ticker and state-change callbacks from event loops).
    private let writeLock = NIOLock()
    private let lastWritten = NIOLockedValueBox(-1)

    init(status: BridgeStatus, path: String?, lineInterval: Double, logger: Logger) {
        self.status = status
        self.path = path
        self.lineInterval = lineInterval
        self.logger = logger
    }

    /// Runs until cancelled: checks 5 times a second, so counter changes show up within 200 ms,
    /// and rewrites the file at least every second regardless.
    func run() async {
        var ticks = 0
        writeFile()
        while !Task.isCancelled {
            try? await Task.sleep(nanoseconds: 200_000_000)
            ticks += 1
            writeFile(force: ticks % 5 == 0)
            if lineInterval > 0, ticks % max(1, Int((lineInterval * 5).rounded())) == 0 {
                logger.info("\(status.statusLine)")
            }
        }
    }

    /// Atomic replace (temp file + rename), so a reader never sees half a document.
    func writeFile(force: Bool = true) {
        guard let path else { return }
        writeLock.withLock {
            let snapshot = status.snapshot
            guard force || snapshot.version != lastWritten.withLockedValue({ $0 }) else { return }
            do {
                try Data(status.json(snapshot).utf8).write(to: URL(fileURLWithPath: path), options: .atomic)
                lastWritten.withLockedValue { $0 = snapshot.version }
            } catch {
                logger.debug("cannot write status file \(path): \(error)")
            }
        }
    }
}
