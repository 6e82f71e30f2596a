import Glibc
import Synchronization
import TetherIO

/// Per-worker counters: each has one writer (its loop), so stores are plain relaxed ones.
final class WorkerCounters: Sendable {
    let messages = Atomic<UInt64>(0)
    let errors = Atomic<UInt64>(0)
    let established = Atomic<UInt64>(0)
    let closed = Atomic<UInt64>(0)
    let failedConnects = Atomic<UInt64>(0)
    /// Open-loop sends that found no idle connection (the server fell behind the rate).
    let missed = Atomic<UInt64>(0)
}

struct Totals {
    var messages: UInt64 = 0
    var errors: UInt64 = 0
    var established: UInt64 = 0
    var closed: UInt64 = 0
    var failedConnects: UInt64 = 0
    var missed: UInt64 = 0

    init(_ counters: [WorkerCounters]) {
        for c in counters {
            messages += c.messages.load(ordering: .relaxed)
            errors += c.errors.load(ordering: .relaxed)
            established += c.established.load(ordering: .relaxed)
            closed += c.closed.load(ordering: .relaxed)
            failedConnects += c.failedConnects.load(ordering: .relaxed)
            missed += c.missed.load(ordering: .relaxed)
        }
    }
}

enum LoadTestError: Error, CustomStringConvertible {
    case badTarget(String)
    case notLoopback(String)
    case failed(String)

    var description: String {
        switch self {
        case .badTarget(let t): return "invalid --target \(t): expected HOST:PORT with a literal IP address"
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

func sleepSeconds(_ s: Double) {
    guard s > 0 else { return }
    usleep(UInt32(min(s, 4000) * 1_000_000))
}

/// Resident set size of a process, from /proc/PID/status (VmRSS, in bytes).
func residentBytes(pid: Int32) -> Int? {
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
    guard let f = fopen(path, "w") else { throw LoadTestError.failed("cannot write \(path)") }
    defer { fclose(f) }
    _ = text.withCString { fputs($0, f) }
}

func raiseFileLimit() {
    var limit = rlimit()
    getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
    limit.rlim_cur = limit.rlim_max
    setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
}

func log(_ line: String) {
    let text = line + "\n"
    _ = text.withCString { Glibc.write(2, $0, strlen($0)) }
}

/// A tiny ordered JSON object writer for the result files.
struct JSONReport {
    private var fields: [(String, String)] = []
    mutating func set(_ key: String, _ value: Int) { fields.append((key, String(value))) }
    mutating func set(_ key: String, _ value: UInt64) { fields.append((key, String(value))) }
    mutating func set(_ key: String, _ value: Double) {
        fields.append((key, value.isFinite ? String(value) : "null"))
    }
    mutating func set(_ key: String, _ value: String) {
        var escaped = "\""
        for c in value {
            if c == "\"" || c == "\\" { escaped.append("\\") }
            escaped.append(c)
        }
        fields.append((key, escaped + "\""))
    }
    var text: String {
        "{" + fields.map { "\"\($0.0)\":\($0.1)" }.joined(separator: ",") + "}\n"
    }
}
