import TetherHTTP
import TetherIO
import TetherTLS

/// What a web client asks the relay for (through a bridge, to the embedded service).
enum Job: Sendable {
    case small(size: Int)
    case stream(tokens: Int, rate: Double, size: Int)
    case download(size: Int)
    case upload(size: Int)
    /// Any path (`--path`): every 2xx answer counts, whatever its body.
    case get(path: String)

    var method: String {
        if case .upload = self { return "POST" }
        return "GET"
    }

    /// Target on the relay: the `/api/ollama` prefix, then the fake service's route.
    var target: String {
        switch self {
        case .small(let size): return "/api/ollama/small?size=\(size)"
        case .stream(let tokens, let rate, let size): return "/api/ollama/stream?tokens=\(tokens)&rate=\(rate)&size=\(size)"
        case .download(let size): return "/api/ollama/bulk?size=\(size)"
        case .upload: return "/api/ollama/upload"
        case .get(let path): return "/api/ollama" + path
        }
    }
}

/// Where web clients connect. Immutable, shared by every worker.
struct ClientEndpoint: Sendable {
    var target: SocketAddress
    var sources: [SocketAddress?]
    var tls: TLSContext?
    var hostHeader: String
    var serverName: String
    /// A request with no progress for this long fails as a timeout.
    var timeoutMilliseconds: UInt64
}

protocol WebClientOwner: AnyObject {
    /// A request ended: answered (`failure` nil) or failed. The client can take the next one.
    func requestFinished(_ client: WebClient, failure: RequestFailure?)
    /// The connection opened with no request waiting (warm-up).
    func clientConnected(_ client: WebClient)
    /// The connection failed with no request on it.
    func clientConnectFailed(_ client: WebClient, reason: String)
}

/// One HTTP/1.1 keep-alive connection to the relay for one user, one request at a time
/// (TetherHTTP's encoder and response decoder). Checks every answer: body length, the upload
/// count echoed by the service, stream records in order and complete.
final class WebClient: ConnectionHandler {
    enum State { case closed, connecting, idle, busy }

    unowned let owner: any WebClientOwner
    let index: Int
    let user: Int
    let job: Job
    private let endpoint: ClientEndpoint
    private let counters: WorkerCounters
    private let results: WorkerResults
    private let payload: UnsafeRawBufferPointer
    private let requestHead: [UInt8]
    private unowned let loop: EventLoop

    private(set) var state = State.closed
    private var connection: Connection?
    private var decoder = HTTPResponseDecoder()
    /// A request was given while the connection was still opening.
    private var pendingSend = false
    /// Open-loop scenarios: when the request was meant to go out (latency starts there).
    private(set) var intendedAt: UInt64 = 0
    private var sentAt: UInt64 = 0
    private var status = 0
    private var keepAlive = true
    private var bodyBytes = 0
    private var errorBody: [UInt8] = []
    private var uploadRemaining = 0
    /// Stream checks: a record cut by a read boundary, the next expected sequence number.
    private var partial: [UInt8] = []
    private var expectedSequence: UInt32 = 0
    private var records: UInt32 = 0
    private var outOfOrder = 0
    private var malformed = 0
    /// Marks the request in progress as one to a user whose bridges stay up (churn).
    var tag = 0

    init(owner: any WebClientOwner, loop: EventLoop, index: Int, user: Int, token: String, job: Job, endpoint: ClientEndpoint,
         counters: WorkerCounters, results: WorkerResults, payload: UnsafeRawBufferPointer) {
        self.owner = owner
        self.loop = loop
        self.index = index
        self.user = user
        self.job = job
        self.endpoint = endpoint
        self.counters = counters
        self.results = results
        self.payload = payload
        var headers = HTTPHeaders()
        headers.add(name: "Host", value: endpoint.hostHeader)
        headers.add(name: "Authorization", value: "Bearer " + token)
        headers.add(name: "User-Agent", value: "tether-loadtest")
        if case .upload(let size) = job {
            headers.add(name: "Content-Type", value: "application/octet-stream")
            headers.add(name: "Content-Length", value: String(size))
        }
        requestHead = HTTPRequestHead(method: job.method, target: job.target, headers: headers).encoded()
    }

    var isIdle: Bool { state == .idle || state == .closed }

    /// Opens the connection ahead of the first request.
    func warmUp() {
        guard state == .closed else { return }
        connect()
    }

    /// Sends the job's request (opening the connection first if needed). `intendedAt` is the
    /// scheduled send time in open loop, else now.
    func send(intendedAt: UInt64) {
        self.intendedAt = intendedAt
        switch state {
        case .idle:
            writeRequest()
        case .closed:
            pendingSend = true
            connect()
        case .connecting:
            pendingSend = true
        case .busy:
            break
        }
    }

    func close() {
        pendingSend = false
        connection?.close(.graceful)
    }

    private func connect() {
        state = .connecting
        connection = nil
        let source = endpoint.sources[index % endpoint.sources.count]
        let c = loop.connect(to: endpoint.target, from: source, tls: endpoint.tls, serverName: endpoint.serverName, handler: self)
        // A connect that failed at once has already been reported (and left us closed).
        if state == .connecting { connection = c }
    }

    private func writeRequest() {
        guard let connection, connection.isOpen else { return }
        state = .busy
        pendingSend = false
        status = 0
        keepAlive = true
        bodyBytes = 0
        errorBody = []
        records = 0
        expectedSequence = 0
        outOfOrder = 0
        malformed = 0
        partial.removeAll(keepingCapacity: true)
        decoder.expectResponse(toMethod: job.method)
        sentAt = nowNanoseconds()
        connection.setDeadline(milliseconds: endpoint.timeoutMilliseconds)
        connection.write(requestHead)
        if case .upload(let size) = job {
            uploadRemaining = size
            pumpUpload(connection)
        }
    }

    private func pumpUpload(_ connection: Connection) {
        while uploadRemaining > 0, connection.isWritable, connection.isOpen {
            let n = min(uploadRemaining, payload.count, 256 * 1024)
            connection.write(UnsafeRawBufferPointer(rebasing: payload[0..<n]))
            uploadRemaining -= n
            counters.bytesUp.addFromOwner(UInt64(n))
        }
    }

    // MARK: ConnectionHandler

    func connectionDidOpen(_ connection: Connection) {
        self.connection = connection
        counters.clientsConnected.addFromOwner()
        if pendingSend {
            state = .idle
            writeRequest()
        } else {
            state = .idle
            owner.clientConnected(self)
        }
    }

    func connection(_ connection: Connection, didRead bytes: UnsafeRawBufferPointer) {
        guard state == .busy, connection === self.connection else { return }
        connection.setDeadline(milliseconds: endpoint.timeoutMilliseconds)
        decoder.feed(bytes)
        do {
            while let event = try decoder.next() {
                switch event {
                case .head(let head):
                    if head.status < 200 { continue }
                    status = head.status
                    keepAlive = head.isKeepAlive
                case .body(let body):
                    bodyBytes += body.count
                    counters.bytesDown.addFromOwner(UInt64(body.count))
                    if status / 100 == 2 {
                        switch job {
                        case .stream(_, _, let size): readRecords(body, size: size)
                        case .upload: errorBody += body.prefix(32 - min(32, errorBody.count))
                        case .small, .download, .get: break
                        }
                    } else if errorBody.count < 512 {
                        errorBody += body.prefix(512 - errorBody.count)
                    }
                case .end:
                    complete(connection)
                    return
                }
            }
        } catch {
            fail(.protocolError("\(error)"), connection)
        }
    }

    func connectionWritable(_ connection: Connection) {
        if state == .busy, uploadRemaining > 0 { pumpUpload(connection) }
    }

    func connectionDidReadEOF(_ connection: Connection) {
        connection.close(.graceful)
    }

    func connectionDeadlineExpired(_ connection: Connection) {
        guard state == .busy, connection === self.connection else {
            connection.close(.abort)
            return
        }
        fail(.timeout, connection)
    }

    func connectionDidClose(_ connection: Connection, error: IOError?) {
        // A connection we already gave up on (closed after a response, or failed).
        guard self.connection == nil || connection === self.connection else { return }
        self.connection = nil
        let previous = state
        state = .closed
        let reason = error.map { "\($0.operation): \(errnoName($0.errno))" } ?? "closed by the relay"
        switch previous {
        case .connecting:
            results.clientConnectFailures.add(reason)
            if pendingSend {
                pendingSend = false
                owner.requestFinished(self, failure: .connectFailed(reason))
            } else {
                owner.clientConnectFailed(self, reason: reason)
            }
        case .busy:
            owner.requestFinished(self, failure: .connectionReset(reason))
        case .idle, .closed:
            break
        }
    }

    // MARK: answers

    private func complete(_ connection: Connection) {
        let now = nowNanoseconds()
        var failure: RequestFailure?
        if status / 100 != 2 {
            failure = .status(status, code: errorCode(in: errorBody))
        } else {
            switch job {
            case .small(let size):
                if bodyBytes != size { failure = .protocolError("body of \(bodyBytes) bytes, expected \(size)") }
            case .download(let size):
                if bodyBytes != size {
                    failure = .protocolError("body of \(bodyBytes) bytes, expected \(size)")
                } else {
                    results.recordTransfer(bytes: size, nanoseconds: now &- sentAt)
                }
            case .upload(let size):
                let echoed = Int(String(decoding: errorBody, as: UTF8.self))
                if uploadRemaining > 0 || echoed != size {
                    failure = .protocolError("service received \(echoed.map(String.init) ?? "?") of \(size) bytes")
                } else {
                    results.recordTransfer(bytes: size, nanoseconds: now &- sentAt)
                }
            case .get:
                break
            case .stream(let tokens, _, _):
                if Int(records) != tokens || outOfOrder > 0 || malformed > 0 || !partial.isEmpty {
                    failure = .protocolError("stream: \(records) of \(tokens) records, \(outOfOrder) out of order, \(malformed) malformed")
                }
            }
        }
        if failure == nil {
            results.latency.record(nanoseconds: now &- intendedAt)
            results.serviceTime.record(nanoseconds: now &- sentAt)
        }
        connection.setDeadline(milliseconds: nil)
        if !keepAlive || uploadRemaining > 0 {
            // Not reusable: the relay closes it, or part of our body is still unsent.
            self.connection = nil
            state = .closed
            connection.close(uploadRemaining > 0 ? .abort : .graceful)
        } else {
            state = .idle
        }
        uploadRemaining = 0
        owner.requestFinished(self, failure: failure)
    }

    private func fail(_ failure: RequestFailure, _ connection: Connection) {
        self.connection = nil
        state = .closed
        uploadRemaining = 0
        connection.close(.abort)
        owner.requestFinished(self, failure: failure)
    }

    // MARK: stream records

    private func readRecords(_ body: [UInt8], size: Int) {
        let now = nowNanoseconds()
        body.withUnsafeBytes { p in
            var i = 0
            while i < p.count {
                if partial.isEmpty, p.count - i >= size {
                    record(UnsafeRawBufferPointer(rebasing: p[i ..< i + size]), now: now)
                    i += size
                } else {
                    let take = min(size - partial.count, p.count - i)
                    partial.append(contentsOf: UnsafeRawBufferPointer(rebasing: p[i ..< i + take]))
                    i += take
                    if partial.count == size {
                        partial.withUnsafeBytes { record($0, now: now) }
                        partial.removeAll(keepingCapacity: true)
                    }
                }
            }
        }
    }

    private func record(_ p: UnsafeRawBufferPointer, now: UInt64) {
        guard let (emitted, sequence) = StreamRecord.decode(p) else {
            malformed += 1
            return
        }
        results.chunkDelay.record(nanoseconds: now > emitted ? now - emitted : 0)
        counters.chunksReceived.addFromOwner()
        records += 1
        if sequence == expectedSequence {
            expectedSequence += 1
        } else if sequence > expectedSequence {
            results.chunksMissing += UInt64(sequence - expectedSequence)
            outOfOrder += 1
            expectedSequence = sequence + 1
        } else {
            results.chunksReordered += 1
            outOfOrder += 1
        }
    }
}
