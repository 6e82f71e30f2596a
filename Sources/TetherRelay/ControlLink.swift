#if os(Linux)
import TetherIO
import TetherIsolation

/// The relay's end of a session worker's control link (connected by the starting thread,
/// adopted by the session's home loop). Everything the worker says is checked: a malformed
/// message or a silent worker ends the link, and with it the container.
final class ControlLink: ConnectionHandler {
    private unowned let context: RelayContext
    private weak var session: Session?
    private var decoder = ControlMessageDecoder()
    private weak var connection: Connection?
    private var ready = false
    private var closeReason = "control link closed by the worker"
    /// The worker's last reported counter totals (RelayStats.workerTotals order).
    private var workerTotals: [UInt64] = []
    /// A worker is believed only as far as the work it was given (see RelayStats.WorkerClaim):
    /// a compromised container cannot inflate the relay-wide counters beyond that.
    private var requestBaseline: UInt64 = 0
    private var bridgesAttached: UInt64 = 0
    private var credited: [RelayStats.WorkerClaim: UInt64] = [:]
    private var overclaimLogged = false

    /// The worker must answer its preamble within this long.
    static let readyTimeoutMilliseconds: UInt64 = 10_000

    init(context: RelayContext, session: Session) {
        self.context = context
        self.session = session
    }

    func send(_ message: ControlMessage) {
        guard let connection, connection.isOpen else { return }
        connection.write(message.encoded())
    }

    /// Ends the link (the worker exits when it sees EOF).
    func close() {
        closeReason = "closed by the relay"
        connection?.close(.graceful)
    }

    func connectionDidOpen(_ connection: Connection) {
        self.connection = connection
        guard let session else {
            connection.close(.abort)
            return
        }
        connection.write(WorkerPreamble.control(session: session.id.hex, settings: context.configuration.workerSettings).encoded())
        connection.setDeadline(milliseconds: ControlLink.readyTimeoutMilliseconds)
    }

    func connection(_ connection: Connection, didRead bytes: UnsafeRawBufferPointer) {
        decoder.feed(bytes)
        do {
            while let message = try decoder.next() {
                handle(message)
                guard connection.isOpen else { return }
            }
        } catch {
            fail(connection, "malformed control message: \(error)")
        }
    }

    private func handle(_ message: ControlMessage) {
        guard let session, let connection else { return }
        switch message {
        case .ready(let version):
            guard !ready, version == ControlMessage.protocolVersion else {
                fail(connection, "unexpected READY (version \(version))")
                return
            }
            ready = true
            requestBaseline = session.requestCount
            connection.setDeadline(milliseconds: nil)
            context.workerReady(session, self)
        case .attached(let id):
            bridgesAttached += 1
            context.bridgeAttached(session, id)
        case .parkReady:
            context.workerParkReady(session)
        case .parkBusy:
            context.workerParkBusy(session)
        case .snapshot(let id, let state):
            context.workerSnapshot(session, id, state)
        case .parkFailed(let id, let reason):
            context.tunnelLogger.notice("bridge could not be parked", metadata: ["session": "\(session.id)", "reason": "\(reason)"])
            context.workerSnapshot(session, id, nil)
        case .counters(let totals):
            addWorkerCounters(totals, session)
        case .configure, .park, .goAway, .close:
            fail(connection, "the worker sent a relay command")
        }
    }

    /// Only increases count: totals are monotonic, so a repeated or reordered report (or a
    /// worker that sends smaller numbers) adds nothing; and no more is credited than the
    /// requests and bridges this worker was given could account for.
    private func addWorkerCounters(_ totals: [UInt64], _ session: Session) {
        if workerTotals.count < totals.count {
            workerTotals += repeatElement(0, count: totals.count - workerTotals.count)
        }
        let requests = session.requestCount &- requestBaseline
        var overclaimed = false
        for (index, total) in totals.enumerated() where total > workerTotals[index] {
            let claimed = total - workerTotals[index]
            workerTotals[index] = total
            guard let claim = context.stats.workerClaim(at: index) else { continue }
            let given = claim == .bridge ? bridgesAttached : requests
            let used = credited[claim, default: 0]
            let accepted = min(claimed, given > used ? given - used : 0)
            if accepted < claimed { overclaimed = true }
            guard accepted > 0 else { continue }
            credited[claim] = used + accepted
            context.stats.addWorkerIncrease(at: index, accepted)
        }
        if overclaimed && !overclaimLogged {
            overclaimLogged = true
            context.logger.warning("session worker reported more refusals or errors than it had work for",
                                   metadata: ["session": "\(session.id.hex)"])
        }
    }

    private func fail(_ connection: Connection, _ reason: String) {
        closeReason = reason
        context.logger.warning("session worker misbehaved", metadata: ["session": "\(session?.id.hex ?? "?")", "reason": "\(reason)"])
        connection.close(.abort)
    }

    func connectionDeadlineExpired(_ connection: Connection) {
        fail(connection, "the worker did not answer its control link in time")
    }

    func connectionDidReadEOF(_ connection: Connection) {
        connection.close(.abort)
    }

    func connectionDidClose(_ connection: Connection, error: IOError?) {
        guard let session else { return }
        context.controlLinkClosed(session, self, reason: error.map { "\($0)" } ?? closeReason)
    }
}
#endif
