import Foundation
import Logging
import Yams

/// One value as a source gave it, before parsing (flags, environment, file scalars) or already
/// parsed (a mapping in the file, e.g. log.levels).
struct RawValue {
    enum Input {
        case text(String)
        case parsed(SettingValue)
    }
    let setting: Setting
    let input: Input
    let source: SettingSource
}

/// What one source yielded: values, problems (errors) and notices (warnings).
struct SourceReading {
    var values: [RawValue] = []
    var issues: [ConfigurationIssue] = []
    var warnings: [ConfigurationIssue] = []
}

// MARK: - The file

enum ConfigurationFile {
    /// A configuration file is a few KiB; this stops a wrong path (a log, a device) from being
    /// read whole.
    static let maxBytes = 1 << 20

    static func read(path: String) -> SourceReading {
        var reading = SourceReading()
        let text: String
        switch readTextFile(path, maxBytes: maxBytes) {
        case .success(let t): text = t
        case .failure(let problem):
            reading.issues.append(ConfigurationIssue(key: "config", source: .file(path: path, line: nil), problem: problem.message))
            return reading
        }
        let root: Node?
        do {
            root = try Yams.compose(yaml: text)
        } catch let error as YamlError {
            reading.issues.append(yamlIssue(error, path: path))
            return reading
        } catch {
            reading.issues.append(ConfigurationIssue(key: "config", source: .file(path: path, line: nil),
                                                     problem: "not valid YAML: \(error)"))
            return reading
        }
        // An empty file (or one with comments only) is the defaults.
        guard let root, !isNull(root) else { return reading }
        guard case .mapping(let mapping) = root else {
            reading.issues.append(ConfigurationIssue(key: "config", source: source(path, root),
                                                     problem: "expected a mapping of sections (listen:, tls:, …), found \(kind(root))"))
            return reading
        }
        walk(mapping, prefix: "", path: path, into: &reading)
        return reading
    }

    private static func walk(_ mapping: Node.Mapping, prefix: String, path: String, into reading: inout SourceReading) {
        for (keyNode, value) in mapping {
            guard let name = keyNode.scalar?.string else {
                reading.issues.append(ConfigurationIssue(key: prefix.isEmpty ? "config" : String(prefix.dropLast()),
                                                         source: source(path, keyNode), problem: "keys must be plain names"))
                continue
            }
            let key = prefix + name
            let where_ = source(path, keyNode)
            if let setting = Settings.byKey[key] {
                if let raw = rawValue(setting, value, source: where_, into: &reading) {
                    reading.values.append(raw)
                }
                continue
            }
            let isSection = Settings.all.contains { $0.key.hasPrefix(key + ".") }
            if isSection {
                if isNull(value) { continue }
                guard case .mapping(let inner) = value else {
                    reading.issues.append(ConfigurationIssue(key: key, source: where_,
                                                             problem: "expected a mapping of settings, found \(kind(value))"))
                    continue
                }
                walk(inner, prefix: key + ".", path: path, into: &reading)
                continue
            }
            let hint = Suggestion.closest(to: key, in: Settings.filePaths).map { " (did you mean \($0)?)" } ?? ""
            reading.issues.append(ConfigurationIssue(key: key, source: where_, problem: "unknown key\(hint)"))
        }
    }

    private static func rawValue(_ setting: Setting, _ node: Node, source: SettingSource,
                                 into reading: inout SourceReading) -> RawValue? {
        // An empty value (`port:` or `port: ~`) leaves the setting alone, like an empty variable.
        if isNull(node) { return nil }
        if case .levels = setting.kind {
            guard case .mapping(let mapping) = node else {
                reading.issues.append(ConfigurationIssue(key: setting.key, source: source,
                                                         problem: "expected a mapping of logger label to level, found \(kind(node))"))
                return nil
            }
            var levels: [String: Logger.Level] = [:]
            var ok = true
            for (labelNode, levelNode) in mapping {
                let label = labelNode.scalar?.string ?? ""
                let at = ConfigurationFile.source(pathOf(source), levelNode)
                guard !label.isEmpty, let text = levelNode.scalar?.string else {
                    reading.issues.append(ConfigurationIssue(key: "\(setting.key).\(label)", source: at,
                                                             problem: "expected label: level"))
                    ok = false
                    continue
                }
                switch SettingKind.level(text) {
                case .success(let level): levels[label] = level
                case .failure(let problem):
                    reading.issues.append(ConfigurationIssue(key: "\(setting.key).\(label)", source: at, problem: problem.message))
                    ok = false
                }
            }
            return ok ? RawValue(setting: setting, input: .parsed(.levels(levels)), source: source) : nil
        }
        if case .prefixes = setting.kind, case .sequence(let items) = node {
            var texts: [String] = []
            for item in items {
                guard let text = item.scalar?.string else {
                    reading.issues.append(ConfigurationIssue(key: setting.key, source: ConfigurationFile.source(pathOf(source), item),
                                                             problem: "expected an IP network, found \(kind(item))"))
                    return nil
                }
                texts.append(text)
            }
            return RawValue(setting: setting, input: .text(texts.joined(separator: ",")), source: source)
        }
        guard let scalar = node.scalar else {
            reading.issues.append(ConfigurationIssue(key: setting.key, source: source,
                                                     problem: "expected \(setting.kind.expectation), found \(kind(node))"))
            return nil
        }
        return RawValue(setting: setting, input: .text(scalar.string), source: source)
    }

    private static func pathOf(_ source: SettingSource) -> String {
        if case .file(let path, _) = source { return path }
        return ""
    }

    static func source(_ path: String, _ node: Node) -> SettingSource {
        .file(path: path, line: node.mark?.line)
    }

    static func isNull(_ node: Node) -> Bool {
        guard let scalar = node.scalar, scalar.style == .plain else { return false }
        return ["", "~", "null", "Null", "NULL"].contains(scalar.string)
    }

    static func kind(_ node: Node) -> String {
        switch node {
        case .mapping: return "a mapping"
        case .sequence: return "a list"
        case .alias: return "an alias"
        case .scalar: return isNull(node) ? "nothing" : "a value"
        }
    }

    private static func yamlIssue(_ error: YamlError, path: String) -> ConfigurationIssue {
        let (problem, mark): (String, Mark?) = {
            switch error {
            case let .scanner(_, problem, mark, _), let .parser(_, problem, mark, _), let .composer(_, problem, mark, _):
                return (problem, mark)
            case let .duplicatedKeysInMapping(duplicates, context):
                return ("duplicate key \(duplicates.sorted().joined(separator: ", "))", context.mark)
            case let .reader(problem, _, _, _):
                return (problem, nil)
            default:
                return ("\(error)", nil)
            }
        }()
        let location = mark.map { " at line \($0.line), column \($0.column)" } ?? ""
        return ConfigurationIssue(key: "config", source: .file(path: path, line: mark?.line),
                                  problem: "not valid YAML\(location): \(problem)")
    }
}

// MARK: - The environment

enum EnvironmentSource {
    /// TETHER_ variables of the bridge, the load driver and the test suite: not relay settings.
    static let foreign: Set<String> = [
        "TETHER_RELAY", "TETHER_BRIDGE", "TETHER_LOADTEST", "TETHER_RELAY_URL", "TETHER_TOKEN",
        "TETHER_TOKEN_FILE", "TETHER_TARGET",
    ]
    static let configVariable = "TETHER_CONFIG"

    static func read(_ environment: [String: String]) -> SourceReading {
        var reading = SourceReading()
        for name in environment.keys.sorted() where name.hasPrefix("TETHER_") {
            guard let value = environment[name] else { continue }
            if let setting = Settings.byEnvironment[name] {
                // An empty variable is unset (`export TETHER_JWT_SECRET=` clears it).
                if value.isEmpty { continue }
                reading.values.append(RawValue(setting: setting, input: .text(value), source: .environment(name)))
                continue
            }
            if name == configVariable || foreign.contains(name) || name.hasPrefix("TETHER_TEST_") { continue }
            let hint = Suggestion.closest(to: name, in: Array(Settings.byEnvironment.keys)).map { " (did you mean \($0)?)" } ?? ""
            reading.warnings.append(ConfigurationIssue(key: name, source: nil,
                                                       problem: "unknown variable, ignored\(hint)"))
        }
        return reading
    }
}

// MARK: - Flags

/// Flags of `run`, `check-config` and `token`: `--name value` or `--name=value`; a boolean flag
/// alone means true. A flag given twice: the last one wins (log levels merge).
struct FlagSource {
    var reading = SourceReading()
    var configFile: String?
    var help = false
    /// Flags the calling command handles itself (token's --sub, --ttl, --tier).
    var extras: [String: String] = [:]

    init(_ arguments: [String], extraFlags: Set<String> = []) {
        var i = 0
        while i < arguments.count {
            let argument = arguments[i]
            i += 1
            if argument == "--help" || argument == "-h" {
                help = true
                continue
            }
            guard argument.hasPrefix("--"), argument.count > 2 else {
                reading.issues.append(ConfigurationIssue(key: argument, source: nil, problem: "unexpected argument"))
                continue
            }
            var name = String(argument.dropFirst(2))
            var inline: String?
            if let eq = name.firstIndex(of: "=") {
                inline = String(name[name.index(after: eq)...])
                name = String(name[..<eq])
            }
            let setting = Settings.byFlag[name]
            guard setting != nil || name == "config" || extraFlags.contains(name) else {
                let known = Array(Settings.byFlag.keys) + ["config"] + Array(extraFlags)
                let hint = Suggestion.closest(to: name, in: known).map { " (did you mean --\($0)?)" } ?? ""
                reading.issues.append(ConfigurationIssue(key: "--\(name)", source: nil, problem: "unknown flag\(hint)"))
                // Its value, if any, is not a stray argument of its own.
                if inline == nil, i < arguments.count, !arguments[i].hasPrefix("-") { i += 1 }
                continue
            }
            var value = inline
            if value == nil, let setting, case .bool = setting.kind {
                // `--metrics-on-main` alone, or `--metrics-on-main false`.
                if i < arguments.count, case .success = SettingKind.bool.parse(arguments[i]) {
                    value = arguments[i]
                    i += 1
                } else {
                    value = "true"
                }
            }
            if value == nil {
                guard i < arguments.count else {
                    reading.issues.append(ConfigurationIssue(key: setting?.key ?? "--\(name)", source: .flag("--\(name)"),
                                                             problem: "needs a value"))
                    continue
                }
                value = arguments[i]
                i += 1
            }
            guard let value else { continue }
            if let setting {
                reading.values.append(RawValue(setting: setting, input: .text(value), source: .flag("--\(name)")))
            } else if name == "config" {
                configFile = value
            } else {
                extras[name] = value
            }
        }
    }
}

// MARK: - Helpers

enum Suggestion {
    /// The closest candidate within a small edit distance, for "did you mean" hints.
    static func closest(to word: String, in candidates: [String]) -> String? {
        let limit = max(2, word.count / 4)
        var best: (String, Int)?
        for candidate in candidates.sorted() {
            let d = distance(word.lowercased(), candidate.lowercased())
            if d <= limit, d < (best?.1 ?? Int.max) { best = (candidate, d) }
        }
        return best?.0
    }

    static func distance(_ a: String, _ b: String) -> Int {
        let a = Array(a.utf8), b = Array(b.utf8)
        if a.isEmpty { return b.count }
        if b.isEmpty { return a.count }
        var previous = Array(0...b.count)
        var current = [Int](repeating: 0, count: b.count + 1)
        for i in 1...a.count {
            current[0] = i
            for j in 1...b.count {
                current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1))
            }
            swap(&previous, &current)
        }
        return previous[b.count]
    }
}

/// Reads a whole (small) text file; the problem reads like "No such file or directory".
func readTextFile(_ path: String, maxBytes: Int) -> Result<String, SettingProblem> {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return .failure(SettingProblem("cannot read \(path): \(String(cString: strerror(errno)))")) }
    defer { close(fd) }
    var st = stat()
    if fstat(fd, &st) == 0, (st.st_mode & S_IFMT) == S_IFDIR {
        return .failure(SettingProblem("cannot read \(path): it is a directory"))
    }
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 16 * 1024)
    while true {
        let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if n < 0 {
            if errno == EINTR { continue }
            return .failure(SettingProblem("cannot read \(path): \(String(cString: strerror(errno)))"))
        }
        if n == 0 { break }
        guard bytes.count + n <= maxBytes else { return .failure(SettingProblem("\(path) is larger than \(maxBytes) bytes")) }
        bytes.append(contentsOf: chunk[0..<n])
    }
    guard let text = String(validating: bytes, as: UTF8.self) else {
        return .failure(SettingProblem("\(path) is not UTF-8 text"))
    }
    return .success(text)
}
