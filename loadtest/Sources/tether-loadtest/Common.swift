import Glibc
import Synchronization
import TetherHTTP
import TetherIO

/// Per-worker counters for the progress line and the final sums. Each has one writer (its
/// loop), so updates are relaxed load + store (`addFromOwner`), never a locked RMW.
final class WorkerCounters: Sendable {
    // Raw connections (echo, raw WebSocket idle).
    let messages = Atomic<UInt64>(0)
    let errors = Atomic<UInt64>(0)
    let established = Atomic<UInt64>(0)
    let closed = Atomic<UInt64>(0)
    let failedConnects = Atomic<UInt64>(0)
    /// Open-loop sends that found no idle connection (the server fell behind the rate).
    let missed = Atomic<UInt64>(0)

    // Bridges.
    let bridgesReady = Atomic<UInt64>(0)
    let bridgesFailed = Atomic<UInt64>(0)
    /// Ready bridges that went away without the driver asking.
    let bridgesLost = Atomic<UInt64>(0)
    let bridgesClosed = Atomic<UInt64>(0)
    let reconnects = Atomic<UInt64>(0)

    // Requests (web clients).
    let sent = Atomic<UInt64>(0)
    let answered = Atomic<UInt64>(0)
    let requestErrors = Atomic<UInt64>(0)
    let clientsConnected = Atomic<UInt64>(0)
    let bytesDown = Atomic<UInt64>(0)
    let bytesUp = Atomic<UInt64>(0)

    // The embedded service and the stream checks.
    let chunksSent = Atomic<UInt64>(0)
    let chunksReceived = Atomic<UInt64>(0)
    let serviceStreams = Atomic<UInt64>(0)
}

struct Totals {
    var messages: UInt64 = 0
    var errors: UInt64 = 0
    var established: UInt64 = 0
    var closed: UInt64 = 0
    var failedConnects: UInt64 = 0
    var missed: UInt64 = 0
    var bridgesReady: UInt64 = 0
    var bridgesFailed: UInt64 = 0
    var bridgesLost: UInt64 = 0
    var bridgesClosed: UInt64 = 0
    var reconnects: UInt64 = 0
    var sent: UInt64 = 0
    var answered: UInt64 = 0
    var requestErrors: UInt64 = 0
    var clientsConnected: UInt64 = 0
    var bytesDown: UInt64 = 0
    var bytesUp: UInt64 = 0
    var chunksSent: UInt64 = 0
    var chunksReceived: UInt64 = 0
    var serviceStreams: UInt64 = 0

    init(_ counters: [WorkerCounters]) {
        for c in counters {
            messages += c.messages.load(ordering: .relaxed)
            errors += c.errors.load(ordering: .relaxed)
            established += c.established.load(ordering: .relaxed)
            closed += c.closed.load(ordering: .relaxed)
            failedConnects += c.failedConnects.load(ordering: .relaxed)
            missed += c.missed.load(ordering: .relaxed)
            bridgesReady += c.bridgesReady.load(ordering: .relaxed)
            bridgesFailed += c.bridgesFailed.load(ordering: .relaxed)
            bridgesLost += c.bridgesLost.load(ordering: .relaxed)
            bridgesClosed += c.bridgesClosed.load(ordering: .relaxed)
            reconnects += c.reconnects.load(ordering: .relaxed)
            sent += c.sent.load(ordering: .relaxed)
            answered += c.answered.load(ordering: .relaxed)
            requestErrors += c.requestErrors.load(ordering: .relaxed)
            clientsConnected += c.clientsConnected.load(ordering: .relaxed)
            bytesDown += c.bytesDown.load(ordering: .relaxed)
            bytesUp += c.bytesUp.load(ordering: .relaxed)
            chunksSent += c.chunksSent.load(ordering: .relaxed)
            chunksReceived += c.chunksReceived.load(ordering: .relaxed)
            serviceStreams += c.serviceStreams.load(ordering: .relaxed)
        }
    }

    /// Requests issued whose outcome is not known yet.
    var inFlight: UInt64 { sent &- answered &- requestErrors }
}

enum LoadTestError: Error, CustomStringConvertible {
    case badTarget(String)
    case notLoopback(String)
    case failed(String)

    var description: String {
        switch self {
        case .badTarget(let t): return "invalid target \(t): expected HOST:PORT with a literal IP address"
        case .notLoopback(let t): return "refusing target \(t): the load driver only sends traffic to loopback addresses (127.0.0.0/8, ::1)"
        case .failed(let m): return m
        }
    }
}

/// Parses HOST:PORT and refuses anything that is not loopback: load must never leave the machine.
func parseLoopbackTarget(_ text: String) throws -> SocketAddress {
    guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]),
          let address = SocketAddress(host: String(text[..<colon]), port: port) else {
        throw LoadTestError.badTarget(text)
    }
    guard address.isLoopback else { throw LoadTestError.notLoopback(text) }
    return address
}

/// Source addresses 127.0.0.2, 127.0.0.3, ...: each adds another ~28k ephemeral ports.
func sourceAddresses(count: Int) -> [SocketAddress?] {
    guard count > 1 else { return [nil] }
    return (0..<count).compactMap { SocketAddress(host: "127.0.0.\(2 + $0)", port: 0) }
}

/// Worker `index`'s part of `total` items spread evenly over `workers`.
func evenShare(_ total: Int, worker index: Int, of workers: Int) -> Int {
    total / workers + (index < total % workers ? 1 : 0)
}

func monotonicSeconds() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}

/// The driver's one clock: CLOCK_MONOTONIC in nanoseconds. Chunk timestamps written by the
/// embedded service and read by the web clients are on it (same process).
@inline(__always)
func nowNanoseconds() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) &* 1_000_000_000 &+ UInt64(ts.tv_nsec)
}

func sleepSeconds(_ s: Double) {
    guard s > 0 else { return }
    usleep(UInt32(min(s, 4000) * 1_000_000))
}

/// Sleeps until the monotonic clock reads `deadline` nanoseconds.
func sleepUntil(nanoseconds deadline: UInt64) {
    var ts = timespec(tv_sec: Int(deadline / 1_000_000_000), tv_nsec: Int(deadline % 1_000_000_000))
    while clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, nil) == EINTR {}
}

/// Resident set size of a process, from /proc/PID/status (VmRSS, in bytes).
func vmRSS(pid: Int32) -> Int? {
    guard let text = readFile("/proc/\(pid)/status") else { return nil }
    for line in text.split(separator: "\n") where line.hasPrefix("VmRSS:") {
        let digits = line.split(separator: " ").dropFirst().first.flatMap { Int($0) }
        return digits.map { $0 * 1024 }
    }
    return nil
}

/// User+system CPU seconds a process has used, from /proc/PID/stat.
func cpuSeconds(pid: Int32) -> Double? {
    guard let text = readFile("/proc/\(pid)/stat"), let close = text.lastIndex(of: ")") else { return nil }
    let fields = text[text.index(after: close)...].split(separator: " ")
    // After the command name: state is field 3, utime is 14 and stime 15 (1-based).
    guard fields.count > 13, let utime = Double(fields[11]), let stime = Double(fields[12]) else { return nil }
    return (utime + stime) / Double(sysconf(Int32(_SC_CLK_TCK)))
}

/// Seconds the threads of a process have run on a CPU and waited for one (runnable, on a
/// run queue), summed over its threads (/proc/PID/task/*/schedstat). A large wait means the
/// machine was oversubscribed: latency then measures the scheduler, not the code.
func scheduleSeconds(pid: Int32) -> (run: Double, wait: Double)? {
    guard let dir = opendir("/proc/\(pid)/task") else { return nil }
    defer { closedir(dir) }
    var run = 0.0, wait = 0.0
    while let entry = readdir(dir) {
        let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
            String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
        }
        guard name.first?.isNumber == true, let text = readFile("/proc/\(pid)/task/\(name)/schedstat") else { continue }
        let fields = text.split(separator: " ")
        guard fields.count >= 2, let r = Double(fields[0]), let w = Double(fields[1]) else { continue }
        run += r / 1e9
        wait += w / 1e9
    }
    return (run, wait)
}

/// This process's own user+system CPU seconds.
func ownCPUSeconds() -> Double {
    var usage = rusage()
    getrusage(__rusage_who_t(RUSAGE_SELF.rawValue), &usage)
    return Double(usage.ru_utime.tv_sec) + Double(usage.ru_utime.tv_usec) / 1e6
        + Double(usage.ru_stime.tv_sec) + Double(usage.ru_stime.tv_usec) / 1e6
}

func readFile(_ path: String) -> String? {
    guard let f = fopen(path, "r") else { return nil }
    defer { fclose(f) }
    var out: [UInt8] = []
    var buf = [UInt8](repeating: 0, count: 4096)
    while true {
        let n = fread(&buf, 1, buf.count, f)
        if n <= 0 { break }
        out.append(contentsOf: buf[0..<n])
    }
    return String(decoding: out, as: UTF8.self)
}

func writeFile(_ path: String, _ text: String) throws {
    guard let f = fopen(path, "w") else { throw LoadTestError.failed("cannot write \(path): \(String(cString: strerror(errno)))") }
    defer { fclose(f) }
    _ = text.withCString { fputs($0, f) }
}

func raiseFileLimit() {
    var limit = rlimit()
    getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
    limit.rlim_cur = limit.rlim_max
    setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
}

func fileLimit() -> Int {
    var limit = rlimit()
    getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
    return Int(clamping: limit.rlim_cur)
}

func log(_ line: String) {
    let text = line + "\n"
    _ = text.withCString { Glibc.write(2, $0, strlen($0)) }
}

/// State that only one loop touches, carried through Sendable job closures. Read from the
/// main thread only after the loops have been joined (`EventLoopGroup.shutdown`).
final class LoopLocal<T>: @unchecked Sendable {
    var value: T
    init(_ value: T) { self.value = value }
}

/// A small ordered JSON object writer for the result files (no Foundation needed).
struct JSONReport {
    private var fields: [(String, String)] = []

    mutating func set(_ key: String, _ value: Int) { fields.append((key, String(value))) }
    mutating func set(_ key: String, _ value: UInt64) { fields.append((key, String(value))) }
    mutating func set(_ key: String, _ value: Int32) { fields.append((key, String(value))) }
    mutating func set(_ key: String, _ value: Bool) { fields.append((key, value ? "true" : "false")) }
    mutating func set(_ key: String, _ value: Double) {
        fields.append((key, value.isFinite ? String(value) : "null"))
    }
    mutating func set(_ key: String, _ value: String) { fields.append((key, JSONString.quote(value))) }
    mutating func set(_ key: String, _ object: JSONReport) { fields.append((key, object.compact)) }
    mutating func setNull(_ key: String) { fields.append((key, "null")) }

    /// A map of counts, keys sorted, as a nested object.
    mutating func set(_ key: String, counts: [String: UInt64]) {
        var o = JSONReport()
        for k in counts.keys.sorted() { o.set(k, counts[k] ?? 0) }
        set(key, o)
    }

    var compact: String { "{" + fields.map { "\(JSONString.quote($0.0)):\($0.1)" }.joined(separator: ",") + "}" }
    var text: String { compact + "\n" }
}

func format1(_ v: Double) -> String {
    guard v.isFinite else { return "n/a" }
    let scaled = (v * 10).rounded() / 10
    return String(scaled)
}

/// Fixed-point with `digits` decimals (no Foundation formatting on any path).
func fixed(_ v: Double, _ digits: Int) -> String {
    guard v.isFinite else { return "n/a" }
    var scale = 1.0
    for _ in 0..<digits { scale *= 10 }
    let negative = v < 0
    let n = Int((abs(v) * scale).rounded())
    var whole = String(n / Int(scale))
    if negative { whole = "-" + whole }
    guard digits > 0 else { return whole }
    let frac = String(n % Int(scale))
    return whole + "." + String(repeating: "0", count: digits - frac.count) + frac
}
