import Glibc
import Synchronization
import TetherIO

/// Closed-loop ping-pong over raw TCP: each connection sends one message and waits for its echo
/// before sending the next. Used to compare the server's CPU per message across servers.
final class EchoClient: ConnectionHandler {
    let counters: WorkerCounters
    /// In fixed-rate mode the pacer decides when the next message goes out.
    let pacer: EchoPacer?
    var connection: Connection?
    var message: [UInt8]
    var received = 0
    var sequence: UInt8 = 0
    var inbox: [UInt8] = []

    init(size: Int, counters: WorkerCounters, pacer: EchoPacer?) {
        self.counters = counters
        self.pacer = pacer
        self.message = [UInt8](repeating: 0x61, count: max(1, size))
    }

    func connectionDidOpen(_ connection: Connection) {
        counters.established.addFromOwner()
        self.connection = connection
        if let pacer { pacer.idle.append(self) } else { send(connection) }
    }

    func send(_ connection: Connection) {
        sequence &+= 1
        message[0] = sequence
        received = 0
        connection.write(message)
    }

    func connection(_ connection: Connection, didRead bytes: UnsafeRawBufferPointer) {
        // Verify the echo byte for byte (the first byte carries the sequence number), a run of
        // bytes at a time so the driver stays cheaper than the servers it measures.
        guard let source = bytes.baseAddress else { return }
        var offset = 0
        while offset < bytes.count {
            let take = min(bytes.count - offset, message.count - received)
            let same = message.withUnsafeBytes { expected in
                guard let base = expected.baseAddress else { return false }
                return memcmp(base + received, source + offset, take) == 0
            }
            if !same { counters.errors.addFromOwner() }
            offset += take
            received += take
            if received == message.count {
                counters.messages.addFromOwner()
                if EchoScenario.stop.load(ordering: .relaxed) {
                    connection.close()
                    return
                }
                if let pacer { pacer.idle.append(self) } else { send(connection) }
            }
        }
    }

    func connectionDidClose(_ connection: Connection, error: IOError?) {
        self.connection = nil
        if let error, !EchoScenario.stop.load(ordering: .relaxed) {
            if error.operation == "connect" || connection.fileDescriptor < 0 {
                counters.failedConnects.addFromOwner()
            } else {
                counters.errors.addFromOwner()
            }
        }
        counters.closed.addFromOwner()
    }
}

/// Open-loop pacing: every 10 ms a worker sends its share of `rate` messages, each on a
/// connection whose previous echo has come back. Both servers then carry the same load, so CPU
/// per message compares like with like (closed loop lets the faster server run less batched).
final class EchoPacer {
    let loop: EventLoop
    let perSecond: Double
    var idle: [EchoClient] = []
    var next = 0
    var budget = 0.0
    var last: Double
    let counters: WorkerCounters

    init(loop: EventLoop, perSecond: Double, counters: WorkerCounters) {
        self.loop = loop
        self.perSecond = perSecond
        self.counters = counters
        self.last = monotonicSeconds()
    }

    func start() {
        loop.schedule(afterMilliseconds: 10) { [self] in tick() }
    }

    private func tick() {
        guard !EchoScenario.stop.load(ordering: .relaxed) else { return }
        let now = monotonicSeconds()
        budget += (now - last) * perSecond
        last = now
        while budget >= 1 && next < idle.count {
            let client = idle[next]
            next += 1
            budget -= 1
            if let c = client.connection { client.send(c) }
        }
        // Compact the queue of idle connections without reallocating every tick.
        if next > 0 {
            idle.removeSubrange(0..<next)
            next = 0
        }
        if budget >= 1 {
            let lost = UInt64(budget)
            counters.missed.addFromOwner(lost)
            budget -= Double(lost)
        }
        loop.schedule(afterMilliseconds: 10) { [self] in tick() }
    }
}

enum EchoScenario {
    static let stop = Atomic<Bool>(false)

    struct Options {
        var target: SocketAddress
        var connections: Int
        var messageSize: Int
        var duration: Double
        var warmup: Double
        var workers: Int
        var serverPID: Int32?
        var rate: Int?
        var json: String?
    }

    static func run(_ o: Options) throws {
        var io = IOConfiguration()
        io.workers = o.workers
        let group = try EventLoopGroup(configuration: io)
        let counters = (0..<o.workers).map { _ in WorkerCounters() }
        try group.start { _ in }
        for (i, handle) in group.handles.enumerated() {
            let share = evenShare(o.connections, worker: i, of: o.workers)
            let target = o.target
            let size = o.messageSize
            let c = counters[i]
            let rate = o.rate.map { Double($0) / Double(o.workers) }
            handle.execute { loop in
                let pacer = rate.map { EchoPacer(loop: loop, perSecond: $0, counters: c) }
                for _ in 0..<share {
                    loop.connect(to: target, handler: EchoClient(size: size, counters: c, pacer: pacer))
                }
                pacer?.start()
            }
        }
        let start = monotonicSeconds()
        var lastProgress = start
        while monotonicSeconds() - start < o.warmup {
            sleepSeconds(0.2)
            lastProgress = progress(counters, since: start, last: lastProgress, label: "warmup")
        }
        let before = Totals(counters)
        let cpuBefore = o.serverPID.flatMap { cpuSeconds(pid: $0) }
        let measureStart = monotonicSeconds()
        while monotonicSeconds() - measureStart < o.duration {
            sleepSeconds(0.2)
            lastProgress = progress(counters, since: start, last: lastProgress, label: "measure")
        }
        let after = Totals(counters)
        let cpuAfter = o.serverPID.flatMap { cpuSeconds(pid: $0) }
        let seconds = monotonicSeconds() - measureStart
        stop.store(true, ordering: .relaxed)
        // Let in-flight messages finish so every connection closes cleanly.
        let drainStart = monotonicSeconds()
        while Totals(counters).closed < UInt64(o.connections) && monotonicSeconds() - drainStart < 5 { sleepSeconds(0.05) }
        group.shutdown()
        let final = Totals(counters)

        let messages = after.messages - before.messages
        var report = JSONReport()
        report.set("scenario", "echo")
        report.set("target", "\(o.target)")
        report.set("connections", o.connections)
        report.set("established", final.established)
        report.set("message_size", o.messageSize)
        report.set("seconds", seconds)
        report.set("messages", messages)
        report.set("messages_per_second", Double(messages) / seconds)
        report.set("errors", final.errors)
        if let rate = o.rate {
            report.set("target_rate", rate)
            report.set("missed_sends", final.missed)
        }
        report.set("failed_connects", final.failedConnects)
        if let a = cpuBefore, let b = cpuAfter {
            report.set("server_cpu_seconds", b - a)
            report.set("server_cpu_us_per_message", messages > 0 ? (b - a) * 1e6 / Double(messages) : .nan)
        }
        print("""
        echo: \(o.connections) connections, \(o.messageSize) B messages, \(format1(seconds)) s measured\(o.rate.map { ", open loop at \($0)/s" } ?? ", closed loop")
          messages:      \(messages)  (\(format1(Double(messages) / seconds)) /s)
          errors:        \(final.errors)   failed connects: \(final.failedConnects)
        """)
        if let a = cpuBefore, let b = cpuAfter {
            print("  server CPU:    \(format1(b - a)) s  (\(format1((b - a) * 1e6 / Double(max(messages, 1)))) µs per message)")
        }
        if let path = o.json { try writeFile(path, report.text) }
        if final.established < UInt64(o.connections) {
            throw LoadTestError.failed("only \(final.established) of \(o.connections) connections were established")
        }
    }

    static func progress(_ counters: [WorkerCounters], since start: Double, last: Double, label: String) -> Double {
        let now = monotonicSeconds()
        guard now - last >= 1 else { return last }
        let t = Totals(counters)
        log("[echo \(label)] t=\(format1(now - start))s established=\(t.established) messages=\(t.messages) errors=\(t.errors)")
        return now
    }
}

