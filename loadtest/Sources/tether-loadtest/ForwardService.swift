import TetherHTTP
import TetherIO
import TetherTunnel

/// `--forward http://127.0.0.1:PORT`: the bridges pass their streams to a real local service
/// (as tether-bridge does) over keep-alive HTTP/1.1 connections, pooled per worker.
final class ForwardService: BridgeService {
    unowned let loop: EventLoop
    let target: SocketAddress
    let hostHeader: String
    private var idle: [LocalExchange] = []

    init(loop: EventLoop, target: SocketAddress) {
        self.loop = loop
        self.target = target
        hostHeader = target.description
    }

    /// `http://HOST:PORT` with a loopback literal address; anything else is refused.
    static func parseTarget(_ url: String) throws -> SocketAddress {
        guard url.hasPrefix("http://") else { throw LoadTestError.failed("--forward must be http://HOST:PORT (got \(url))") }
        var rest = url.dropFirst("http://".count)
        if rest.hasSuffix("/") { rest = rest.dropLast() }
        guard !rest.contains("/") else { throw LoadTestError.failed("--forward takes no path (got \(url)); give the request path with --path") }
        return try parseLoopbackTarget(String(rest))
    }

    func open(_ bridge: BridgeClient, _ id: StreamID, _ head: TunnelRequestHead, endStream: Bool) {
        let exchange = idle.popLast() ?? LocalExchange(service: self)
        bridge.exchanges[id] = exchange
        exchange.start(bridge: bridge, stream: id, head: head, endStream: endStream)
    }

    func requestBody(_ bridge: BridgeClient, _ id: StreamID, _ bytes: ArraySlice<UInt8>, endStream: Bool) {
        // Handed to the local connection's queue, which the relay's window bounds.
        bridge.mux.consumed(id, bytes: bytes.count)
        bridge.exchanges[id]?.sendBody(bytes, endStream: endStream)
        bridge.flush()
    }

    func reset(_ bridge: BridgeClient, _ id: StreamID) {
        bridge.exchanges.removeValue(forKey: id)?.abandon()
    }

    func pump(_ bridge: BridgeClient, _ id: StreamID) {
        bridge.exchanges[id]?.resume()
    }

    func pumpAll(_ bridge: BridgeClient) {
        for exchange in Array(bridge.exchanges.values) { exchange.resume() }
    }

    func recycle(_ exchange: LocalExchange) {
        if idle.count < 4096 { idle.append(exchange) } else { exchange.abandon() }
    }
}

/// One keep-alive connection to the local service, carrying one stream at a time.
final class LocalExchange: ConnectionHandler {
    private unowned let service: ForwardService
    private var bridge: BridgeClient?
    private var stream: StreamID = 0
    private var connection: Connection?
    private var connecting = false
    private var decoder = HTTPResponseDecoder()
    /// Request bytes written before the connection opened.
    private var outbox: [UInt8] = []
    private var chunked = false
    /// Response bytes waiting for flow-control credit (reading is paused meanwhile).
    private var held: [UInt8] = []
    private var responseComplete = false
    private var responding = false
    private var keepAlive = true

    init(service: ForwardService) {
        self.service = service
    }

    private static let hopByHop: Set<String> = ["connection", "keep-alive", "proxy-connection", "te", "trailer",
                                                  "transfer-encoding", "upgrade"]

    func start(bridge: BridgeClient, stream: StreamID, head: TunnelRequestHead, endStream: Bool) {
        self.bridge = bridge
        self.stream = stream
        held = []
        responseComplete = false
        responding = false
        keepAlive = true
        decoder = HTTPResponseDecoder()
        decoder.expectResponse(toMethod: head.method)
        var headers = HTTPHeaders()
        var hasLength = false
        for field in head.headers where field.name.lowercased() != "host" {
            if field.name.lowercased() == "content-length" { hasLength = true }
            headers.add(name: field.name, value: field.value)
        }
        headers.add(name: "Host", value: service.hostHeader)
        // A chunked request body arrives as DATA without a length: frame it again.
        chunked = !endStream && !hasLength
        if chunked { headers.add(name: "Transfer-Encoding", value: "chunked") }
        write(HTTPRequestHead(method: head.method, target: head.target, headers: headers).encoded())
    }

    func sendBody(_ bytes: ArraySlice<UInt8>, endStream: Bool) {
        guard chunked else {
            if !bytes.isEmpty { write(Array(bytes)) }
            return
        }
        var out: [UInt8] = []
        bytes.withUnsafeBytes { HTTPChunkedEncoding.encodeChunk($0, into: &out) }
        if endStream { HTTPChunkedEncoding.encodeLastChunk(into: &out) }
        if !out.isEmpty { write(out) }
    }

    /// Credit came back (or the tunnel's socket drained): send what is held, then read on.
    func resume() {
        guard bridge != nil else { return }
        drain()
        if held.isEmpty, !responseComplete { connection?.resumeReading() }
    }

    /// The stream is gone (relay reset, bridge closed): the connection can't be reused.
    func abandon() {
        bridge = nil
        outbox = []
        connection?.close(.abort)
    }

    private func write(_ bytes: [UInt8]) {
        if let connection, connection.isOpen {
            connection.write(bytes)
            return
        }
        outbox += bytes
        guard !connecting else { return }
        connecting = true
        let c = service.loop.connect(to: service.target, handler: self)
        if connecting { connection = c }
    }

    // MARK: ConnectionHandler

    func connectionDidOpen(_ connection: Connection) {
        self.connection = connection
        connecting = false
        if !outbox.isEmpty {
            connection.write(outbox)
            outbox = []
        }
    }

    func connection(_ connection: Connection, didRead bytes: UnsafeRawBufferPointer) {
        guard let bridge else {
            connection.close(.abort)  // an idle keep-alive connection has nothing to say
            return
        }
        decoder.feed(bytes)
        do {
            while let event = try decoder.next() {
                switch event {
                case .head(let head):
                    if head.status < 200 { continue }
                    keepAlive = head.isKeepAlive
                    var headers = HTTPHeaders()
                    for field in head.headers where !LocalExchange.hopByHop.contains(field.name.lowercased()) {
                        headers.add(name: field.name, value: field.value)
                    }
                    bridge.mux.sendResponse(stream, TunnelResponseHead(status: head.status, headers: headers), endStream: false)
                    responding = true
                case .body(let body):
                    if held.isEmpty {
                        let taken = bridge.mux.sendData(stream, body, endStream: false)
                        if taken < body.count { held = Array(body[taken...]) }
                    } else {
                        held += body
                    }
                    if !held.isEmpty { connection.pauseReading() }
                case .end:
                    responseComplete = true
                    drain()
                    bridge.flush()
                    return
                }
            }
        } catch {
            fail(.localServiceError, "bad response from the local service: \(error)")
            return
        }
        bridge.flush()
    }

    func connectionDidReadEOF(_ connection: Connection) {
        if let error = decoder.finish(), bridge != nil {
            fail(.localServiceError, "\(error)")
        } else if bridge != nil {
            // A body delimited by the close ends here.
            while let event = try? decoder.next() {
                if case .end = event { responseComplete = true }
            }
            keepAlive = false
            drain()
        }
        connection.close(.graceful)
    }

    func connectionDidClose(_ connection: Connection, error: IOError?) {
        guard connection === self.connection || self.connection == nil else { return }
        self.connection = nil
        connecting = false
        outbox = []
        if bridge != nil, !(responseComplete && held.isEmpty) {
            fail(responding ? .internalError : .localServiceError, error.map { "\($0)" } ?? "local service closed the connection")
        }
    }

    // MARK: internals

    /// Sends held bytes as credit allows; ends the stream once everything is out.
    private func drain() {
        guard let bridge else { return }
        while !held.isEmpty {
            let taken = bridge.mux.sendData(stream, held, endStream: responseComplete)
            if taken == 0 { break }
            held.removeSubrange(0..<taken)
            if held.isEmpty && responseComplete {
                finish(bridge)
                return
            }
        }
        if held.isEmpty && responseComplete {
            _ = bridge.mux.sendData(stream, [], endStream: true)
            finish(bridge)
        }
    }

    private func finish(_ bridge: BridgeClient) {
        bridge.exchanges[stream] = nil
        bridge.flush()
        self.bridge = nil
        if keepAlive, let connection, connection.isOpen {
            service.recycle(self)
        } else {
            connection?.close(.graceful)
        }
    }

    private func fail(_ code: TunnelErrorCode, _ reason: String) {
        guard let bridge else { return }
        bridge.exchanges[stream] = nil
        bridge.mux.reset(stream, code: code, reason: reason)
        bridge.flush()
        self.bridge = nil
        connection?.close(.abort)
    }
}
