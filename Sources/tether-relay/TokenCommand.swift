import Glibc
import TetherAuth
import TetherConfig

/// `tether-relay token --sub USER [--ttl 1h] [--tier NAME]`: a development token signed with
/// the configured HS256 secret (same file, environment and flags as `run`).
enum TokenCommand {
    static let usage = """
        Usage: tether-relay token --sub USER [--ttl 1h] [--tier NAME] [--config FILE] [flags]
        Prints an HS256 token signed with auth.jwt_secret (--jwt-secret, TETHER_JWT_SECRET or the file),
        with auth.issuer and auth.audience when set. --ttl: seconds, or 90s, 30m, 1h, 7d.

        """

    static func main(_ arguments: [String]) -> Never {
        var loader = ConfigurationLoader(arguments: arguments, environment: ConfigurationLoader.processEnvironment)
        loader.extraFlags = ["sub", "ttl", "tier"]
        loader.verifyReferencedFiles = false
        if loader.wantsHelp {
            Output.standardOutput(usage)
            exit(0)
        }
        let loaded: LoadedConfiguration
        do {
            loaded = try loader.load()
        } catch {
            Output.report(error, file: loader.resolvedConfigFile)
            exit(1)
        }
        let extras = loader.extras
        var problems: [String] = []
        let sub = extras["sub"] ?? ""
        if sub.isEmpty { problems.append("--sub: a subject (user id) is needed") }
        let ttl = seconds(extras["ttl"] ?? "1h")
        if ttl == nil { problems.append("--ttl: expected e.g. 3600, 90s, 30m, 1h or 7d") }
        let auth = loaded.relay.auth
        if auth.hs256Secret == nil { problems.append("auth.jwt_secret: a secret is needed (--jwt-secret, TETHER_JWT_SECRET or the file)") }
        guard problems.isEmpty, let secret = auth.hs256Secret, let ttl else {
            Output.standardError(problems.map { "tether-relay token: \($0)\n" }.joined())
            exit(1)
        }
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        let minter = TokenMinter(secret: secret, issuer: auth.issuer, audience: auth.audience)
        do {
            Output.standardOutput(try minter.mint(subject: sub, ttlSeconds: ttl, tier: extras["tier"], now: Double(ts.tv_sec)) + "\n")
        } catch {
            Output.standardError("tether-relay token: \(error)\n")
            exit(1)
        }
        exit(0)
    }

    static func seconds(_ text: String) -> Int? {
        let units: [Character: Int] = ["s": 1, "m": 60, "h": 3600, "d": 86_400]
        guard let last = text.last else { return nil }
        if let unit = units[last] {
            guard let n = Int(text.dropLast()), n > 0 else { return nil }
            return n * unit
        }
        guard let n = Int(text), n > 0 else { return nil }
        return n
    }
}
