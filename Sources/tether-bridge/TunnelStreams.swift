import AsyncHTTPClient
import NIOCore
import NIOHTTP1
import TetherHTTP
import TetherTunnel

// The stream half of TunnelConnection: OPEN → local request, DATA both ways under flow
// control, RESET. Runs on the tunnel's loop like the rest of it, and so do the local request's
// callbacks (LocalForwarder pins it to this loop).
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
            if !endStream { context.requestBody = RequestBodyPump() }
            streams[id] = context
            forwarder.start(route: route, head: head, hasBody: !endStream, tunnel: self, context: context)
        }
    }

    // MARK: - Request body (relay → local service)

    func receiveData(_ id: StreamID, _ bytes: ArraySlice<UInt8>, endStream: Bool) {
        guard let context = streams[id], let pump = context.requestBody, !pump.ended, !pump.closed else {
            // The local request is over (answered early, or failed): drop the bytes, but return
            // their credit so the relay's window doesn't shrink for nothing.
            if !bytes.isEmpty { mux.consumed(id, bytes: bytes.count) }
            return
        }
        if !bytes.isEmpty {
            pump.chunks.append(ByteBuffer(bytes: bytes))
            context.unconsumed += bytes.count
        }
        if endStream { pump.ended = true }
        pumpRequestBody(context, pump)
    }

    /// AsyncHTTPClient is ready for the request body (its stream closure ran).
    func startRequestBody(_ id: StreamID, _ writer: HTTPClient.Body.StreamWriter) -> EventLoopFuture<Void> {
        loop.assertInEventLoop()
        guard let context = streams[id], let pump = context.requestBody, !pump.closed, pump.writer == nil else {
            return loop.makeFailedFuture(StreamGone())
        }
        pump.writer = writer
        let done = loop.makePromise(of: Void.self)
        pump.done = done
        pumpRequestBody(context, pump)
        return done.futureResult
    }

    /// Writes the next chunk, one at a time. A chunk's credit goes back to the relay once the
    /// client took it (AsyncHTTPClient completes the write future when the chunk has been
    /// written, or the local connection is writable again), so credit tracks what the local
    /// service actually took and a slow service holds at most one stream window here.
    private func pumpRequestBody(_ context: StreamContext, _ pump: RequestBodyPump) {
        guard !pump.writing, !pump.closed, let writer = pump.writer else { return }
        if let chunk = pump.chunks.popFirst() {
            pump.writing = true
            let id = context.id
            let n = chunk.readableBytes
            writer.write(.byteBuffer(chunk)).hop(to: loop).whenComplete { [self] result in
                guard let context = streams[id], let pump = context.requestBody else { return }
                pump.writing = false
                switch result {
                case .success:
                    consumed(id, n)
                    pumpRequestBody(context, pump)
                case .failure(let error):
                    // The request failed; its task's future reports why.
                    pump.close()?.fail(error)
                }
            }
        } else if pump.ended {
            pump.close()?.succeed()
        }
    }

    func consumed(_ id: StreamID, _ n: Int) {
        guard let context = streams[id] else { return }  // already credited when it ended
        context.unconsumed -= n
        mux.consumed(id, bytes: n)
        scheduleFlush()
    }

    // MARK: - Response (local service → relay)

    func localHead(_ id: StreamID, _ head: NIOHTTP1.HTTPResponseHead) -> EventLoopFuture<Void> {
        loop.assertInEventLoop()
        guard let context = streams[id] else { return loop.makeFailedFuture(StreamGone()) }
        let status = Int(head.status.code)
        guard (200...599).contains(status) else {
            fail(id, .localServiceError, reason: "local service answered \(status)")
            return loop.makeFailedFuture(StreamGone())
        }
        var headers = TetherHTTP.HTTPHeaders()
        headers.reserveCapacity(head.headers.count)
        HopByHop.forEachResponseHeader(head.headers) { headers.add(name: $0, value: $1) }
        context.responded = true
        mux.sendResponse(id, TunnelResponseHead(status: status, headers: headers), endStream: false)
        // A head the relay can't take resets the stream (an event): handle it now.
        dispatchEvents()
        guard streams[id] != nil else { return loop.makeFailedFuture(StreamGone()) }
        scheduleFlush()
        return loop.makeSucceededVoidFuture()
    }

    /// Hands the chunk to the multiplexer; the future completes (and the client reads the next
    /// local chunk) only once the windows took all of it, so nothing accumulates here.
    func localBodyPart(_ id: StreamID, _ chunk: ByteBuffer) -> EventLoopFuture<Void> {
        loop.assertInEventLoop()
        guard let context = streams[id] else { return loop.makeFailedFuture(StreamGone()) }
        var chunk = chunk
        let taken = chunk.withUnsafeReadableBytes { mux.sendData(id, $0, endStream: false) }
        scheduleFlush()
        if taken == chunk.readableBytes { return loop.makeSucceededVoidFuture() }
        chunk.moveReaderIndex(forwardBy: taken)
        let promise = loop.makePromise(of: Void.self)
        context.pending = PendingSend(buffer: chunk, promise: promise)
        return promise.futureResult
    }

    /// Hands as much of the waiting chunk to the multiplexer as the windows allow; the local
    /// response resumes only once all of it is taken.
    func pushPending(_ context: StreamContext) {
        guard var pending = context.pending else { return }
        let taken = pending.buffer.withUnsafeReadableBytes { mux.sendData(context.id, $0, endStream: false) }
        pending.buffer.moveReaderIndex(forwardBy: taken)
        if pending.buffer.readableBytes == 0 {
            context.pending = nil
            scheduleFlush()
            pending.promise.succeed()  // may deliver the next chunk at once (re-entrant)
        } else {
            context.pending = pending
        }
    }

    /// END_STREAM: the response is complete.
    func localEnd(_ id: StreamID) {
        loop.assertInEventLoop()
        guard let context = streams.removeValue(forKey: id) else { return }
        _ = mux.sendData(id, ArraySlice<UInt8>(), endStream: true)
        context.release(mux: &mux)
        status.streamEnded(.served)
        scheduleFlush()
        closeIfDrained()
    }

    /// The local request failed (a no-op when its stream is gone already).
    func localFailed(_ id: StreamID, _ error: Error) {
        loop.assertInEventLoop()
        guard let context = streams[id] else { return }
        if error is StreamGone {
            fail(id, .internalError, reason: "stream task cancelled")
            return
        }
        let (code, reason) = LocalForwarder.classify(error)
        logger.debug("stream \(id): \(context.responded ? "response" : "request") failed: \(error)")
        fail(id, code, reason: reason)
    }

    func fail(_ id: StreamID, _ code: TunnelErrorCode, reason: String) {
        guard let context = streams.removeValue(forKey: id) else { return }
        logger.info("stream \(id) failed: \(reason)")
        mux.reset(id, code: code, reason: reason)
        context.abort()  // completes futures; the stream is out of `streams` already
        context.release(mux: &mux)
        status.streamEnded(.failed)
        flush()
        closeIfDrained()
    }
}

/// Per-stream state, loop-confined like its tunnel.
final class StreamContext {
    let id: StreamID
    /// The request body, when the OPEN did not end the stream.
    var requestBody: RequestBodyPump?
    /// Request bytes received that the local service has not taken yet.
    var unconsumed = 0
    var localTask: HTTPClient.Task<Void>?
    /// Response bytes waiting for window.
    var pending: PendingSend?
    var responded = false

    init(id: StreamID) { self.id = id }

    /// Stops everything the local request may be waiting on, and the request itself. (Call
    /// after the stream left `streams`: completing the futures may call back into the tunnel.)
    func abort() {
        let done = requestBody?.close()
        let pending = self.pending
        self.pending = nil
        done?.fail(StreamGone())
        pending?.promise.fail(StreamGone())
        localTask?.cancel()
        localTask = nil
    }

    /// Returns the credit of request bytes that will now never be read.
    func release(mux: inout TunnelMultiplexer) {
        if unconsumed > 0 { mux.consumed(id, bytes: unconsumed) }
        unconsumed = 0
        requestBody?.close()?.succeed()
    }
}

/// A stream's request body between the tunnel and AsyncHTTPClient's stream writer.
final class RequestBodyPump {
    /// DATA payloads not yet written, in arrival order.
    var chunks = CircularBuffer<ByteBuffer>()
    /// END_STREAM arrived.
    var ended = false
    /// Nothing more goes to the local service (body complete, request over or failed).
    var closed = false
    var writer: HTTPClient.Body.StreamWriter?
    /// Completes the body for the client.
    var done: EventLoopPromise<Void>?
    /// A chunk write is in flight.
    var writing = false

    /// Marks the body over and returns its promise to complete (once).
    func close() -> EventLoopPromise<Void>? {
        closed = true
        chunks.removeAll()
        writer = nil
        let done = self.done
        self.done = nil
        return done
    }
}

struct PendingSend {
    var buffer: ByteBuffer
    let promise: EventLoopPromise<Void>
}
