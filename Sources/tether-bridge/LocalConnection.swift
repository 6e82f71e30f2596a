import NIOCore
import TetherHTTP
import TetherTunnel

/// One keep-alive HTTP/1.1 connection to the local service, serving one stream's exchange at a
/// time. It is the channel's last handler and lives on the tunnel's event loop, like its pool
/// and the streams it serves: every call into the tunnel is a plain method call, with no
/// futures, promises or thread hops per request.
///
/// Flow control both ways: request body chunks are written only while the socket is writable
/// (chunks a local service does not read stay in the stream, and so does their credit), and
/// response bytes the tunnel's windows cannot take pause the exchange: no more events are taken
/// from the decoder and no more reads are issued until the tunnel resumes it.
final class LocalConnection: ChannelDuplexHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    enum State {
        /// TCP (and TLS) being set up.
        case connecting
        /// In the pool, waiting for the next exchange.
        case idle(since: NIODeadline)
        case busy
        case closed
    }

    private unowned let pool: LocalPool
    private(set) var state = State.connecting
    private var context: ChannelHandlerContext?
    private var decoder = HTTPResponseDecoder(limits: LocalConnection.limits)
    /// The stream whose exchange runs here, and how far it got (plain fields, not a struct:
    /// these are read and written on every event).
    private var stream: StreamContext?
    /// Not the connection's first exchange: if it dies before any response byte, the service
    /// most likely closed the idle connection just as we sent the request.
    private var reused = false
    private var requestEnded = false
    private var bytesReceived = false
    private var keepAlive = true
    /// The response waits for tunnel window: no more decoding or reading.
    private var paused = false
    /// Decoded but not handed on yet: whether `.end` follows at once decides whether it carries
    /// END_STREAM (one frame fewer; an empty response is a single RESPONSE frame).
    private var held: Held?
    private var readWithheld = false
    /// EOF or a failed channel: what the decoder holds now is all there will be.
    private var inputClosed = false
    private var finishedDecoder = false
    private var lastError: (any Error)?
    /// Last time the local service took or gave bytes (the idle timeout counts from here).
    private var lastProgress = NIODeadline.now()
    private var timer: Scheduled<Void>?
    /// Exchanges completed here (the next one runs on a reused connection).
    private var served = 0

    private enum Held {
        case head(HTTPResponseHead)
        case body([UInt8])
    }

    /// Status line and head as large as NIO's parser allows; bodies unlimited (a model download
    /// is many GiB).
    private static let limits = HTTPLimits(maxRequestLineLength: 8192, maxHeaderBytes: 80 * 1024, maxHeaderCount: 1000,
                                           maxBodySize: 1 << 62, maxChunkLineLength: 4096)

    init(pool: LocalPool) {
        self.pool = pool
    }

    var idleSince: NIODeadline? {
        if case .idle(let since) = state { return since }
        return nil
    }

    var isClosed: Bool {
        if case .closed = state { return true }
        return false
    }

    // MARK: - Pool side

    /// Starts `stream`'s exchange: the head, then whatever body has arrived.
    func start(_ stream: StreamContext) {
        guard let context, !isClosed else {
            stream.tunnel.localFailed(stream, .localServiceError, "local service closed the connection")
            return
        }
        state = .busy
        self.stream = stream
        reused = served > 0
        requestEnded = false
        bytesReceived = false
        keepAlive = true
        paused = false
        held = nil
        stream.attach(self)
        decoder.expectResponse(toMethod: stream.method)
        lastProgress = .now()
        context.write(wrapOutboundOut(stream.requestHead), promise: nil)
        writeRequestBody(context)
        context.flush()
        armTimer()
    }

    func markIdle() {
        state = .idle(since: .now())
    }

    /// Closes without a word (pool shutdown, idle expiry, an abandoned exchange).
    func close() {
        context?.close(promise: nil)
    }

    // MARK: - Stream side

    /// More request body (or its end) arrived from the tunnel.
    func requestBodyAvailable() {
        guard let context, stream != nil else { return }
        writeRequestBody(context)
        context.flush()
        armTimer()
    }

    /// The tunnel's windows took everything handed over: continue the response.
    func resume() {
        guard stream != nil, paused else { return }
        paused = false
        lastProgress = .now()
        processResponse()
        armTimer()
        if readWithheld, !paused {
            readWithheld = false
            context?.read()
        }
    }

    /// The stream is gone (reset by the relay, tunnel closed): abandon the exchange. The
    /// connection is closed, never pooled: the service may still be sending.
    func abort() {
        guard stream != nil else { return }
        stream = nil
        close()
    }

    // MARK: - Request

    /// Writes buffered body chunks while the socket is writable, then the end of the body once
    /// the stream's request ended. A chunk's credit goes back to the relay as it is written:
    /// what we hold beyond that is bounded by the channel's write-buffer watermark.
    private func writeRequestBody(_ context: ChannelHandlerContext) {
        guard let stream, !requestEnded else { return }
        let chunked = stream.chunkedBody
        while context.channel.isWritable, let chunk = stream.nextBodyChunk() {
            var buffer = context.channel.allocator.buffer(capacity: chunk.count + 16)
            if chunked {
                buffer.writeString(String(chunk.count, radix: 16))
                buffer.writeStaticString("\r\n")
                buffer.writeBytes(chunk)
                buffer.writeStaticString("\r\n")
            } else {
                buffer.writeBytes(chunk)
            }
            context.write(wrapOutboundOut(buffer), promise: nil)
            lastProgress = .now()
            stream.tunnel.requestBodyWritten(stream, chunk.count)
        }
        if stream.bodyComplete {
            if chunked { context.write(wrapOutboundOut(context.channel.allocator.buffer(staticString: "0\r\n\r\n")), promise: nil) }
            requestEnded = true
        }
    }

    // MARK: - Response

    private func processResponse() {
        while stream != nil, !paused {
            let event: HTTPResponseEvent?
            do {
                event = try decoder.next()
            } catch {
                fail(.localServiceError, "invalid response from the local service: \(error)")
                return
            }
            if let event {
                handle(event)
                continue
            }
            guard inputClosed else {
                releaseHeld(endStream: false)
                return
            }
            // Closed: a read-until-close body ends here (`finish` makes the decoder produce its
            // `.end`); anything else was cut short.
            if lastError == nil, !finishedDecoder {
                finishedDecoder = true
                if decoder.finish() == nil { continue }
            }
            retryOrFail(lastError.map { "local service connection failed: \($0)" } ?? "local service closed the connection")
            return
        }
    }

    private func handle(_ event: HTTPResponseEvent) {
        switch event {
        case .head(let head):
            if head.status < 200, head.status != 101 { return }  // 100 Continue, 103 Early Hints
            guard (200...599).contains(head.status) else {
                fail(.localServiceError, "local service answered \(head.status)")
                return
            }
            keepAlive = head.isKeepAlive
            held = .head(head)
        case .body(let bytes):
            releaseHeld(endStream: false)
            // Kept even when that paused the exchange: it goes out on resume.
            if stream != nil { held = .body(bytes) }
        case .end:
            releaseHeld(endStream: true)
            finishExchange()
        }
    }

    /// Hands the held head or body part to the tunnel, with END_STREAM when it is the last.
    private func releaseHeld(endStream: Bool) {
        guard let stream else { return }
        let held = self.held
        self.held = nil
        switch held {
        case .head(let head):
            stream.tunnel.localHead(stream, head, endStream: endStream)
        case .body(let bytes):
            if !stream.tunnel.localBody(stream, bytes, endStream: endStream), self.stream != nil { paused = true }
        case nil:
            if endStream { stream.tunnel.localEnd(stream) }
        }
    }

    /// The response is complete (its last bytes may still wait for tunnel window in the stream:
    /// they no longer need this connection). Back to the pool if the connection can carry
    /// another exchange.
    private func finishExchange() {
        guard let stream else { return }
        self.stream = nil
        served += 1
        stream.detach()
        if keepAlive, requestEnded, !inputClosed, decoder.bufferedByteCount == 0 {
            pool.release(self)
        } else {
            close()
        }
        if readWithheld {
            readWithheld = false
            context?.read()
        }
    }

    // MARK: - Failures

    /// A safe-to-repeat request on a reused connection that died before any response byte goes
    /// out once more, on a new connection; anything else fails the stream.
    private func retryOrFail(_ reason: String) {
        guard let stream else { return }
        guard reused, !bytesReceived, stream.retryable() else {
            fail(.localServiceError, reason)
            return
        }
        self.stream = nil
        stream.detach()
        close()
        pool.acquire(stream, fresh: true)
    }

    private func fail(_ code: TunnelErrorCode, _ reason: String) {
        guard let stream else { return }
        self.stream = nil
        stream.detach()
        close()
        stream.tunnel.localFailed(stream, code, reason)
    }

    // MARK: - Idle timeout

    /// The local service owes us something: the response (request sent, not paused by the
    /// tunnel), or room for request bytes we hold.
    private var waitingOnService: Bool {
        guard let stream, !paused else { return false }
        return requestEnded || (context?.channel.isWritable == false && stream.hasBufferedBody)
    }

    /// One timer per connection, re-armed only when it fires: progress just moves
    /// `lastProgress`, so reads and requests cost no timer work.
    private func armTimer() {
        guard timer == nil, let loop = context?.eventLoop else { return }
        let timeout = pool.idleTimeout
        timer = loop.assumeIsolatedUnsafeUnchecked().scheduleTask(deadline: lastProgress + timeout) { [self] in
            timer = nil
            guard waitingOnService else { return }  // armed again when we next wait on the service
            if NIODeadline.now() >= lastProgress + timeout {
                fail(.localTimeout, "local service idle timeout")
            } else {
                armTimer()
            }
        }
    }

    // MARK: - Channel events

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let buffer = unwrapInboundIn(data)
        lastProgress = .now()
        switch state {
        case .busy:
            decoder.feed(buffer.readableBytesView)
            bytesReceived = true
            processResponse()
        case .idle, .connecting:
            // Bytes nobody asked for: this connection's framing can't be trusted any more.
            close()
        case .closed:
            break
        }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable, stream != nil {
            lastProgress = .now()
            writeRequestBody(context)
            context.flush()
            armTimer()
        }
        context.fireChannelWritabilityChanged()
    }

    func read(context: ChannelHandlerContext) {
        if stream != nil, paused {
            readWithheld = true
        } else {
            context.read()
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if lastError == nil { lastError = error }
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        inputClosed = true
        // A paused exchange finishes (or fails) from the decoder's buffer on resume.
        if stream != nil, !paused { processResponse() }
        closed()
        context.fireChannelInactive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        closed()
        self.context = nil
    }

    /// Connecting failed: the channel never became active.
    func connectFailed() {
        closed()
    }

    /// Exactly once per connection, whichever way it ends.
    private func closed() {
        if isClosed { return }
        state = .closed
        timer?.cancel()
        timer = nil
        pool.connectionClosed(self)
    }
}
