#if os(Linux)
import TetherHTTP
import Glibc
import Logging
import Synchronization

/// The relay's swift-log backend: one line per record on stderr, text or JSON, with a level per
/// logger label. `update` changes format and levels live, for loggers that already exist too.
///
/// Suggested labels: "tether.relay" (lifecycle), "tether.tunnel", "tether.auth", "tether.quota",
/// "tether.tls", "tether.admin", "tether.config".
public enum RelayLogging {
    /// Installs the handler for the whole process (swift-log allows this once).
    public static func bootstrap(_ configuration: LogConfiguration) {
        update(configuration)
        LoggingSystem.bootstrap { label in RelayLogHandler(label: label) }
    }

    /// New format and levels (reload). Loggers created earlier pick them up on their next call.
    public static func update(_ configuration: LogConfiguration) {
        shared.withLock { $0 = configuration }
        generation.add(1, ordering: .releasing)
    }

    /// The settings in force.
    public static var configuration: LogConfiguration { shared.withLock { $0 } }

    static let shared = Mutex(LogConfiguration())
    /// Bumped by every update; handlers cache their level together with the generation they
    /// computed it at, so the level check on every log call is two atomic loads, never a lock.
    static let generation = Atomic<UInt64>(1)
    /// Serialises writes so that lines from different threads never interleave.
    static let output = Mutex(StandardError())
}

/// Writes whole lines to file descriptor 2 (one write per line, retried on EINTR and short
/// writes).
struct StandardError {
    func write(_ line: String) {
        var line = line
        line.withUTF8 { buffer in
            var offset = 0
            while offset < buffer.count {
                let n = Glibc.write(2, buffer.baseAddress.map { $0 + offset }, buffer.count - offset)
                if n > 0 {
                    offset += n
                } else if n < 0 && errno == EINTR {
                    continue
                } else {
                    return  // stderr closed or full: logging must never stop the relay
                }
            }
        }
    }
}

/// Level per label, cached against `RelayLogging.generation`: generation << 8 | level index.
final class LevelCache: Sendable {
    private let packed = Atomic<UInt64>(0)

    @inline(__always)
    func level(for label: String) -> Logger.Level {
        let current = RelayLogging.generation.load(ordering: .acquiring)
        let cached = packed.load(ordering: .relaxed)
        if cached >> 8 == current, let level = LevelCache.levels[safe: Int(cached & 0xFF)] {
            return level
        }
        let level = RelayLogging.shared.withLock { $0.level(for: label) }
        let index = LevelCache.levels.firstIndex(of: level) ?? 0
        packed.store(current << 8 | UInt64(index), ordering: .relaxed)
        return level
    }

    static let levels = Logger.Level.allCases
}

extension Array {
    fileprivate subscript(safe index: Int) -> Element? {
        indices.contains(index) ? self[index] : nil
    }
}

/// One record per line. Text: `<ts> <level> <label> : <metadata> [<source>] <message>` (the
/// StreamLogHandler layout, control characters escaped so a message cannot forge lines). JSON:
/// `{"ts":…,"level":…,"logger":…,"msg":…, <metadata fields>}`, always valid JSON.
public struct RelayLogHandler: LogHandler {
    public let label: String
    public var metadata: Logger.Metadata = [:]
    public var metadataProvider: Logger.MetadataProvider?
    /// Set through `logger.logLevel = …`: pins this logger's level, ignoring the configuration.
    private var pinnedLevel: Logger.Level?
    private let cache = LevelCache()
    private let sink: @Sendable (String) -> Void

    public init(label: String, metadataProvider: Logger.MetadataProvider? = nil) {
        self.init(label: label, metadataProvider: metadataProvider) { line in
            RelayLogging.output.withLock { $0.write(line) }
        }
    }

    /// For tests: lines go to `sink` instead of stderr.
    public init(label: String, metadataProvider: Logger.MetadataProvider? = nil,
                sink: @escaping @Sendable (String) -> Void) {
        self.label = label
        self.metadataProvider = metadataProvider
        self.sink = sink
    }

    public var logLevel: Logger.Level {
        get { pinnedLevel ?? cache.level(for: label) }
        set { pinnedLevel = newValue }
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var merged = metadata
        if let provided = metadataProvider?.get() {
            merged.merge(provided) { _, new in new }
        }
        if let extra = event.metadata {
            merged.merge(extra) { _, new in new }
        }
        if let error = event.error, merged["error"] == nil {
            merged["error"] = "\(error)"
        }
        let format = RelayLogging.shared.withLock { $0.format }
        let time = LogTimestamp.now()
        switch format {
        case .text:
            sink(LogLine.text(time: time, level: event.level, label: label, metadata: merged,
                              source: event.source, message: event.message.description))
        case .json:
            sink(LogLine.json(time: time, level: event.level, label: label, metadata: merged,
                              message: event.message.description))
        }
    }
}

/// Formatting of one record, separate from the handler so that it can be tested directly.
public enum LogLine {
    public static let reservedJSONKeys: Set<String> = ["ts", "level", "logger", "msg"]

    public static func text(time: String, level: Logger.Level, label: String, metadata: Logger.Metadata,
                            source: String, message: String) -> String {
        var line = "\(time) \(level) \(escapedText(label)) :"
        for key in metadata.keys.sorted() {
            guard let value = metadata[key] else { continue }
            line += " \(escapedText(key))=\(escapedText(textValue(value)))"
        }
        line += " [\(escapedText(source))] \(escapedText(message))\n"
        return line
    }

    public static func json(time: String, level: Logger.Level, label: String, metadata: Logger.Metadata,
                            message: String) -> String {
        var line = "{\"ts\":\"\(time)\",\"level\":\"\(level)\",\"logger\":"
        appendJSONString(label, to: &line)
        line += ",\"msg\":"
        appendJSONString(message, to: &line)
        for key in metadata.keys.sorted() {
            guard let value = metadata[key] else { continue }
            line += ","
            // A metadata key may not shadow the record's own fields.
            appendJSONString(reservedJSONKeys.contains(key) ? "meta_\(key)" : key, to: &line)
            line += ":"
            appendJSON(value, to: &line)
        }
        line += "}\n"
        return line
    }

    static func textValue(_ value: Logger.Metadata.Value) -> String {
        switch value {
        case .string(let s): return s
        case .stringConvertible(let c): return c.description
        case .array(let a): return "[" + a.map(textValue).joined(separator: ", ") + "]"
        case .dictionary(let d):
            return "[" + d.keys.sorted().map { "\($0): \(d[$0].map(textValue) ?? "")" }.joined(separator: ", ") + "]"
        }
    }

    static func appendJSON(_ value: Logger.Metadata.Value, to out: inout String) {
        switch value {
        case .string(let s): appendJSONString(s, to: &out)
        case .stringConvertible(let c): appendJSONString(c.description, to: &out)
        case .array(let a):
            out += "["
            for (i, element) in a.enumerated() {
                if i > 0 { out += "," }
                appendJSON(element, to: &out)
            }
            out += "]"
        case .dictionary(let d):
            out += "{"
            for (i, key) in d.keys.sorted().enumerated() {
                if i > 0 { out += "," }
                appendJSONString(key, to: &out)
                out += ":"
                if let v = d[key] { appendJSON(v, to: &out) } else { out += "null" }
            }
            out += "}"
        }
    }

    private static let hex: [Character] = Array("0123456789abcdef")

    static func appendJSONString(_ s: String, to out: inout String) {
        JSONString.append(s, to: &out)
    }

    /// Control characters as escapes, so that one record stays one line.
    static func escapedText(_ s: String) -> String {
        guard s.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7F }) else { return s }
        var out = ""
        for scalar in s.unicodeScalars {
            switch scalar {
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case _ where scalar.value < 0x20 || scalar.value == 0x7F:
                out += "\\x"
                out.append(hex[Int(scalar.value >> 4)])
                out.append(hex[Int(scalar.value & 0xF)])
            default:
                out.unicodeScalars.append(scalar)
            }
        }
        return out
    }
}

/// RFC 3339 UTC timestamps with milliseconds, e.g. 2025-06-01T12:34:56.789Z.
public enum LogTimestamp {
    public static func now() -> String {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return format(seconds: Int(ts.tv_sec), milliseconds: Int(ts.tv_nsec / 1_000_000))
    }

    public static func format(seconds: Int, milliseconds: Int) -> String {
        var t = time_t(seconds)
        var parts = tm()
        gmtime_r(&t, &parts)
        func pad(_ v: Int32, _ width: Int) -> String {
            let s = String(v)
            return String(repeating: "0", count: max(0, width - s.count)) + s
        }
        return "\(pad(parts.tm_year + 1900, 4))-\(pad(parts.tm_mon + 1, 2))-\(pad(parts.tm_mday, 2))T"
            + "\(pad(parts.tm_hour, 2)):\(pad(parts.tm_min, 2)):\(pad(parts.tm_sec, 2)).\(pad(Int32(milliseconds), 3))Z"
    }
}
#endif
