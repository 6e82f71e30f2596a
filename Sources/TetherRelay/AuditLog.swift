#if os(Linux)
import TetherHTTP
import Glibc
import Synchronization

/// Who did what to which session, as JSON lines (docs/OPERATIONS.md lists the events). Never
/// request bodies or headers: the relay stores no user data.
///
/// Event loops only append to a bounded queue; a writer thread does the (possibly blocking)
/// writes, so a slow disk or a stdout nobody reads never stalls the data path. When the queue
/// is full, lines are dropped and counted, and the count is written once there is room.
public final class AuditLog: Sendable {
    public enum Destination: Sendable, Equatable {
        case off
        case standardOutput
        case file(String)
    }

    private struct State {
        var lines: [String] = []
        var dropped = 0
        var stopping = false
    }

    private let fd: Int32
    private let ownsFD: Bool
    /// A pipe: writers poke one end, the writer thread sleeps on the other.
    private let wake: (read: Int32, write: Int32)
    private let capacity: Int
    private let state = Mutex(State())
    private let thread = Mutex<pthread_t?>(nil)
    public let isEnabled: Bool

    public init(destination: Destination, capacity: Int = 65_536) throws {
        self.capacity = capacity
        switch destination {
        case .off:
            (fd, ownsFD, isEnabled) = (-1, false, false)
        case .standardOutput:
            (fd, ownsFD, isEnabled) = (STDOUT_FILENO, false, true)
        case .file(let path):
            let opened = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o640)
            guard opened >= 0 else {
                throw RelayError.invalidConfiguration("audit-log", "cannot open '\(path)': \(String(cString: strerror(errno)))")
            }
            (fd, ownsFD, isEnabled) = (opened, true, true)
        }
        var fds: [Int32] = [-1, -1]
        guard !isEnabled || pipe(&fds) == 0 else {
            throw RelayError.invalidConfiguration("audit-log", "pipe failed")
        }
        wake = (fds[0], fds[1])
        if isEnabled {
            _ = fcntl(fds[0], F_SETFD, FD_CLOEXEC)
            _ = fcntl(fds[1], F_SETFD, FD_CLOEXEC)
        }
        guard isEnabled else { return }
        let box = Unmanaged.passRetained(self).toOpaque()
        var tid = pthread_t()
        let rc = pthread_create(&tid, nil, { raw in
            guard let raw else { return nil }
            Unmanaged<AuditLog>.fromOpaque(raw).takeRetainedValue().writerLoop()
            return nil
        }, box)
        if rc != 0 {
            Unmanaged<AuditLog>.fromOpaque(box).release()
            throw RelayError.invalidConfiguration("audit-log", "cannot start the writer thread")
        }
        thread.withLock { $0 = tid }
    }

    /// One event. `fields` are written in order after `ts` and `event`; values are strings
    /// or integers already rendered by the caller's choice of overload.
    public func record(_ event: String, _ fields: KeyValuePairs<String, AuditValue> = [:]) {
        guard isEnabled else { return }
        var line = "{\"ts\":\"\(AuditLog.timestamp())\",\"event\":\(JSONString.quote(event))"
        for (key, value) in fields {
            line += ",\(JSONString.quote(key)):"
            switch value {
            case .string(let s): line += JSONString.quote(s)
            case .int(let n): line += String(n)
            case .double(let d): line += String(d)
            case .bool(let b): line += b ? "true" : "false"
            }
        }
        line += "}\n"
        let wasEmpty = state.withLock { state -> Bool? in
            guard !state.stopping else { return nil }
            guard state.lines.count < capacity else {
                state.dropped += 1
                return nil
            }
            state.lines.append(line)
            return state.lines.count == 1
        }
        if wasEmpty == true { signal() }
    }

    /// Writes what is queued and stops the writer (relay shutdown).
    public func close() {
        guard isEnabled else { return }
        state.withLock { $0.stopping = true }
        signal()
        if let tid = thread.withLock({ t -> pthread_t? in defer { t = nil }; return t }) {
            pthread_join(tid, nil)
        }
    }

    private func signal() {
        var one: UInt8 = 1
        _ = write(wake.write, &one, 1)
    }

    private func writerLoop() {
        while true {
            var pokes = [UInt8](repeating: 0, count: 64)
            _ = read(wake.read, &pokes, 64)
            let (lines, dropped, stopping) = state.withLock { state in
                defer { state.lines.removeAll(keepingCapacity: true); state.dropped = 0 }
                return (state.lines, state.dropped, state.stopping)
            }
            var out = lines.joined()
            if dropped > 0 {
                out += "{\"ts\":\"\(AuditLog.timestamp())\",\"event\":\"audit_lines_dropped\",\"count\":\(dropped)}\n"
            }
            writeAll(out)
            if stopping { break }
        }
        Glibc.close(wake.read)
        Glibc.close(wake.write)
        if ownsFD { Glibc.close(fd) }
    }

    private func writeAll(_ text: String) {
        var bytes = Array(text.utf8)
        var offset = 0
        while offset < bytes.count {
            let n = bytes.withUnsafeMutableBytes { raw in
                write(fd, raw.baseAddress.map { $0 + offset }, raw.count - offset)
            }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { return }
            offset += n
        }
        bytes.removeAll()
    }

    /// RFC 3339 UTC with milliseconds.
    static func timestamp(_ seconds: Double? = nil) -> String {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        let now = seconds ?? (Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9)
        var t = time_t(now)
        var parts = tm()
        gmtime_r(&t, &parts)
        let ms = Int((now - Double(Int(now))) * 1000)
        func pad(_ n: Int32, _ width: Int) -> String {
            let s = String(n)
            return String(repeating: "0", count: max(0, width - s.count)) + s
        }
        return "\(pad(parts.tm_year + 1900, 4))-\(pad(parts.tm_mon + 1, 2))-\(pad(parts.tm_mday, 2))T"
            + "\(pad(parts.tm_hour, 2)):\(pad(parts.tm_min, 2)):\(pad(parts.tm_sec, 2)).\(pad(Int32(ms), 3))Z"
    }
}

public enum AuditValue: Sendable, ExpressibleByStringLiteral, ExpressibleByIntegerLiteral {
    case string(String)
    case int(Int)
    case double(Double)
    case bool(Bool)

    public init(stringLiteral value: String) { self = .string(value) }
    public init(integerLiteral value: Int) { self = .int(value) }
}
#endif
