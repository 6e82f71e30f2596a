import Logging
import TetherQuota
import TetherRelay

/// A setting's parsed value.
public enum SettingValue: Sendable, Equatable {
    case string(String)
    case integer(Int)
    case number(Double)
    case bool(Bool)
    /// A port, or nil for "off" (admin.port).
    case port(Int?)
    /// Log levels by logger label (log.levels).
    case levels([String: Logger.Level])
    /// IP networks (limits.trusted_proxies).
    case prefixes([AddressPrefix])
}

/// What a setting accepts. Every source (file, environment, flag) is parsed from text by the
/// same rules, so `8080`, `"8080"` and `--port 8080` mean the same.
public enum SettingKind: Sendable {
    /// Any text; `allowEmpty: false` refuses "".
    case string(allowEmpty: Bool)
    /// A file path (checked by the builder: readable, loadable).
    case path
    case integer(ClosedRange<Int>)
    /// Bytes: an integer, or with a binary unit: 64KiB, 16MiB, 1GiB.
    case bytes(ClosedRange<Int>)
    /// Seconds: a number, or with a unit: 250ms, 30s, 5m, 1h. `minExclusive`: 0 is refused.
    case seconds(ClosedRange<Double>, minExclusive: Bool)
    /// A plain non-negative number (rates, bursts).
    case number(ClosedRange<Double>)
    /// true/false, yes/no, on/off, 1/0.
    case bool
    case choice([String])
    /// 0...65535; with `allowOff`, also "off"/false (nil).
    case port(allowOff: Bool)
    /// `label=level` pairs, comma separated (flags and environment) or a mapping (file).
    case levels
    /// IP networks (`10.0.0.0/8`, `fd00::/64`, bare addresses), comma separated (flags and
    /// environment) or a list (file); empty for none.
    case prefixes

    /// One-word description for --help and the docs.
    public var placeholder: String {
        switch self {
        case .string: return "<text>"
        case .path: return "<path>"
        case .integer: return "<n>"
        case .bytes: return "<bytes>"
        case .seconds: return "<seconds>"
        case .number: return "<number>"
        case .bool: return "<bool>"
        case .choice(let options): return options.joined(separator: "|")
        case .port(let allowOff): return allowOff ? "<port|off>" : "<port>"
        case .levels: return "<label=level>"
        case .prefixes: return "<cidr,...>"
        }
    }

    /// "must be …" clause used in errors and the docs.
    public var expectation: String {
        switch self {
        case .string(let allowEmpty): return allowEmpty ? "text" : "non-empty text"
        case .path: return "a file path"
        case .integer(let r): return "an integer \(r.lowerBound)...\(r.upperBound)"
        case .bytes(let r): return "a byte count \(r.lowerBound)...\(r.upperBound) (units: KiB, MiB, GiB)"
        case .seconds(let r, let exclusive):
            let low = exclusive ? "above \(format(r.lowerBound))" : "at least \(format(r.lowerBound))"
            return "seconds, \(low) and at most \(format(r.upperBound)) (units: ms, s, m, h)"
        case .number(let r): return "a number \(format(r.lowerBound))...\(format(r.upperBound))"
        case .bool: return "true or false"
        case .choice(let options): return "one of " + options.joined(separator: ", ")
        case .port(let allowOff): return allowOff ? "a port 0...65535 or off" : "a port 0...65535"
        case .levels: return "label=level pairs (levels: \(SettingKind.levelNames))"
        case .prefixes: return "IP networks such as 10.0.0.0/8 or fd00::/64, comma separated (a list in the file), or none"
        }
    }

    static let levelNames = Logger.Level.allCases.map(\.rawValue).joined(separator: ", ")

    /// Parses one source's text. `secret`: the problem never quotes the value.
    public func parse(_ text: String, secret: Bool = false) -> Result<SettingValue, SettingProblem> {
        let shown = secret ? "a value of \(text.utf8.count) bytes" : "\"\(text)\""
        func fail(_ problem: String) -> Result<SettingValue, SettingProblem> {
            .failure(SettingProblem(problem))
        }
        let trimmed = text.trimmingSpaces
        switch self {
        case .string(let allowEmpty):
            if !allowEmpty && text.isEmpty { return fail("must not be empty") }
            return .success(.string(text))
        case .path:
            if trimmed.isEmpty { return fail("must not be empty") }
            return .success(.string(text))
        case .integer(let range):
            guard let n = Int(trimmed) else { return fail("must be an integer, got \(shown)") }
            guard range.contains(n) else { return fail("must be \(range.lowerBound)...\(range.upperBound), got \(n)") }
            return .success(.integer(n))
        case .bytes(let range):
            guard let n = SettingKind.byteCount(trimmed) else {
                return fail("must be a byte count such as 1048576 or 1MiB, got \(shown)")
            }
            guard range.contains(n) else { return fail("must be \(range.lowerBound)...\(range.upperBound) bytes, got \(n)") }
            return .success(.integer(n))
        case .seconds(let range, let exclusive):
            guard let s = SettingKind.seconds(trimmed) else {
                return fail("must be seconds such as 30, 1.5, 250ms, 5m or 1h, got \(shown)")
            }
            let low = exclusive ? s > range.lowerBound : s >= range.lowerBound
            guard low && s <= range.upperBound else {
                let lowText = exclusive ? "above \(format(range.lowerBound))" : "at least \(format(range.lowerBound))"
                return fail("must be \(lowText) and at most \(format(range.upperBound)) seconds, got \(format(s))")
            }
            return .success(.number(s))
        case .number(let range):
            guard let d = Double(trimmed), d.isFinite else { return fail("must be a number, got \(shown)") }
            guard range.contains(d) else {
                return fail("must be \(format(range.lowerBound))...\(format(range.upperBound)), got \(format(d))")
            }
            return .success(.number(d))
        case .bool:
            switch trimmed.lowercased() {
            case "true", "yes", "on", "1": return .success(.bool(true))
            case "false", "no", "off", "0": return .success(.bool(false))
            default: return fail("must be true or false, got \(shown)")
            }
        case .choice(let options):
            let lowered = trimmed.lowercased()
            guard options.contains(lowered) else {
                return fail("must be one of \(options.joined(separator: ", ")), got \(shown)")
            }
            return .success(.string(lowered))
        case .port(let allowOff):
            if allowOff, ["off", "false", "no"].contains(trimmed.lowercased()) { return .success(.port(nil)) }
            guard let n = Int(trimmed) else {
                return fail("must be a port 0...65535\(allowOff ? " or off" : ""), got \(shown)")
            }
            guard (0...65535).contains(n) else { return fail("must be 0...65535, got \(n)") }
            return .success(.port(n))
        case .levels:
            var levels: [String: Logger.Level] = [:]
            for item in text.split(separator: ",") {
                let pair = item.split(separator: "=", maxSplits: 1).map { String($0).trimmingSpaces }
                guard pair.count == 2, !pair[0].isEmpty else {
                    return fail("expected label=level (e.g. tether.tunnel=debug), got \"\(item)\"")
                }
                switch SettingKind.level(pair[1]) {
                case .success(let level): levels[pair[0]] = level
                case .failure(let problem): return fail("\(pair[0]): \(problem.message)")
                }
            }
            return .success(.levels(levels))
        case .prefixes:
            if trimmed.lowercased() == "none" { return .success(.prefixes([])) }
            var prefixes: [AddressPrefix] = []
            for item in text.split(separator: ",") {
                let entry = item.trimmingSpaces
                if entry.isEmpty { continue }
                guard let prefix = AddressPrefix.parse(entry) else {
                    return fail("expected an IP network such as 10.0.0.0/8, fd00::/64 or 192.0.2.7, got \"\(entry)\"")
                }
                prefixes.append(prefix)
            }
            return .success(.prefixes(prefixes))
        }
    }

    static func level(_ text: String) -> Result<Logger.Level, SettingProblem> {
        guard let level = Logger.Level(rawValue: text.trimmingSpaces.lowercased()) else {
            return .failure(SettingProblem("must be one of \(levelNames), got \"\(text)\""))
        }
        return .success(level)
    }

    /// 1048576, 1024KiB, 1MiB, 1GiB (binary units; a bare "B" is allowed too).
    static func byteCount(_ text: String) -> Int? {
        let units: [(String, Int)] = [("KiB", 1 << 10), ("MiB", 1 << 20), ("GiB", 1 << 30), ("B", 1)]
        for (suffix, factor) in units where text.hasSuffix(suffix) {
            guard let n = Int(text.dropLast(suffix.count).trimmingSpaces), n >= 0 else { return nil }
            let (product, overflow) = n.multipliedReportingOverflow(by: factor)
            return overflow ? nil : product
        }
        return Int(text)
    }

    /// 30, 1.5, 250ms, 30s, 5m, 1h.
    static func seconds(_ text: String) -> Double? {
        let units: [(String, Double)] = [("ms", 0.001), ("s", 1), ("m", 60), ("h", 3600)]
        for (suffix, factor) in units where text.hasSuffix(suffix) {
            guard let n = Double(text.dropLast(suffix.count).trimmingSpaces), n.isFinite else { return nil }
            return n * factor
        }
        guard let n = Double(text), n.isFinite else { return nil }
        return n
    }
}

/// Why a value was refused; the caller adds the key and the source.
public struct SettingProblem: Error, Sendable, Equatable {
    public let message: String
    public init(_ message: String) { self.message = message }
}

/// 30 rather than 30.0; 0.2 stays 0.2.
func format(_ d: Double) -> String {
    if d == d.rounded(), abs(d) < 1e15 { return String(Int(d)) }
    return String(d)
}

extension StringProtocol {
    var trimmingSpaces: String {
        var s = Substring(self)
        while let first = s.first, first == " " || first == "\t" { s = s.dropFirst() }
        while let last = s.last, last == " " || last == "\t" { s = s.dropLast() }
        return String(s)
    }
}
