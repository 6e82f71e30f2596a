import Glibc
import Synchronization
import TetherIO

/// Closed-loop ping-pong over raw TCP: each connection sends one message and waits for its echo
/// before sending the next. Used to compare the server's CPU per message across servers.
final class EchoClient: ConnectionHandler {
    let counters: WorkerCounters
    var message: [UInt8]
    var received = 0
    var sequence: UInt8 = 0
    var inbox: [UInt8] = []

    init(size: Int, counters: WorkerCounters) {
        self.counters = counters
        self.message = [UInt8](repeating: 0x61, count: max(1, size))
    }

    func connectionDidOpen(_ connection: Connection) {
        WorkerCounters.bump(counters.established)
        send(connection)
    }

    private func send(_ connection: Connection) {
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
            if !same { WorkerCounters.bump(counters.errors) }
            offset += take
            received += take
            if received == message.count {
                WorkerCounters.bump(counters.messages)
                if EchoScenario.stop.load(ordering: .relaxed) {
                    connection.close()
                    return
                }
                send(connection)
            }
        }
    }

    func connectionDidClose(_ connection: Connection, error: IOError?) {
        if let error, !EchoScenario.stop.load(ordering: .relaxed) {
            if error.operation == "connect" || connection.fileDescriptor < 0 {
                WorkerCounters.bump(counters.failedConnects)
            } else {
                WorkerCounters.bump(counters.errors)
            }
        }
        WorkerCounters.bump(counters.closed)
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
        var json: String?
    }

    static func run(_ o: Options) throws {
        var io = IOConfiguration()
        io.workers = o.workers
        let group = try EventLoopGroup(configuration: io)
        let counters = (0..<o.workers).map { _ in WorkerCounters() }
        try group.start { _ in }
        for (i, handle) in group.handles.enumerated() {
            let share = o.connections / o.workers + (i < o.connections % o.workers ? 1 : 0)
            let target = o.target
            let size = o.messageSize
            let c = counters[i]
            handle.execute { loop in
                for _ in 0..<share {
                    loop.connect(to: target, handler: EchoClient(size: size, counters: c))
                }
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
        report.set("failed_connects", final.failedConnects)
        if let a = cpuBefore, let b = cpuAfter {
            report.set("server_cpu_seconds", b - a)
            report.set("server_cpu_us_per_message", messages > 0 ? (b - a) * 1e6 / Double(messages) : .nan)
        }
        print("""
        echo: \(o.connections) connections, \(o.messageSize) B messages, \(format1(seconds)) s measured
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

func format1(_ v: Double) -> String {
    guard v.isFinite else { return "n/a" }
    let scaled = (v * 10).rounded() / 10
    return String(scaled)
}
