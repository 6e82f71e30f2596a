#if os(Linux)
import Glibc
internal import CURing
import Synchronization
import TetherTLS

/// What a completion belongs to, packed into the SQE's user_data: 8 bits of operation,
/// 32 bits of slot, 24 bits of slot generation (so a late completion never reaches a reused slot).
enum Op: UInt8 {
    case accept = 1, recv, send, connect, cancel, wake, cancelRecv
}

@inline(__always)
func packUserData(_ op: Op, slot: Int32, generation: UInt32) -> UInt64 {
    UInt64(op.rawValue) | (UInt64(UInt32(bitPattern: slot)) << 8) | (UInt64(generation & 0xFF_FFFF) << 40)
}

/// One io_uring event loop, owned by one thread (SINGLE_ISSUER|DEFER_TASKRUN). Everything on it
/// (connections, listeners, timers) is touched only from that thread.
public final class EventLoop {
    public let index: Int
    public let configuration: IOConfiguration
    public let stats: IOStats
    /// Client-mode pacing (the load driver): runs once per iteration, after completions and
    /// timers. With `maximumWaitNanoseconds` it runs at least that often, finer than the
    /// timer wheel's 10 ms ticks and without a thread posting jobs.
    public var iterationHook: (() -> Void)?
    /// Longest the loop sleeps in the kernel; nil: until the next completion or timer.
    public var maximumWaitNanoseconds: UInt64?
    let mailbox: Mailbox
    let uring: UnsafeMutablePointer<io_uring>
    let buffers: BufferRing
    var wheel: TimerWheel
    /// The loop's clock, refreshed as soon as the kernel returns (before any handler runs).
    public private(set) var nowMilliseconds: UInt64

    private var connections: [Connection?] = []
    private var generations: [UInt32] = []
    private var freeSlots: [Int32] = []
    private var listeners: [Listener] = []
    private var flushQueue: [Connection] = []
    private var starved: [Connection] = []
    private var stopping = false
    private var ringClosed = false
    private let wakeBuffer: UnsafeMutablePointer<UInt64>
    private var cqeBatch: [(userData: UInt64, res: Int32, flags: UInt32)] = []
    private static let cqeBatchLimit = 1024
    private let cqePointers: UnsafeMutablePointer<UnsafeMutablePointer<io_uring_cqe>?>
    private var dueTargets: [TimerTarget] = []
    private var dueClosures: [() -> Void] = []
    /// `runSoon` work: after the current batch of completions, before the next wait.
    private var soon: [() -> Void] = []

    // Counters published to `stats` once per iteration.
    private var submissions: UInt64 = 0
    private var completions: UInt64 = 0
    private var exhaustions: UInt64 = 0
    private var iterations: UInt64 = 0
    private var acceptedCount: UInt64 = 0
    public private(set) var connectionCount = 0

    /// Plaintext scratch buffers for TLS reads, one per callback nesting level.
    private var plaintextScratch: [UnsafeMutableRawBufferPointer] = []
    private var plaintextDepth = 0

    init(index: Int, configuration: IOConfiguration, mailbox: Mailbox, stats: IOStats) throws(IOError) {
        self.index = index
        self.configuration = configuration
        self.mailbox = mailbox
        self.stats = stats
        self.uring = UnsafeMutablePointer<io_uring>.allocate(capacity: 1)
        self.uring.initialize(to: io_uring())
        var params = io_uring_params()
        params.flags = TETHER_SETUP_SINGLE_ISSUER | TETHER_SETUP_DEFER_TASKRUN | TETHER_SETUP_SUBMIT_ALL | TETHER_SETUP_CQSIZE
        params.cq_entries = configuration.ringEntries * 8
        let rc = io_uring_queue_init_params(configuration.ringEntries, uring, &params)
        guard rc == 0 else {
            uring.deallocate()
            throw IOError(errno: -rc, operation: "io_uring_queue_init_params")
        }
        do {
            self.buffers = try BufferRing(uring: uring, count: configuration.receiveBufferCount,
                                          bufferSize: configuration.receiveBufferSize, group: 0)
        } catch {
            io_uring_queue_exit(uring)
            uring.deallocate()
            throw error
        }
        self.nowMilliseconds = EventLoop.monotonicMilliseconds()
        self.wheel = TimerWheel(nowMilliseconds: nowMilliseconds)
        self.wakeBuffer = .allocate(capacity: 1)
        self.wakeBuffer.initialize(to: 0)
        self.cqePointers = .allocate(capacity: EventLoop.cqeBatchLimit)
        // A registered ring fd spares the kernel an fd lookup on every io_uring_enter.
        _ = io_uring_register_ring_fd(uring)
        armWake()
    }

    deinit {
        if !ringClosed { io_uring_queue_exit(uring) }
        uring.deallocate()
        wakeBuffer.deallocate()
        cqePointers.deallocate()
        for buffer in plaintextScratch { buffer.deallocate() }
    }

    public static func monotonicMilliseconds() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) * 1000 + UInt64(ts.tv_nsec) / 1_000_000
    }

    func acquirePlaintextScratch() -> UnsafeMutableRawBufferPointer {
        if plaintextDepth == plaintextScratch.count {
            plaintextScratch.append(.allocate(byteCount: 64 * 1024, alignment: 16))
        }
        plaintextDepth += 1
        return plaintextScratch[plaintextDepth - 1]
    }

    func releasePlaintextScratch() {
        plaintextDepth -= 1
    }

    // MARK: SQEs

    /// A free submission entry, or nil once the ring is gone (loop torn down).
    @inline(__always)
    private func sqe() -> UnsafeMutablePointer<io_uring_sqe>? {
        guard !ringClosed else { return nil }
        if let s = io_uring_get_sqe(uring) { return s }
        // Submission queue full: hand what we have to the kernel and try again.
        let n = io_uring_submit(uring)
        if n > 0 { submissions &+= UInt64(n) }
        return io_uring_get_sqe(uring)
    }

    private func armWake() {
        guard let s = sqe() else { return }
        io_uring_prep_read(s, mailbox.eventFD, wakeBuffer, 8, 0)
        io_uring_sqe_set_data64(s, packUserData(.wake, slot: 0, generation: 0))
    }

    func armRecv(_ c: Connection) {
        guard !c.recvArmed, let s = sqe() else { return }
        tether_prep_recv_multishot(s, c.fd, buffers.group)
        io_uring_sqe_set_data64(s, packUserData(.recv, slot: c.slot, generation: c.generation))
        c.recvArmed = true
    }

    func cancelRecv(_ c: Connection) {
        guard let s = sqe() else { return }
        io_uring_prep_cancel64(s, packUserData(.recv, slot: c.slot, generation: c.generation), 0)
        io_uring_sqe_set_data64(s, packUserData(.cancelRecv, slot: c.slot, generation: c.generation))
        c.cancelsInFlight += 1
        c.recvCancelPending = true
    }

    func cancelAll(_ c: Connection) {
        guard let s = sqe() else { return }
        io_uring_prep_cancel_fd(s, c.fd, UInt32(IORING_ASYNC_CANCEL_ALL))
        io_uring_sqe_set_data64(s, packUserData(.cancel, slot: c.slot, generation: c.generation))
        c.cancelsInFlight += 1
    }

    private func submitSend(_ c: Connection) {
        let bytes = c.sending.readableBytes
        guard let s = sqe() else { return }
        tether_prep_send(s, c.fd, bytes.baseAddress, bytes.count)
        io_uring_sqe_set_data64(s, packUserData(.send, slot: c.slot, generation: c.generation))
        c.sendInFlight = true
    }

    func queueFlush(_ c: Connection) {
        guard !c.flushQueued else { return }
        c.flushQueued = true
        flushQueue.append(c)
    }

    private func flushQueued() {
        var i = 0
        while i < flushQueue.count {
            let c = flushQueue[i]
            c.flushQueued = false
            startSendIfIdle(c)
            i += 1
        }
        flushQueue.removeAll(keepingCapacity: true)
    }

    private func startSendIfIdle(_ c: Connection) {
        guard !c.sendInFlight, c.state != .aborting, c.state != .closed else { return }
        if c.sending.isEmpty { c.sending.exchange(with: &c.pending) }
        if !c.sending.isEmpty {
            submitSend(c)
        } else if c.writeShutdownRequested && !c.writeShutdownDone && c.state == .open {
            c.writeShutdownDone = true
            Glibc.shutdown(c.fd, Int32(SHUT_WR))
        } else if c.state == .closing {
            c.startLinger()
        } else if c.state == .handingOff {
            finishHandOffIfReady(c)
        }
    }

    func finishHandOffIfReady(_ c: Connection) {
        guard c.state == .handingOff, c.isQuiescent, c.sending.isEmpty, c.pending.isEmpty,
              let (target, makeHandler) = c.handOffTarget else { return }
        // Leave the fd open: it now belongs to the target loop.
        c.state = .closed
        c.handOffTarget = nil
        releaseSlot(c)
        c.handler = nil
        let transfer = HandOff(fd: c.fd, tls: c.tls, unread: c.handOffUnread, held: c.heldInput, eof: c.eofPending)
        c.tls = nil
        c.heldInput = []
        c.handOffUnread = []
        let posted = target.mailbox.post { loop in
            loop.adopt(transfer, handler: makeHandler())
        }
        if !posted { Glibc.close(transfer.fd) }
    }

    /// Takes over a connection handed off by another loop.
    func adopt(_ transfer: HandOff, handler: any ConnectionHandler) {
        guard !stopping, !ringClosed else {
            Glibc.close(transfer.fd)
            return
        }
        let c = register(fd: transfer.fd, state: .open)
        c.handler = handler
        c.tls = transfer.tls
        armRecv(c)
        handler.connectionDidOpen(c)
        if !transfer.unread.isEmpty, c.state == .open {
            transfer.unread.withUnsafeBytes { handler.connection(c, didRead: $0) }
        }
        if !transfer.held.isEmpty { transfer.held.withUnsafeBytes { c.deliver($0) } }
        if transfer.eof { c.readEOF() }
    }

    /// Takes over a connected socket created elsewhere (a blocking connect on a background
    /// thread, one end of a socketpair). The handler hears `connectionDidOpen` at once.
    @discardableResult
    public func adopt(fileDescriptor fd: Int32, handler: any ConnectionHandler) -> Connection? {
        guard !stopping, !ringClosed else {
            Glibc.close(fd)
            return nil
        }
        let c = register(fd: fd, state: .open)
        c.handler = handler
        armRecv(c)
        handler.connectionDidOpen(c)
        return c
    }

    // MARK: connections

    private func allocateSlot() -> (Int32, UInt32) {
        if let slot = freeSlots.popLast() { return (slot, generations[Int(slot)]) }
        let slot = Int32(connections.count)
        connections.append(nil)
        generations.append(0)
        return (slot, 0)
    }

    private func register(fd: Int32, state: Connection.State) -> Connection {
        let (slot, generation) = allocateSlot()
        let c = Connection(loop: self, fd: fd, slot: slot, generation: generation, state: state)
        connections[Int(slot)] = c
        connectionCount += 1
        return c
    }

    private func releaseSlot(_ c: Connection) {
        connections[Int(c.slot)] = nil
        generations[Int(c.slot)] = (generations[Int(c.slot)] &+ 1) & 0xFF_FFFF
        freeSlots.append(c.slot)
        connectionCount -= 1
        c.cancelDeadline()
    }

    func finishIfQuiescent(_ c: Connection) {
        if c.state == .handingOff { finishHandOffIfReady(c); return }
        guard c.state == .aborting, c.isQuiescent else { return }
        c.state = .closed
        Glibc.close(c.fd)
        releaseSlot(c)
        c.sending.release()
        c.tls = nil
        let handler = c.handler
        c.handler = nil
        handler?.connectionDidClose(c, error: c.closeError)
    }

    @inline(__always)
    private func connection(slot: Int32, generation: UInt32) -> Connection? {
        let i = Int(slot)
        guard i >= 0, i < connections.count, generations[i] == generation & 0xFF_FFFF else { return nil }
        return connections[i]
    }

    /// Opens an outbound connection (client mode). The handler hears `connectionDidOpen` or,
    /// on failure, `connectionDidClose` with the error.
    @discardableResult
    public func connect(to remote: SocketAddress, from source: SocketAddress? = nil,
                        tls: TLSContext? = nil, serverName: String? = nil,
                        handler: any ConnectionHandler) -> Connection? {
        guard !ringClosed, !stopping else {
            handler.connectionDidClose(Connection.failed(loop: self), error: IOError(errno: ECANCELED, operation: "connect"))
            return nil
        }
        let fd: Int32
        do { fd = try Socket.makeClient(for: remote, source: source) } catch {
            handler.connectionDidClose(Connection.failed(loop: self), error: error)
            return nil
        }
        if remote.family != .unix { Socket.setNoDelay(fd) }
        let c = register(fd: fd, state: .connecting)
        c.handler = handler
        if let tls {
            do { c.tls = try TLSConnection(context: tls, serverName: serverName) } catch {
                c.abort(IOError(errno: EPROTO, operation: "tls: \(error)"))
                return nil
            }
        }
        guard let storage = malloc(MemoryLayout<sockaddr_storage>.size) else {
            c.abort(IOError(errno: ENOMEM, operation: "connect"))
            return nil
        }
        c.connectAddress = storage
        let len = remote.withSockAddr { addr, len in
            storage.copyMemory(from: addr, byteCount: Int(len))
            return len
        }
        guard let s = sqe() else {
            c.abort(IOError(errno: ECANCELED, operation: "connect"))
            return nil
        }
        io_uring_prep_connect(s, fd, storage.assumingMemoryBound(to: sockaddr.self), len)
        io_uring_sqe_set_data64(s, packUserData(.connect, slot: c.slot, generation: c.generation))
        c.connectInFlight = true
        return c
    }

    // MARK: listeners

    /// Accepts connections on a listening socket with multishot accept. `makeHandler` is called
    /// on this loop for each new connection.
    public func startAccepting(listenFD: Int32, tls: TLSContextBox? = nil,
                               makeHandler: @escaping (Connection) -> any ConnectionHandler) {
        let listener = Listener(fd: listenFD, index: Int32(listeners.count), tls: tls, makeHandler: makeHandler)
        listeners.append(listener)
        armAccept(listener)
    }

    /// Stops accepting on every listener of this loop and closes the listening sockets.
    public func stopAccepting() {
        stopAccepting(where: { _ in true })
    }

    /// Stops accepting on the listeners whose descriptor matches (drain keeps the admin
    /// listener open so that readiness and metrics stay visible).
    public func stopAccepting(where matches: (Int32) -> Bool) {
        for l in listeners where !l.closed && matches(l.fd) {
            l.closed = true
            if !l.armed {
                // Backing off after EMFILE: no completion will come to close it later.
                l.fdClosed = true
                Glibc.close(l.fd)
                continue
            }
            Glibc.shutdown(l.fd, Int32(SHUT_RDWR))
            guard let s = sqe() else { continue }
            io_uring_prep_cancel_fd(s, l.fd, UInt32(IORING_ASYNC_CANCEL_ALL))
            io_uring_sqe_set_data64(s, packUserData(.cancel, slot: -1, generation: 0))
        }
    }

    private func armAccept(_ l: Listener) {
        guard !l.closed, let s = sqe() else { return }
        io_uring_prep_multishot_accept(s, l.fd, nil, nil, tether_sock_cloexec())
        io_uring_sqe_set_data64(s, packUserData(.accept, slot: l.index, generation: 0))
        l.armed = true
    }

    private func handleAccept(_ l: Listener, res: Int32, flags: UInt32) {
        if res >= 0 {
            acceptedCount &+= 1
            if l.closed {
                Glibc.close(res)
            } else {
                let c = register(fd: res, state: .open)
                if let box = l.tls {
                    do { c.tls = try TLSConnection(context: box.current) } catch {
                        c.abort(IOError(errno: EPROTO, operation: "tls: \(error)"))
                    }
                }
                if c.state == .open {
                    let handler = l.makeHandler(c)
                    c.handler = handler
                    armRecv(c)
                    handler.connectionDidOpen(c)
                }
            }
        }
        if flags & TETHER_CQE_F_MORE == 0 {
            l.armed = false
            if l.closed {
                if !l.fdClosed { l.fdClosed = true; Glibc.close(l.fd) }
            } else if res == -EMFILE || res == -ENFILE || res == -ENOBUFS || res == -ENOMEM {
                // Out of descriptors: back off instead of spinning on a failing accept.
                _ = wheel.schedule(atMilliseconds: nowMilliseconds + 100, target: .listenerRearm(l.index))
            } else {
                armAccept(l)
            }
        }
    }

    // MARK: timers

    /// Runs `body` on this loop after `milliseconds`. Timers are cheap (hashed wheel, 10 ms ticks).
    @discardableResult
    public func schedule(afterMilliseconds milliseconds: UInt64, _ body: @escaping () -> Void) -> TimerID {
        wheel.schedule(atMilliseconds: nowMilliseconds &+ milliseconds, body)
    }

    public func cancel(_ timer: TimerID) {
        wheel.cancel(timer)
    }

    private func runTimers() {
        wheel.expire(nowMilliseconds: nowMilliseconds, into: &dueTargets, closuresDue: &dueClosures)
        guard !dueTargets.isEmpty || !dueClosures.isEmpty else { return }
        for target in dueTargets {
            switch target {
            case .connection(let slot, let generation):
                connection(slot: slot, generation: generation)?.deadlineTimerFired()
            case .listenerRearm(let index):
                if Int(index) < listeners.count, !listeners[Int(index)].armed { armAccept(listeners[Int(index)]) }
            case .closure, .none:
                break
            }
        }
        dueTargets.removeAll(keepingCapacity: true)
        for body in dueClosures { body() }
        dueClosures.removeAll(keepingCapacity: true)
    }

    // MARK: the loop

    /// Runs until `stop()`; then closes every connection and listener of this loop.
    /// Runs `body` on this loop once the current callback chain has unwound (before the loop
    /// waits again): for work that must not re-enter the caller, such as resuming a
    /// connection whose held input would be delivered inside the caller's bookkeeping.
    public func runSoon(_ body: @escaping () -> Void) {
        soon.append(body)
    }

    private func runSoonWork() {
        while !soon.isEmpty {
            let work = soon
            soon = []
            for body in work { body() }
        }
    }

    public func run() {
        while !stopping {
            runSoonWork()
            flushQueued()
            rearmStarved()
            waitAndProcess()
            runTimers()
            iterationHook?()
            iterations &+= 1
            publishStats()
        }
        tearDown()
    }

    public func stop() { stopping = true }

    /// Closes every connection of this loop gracefully: queued output is flushed before the FIN,
    /// so a response that is complete but not yet sent still reaches its client (end of a drain).
    public func closeAllConnections() {
        for case let c? in Array(connections) where c.isOpen {
            c.close(.graceful)
        }
    }

    private func waitAndProcess() {
        var cqe: UnsafeMutablePointer<io_uring_cqe>? = nil
        let ready = io_uring_cq_ready(uring)
        let wait: UInt32 = ready > 0 || !flushQueue.isEmpty || !soon.isEmpty ? 0 : 1
        let rc: Int32
        if wait == 1, let ns = waitLimitNanoseconds() {
            var ts = __kernel_timespec(tv_sec: Int64(ns / 1_000_000_000), tv_nsec: Int64(ns % 1_000_000_000))
            rc = io_uring_submit_and_wait_timeout(uring, &cqe, 1, &ts, nil)
        } else {
            rc = io_uring_submit_and_wait(uring, wait)
        }
        if rc > 0 { submissions &+= UInt64(rc) }
        // Handlers set deadlines relative to this: it must not be the time before the sleep.
        nowMilliseconds = EventLoop.monotonicMilliseconds()
        drainCompletions()
    }

    private func waitLimitNanoseconds() -> UInt64? {
        let timer = wheel.millisecondsUntilNextTimer(nowMilliseconds: nowMilliseconds).map { $0 &* 1_000_000 }
        guard let cap = maximumWaitNanoseconds else { return timer }
        return min(timer ?? cap, cap)
    }

    private func drainCompletions() {
        while true {
            // Copy the batch out and release the CQ slots first: handlers may submit (and so
            // enter the kernel) while we dispatch.
            let n = Int(io_uring_peek_batch_cqe(uring, cqePointers, UInt32(EventLoop.cqeBatchLimit)))
            if n == 0 { return }
            cqeBatch.removeAll(keepingCapacity: true)
            for i in 0..<n {
                guard let c = cqePointers[i] else { continue }
                cqeBatch.append((c.pointee.user_data, c.pointee.res, c.pointee.flags))
            }
            io_uring_cq_advance(uring, UInt32(n))
            completions &+= UInt64(n)
            for entry in cqeBatch { dispatch(userData: entry.userData, res: entry.res, flags: entry.flags) }
            runSoonWork()
            flushQueued()
            if n < EventLoop.cqeBatchLimit { return }
        }
    }

    private func dispatch(userData: UInt64, res: Int32, flags: UInt32) {
        guard let op = Op(rawValue: UInt8(truncatingIfNeeded: userData)) else { return }
        let slot = Int32(bitPattern: UInt32(truncatingIfNeeded: userData >> 8))
        let generation = UInt32(truncatingIfNeeded: userData >> 40)
        switch op {
        case .recv:
            let c = connection(slot: slot, generation: generation)
            if flags & TETHER_CQE_F_BUFFER != 0 {
                let bid = UInt16(truncatingIfNeeded: flags >> TETHER_CQE_BUFFER_SHIFT)
                if res > 0, let c { c.deliver(buffers.bytes(id: bid, length: Int(res))) }
                buffers.recycle(id: bid)
            }
            guard let c else { return }
            if flags & TETHER_CQE_F_MORE == 0 { c.recvArmed = false }
            if res == 0 {
                c.readEOF()
            } else if res == -ENOBUFS {
                exhaustions &+= 1
                if !c.starved && (c.state == .open || c.state == .lingering) {
                    c.starved = true
                    starved.append(c)
                }
            } else if res < 0 && res != -ECANCELED {
                c.abort(IOError(errno: -res, operation: "recv"))
            } else if !c.recvArmed && !c.readPaused && !c.starved && (c.state == .open || c.state == .lingering) {
                // The multishot ended (or a pause's cancel landed after a resume): keep reading.
                armRecv(c)
            }
            finishIfQuiescent(c)
        case .send:
            guard let c = connection(slot: slot, generation: generation) else { return }
            c.sendInFlight = false
            if c.state == .aborting {
                c.sending.release()
                finishIfQuiescent(c)
                return
            }
            if res < 0 {
                c.abort(IOError(errno: -res, operation: "send"))
                return
            }
            c.sending.consume(Int(res))
            startSendIfIdle(c)
            if c.reportedUnwritable && c.pendingWriteBytes <= configuration.writeLowWatermark && c.state == .open {
                c.reportedUnwritable = false
                c.sendNotificationWanted = false
                c.handler?.connectionWritable(c)
            } else if c.sendNotificationWanted && c.state == .open {
                c.sendNotificationWanted = false
                c.handler?.connectionWritable(c)
            }
        case .connect:
            guard let c = connection(slot: slot, generation: generation) else { return }
            c.connectInFlight = false
            free(c.connectAddress)
            c.connectAddress = nil
            if c.state == .aborting { finishIfQuiescent(c); return }
            if res < 0 {
                c.abort(IOError(errno: -res, operation: "connect"))
                return
            }
            c.state = .open
            if let tls = c.tls {
                tls.startHandshake()
                c.moveCiphertext()
            }
            armRecv(c)
            c.handler?.connectionDidOpen(c)
            queueFlush(c)
        case .cancel, .cancelRecv:
            guard slot >= 0, let c = connection(slot: slot, generation: generation) else { return }
            c.cancelsInFlight -= 1
            if op == .cancelRecv { c.recvCancelPending = false }
            finishIfQuiescent(c)
        case .accept:
            guard Int(slot) < listeners.count else { return }
            handleAccept(listeners[Int(slot)], res: res, flags: flags)
        case .wake:
            for job in mailbox.drain() { job(self) }
            if !stopping { armWake() }
        }
    }

    /// Re-arms receivers that ran out of provided buffers, but only as many as buffers came
    /// back: re-arming all of them at once just starves them again (livelock).
    private func rearmStarved() {
        guard !starved.isEmpty else {
            buffers.recycledSinceCheck = 0
            return
        }
        var budget = Swift.max(1, buffers.recycledSinceCheck)
        buffers.recycledSinceCheck = 0
        var kept: [Connection] = []
        for c in starved {
            guard c.state == .open || c.state == .lingering else {
                c.starved = false
                continue
            }
            if budget > 0 || c.recvArmed {
                c.starved = false
                if !c.recvArmed && !c.readPaused {
                    armRecv(c)
                    budget -= 1
                }
            } else {
                kept.append(c)
            }
        }
        starved = kept
    }

    private func publishStats() {
        stats.submissions.store(submissions, ordering: .relaxed)
        stats.completions.store(completions, ordering: .relaxed)
        stats.bufferExhaustions.store(exhaustions, ordering: .relaxed)
        stats.loopIterations.store(iterations, ordering: .relaxed)
        stats.accepted.store(acceptedCount, ordering: .relaxed)
        stats.openConnections.store(connectionCount, ordering: .relaxed)
    }

    private func tearDown() {
        // Refuse new jobs, then run those already queued: a hand-off among them just closes
        // its fd (adopt refuses while stopping).
        for job in mailbox.close() { job(self) }
        for l in listeners where !l.fdClosed {
            l.fdClosed = true
            l.closed = true
            Glibc.close(l.fd)
        }
        let live = connections.compactMap { $0 }
        // Mark everything closed before any callback runs, so no handler re-enters the ring.
        for c in live {
            c.state = .closed
            Glibc.shutdown(c.fd, Int32(SHUT_RDWR))
        }
        drainInFlight(live)
        io_uring_queue_exit(uring)
        ringClosed = true
        for c in live {
            Glibc.close(c.fd)
            c.sending.release()
            c.pending.release()
            let handler = c.handler
            c.handler = nil
            c.tls = nil
            handler?.connectionDidClose(c, error: IOError(errno: ECANCELED, operation: "event loop shut down"))
        }
        connections.removeAll()
        connectionCount = 0
        flushQueue.removeAll()
        starved.removeAll()
        publishStats()
    }

    /// Cancels every operation and waits (bounded) for their completions, so the kernel no
    /// longer touches send buffers when they are freed.
    private func drainInFlight(_ live: [Connection]) {
        for c in live where c.recvArmed || c.sendInFlight || c.connectInFlight {
            guard let s = sqe() else { break }
            io_uring_prep_cancel_fd(s, c.fd, UInt32(IORING_ASYNC_CANCEL_ALL))
            io_uring_sqe_set_data64(s, packUserData(.cancel, slot: c.slot, generation: c.generation))
            c.cancelsInFlight += 1
        }
        let deadline = EventLoop.monotonicMilliseconds() + 500
        while EventLoop.monotonicMilliseconds() < deadline {
            if live.allSatisfy({ $0.isQuiescent }) { return }
            var cqe: UnsafeMutablePointer<io_uring_cqe>? = nil
            var ts = __kernel_timespec(tv_sec: 0, tv_nsec: 10_000_000)
            _ = io_uring_submit_and_wait_timeout(uring, &cqe, 1, &ts, nil)
            let n = Int(io_uring_peek_batch_cqe(uring, cqePointers, UInt32(EventLoop.cqeBatchLimit)))
            for i in 0..<n {
                guard let e = cqePointers[i] else { continue }
                let userData = e.pointee.user_data
                let flags = e.pointee.flags
                guard let op = Op(rawValue: UInt8(truncatingIfNeeded: userData)) else { continue }
                if op == .recv, flags & TETHER_CQE_F_BUFFER != 0 {
                    buffers.recycle(id: UInt16(truncatingIfNeeded: flags >> TETHER_CQE_BUFFER_SHIFT))
                }
                let slot = Int32(bitPattern: UInt32(truncatingIfNeeded: userData >> 8))
                guard let c = connection(slot: slot, generation: UInt32(truncatingIfNeeded: userData >> 40)) else { continue }
                switch op {
                case .recv: if flags & TETHER_CQE_F_MORE == 0 { c.recvArmed = false }
                case .send: c.sendInFlight = false
                case .connect: c.connectInFlight = false
                case .cancel, .cancelRecv: c.cancelsInFlight -= 1
                case .accept, .wake: break
                }
            }
            io_uring_cq_advance(uring, UInt32(n))
        }
    }
}

/// A connection in transit between loops. The TLS state moves with it; it is used by one
/// thread at a time (the sender has dropped it before the receiver picks it up).
struct HandOff: @unchecked Sendable {
    let fd: Int32
    let tls: TLSConnection?
    /// Plaintext the previous handler had read but not consumed.
    let unread: [UInt8]
    /// Raw input (ciphertext under TLS) that arrived during the hand-off.
    let held: [UInt8]
    let eof: Bool
}

final class Listener {
    let fd: Int32
    let index: Int32
    let tls: TLSContextBox?
    let makeHandler: (Connection) -> any ConnectionHandler
    var armed = false
    var closed = false
    var fdClosed = false

    init(fd: Int32, index: Int32, tls: TLSContextBox?, makeHandler: @escaping (Connection) -> any ConnectionHandler) {
        self.fd = fd
        self.index = index
        self.tls = tls
        self.makeHandler = makeHandler
    }
}

extension Connection {
    /// A placeholder passed to a handler whose outbound connect failed before a socket existed.
    static func failed(loop: EventLoop) -> Connection {
        Connection(loop: loop, fd: -1, slot: -1, generation: 0, state: .closed)
    }
}
#endif
