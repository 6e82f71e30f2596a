import Glibc
import Synchronization
import TetherHTTP
import TetherIO
import TetherTLS
import TetherWebSocket

/// One WebSocket client that completes the handshake and then just holds the connection.
final class IdleClient: ConnectionHandler {
    let worker: RawIdleWorker
    let host: String
    let path: String
    var key = ""
    var decoder = HTTPResponseDecoder()
    var done = false
    var connection: Connection?

    init(worker: RawIdleWorker, host: String, path: String) {
        self.worker = worker
        self.host = host
        self.path = path
    }

    func connectionDidOpen(_ connection: Connection) {
        self.connection = connection
        let request = WebSocketHandshake.clientRequest(host: host, target: path)
        key = request.key
        var bytes: [UInt8] = []
        request.head.encode(into: &bytes)
        decoder.expectResponse(toMethod: "GET")
        connection.write(bytes)
    }

    func connection(_ connection: Connection, didRead bytes: UnsafeRawBufferPointer) {
        guard !done else { return }
        decoder.feed(bytes)
        do {
            if case .head(let head)? = try decoder.next() {
                _ = try WebSocketHandshake.validateServerResponse(head, key: key, requestedProtocols: [])
                done = true
                decoder = HTTPResponseDecoder()
                worker.handshakeFinished(ok: true)
            }
        } catch {
            done = true
            worker.handshakeFinished(ok: false)
            connection.close(.abort)
        }
    }

    func connectionDidClose(_ connection: Connection, error: IOError?) {
        self.connection = nil
        if !done {
            done = true
            worker.handshakeFinished(ok: false)
        }
        worker.counters.closed.addFromOwner()
    }
}

final class RawIdleWorker {
    let loop: EventLoop
    let counters: WorkerCounters
    let target: SocketAddress
    let sources: [SocketAddress?]
    let tls: TLSContext?
    let path: String
    let total: Int
    let concurrency: Int
    var started = 0
    var inFlight = 0
    var clients: [IdleClient] = []

    init(loop: EventLoop, counters: WorkerCounters, target: SocketAddress, sources: [SocketAddress?],
         tls: TLSContext?, path: String, total: Int, concurrency: Int) {
        self.loop = loop
        self.counters = counters
        self.target = target
        self.sources = sources
        self.tls = tls
        self.path = path
        self.total = total
        self.concurrency = concurrency
    }

    func startMore() {
        while started < total && inFlight < concurrency {
            let client = IdleClient(worker: self, host: "localhost", path: path)
            clients.append(client)
            let source = sources[started % sources.count]
            started += 1
            inFlight += 1
            if loop.connect(to: target, from: source, tls: tls, serverName: "localhost", handler: client) == nil {
                // connect() already reported the failure through connectionDidClose.
                continue
            }
        }
    }

    func handshakeFinished(ok: Bool) {
        inFlight -= 1
        if ok { counters.established.addFromOwner() } else { counters.failedConnects.addFromOwner() }
        startMore()
    }

    func closeAll() {
        for client in clients { client.connection?.close(.abort) }
        clients = []
    }
}

/// `idle --path /ws/echo`: plain WebSocket connections held open (Benchmarks/idle-rss.sh).
enum RawIdleScenario {
    struct Options {
        var target: SocketAddress
        var connections: Int
        var path: String
        var hold: Double
        var workers: Int
        var concurrency: Int
        var sources: Int
        var relayPID: Int32?
        var tlsCA: String?
        var json: String?
    }

    static func run(_ o: Options) throws {
        var io = IOConfiguration()
        io.workers = o.workers
        io.receiveBufferCount = 256
        let group = try EventLoopGroup(configuration: io)
        try group.start { _ in }
        let tls = try o.tlsCA.map { try TLSContext(configuration: .client(trustRootsFile: $0)) }
        let counters = (0..<o.workers).map { _ in WorkerCounters() }
        let sources = sourceAddresses(count: o.sources)
        let rssBefore = o.relayPID.flatMap { vmRSS(pid: $0) }
        let workers = (0..<o.workers).map { _ in LoopLocal<RawIdleWorker?>(nil) }
        let start = monotonicSeconds()
        for (i, handle) in group.handles.enumerated() {
            let share = evenShare(o.connections, worker: i, of: o.workers)
            let c = counters[i]
            let slot = workers[i]
            let (target, path, concurrency) = (o.target, o.path, o.concurrency)
            let tlsContext = tls
            handle.execute { loop in
                let worker = RawIdleWorker(loop: loop, counters: c, target: target, sources: sources, tls: tlsContext,
                                        path: path, total: share, concurrency: concurrency)
                slot.value = worker
                worker.startMore()
            }
        }
        var last = start
        while true {
            let t = Totals(counters)
            if t.established + t.failedConnects >= UInt64(o.connections) { break }
            if monotonicSeconds() - start > 300 { break }
            sleepSeconds(0.05)
            let now = monotonicSeconds()
            if now - last >= 1 {
                last = now
                log("[idle] t=\(format1(now - start))s established=\(t.established)/\(o.connections) failed=\(t.failedConnects)")
            }
        }
        let connectSeconds = monotonicSeconds() - start
        let established = Totals(counters).established
        log("[idle] \(established) connections established in \(format1(connectSeconds)) s; holding \(format1(o.hold)) s")
        sleepSeconds(1)
        let rssEstablished = o.relayPID.flatMap { vmRSS(pid: $0) }
        sleepSeconds(o.hold)
        let rssAfter = o.relayPID.flatMap { vmRSS(pid: $0) }
        for (i, handle) in group.handles.enumerated() {
            let slot = workers[i]
            handle.execute { _ in slot.value?.closeAll() }
        }
        let closeStart = monotonicSeconds()
        while Totals(counters).closed < UInt64(o.connections) && monotonicSeconds() - closeStart < 10 { sleepSeconds(0.05) }
        group.shutdown()
        let final = Totals(counters)

        var report = JSONReport()
        report.set("scenario", "idle")
        report.set("target", "\(o.target)")
        report.set("tls", o.tlsCA != nil ? "yes" : "no")
        report.set("connections", o.connections)
        report.set("connections_established", final.established)
        report.set("connections_failed", final.failedConnects)
        report.set("connect_seconds", connectSeconds)
        report.set("handshakes_per_second", Double(final.established) / connectSeconds)
        print("idle: \(final.established)/\(o.connections) WebSocket connections established (\(final.failedConnects) failed) in \(format1(connectSeconds)) s\(o.tlsCA != nil ? " over TLS" : "")")
        if let before = rssBefore, let mid = rssEstablished, let after = rssAfter {
            let held = max(mid, after)
            let perConnection = final.established > 0 ? Double(held - before) / Double(final.established) : .nan
            report.set("relay_rss_before_bytes", before)
            report.set("relay_rss_after_bytes", held)
            report.set("rss_per_connection_bytes", perConnection)
            print("  relay RSS: \(before / 1024) KiB empty -> \(held / 1024) KiB held = \(format1(perConnection)) B per connection")
        }
        if let path = o.json { try writeFile(path, report.text) }
        if final.established < UInt64(o.connections) {
            throw LoadTestError.failed("only \(final.established) of \(o.connections) connections were established")
        }
    }
}
