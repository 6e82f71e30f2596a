import Glibc
import TetherConfig

/// `tether-relay check-config FILE [flags]`: everything `run` checks (referenced files
/// included), without starting. Exit 0 with a summary, or 1 with every error.
enum CheckConfigCommand {
    static let usage = """
        Usage: tether-relay check-config FILE [flags]
        Validates FILE with the environment and the flags given after it, and the files it points
        at (TLS certificate and key, JWKS file, quota file), without starting the relay.

        """

    static func main(_ arguments: [String]) -> Never {
        var rest = arguments
        var file: String?
        if let first = rest.first, !first.hasPrefix("-") {
            file = first
            rest.removeFirst()
        }
        let loader = ConfigurationLoader(arguments: rest, environment: ConfigurationLoader.processEnvironment,
                                         configFile: file)
        if loader.wantsHelp {
            Output.standardOutput(usage)
            exit(0)
        }
        do {
            let loaded = try loader.load()
            var text = "tether-relay: configuration OK (\(loaded.configFile ?? "no file: defaults, environment and flags"))\n"
            for line in loaded.summary() { text += "  \(line)\n" }
            text += Output.warnings(loaded.warnings)
            Output.standardOutput(text)
            exit(0)
        } catch {
            Output.report(error, file: loader.resolvedConfigFile)
            exit(1)
        }
    }
}
