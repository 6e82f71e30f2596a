#if os(Linux)
import Glibc

/// The standard `process_*` figures, read from /proc at scrape time (as the Prometheus client
/// libraries do), so nothing is kept or updated between scrapes.
struct ProcessMetrics {
    var residentMemoryBytes: UInt64 = 0
    var virtualMemoryBytes: UInt64 = 0
    var cpuSeconds: Double = 0
    var startTimeSeconds: Double = 0
    var openFDs: Int = 0
    var maxFDs: Int = 0
    var threads: Int = 0

    static func read() -> ProcessMetrics {
        var m = ProcessMetrics()
        let ticks = Double(max(1, sysconf(Int32(_SC_CLK_TCK))))
        let pageSize = UInt64(max(1, sysconf(Int32(_SC_PAGESIZE))))
        if let stat = readSmallFile("/proc/self/stat", maxBytes: 1 << 16), let close = stat.lastIndex(of: UInt8(ascii: ")")) {
            // Fields after "pid (comm)": state is field 3, so index i here is field i + 3.
            let fields = stat[stat.index(after: close)...].split(separator: UInt8(ascii: " "))
            func field(_ n: Int) -> UInt64 {
                let i = n - 3
                guard i >= 0, i < fields.count else { return 0 }
                return UInt64(String(decoding: fields[i], as: UTF8.self).trimmingSpaces) ?? 0
            }
            m.cpuSeconds = Double(field(14) + field(15)) / ticks
            m.threads = Int(field(20))
            m.virtualMemoryBytes = field(23)
            m.residentMemoryBytes = field(24) * pageSize
            if let bootTime = bootTimeSeconds() {
                m.startTimeSeconds = bootTime + Double(field(22)) / ticks
            }
        }
        m.openFDs = countOpenFDs()
        var limit = rlimit()
        if getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit) == 0 {
            m.maxFDs = limit.rlim_cur > UInt64(Int.max) ? Int.max : Int(limit.rlim_cur)
        }
        return m
    }

    private static func bootTimeSeconds() -> Double? {
        guard let stat = readSmallFile("/proc/stat", maxBytes: 1 << 20) else { return nil }
        for line in stat.split(separator: UInt8(ascii: "\n")) where line.starts(with: Array("btime ".utf8)) {
            return Double(String(decoding: line.dropFirst(6), as: UTF8.self).trimmingSpaces)
        }
        return nil
    }

    private static func countOpenFDs() -> Int {
        guard let dir = opendir("/proc/self/fd") else { return 0 }
        defer { closedir(dir) }
        var count = 0
        while let entry = readdir(dir) {
            if entry.pointee.d_name.0 != 0x2E { count += 1 }  // not "." or ".."
        }
        return max(0, count - 1)  // the directory's own descriptor
    }
}

/// A whole small file (procfs, a seccomp profile); nil if it cannot be read or is larger.
func readSmallFile(_ path: String, maxBytes: Int) -> [UInt8]? {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    var out: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 16 * 1024)
    while true {
        let n = buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
        if n == 0 { return out }
        if n < 0 {
            if errno == EINTR { continue }
            return nil
        }
        guard out.count + n <= maxBytes else { return nil }
        out.append(contentsOf: buffer[0..<n])
    }
}

extension String {
    fileprivate var trimmingSpaces: String {
        var s = Substring(self)
        while let c = s.first, c == " " || c == "\n" || c == "\t" { s = s.dropFirst() }
        while let c = s.last, c == " " || c == "\n" || c == "\t" { s = s.dropLast() }
        return String(s)
    }
}
#endif
