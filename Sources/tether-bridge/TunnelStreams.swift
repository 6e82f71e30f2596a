import NIOCore
import TetherTunnel

// The stream half of TunnelConnection: OPEN → local request, DATA both ways under flow
// control, RESET. Runs on the tunnel's loop like the rest of it.
extension TunnelConnection {
    func openStream(_ id: StreamID, _ head: TunnelRequestHead, endStream: Bool) {
        // (OPENs the multiplexer refuses after a GOAWAY never get here.)
        status.streamStarted()
        guard phase == .ready else {
            // We are closing the tunnel: the relay may retry elsewhere.
            mux.reset(id, code: .refusedStream, reason: "tunnel closing")
            status.streamEnded(.failed)
            return
        }
        switch forwarder.router.route(method: head.method, target: head.target) {
        case .refuse(let reason):
            logger.warning("stream \(id): refused \(head.method) \(head.target): \(reason)")
            mux.reset(id, code: .destinationRefused, reason: reason)
            status.streamEnded(.failed)
        case .forward(let route):
            logger.debug("stream \(id): \(head.method) \(head.target)")
            let context = StreamContext(id: id)
            var body: RequestBody?
            if !endStream {
                let (chunks, continuation) = AsyncThrowingStream.makeStream(of: ByteBuffer.self)
                context.body = continuation
                body = RequestBody(chunks: chunks, onConsumed: { [self] n in
                    loop.execute { self.consumed(id, n) }
                })
            }
            streams[id] = context
            let io = StreamIO(tunnel: self, id: id)
            context.task = Task { [forwarder] in
                await forwarder.serve(route: route, head: head, body: body, io: io)
            }
        }
    }

    func receiveData(_ id: StreamID, _ bytes: ArraySlice<UInt8>, endStream: Bool) {
        guard let context = streams[id], let body = context.body else {
            // The local request is over (answered early, or failed): drop the bytes, but return
            // their credit so the relay's window doesn't shrink for nothing.
            if !bytes.isEmpty { mux.consumed(id, bytes: bytes.count) }
            return
        }
        if !bytes.isEmpty {
            if case .terminated = body.yield(ByteBuffer(bytes: bytes)) {
                mux.consumed(id, bytes: bytes.count)
            } else {
                context.unconsumed += bytes.count
            }
        }
        if endStream {
            body.finish()
            context.body = nil
        }
    }

    func consumed(_ id: StreamID, _ n: Int) {
        guard let context = streams[id] else { return }  // already credited when it ended
        context.unconsumed -= n
        mux.consumed(id, bytes: n)
        flush()
    }

    func respond(_ id: StreamID, _ head: TunnelResponseHead) throws(StreamGone) {
        guard streams[id] != nil else { throw StreamGone() }
        mux.sendResponse(id, head, endStream: false)
        flush()
    }

    func send(_ id: StreamID, _ chunk: ByteBuffer, _ continuation: CheckedContinuation<Void, any Error>) {
        guard let context = streams[id] else {
            continuation.resume(throwing: StreamGone())
            return
        }
        context.pending = PendingSend(buffer: chunk, continuation: continuation)
        pushPending(context)
        flush()
    }

    /// Hands as much of the waiting chunk to the multiplexer as the windows allow; the stream's
    /// task resumes (and reads the next local chunk) only once all of it is taken.
    func pushPending(_ context: StreamContext) {
        guard var pending = context.pending else { return }
        let taken = pending.buffer.withUnsafeReadableBytes { mux.sendData(context.id, $0, endStream: false) }
        pending.buffer.moveReaderIndex(forwardBy: taken)
        if pending.buffer.readableBytes == 0 {
            context.pending = nil
            pending.continuation.resume()
        } else {
            context.pending = pending
        }
    }

    func end(_ id: StreamID) throws(StreamGone) {
        guard let context = streams.removeValue(forKey: id) else { throw StreamGone() }
        _ = mux.sendData(id, ArraySlice<UInt8>(), endStream: true)
        context.release(mux: &mux)
        status.streamEnded(.served)
        flush()
        closeIfDrained()
    }

    func fail(_ id: StreamID, _ code: TunnelErrorCode, reason: String) {
        guard let context = streams.removeValue(forKey: id) else { return }
        logger.info("stream \(id) failed: \(reason)")
        mux.reset(id, code: code, reason: reason)
        context.abort()
        context.release(mux: &mux)
        status.streamEnded(.failed)
        flush()
        closeIfDrained()
    }

    /// The task ended on cancellation; normally the stream is gone already.
    func cancelled(_ id: StreamID) {
        fail(id, .internalError, reason: "stream task cancelled")
    }
}

/// Per-stream state, loop-confined like its tunnel.
final class StreamContext {
    let id: StreamID
    /// Request body still arriving (nil once END_STREAM came or the stream ended).
    var body: AsyncThrowingStream<ByteBuffer, Error>.Continuation?
    /// Bytes handed to `body` that the local service has not taken yet.
    var unconsumed = 0
    var task: Task<Void, Never>?
    var pending: PendingSend?

    init(id: StreamID) { self.id = id }

    /// Stops everything the stream's task may be waiting on.
    func abort() {
        body?.finish(throwing: StreamGone())
        body = nil
        pending?.continuation.resume(throwing: StreamGone())
        pending = nil
        task?.cancel()
    }

    /// Returns the credit of request bytes that will now never be read.
    func release(mux: inout TunnelMultiplexer) {
        if unconsumed > 0 { mux.consumed(id, bytes: unconsumed) }
        unconsumed = 0
        body?.finish()
        body = nil
    }
}

struct PendingSend {
    var buffer: ByteBuffer
    let continuation: CheckedContinuation<Void, any Error>
}

/// A stream as its task sees it. Every call hops onto the tunnel's loop.
struct StreamIO: Sendable {
    let tunnel: TunnelConnection
    let id: StreamID

    func respond(_ head: TunnelResponseHead) async throws {
        try await tunnel.loop.submit { [tunnel, id] in try tunnel.respond(id, head) }.get()
    }

    /// Returns once the tunnel has taken the whole chunk (may wait for WINDOW_UPDATE).
    func send(_ chunk: ByteBuffer) async throws {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
            tunnel.loop.execute { [tunnel, id] in tunnel.send(id, chunk, continuation) }
        }
    }

    /// END_STREAM: the response is complete.
    func end() async throws {
        try await tunnel.loop.submit { [tunnel, id] in try tunnel.end(id) }.get()
    }

    func fail(_ code: TunnelErrorCode, reason: String) {
        tunnel.loop.execute { [tunnel, id] in tunnel.fail(id, code, reason: reason) }
    }

    func cancelled() {
        tunnel.loop.execute { [tunnel, id] in tunnel.cancelled(id) }
    }
}
