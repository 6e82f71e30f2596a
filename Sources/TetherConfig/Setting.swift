/// One relay setting: where it is read from (file key, environment variable, flag), what it
/// accepts, its default, and how it lands in the configuration. The registry
/// (`Settings.all`) is the single source of truth for parsing, validation, --help and
/// docs/CONFIGURATION.md.
public struct Setting: Sendable {
    /// Dotted file key, e.g. "listen.port".
    public let key: String
    /// Flag without the dashes, e.g. "port" for --port.
    public let flag: String
    /// Environment variable, e.g. TETHER_PORT.
    public let environment: String
    public let kind: SettingKind
    /// The default as shown to people ("8080", "one per core", "off").
    public let defaultText: String
    /// One line for --help and the docs.
    public let doc: String
    /// Applied by a reload (SIGHUP, POST /admin/reload), or only at start.
    public let reload: Reload
    /// Never printed: not in errors, logs, --help defaults or check-config output.
    public let secret: Bool
    /// Writes a value into the draft. Called only for values that some source set: an unset
    /// setting keeps `RelayConfiguration`'s own default.
    let apply: @Sendable (inout ConfigurationDraft, SettingValue) -> Void

    public enum Reload: String, Sendable {
        case live, restart
    }

    init(_ key: String, flag: String, env: String? = nil, _ kind: SettingKind, default defaultText: String,
         reload: Reload = .live, secret: Bool = false, _ doc: String,
         apply: @escaping @Sendable (inout ConfigurationDraft, SettingValue) -> Void) {
        self.key = key
        self.flag = flag
        self.environment = env ?? "TETHER_" + flag.uppercased().replacingDashes
        self.kind = kind
        self.defaultText = defaultText
        self.doc = doc
        self.reload = reload
        self.secret = secret
        self.apply = apply
    }

    /// The section of the file this key lives in ("listen" for "listen.port").
    public var section: String { String(key.prefix { $0 != "." }) }
}

extension String {
    fileprivate var replacingDashes: String { String(map { $0 == "-" ? "_" : $0 }) }
}

/// Where a value came from, for error messages and the check-config summary.
public enum SettingSource: Sendable, Equatable, CustomStringConvertible {
    case defaultValue
    case file(path: String, line: Int?)
    case environment(String)
    case flag(String)

    public var description: String {
        switch self {
        case .defaultValue: return "default"
        case .file(let path, let line): return line.map { "\(path):\($0)" } ?? path
        case .environment(let name): return name
        case .flag(let name): return name
        }
    }

    /// Precedence: defaults < file < environment < flags.
    var rank: Int {
        switch self {
        case .defaultValue: return 0
        case .file: return 1
        case .environment: return 2
        case .flag: return 3
        }
    }
}

/// One problem in the configuration: the key, where its value came from, what is wrong.
public struct ConfigurationIssue: Sendable, Equatable, CustomStringConvertible {
    public let key: String
    public let source: SettingSource?
    public let problem: String

    public init(key: String, source: SettingSource?, problem: String) {
        self.key = key
        self.source = source
        self.problem = problem
    }

    public var description: String {
        if let source, source != .defaultValue { return "\(key) (from \(source)): \(problem)" }
        return "\(key): \(problem)"
    }
}

/// Every problem found, not only the first. Thrown by `ConfigurationLoader`.
public struct ConfigurationError: Error, Sendable, CustomStringConvertible {
    public let issues: [ConfigurationIssue]

    public init(_ issues: [ConfigurationIssue]) { self.issues = issues }

    public var description: String {
        issues.count == 1 ? issues[0].description : issues.map(\.description).joined(separator: "; ")
    }

    /// One issue per line, for stderr and check-config.
    public var lines: [String] { issues.map(\.description) }
}
