import Foundation
import TetherRelay

/// A value in force and where it came from.
public struct ResolvedSetting: Sendable, Equatable {
    public let value: SettingValue
    public let source: SettingSource
}

/// The outcome of a successful load.
public struct LoadedConfiguration: Sendable {
    public let relay: RelayConfiguration
    /// The value in force per key (the highest-precedence source); keys left at their
    /// default are absent.
    public let values: [String: ResolvedSetting]
    /// Problems that do not stop the relay (unknown TETHER_ variables, TLS files without a
    /// TLS port, …).
    public let warnings: [ConfigurationIssue]
    /// The file read, if any.
    public let configFile: String?

    /// Keys whose value differs from `old` but only take effect on a restart (listeners,
    /// workers, the admin listener): a reload logs them rather than pretend to apply them.
    public func restartOnlyChanges(since old: LoadedConfiguration) -> [String] {
        Settings.all.filter { $0.reload == .restart && values[$0.key]?.value != old.values[$0.key]?.value }.map(\.key)
    }
}

/// Builds the relay configuration from embedded defaults < the file < the environment < flags,
/// and checks every value, reporting every problem with its key and source.
public struct ConfigurationLoader: Sendable {
    public var arguments: [String]
    public var environment: [String: String]
    /// check-config's FILE; otherwise --config, then TETHER_CONFIG.
    public var configFile: String?
    /// Also load what the settings point at: TLS certificate and key, JWKS file, CA bundle,
    /// audit log directory. Secret files and the quota file are always read (they are values).
    public var verifyReferencedFiles = true
    /// Flags the calling command handles itself; their values end up in `extras`.
    public var extraFlags: Set<String> = []

    public init(arguments: [String], environment: [String: String], configFile: String? = nil) {
        self.arguments = arguments
        self.environment = environment
        self.configFile = configFile
    }

    /// The process environment.
    public static var processEnvironment: [String: String] { ProcessInfo.processInfo.environment }

    /// --help was given.
    public var wantsHelp: Bool { FlagSource(arguments, extraFlags: extraFlags).help }

    /// Values of `extraFlags`.
    public var extras: [String: String] { FlagSource(arguments, extraFlags: extraFlags).extras }

    /// The file that `load` reads: check-config's FILE, --config or TETHER_CONFIG.
    public var resolvedConfigFile: String? {
        if let configFile { return configFile }
        if let file = FlagSource(arguments, extraFlags: extraFlags).configFile { return file }
        if let file = environment[EnvironmentSource.configVariable], !file.isEmpty { return file }
        return nil
    }

    public func load() throws(ConfigurationError) -> LoadedConfiguration {
        let flags = FlagSource(arguments, extraFlags: extraFlags)
        let file = resolvedConfigFile
        let readings = [file.map(ConfigurationFile.read) ?? SourceReading(), EnvironmentSource.read(environment), flags.reading]

        var issues = readings.flatMap(\.issues)
        var warnings = readings.flatMap(\.warnings)
        var draft = ConfigurationDraft()
        var values: [String: ResolvedSetting] = [:]
        // File, then environment, then flags: a later value overwrites an earlier one (log
        // levels merge per label). Every source's value is checked, even an overridden one: a
        // broken file is broken whatever the flags say.
        for raw in readings.flatMap(\.values) {
            let parsed: Result<SettingValue, SettingProblem>
            switch raw.input {
            case .text(let text): parsed = raw.setting.kind.parse(text, secret: raw.setting.secret)
            case .parsed(let value): parsed = .success(value)
            }
            switch parsed {
            case .success(let value):
                raw.setting.apply(&draft, value)
                values[raw.setting.key] = ResolvedSetting(value: merged(values[raw.setting.key]?.value, value), source: raw.source)
            case .failure(let problem):
                issues.append(ConfigurationIssue(key: raw.setting.key, source: raw.source, problem: problem.message))
            }
        }
        var builder = ConfigurationBuilder(draft: draft, values: values, verifyFiles: verifyReferencedFiles)
        let relay = builder.build()
        issues += builder.issues
        warnings += builder.warnings
        guard issues.isEmpty else { throw ConfigurationError(issues) }
        return LoadedConfiguration(relay: relay, values: values, warnings: warnings, configFile: file)
    }

    private func merged(_ old: SettingValue?, _ new: SettingValue) -> SettingValue {
        if case .levels(let a)? = old, case .levels(let b) = new { return .levels(a.merging(b) { _, n in n }) }
        return new
    }
}
