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
    /// The peer finished sending. Default: close gracefully.
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
    var sendInFlight = false
    var connectInFlight = false
    var cancelsInFlight: UInt8 = 0
    var readPaused = false
    var flushQueued = false
    var reportedUnwritable = false
    var closeError: IOError?

    var sending = ByteQueue()
    var pending = ByteQueue()
    /// Input that arrived after `pauseReading` but before the kernel stopped the recv.
    var heldInput: [UInt8] = []

    var handOffTarget: (EventLoopHandle, @Sendable () -> any ConnectionHandler)?

    var deadlineAt: UInt64 = 0
    var deadlineTimerArmed = false
    var connectAddress: UnsafeMutableRawPointer?
    private var cachedRemote: SocketAddress?

    /// Anything the owner wants to hang on the connection (e.g. a per-IP key).
    public var userTag: Int = 0

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

    // MARK: writing

    public func write(_ bytes: UnsafeRawBufferPointer) {
        guard state == .open || state == .connecting, bytes.count > 0 else { return }
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
        guard let tls, tls.hasOutboundCiphertext else { return }
        tls.takeOutboundCiphertext(into: &loop.tlsScratch)
        loop.tlsScratch.withUnsafeBytes { pending.append($0) }
        loop.tlsScratch.removeAll(keepingCapacity: true)
        loop.queueFlush(self)
    }

    // MARK: reading control

    /// Stops delivering input until `resumeReading`. Input already on its way is held, not lost.
    public func pauseReading() {
        guard !readPaused else { return }
        readPaused = true
        if recvArmed { loop.cancelRecv(self) }
    }

    public func resumeReading() {
        guard readPaused else { return }
        readPaused = false
        if !heldInput.isEmpty {
            let held = heldInput
            heldInput = []
            held.withUnsafeBytes { deliver($0) }
        } else if let tls, state == .open {
            readTLS(tls)
        }
        if state == .open && !readPaused && !recvArmed { loop.armRecv(self) }
    }

    // MARK: deadlines

    /// Sets (or with nil clears) a deadline relative to now. Cheap to call on every read:
    /// the wheel is only touched when no timer is armed yet.
    public func setDeadline(milliseconds: UInt64?) {
        guard let milliseconds else {
            deadlineAt = 0
            return
        }
        deadlineAt = loop.nowMilliseconds &+ milliseconds
        if !deadlineTimerArmed {
            deadlineTimerArmed = true
            _ = loop.wheel.schedule(atMilliseconds: deadlineAt, target: .connection(slot: slot, generation: generation))
        }
    }

    func deadlineTimerFired() {
        deadlineTimerArmed = false
        guard deadlineAt != 0, state != .closed else { return }
        let now = loop.nowMilliseconds
        if now < deadlineAt {
            deadlineTimerArmed = true
            _ = loop.wheel.schedule(atMilliseconds: deadlineAt, target: .connection(slot: slot, generation: generation))
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

    // MARK: hand-off

    /// Moves this connection to another worker (e.g. the one that owns the user's session).
    /// Unsent output is flushed first and input that arrives meanwhile is held; then the fd
    /// (and its TLS state) is adopted by `target`, where `makeHandler` builds the new handler,
    /// which hears `connectionDidOpen` and then the held input. This loop's handler is dropped.
    /// `unread` is input the current handler received but leaves for the new one.
    public func handOff(to target: EventLoopHandle, unread: [UInt8] = [],
                        makeHandler: @escaping @Sendable () -> any ConnectionHandler) {
        guard state == .open else { return }
        state = .handingOff
        heldInput = unread + heldInput
        handOffTarget = (target, makeHandler)
        if recvArmed { loop.cancelRecv(self) }
        loop.queueFlush(self)
        loop.finishHandOffIfReady(self)
    }

    // MARK: closing

    public func close(_ mode: CloseMode = .graceful) {
        switch mode {
        case .abort:
            abort(nil)
        case .graceful:
            guard state == .open || state == .connecting else { return }
            if state == .connecting { abort(nil); return }
            state = .closing
            if let tls {
                tls.shutdown()
                moveCiphertext()
            }
            setDeadline(milliseconds: loop.configuration.closeTimeoutMilliseconds)
            if sending.isEmpty && pending.isEmpty && !sendInFlight { startLinger() } else { loop.queueFlush(self) }
        }
    }

    /// All output is out: send FIN and keep reading (discarding) until the peer's EOF or the
    /// linger deadline, so the peer receives our last bytes instead of a reset.
    func startLinger() {
        guard state == .closing else { return }
        state = .lingering
        Glibc.shutdown(fd, Int32(SHUT_WR))
        setDeadline(milliseconds: loop.configuration.lingerMilliseconds)
        heldInput = []
        if !recvArmed { loop.armRecv(self) }
    }

    func abort(_ error: IOError?) {
        guard state != .aborting && state != .closed else { return }
        if closeError == nil { closeError = error }
        state = .aborting
        sending.release()
        pending.release()
        heldInput = []
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
        loop.plaintextScratch.withUnsafeMutableBytes { scratch in
            while state == .open {
                switch tls.readPlaintext(into: scratch) {
                case .bytes(let n):
                    if n > 0 { handler?.connection(self, didRead: UnsafeRawBufferPointer(rebasing: scratch[0..<n])) }
                case .wantMoreCiphertext:
                    moveCiphertext()
                    return
                case .closed:
                    moveCiphertext()
                    handler?.connectionDidReadEOF(self) ?? close()
                    return
                case .failed(let message):
                    moveCiphertext()
                    abort(IOError(errno: EPROTO, operation: "tls: \(message)"))
                    return
                }
                if readPaused { return }
            }
        }
        moveCiphertext()
    }

    func readEOF() {
        switch state {
        case .open:
            if let handler { handler.connectionDidReadEOF(self) } else { close() }
        case .lingering:
            abort(nil)
        default:
            break
        }
    }
}
#endif
