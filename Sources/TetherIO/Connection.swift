#if os(Linux)
import Glibc
internal import CURing
import TetherTLS

/// What a connection's owner hears. Callbacks run on the connection's event loop.
public protocol ConnectionHandler: AnyObject {
    /// The connection is ready: accepted, or connected in client mode.
    func connectionDidOpen(_ connection: Connection)
    /// Bytes arrived (plaintext, after TLS). The buffer is only valid during the call.
    func connection(_ connection: Connection, didRead bytes: UnsafeRawBufferPointer)
    /// The peer finished sending (after every byte it sent was delivered). Default: close.
    func connectionDidReadEOF(_ connection: Connection)
    /// Unsent bytes fell below the low watermark after having passed the high one.
    func connectionWritable(_ connection: Connection)
    /// The deadline set with `setDeadline` passed. Default: abort.
    func connectionDeadlineExpired(_ connection: Connection)
    /// The connection is gone (fd closed). `error` is nil for an orderly close.
    func connectionDidClose(_ connection: Connection, error: IOError?)
}

extension ConnectionHandler {
    public func connectionDidOpen(_ connection: Connection) {}
    public func connectionDidReadEOF(_ connection: Connection) { connection.close() }
    public func connectionWritable(_ connection: Connection) {}
    public func connectionDeadlineExpired(_ connection: Connection) { connection.close(.abort) }
    public func connectionDidClose(_ connection: Connection, error: IOError?) {}
}

public enum CloseMode: Sendable {
    /// Flush what was written, send FIN (and TLS close_notify), drain input briefly, close.
    case graceful
    /// Drop unsent bytes and close now.
    case abort
}

/// A TCP connection (optionally TLS) owned by one event loop. Not thread-safe by design: only
/// its loop touches it; other threads reach it through `EventLoopHandle.execute`.
public final class Connection {
    enum State: UInt8 {
        case connecting, open, closing, lingering, aborting, closed
        /// Moving to another worker: output is flushed, input is held, then the fd travels.
        case handingOff
    }

    public unowned let loop: EventLoop
    public var handler: (any ConnectionHandler)?
    let fd: Int32
    let slot: Int32
    let generation: UInt32
    var state: State
    var tls: TLSConnection?

    // Operations in flight: the fd is closed only once all have completed.
    var recvArmed = false
    var recvCancelPending = false
    var sendInFlight = false
    var connectInFlight = false
    var cancelsInFlight = 0
    var readPaused = false
    /// The peer's EOF arrived while input was still held back; delivered after that input.
    var eofPending = false
    var flushQueued = false
    var starved = false
    var reportedUnwritable = false
    /// Set by `notifyAfterNextSend`: one `connectionWritable` when the next send completes.
    var sendNotificationWanted = false
    var closeError: IOError?
    /// `finishWriting` was called: FIN goes out once everything queued is sent.
    var writeShutdownRequested = false
    var writeShutdownDone = false

    var sending = ByteQueue()
    var pending = ByteQueue()
    /// Raw input (ciphertext for TLS) that arrived while reading was paused or a hand-off ran.
    var heldInput: [UInt8] = []

    var handOffTarget: (EventLoopHandle, @Sendable () -> any ConnectionHandler)?
    /// Plaintext the old handler gave back at hand-off; delivered before `heldInput`.
    var handOffUnread: [UInt8] = []

    var deadlineAt: UInt64 = 0
    var deadlineTimer: TimerID?
    var deadlineTimerAt: UInt64 = 0
    var connectAddress: UnsafeMutableRawPointer?
    private var cachedRemote: SocketAddress?

    init(loop: EventLoop, fd: Int32, slot: Int32, generation: UInt32, state: State) {
        self.loop = loop
        self.fd = fd
        self.slot = slot
        self.generation = generation
        self.state = state
    }

    deinit { free(connectAddress) }

    public var fileDescriptor: Int32 { fd }
    public var isOpen: Bool { state == .open }
    public var isTLS: Bool { tls != nil }
    public var tlsConnection: TLSConnection? { tls }

    /// Unsent bytes held for this connection.
    public var pendingWriteBytes: Int { sending.count + pending.count }

    /// False while unsent bytes exceed the high watermark: producers should stop (and wait for
    /// `connectionWritable`) instead of growing the heap.
    public var isWritable: Bool { pendingWriteBytes < loop.configuration.writeHighWatermark }

    public var remoteAddress: SocketAddress? {
        if cachedRemote == nil { cachedRemote = SocketAddress.peer(of: fd) }
        return cachedRemote
    }

    public var localAddress: SocketAddress? { SocketAddress.local(of: fd) }

    /// Asks for one `connectionWritable` call when the next send completes (bytes left this
    /// process), so an owner that accounts for bytes until they are gone (flow-control credit
    /// withheld while they sit in our queue) can re-check `pendingWriteBytes`. Nothing comes if
    /// nothing is pending.
    public func notifyAfterNextSend() {
        sendNotificationWanted = true
    }

    // MARK: writing

    public func write(_ bytes: UnsafeRawBufferPointer) {
        guard state == .open || state == .connecting, bytes.count > 0, !writeShutdownRequested else { return }
        if let tls {
            guard tls.writePlaintext(bytes) else {
                abort(IOError(errno: EPROTO, operation: "tls write: \(tls.failure ?? "failed")"))
                return
            }
            moveCiphertext()
        } else {
            pending.append(bytes)
        }
        if pendingWriteBytes >= loop.configuration.writeHighWatermark { reportedUnwritable = true }
        loop.queueFlush(self)
    }

    public func write(_ bytes: [UInt8]) {
        bytes.withUnsafeBytes { write($0) }
    }

    func moveCiphertext() {
        guard let tls, tls.hasOutboundCiphertext, state != .aborting, state != .closed else { return }
        // The engine hands its buffer over; the only copy is into the send queue.
        tls.takeOutboundCiphertext().withUnsafeBytes { pending.append($0) }
        loop.queueFlush(self)
    }

    /// Half-close: sends everything written so far, then FIN, and keeps reading until the
    /// peer's EOF (a graceful `close` would discard what the peer still sends). Further writes
    /// are dropped.
    public func finishWriting() {
        guard state == .open, !writeShutdownRequested else { return }
        writeShutdownRequested = true
        loop.queueFlush(self)
    }

    /// True once `finishWriting` was called.
    public var isFinishingWrites: Bool { writeShutdownRequested }

    // MARK: reading control

    /// Stops delivering input until `resumeReading`. Input already on its way is held, not lost.
    public func pauseReading() {
        guard !readPaused else { return }
        readPaused = true
        if recvArmed && !recvCancelPending { loop.cancelRecv(self) }
    }

    public func resumeReading() {
        guard readPaused else { return }
        readPaused = false
        guard state == .open else { return }
        if !heldInput.isEmpty {
            let held = heldInput
            heldInput = []
            held.withUnsafeBytes { deliver($0) }
        } else if let tls {
            // Ciphertext already fed may hold records not yet read as plaintext.
            readTLS(tls)
        }
        guard state == .open, !readPaused else { return }
        if eofPending {
            eofPending = false
            readEOF()
            return
        }
        // If a cancel is still on its way, its completion re-arms (see the recv dispatch).
        if !recvArmed { loop.armRecv(self) }
    }

    // MARK: deadlines

    /// Sets (or with nil clears) a deadline relative to now. Cheap to call on every read: the
    /// wheel is touched only when the deadline moves earlier than the armed timer.
    public func setDeadline(milliseconds: UInt64?) {
        guard let milliseconds else {
            deadlineAt = 0
            return
        }
        deadlineAt = loop.nowMilliseconds &+ milliseconds
        if let timer = deadlineTimer {
            guard deadlineAt < deadlineTimerAt else { return }
            loop.wheel.cancel(timer)
        }
        armDeadlineTimer()
    }

    private func armDeadlineTimer() {
        deadlineTimerAt = deadlineAt
        deadlineTimer = loop.wheel.schedule(atMilliseconds: deadlineAt,
                                            target: .connection(slot: slot, generation: generation))
    }

    func deadlineTimerFired() {
        deadlineTimer = nil
        guard deadlineAt != 0, state != .closed else { return }
        if loop.nowMilliseconds < deadlineAt {
            armDeadlineTimer()
            return
        }
        deadlineAt = 0
        switch state {
        case .open, .connecting:
            if let handler { handler.connectionDeadlineExpired(self) } else { close(.abort) }
        case .closing, .lingering, .handingOff:
            abort(nil)
        case .aborting, .closed:
            break
        }
    }

    func cancelDeadline() {
        deadlineAt = 0
        if let timer = deadlineTimer { loop.wheel.cancel(timer) }
        deadlineTimer = nil
    }

    // MARK: hand-off

    /// Moves this connection to another worker (e.g. the one that owns the user's session).
    /// Unsent output is flushed first and input that arrives meanwhile is held; then the fd
    /// (and its TLS state) is adopted by `target`, where `makeHandler` builds the new handler,
    /// which hears `connectionDidOpen`, then `unread`, then the held input. This loop's handler
    /// is dropped. `unread` is plaintext the current handler received but leaves for the new one.
    public func handOff(to target: EventLoopHandle, unread: [UInt8] = [],
                        makeHandler: @escaping @Sendable () -> any ConnectionHandler) {
        guard state == .open else { return }
        state = .handingOff
        handOffTarget = (target, makeHandler)
        handOffUnread = unread
        if recvArmed && !recvCancelPending { loop.cancelRecv(self) }
        // Finished from the loop's flush pass, never from inside this (possibly TLS) callback:
        // the TLS state must not reach another thread while this one is still using it.
        loop.queueFlush(self)
    }

    // MARK: closing

    public func close(_ mode: CloseMode = .graceful) {
        switch mode {
        case .abort:
            abort(nil)
        case .graceful:
            guard state == .open || state == .connecting else { return }
            if state == .connecting { abort(nil); return }
            tls?.shutdown()
            moveCiphertext()
            closeAfterFlush()
        }
    }

    /// Flushes what is queued (without a TLS close_notify), then lingers and closes.
    func closeAfterFlush() {
        guard state == .open else { return }
        state = .closing
        setDeadline(milliseconds: loop.configuration.closeTimeoutMilliseconds)
        if sending.isEmpty && pending.isEmpty && !sendInFlight { startLinger() } else { loop.queueFlush(self) }
    }

    /// All output is out: send FIN and keep reading (discarding) until the peer's EOF or the
    /// linger deadline, so the peer receives our last bytes instead of a reset.
    func startLinger() {
        guard state == .closing else { return }
        state = .lingering
        Glibc.shutdown(fd, Int32(SHUT_WR))
        setDeadline(milliseconds: loop.configuration.lingerMilliseconds)
        heldInput = []
        readPaused = false
        if !recvArmed { loop.armRecv(self) }
    }

    func abort(_ error: IOError?) {
        guard state != .aborting && state != .closed else { return }
        if closeError == nil { closeError = error }
        state = .aborting
        // The kernel may still be reading `sending`: it is released when that send completes.
        if !sendInFlight { sending.release() }
        pending.release()
        heldInput = []
        handOffUnread = []
        Glibc.shutdown(fd, Int32(SHUT_RDWR))
        if recvArmed || sendInFlight || connectInFlight { loop.cancelAll(self) }
        loop.finishIfQuiescent(self)
    }

    var isQuiescent: Bool { !recvArmed && !sendInFlight && !connectInFlight && cancelsInFlight == 0 }

    // MARK: input from the loop

    func deliver(_ bytes: UnsafeRawBufferPointer) {
        switch state {
        case .open:
            break
        case .handingOff:
            heldInput.append(contentsOf: bytes)
            return
        case .lingering, .closing, .aborting, .closed, .connecting:
            return
        }
        if readPaused {
            heldInput.append(contentsOf: bytes)
            return
        }
        guard let tls else {
            handler?.connection(self, didRead: bytes)
            return
        }
        // Zero-copy: OpenSSL decrypts straight out of the provided buffer; only an incomplete
        // trailing record is copied when the closure returns.
        tls.withCiphertext(bytes) { readTLS(tls) }
    }

    private func readTLS(_ tls: TLSConnection) {
        // A handler may resume another TLS connection from inside this callback: each nesting
        // level gets its own scratch buffer, so the outer plaintext stays intact.
        let scratch = loop.acquirePlaintextScratch()
        defer { loop.releasePlaintextScratch() }
        while state == .open && !readPaused {
            switch tls.readPlaintext(into: scratch) {
            case .bytes(let n):
                if n > 0 { handler?.connection(self, didRead: UnsafeRawBufferPointer(rebasing: scratch[0..<n])) }
            case .wantMoreCiphertext:
                moveCiphertext()
                return
            case .closed:
                moveCiphertext()
                if let handler { handler.connectionDidReadEOF(self) } else { close() }
                return
            case .failed:
                // Send the alert OpenSSL queued, then close without close_notify.
                moveCiphertext()
                closeError = IOError(errno: EPROTO, operation: "tls: \(tls.failure ?? "handshake failed")")
                closeAfterFlush()
                return
            }
        }
        moveCiphertext()
    }

    func readEOF() {
        switch state {
        case .open:
            if readPaused || !heldInput.isEmpty {
                eofPending = true
                return
            }
            if let handler { handler.connectionDidReadEOF(self) } else { close() }
        case .lingering:
            abort(nil)
        case .handingOff:
            // The new owner hears it: a zero-length marker can't travel, so treat as held EOF.
            eofPending = true
        default:
            break
        }
    }
}
#endif
