import NIOCore
import TetherHTTP
import TetherTunnel

// The stream half of TunnelConnection: OPEN → local exchange, DATA both ways under flow
// control, RESET. Runs on the tunnel's loop like the rest of it, and so do the local
// connections (LocalPool is per loop): everything here is a direct call.
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
            let declaredLength = head.headers.first(name: "Content-Length")
                .flatMap { Int($0.trimmingWhitespace()) }.flatMap { $0 >= 0 ? $0 : nil }
            var body: RequestBody?
            var headers = TetherHTTP.HTTPHeaders()
            headers.reserveCapacity(head.headers.count + 2)
            headers.add(name: "Host", value: route.hostHeader)
            HopByHop.forEachRequestHeader(head.headers) { headers.add(name: $0, value: $1) }
            if !endStream {
                // The body streams as it comes: with the length the client declared, else chunked.
                if let declaredLength {
                    headers.add(name: "Content-Length", value: String(declaredLength))
                } else {
                    headers.add(name: "Transfer-Encoding", value: "chunked")
                }
                body = RequestBody(remaining: declaredLength)
            } else if declaredLength != nil || !RequestBody.mayOmitEmptyLength(head.method) {
                headers.add(name: "Content-Length", value: "0")
            }
            headBytes.removeAll(keepingCapacity: true)
            HTTPRequestHead(method: head.method, target: route.path, headers: headers).encode(into: &headBytes)
            let context = StreamContext(id: id, tunnel: self, method: head.method,
                                        requestHead: allocator.buffer(bytes: headBytes), body: body)
            streams[id] = context
            pool.acquire(context)
        }
    }

    // MARK: - Request body (relay → local service)

    func receiveData(_ id: StreamID, _ bytes: ArraySlice<UInt8>, endStream: Bool) {
        guard let context = streams[id], context.acceptsBody else {
            // The local exchange is over (answered early, or failed): drop the bytes, but return
            // their credit so the relay's window doesn't shrink for nothing.
            if !bytes.isEmpty { mux.consumed(id, bytes: bytes.count) }
            return
        }
        if let problem = context.receiveBody(bytes, endStream: endStream) {
            mux.consumed(id, bytes: bytes.count)
            fail(id, .protocolError, reason: problem)
            return
        }
        context.connection?.requestBodyAvailable()
    }

    /// A local connection wrote `n` bytes of the stream's body: their credit goes back.
    func requestBodyWritten(_ context: StreamContext, _ n: Int) {
        guard streams[context.id] === context else { return }  // already credited when it ended
        context.unconsumed -= n
        mux.consumed(context.id, bytes: n)
        scheduleFlush()
    }

    // MARK: - Response (local service → relay)

    func localHead(_ context: StreamContext, _ head: HTTPResponseHead, endStream: Bool) {
        guard streams[context.id] === context else { return }
        let id = context.id
        context.responded = true
        mux.sendResponse(id, TunnelResponseHead(status: head.status, headers: HopByHop.responseHeaders(head.headers)),
                         endStream: endStream)
        // A head the relay can't take resets the stream (an event): handle it now.
        dispatchEvents()
        guard streams[id] === context else { return }
        if endStream { complete(context) }
        scheduleFlush()
    }

    /// Hands a body part to the multiplexer. False when the windows could not take all of it:
    /// the rest waits in the stream and the local connection pauses until `pushPending` sent it.
    func localBody(_ context: StreamContext, _ bytes: [UInt8], endStream: Bool) -> Bool {
        guard streams[context.id] === context else { return true }
        let taken = mux.sendData(context.id, bytes, endStream: endStream)
        scheduleFlush()
        if taken == bytes.count {
            if endStream { complete(context) }
            return true
        }
        context.pending = bytes[taken...]
        context.pendingEnd = endStream
        return false
    }

    /// Window opened: hands on as much of the waiting bytes as it allows; once all of it went
    /// out, the stream ends (those were its last bytes) or its local connection resumes.
    func pushPending(_ context: StreamContext) {
        guard let pending = context.pending else { return }
        let taken = mux.sendData(context.id, pending, endStream: context.pendingEnd)
        if taken > 0 { scheduleFlush() }
        guard taken == pending.count else {
            context.pending = pending.dropFirst(taken)
            return
        }
        context.pending = nil
        if context.pendingEnd {
            complete(context)
        } else {
            context.connection?.resume()
        }
    }

    /// END_STREAM after the last body part was sent already.
    func localEnd(_ context: StreamContext) {
        guard streams[context.id] === context else { return }
        _ = mux.sendData(context.id, ArraySlice<UInt8>(), endStream: true)
        complete(context)
        scheduleFlush()
    }

    /// The response went out whole.
    private func complete(_ context: StreamContext) {
        guard streams.removeValue(forKey: context.id) != nil else { return }
        context.finish(mux: &mux)
        status.streamEnded(.served)
        closeIfDrained()
    }

    /// The local exchange failed (a no-op when its stream is gone already).
    func localFailed(_ context: StreamContext, _ code: TunnelErrorCode, _ reason: String) {
        guard streams[context.id] === context else { return }
        logger.debug("stream \(context.id): \(context.responded ? "response" : "request") failed: \(reason)")
        fail(context.id, code, reason: reason)
    }

    func fail(_ id: StreamID, _ code: TunnelErrorCode, reason: String) {
        guard let context = streams.removeValue(forKey: id) else { return }
        logger.info("stream \(id) failed: \(reason)")
        mux.reset(id, code: code, reason: reason)
        context.abort()
        context.finish(mux: &mux)
        status.streamEnded(.failed)
        flush()
        closeIfDrained()
    }
}

/// Per-stream state, loop-confined like its tunnel.
final class StreamContext {
    enum Phase {
        /// In line for a local connection (the pool is at its limit).
        case waiting
        /// A local connection is being opened for it.
        case connecting
        /// Its exchange runs on `connection`.
        case attached
        /// The local exchange is over; response bytes may still wait for window.
        case detached
        /// Ended or reset: nothing more happens.
        case done
    }

    let id: StreamID
    let tunnel: TunnelConnection
    let method: String
    /// Encoded request head (resent as is if the request is retried).
    let requestHead: ByteBuffer
    var phase = Phase.waiting
    private(set) var connection: LocalConnection?
    private var body: RequestBody?
    /// Request bytes received that the local service has not taken yet.
    var unconsumed = 0
    /// Response bytes waiting for window, and whether END_STREAM follows them.
    var pending: ArraySlice<UInt8>?
    var pendingEnd = false
    var responded = false
    private var retried = false

    init(id: StreamID, tunnel: TunnelConnection, method: String, requestHead: ByteBuffer, body: RequestBody?) {
        self.id = id
        self.tunnel = tunnel
        self.method = method
        self.requestHead = requestHead
        self.body = body
    }

    func attach(_ connection: LocalConnection) {
        self.connection = connection
        phase = .attached
    }

    func detach() {
        connection = nil
        if phase == .attached { phase = .detached }
    }

    /// Stops the local exchange, wherever it is: waiting (the pool skips it), connecting (the
    /// new connection goes to the next stream) or running (its connection is closed).
    func abort() {
        phase = .done
        let connection = self.connection
        self.connection = nil
        connection?.abort()
        pending = nil
        body?.chunks.removeAll()
    }

    /// Returns the credit of request bytes that will now never be written.
    func finish(mux: inout TunnelMultiplexer) {
        phase = .done
        if unconsumed > 0 { mux.consumed(id, bytes: unconsumed) }
        unconsumed = 0
        body?.chunks.removeAll()
    }

    // MARK: Request body

    /// Body bytes are still wanted: the body has not ended and the exchange is not over.
    var acceptsBody: Bool {
        guard let body, !body.ended else { return false }
        return phase != .detached && phase != .done
    }

    /// Queues a DATA payload; returns a problem if it breaks the declared Content-Length.
    func receiveBody(_ bytes: ArraySlice<UInt8>, endStream: Bool) -> String? {
        guard var body else { return nil }
        self.body = nil  // keeps `chunks` uniquely referenced while it grows
        defer { self.body = body }
        if !bytes.isEmpty {
            if let remaining = body.remaining {
                guard bytes.count <= remaining else { return "request body longer than its Content-Length" }
                body.remaining = remaining - bytes.count
            }
            body.chunks.append(bytes)
            unconsumed += bytes.count
        }
        if endStream {
            if let remaining = body.remaining, remaining > 0 { return "request body shorter than its Content-Length" }
            body.ended = true
        }
        return nil
    }

    func nextBodyChunk() -> ArraySlice<UInt8>? {
        body?.chunks.popFirst()
    }

    var chunkedBody: Bool { body != nil && body?.remaining == nil }

    var hasBufferedBody: Bool { !(body?.chunks.isEmpty ?? true) }

    /// Everything of the request body is written (or there is none).
    var bodyComplete: Bool {
        guard let body else { return true }
        return body.ended && body.chunks.isEmpty
    }

    /// Whether the request may go out once more after a reused connection died before any
    /// response byte: only once, only without a body, and only for methods that are
    /// idempotent by definition (RFC 9110 §9.2.2).
    func retryable() -> Bool {
        guard !retried, body == nil, phase != .done else { return false }
        switch method {
        case "GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE":
            retried = true
            return true
        default:
            return false
        }
    }
}

/// A request body on its way from the tunnel to the local service.
struct RequestBody {
    /// DATA payloads not yet written, in arrival order (slices of the tunnel's messages).
    var chunks = CircularBuffer<ArraySlice<UInt8>>()
    /// END_STREAM arrived.
    var ended = false
    /// Bytes still due under the declared Content-Length; nil: chunked.
    var remaining: Int?

    init(remaining: Int?) {
        self.remaining = remaining
    }

    /// Methods whose requests commonly carry no body and no `Content-Length: 0` either.
    static func mayOmitEmptyLength(_ method: String) -> Bool {
        switch method {
        case "GET", "HEAD", "DELETE", "OPTIONS", "TRACE", "CONNECT": return true
        default: return false
        }
    }
}
