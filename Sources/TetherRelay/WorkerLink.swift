#if os(Linux)
import TetherAuth
import TetherHTTP
import TetherIO
import TetherIsolation
import TetherTunnel

/// One client request of a Docker-isolated session, carried to the session's worker over its
/// own unix connection: a `WorkerPreamble` (who is asking), the request as HTTP/1.1 (re-encoded
/// by the relay, credentials removed, `Connection: close`), then the worker's response, parsed
/// and handed to the client's `HTTPServerConnection` as a stream's events. To the relay's proxy
/// code it is a bridge with one stream: the same response framing, flow control (credit goes
/// back as bytes leave the relay) and failure mapping as a tunnel.
final class WorkerLink: ConnectionHandler, Bridge {
    private unowned let context: RelayContext
    private let session: Session
    private var client: StreamClient?
    private weak var connection: Connection?
    private var request: [UInt8]
    private let chunked: Bool
    /// Responses are as large as the bridge makes them (no total limit, as through a tunnel);
    /// heads are bounded by what a tunnel carries (MAX_HEAD_SIZE), not by the request limits.
    private var decoder = HTTPResponseDecoder(limits: WorkerLink.responseLimits)
    private static let responseLimits = HTTPLimits(maxRequestLineLength: 8192, maxHeaderBytes: 1 << 20,
                                                   maxHeaderCount: 10_000, maxBodySize: Int.max)
    private var opened = false
    private var requestEnded: Bool
    private var endQueued = false
    private var windowWanted = false
    private var responseStarted = false
    private var finished = false
    /// Response bytes handed to the client and not yet out of the relay.
    private var unconsumed = 0
    private var readPaused = false

    /// Held from the worker per exchange before its reading pauses.
    static let window = 512 * 1024

    init(context: RelayContext, session: Session, head: HTTPRequestHead, peer: SocketAddress?, tls: Bool, hasBody: Bool) {
        self.context = context
        self.session = session
        let peerInfo = WorkerPeer(host: peer?.host ?? "", port: peer?.port ?? 0, tls: tls)
        var bytes = WorkerPreamble.client(session: session.id.hex, tier: context.workerTier(session), peer: peerInfo).encoded()
        let (workerHead, chunked) = WorkerLink.workerHead(for: head, hasBody: hasBody)
        workerHead.encode(into: &bytes)
        self.request = bytes
        self.chunked = chunked
        self.requestEnded = !hasBody
        decoder.expectResponse(toMethod: head.method)
    }

    /// The request as the worker sees it: the caller's credentials and hop-by-hop fields
    /// removed (the worker adds X-Forwarded-* from the preamble), one exchange per connection.
    static func workerHead(for head: HTTPRequestHead, hasBody: Bool) -> (HTTPRequestHead, chunked: Bool) {
        let chunked = hasBody && head.isChunked
        var headers = HTTPServerConnection.endToEndHeaders(of: head)
        if chunked {
            headers.remove(name: "content-length")
            headers.add(name: "Transfer-Encoding", value: "chunked")
        }
        headers.add(name: "Connection", value: "close")
        let target = TokenExtractor.removingToken(fromTarget: head.target)
        return (HTTPRequestHead(method: head.method, target: target, version: .http1_1, headers: headers), chunked)
    }

    // MARK: Bridge (one stream)

    var canOpenStream: Bool { connection == nil && !finished }
    var activeStreams: Int { finished ? 0 : 1 }
    var protocolKind: BridgeProtocol { .tunnel }
    var remoteAddress: SocketAddress? { nil }

    func openStream(_ head: TunnelRequestHead, endStream: Bool, client: StreamClient) -> StreamID? {
        guard let address = session.isolation?.workerAddress, connection == nil, !finished else {
            return nil
        }
        self.client = client
        session.isolation?.exchanges += 1
        context.stats.streamsOpened.addFromOwner()
        guard let opening = context.loop.connect(to: address, handler: self) else {
            // connectionDidClose already reported the failure.
            return finished ? nil : 1
        }
        connection = opening
        return 1
    }

    func sendBody(_ stream: StreamID, _ bytes: UnsafeRawBufferPointer, endStream: Bool) -> Int {
        guard !finished, !requestEnded else { return bytes.count }
        guard opened, let connection, connection.isOpen, connection.isWritable else {
            // A bare END is taken at once (the caller cannot tell 0 bytes taken from sent).
            if bytes.isEmpty && endStream { endQueued = true }
            windowWanted = true
            return 0
        }
        write(bytes, end: endStream, connection)
        return bytes.count
    }

    private func write(_ bytes: UnsafeRawBufferPointer, end: Bool, _ connection: Connection) {
        if chunked {
            var out: [UInt8] = []
            if !bytes.isEmpty { HTTPChunkedEncoding.encodeChunk(bytes, into: &out) }
            if end { HTTPChunkedEncoding.encodeLastChunk(into: &out) }
            connection.write(out)
        } else if !bytes.isEmpty {
            connection.write(bytes)
        }
        if end { requestEnded = true }
    }

    func consumed(_ stream: StreamID, bytes: Int) {
        unconsumed = max(0, unconsumed - bytes)
        if readPaused && unconsumed <= WorkerLink.window / 2 {
            readPaused = false
            // Not from inside the caller: resuming delivers held bytes, which would re-enter
            // the client's credit bookkeeping while it is paying this very credit.
            context.loop.runSoon { [weak self] in
                guard let self, !self.readPaused else { return }
                self.connection?.resumeReading()
            }
        }
    }

    func cancel(_ stream: StreamID, code: TunnelErrorCode) {
        client = nil
        finish()
        connection?.close(.abort)
    }

    func goAway() {}
    func close(code: UInt16, reason: String, kind: BridgeDisconnectReason) {}

    // MARK: the unix connection

    func connectionDidOpen(_ connection: Connection) {
        opened = true
        connection.write(request)
        request = []
        if endQueued {
            endQueued = false
            write(UnsafeRawBufferPointer(start: nil, count: 0), end: true, connection)
        }
        if windowWanted {
            windowWanted = false
            client?.streamWindowAvailable()
        }
    }

    func connection(_ connection: Connection, didRead bytes: UnsafeRawBufferPointer) {
        decoder.feed(bytes)
        drain(connection)
    }

    private func drain(_ connection: Connection) {
        do {
            while !finished, let event = try decoder.next() {
                switch event {
                case .head(let head):
                    guard head.status >= 200 else { continue }  // the relay answered 100-continue itself
                    responseStarted = true
                    client?.streamDidReceiveResponse(TunnelResponseHead(status: head.status, headers: head.headers),
                                                     endStream: false)
                case .body(let bytes):
                    unconsumed += bytes.count
                    client?.streamDidReceiveData(bytes[...], endStream: false)
                case .end:
                    let client = self.client
                    finish()
                    connection.close(.graceful)
                    client?.streamDidReceiveData([], endStream: true)
                    return
                }
            }
        } catch {
            failExchange("the session worker sent a malformed response (\(error.reason))")
            connection.close(.abort)
            return
        }
        if unconsumed > WorkerLink.window && !readPaused {
            readPaused = true
            connection.pauseReading()
        }
    }

    func connectionWritable(_ connection: Connection) {
        if windowWanted && connection.isWritable {
            windowWanted = false
            client?.streamWindowAvailable()
        }
    }

    func connectionDidReadEOF(_ connection: Connection) {
        if !finished, decoder.finish() == nil { drain(connection) }
        if !finished { failExchange("the session's container closed the request") }
        connection.close(.abort)
    }

    func connectionDidClose(_ connection: Connection, error: IOError?) {
        guard !finished else { return }
        if !opened {
            failExchange("the session's container is not answering (\(error.map { "\($0)" } ?? "closed"))")
        } else {
            failExchange("the connection to the session's container failed (\(error.map { "\($0)" } ?? "closed"))")
        }
    }

    private func failExchange(_ message: String) {
        let client = self.client
        finish()
        client?.streamDidFail(.isolation(message))
    }

    private func finish() {
        guard !finished else { return }
        finished = true
        client = nil
        session.isolation?.exchanges -= 1
        session.lastActivity = context.loop.nowMilliseconds
    }
}
#endif
