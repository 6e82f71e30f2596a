import ArgumentParser
import Glibc
import TetherAuth

/// Token validation flags, shared by `run` and `token`.
struct AuthOptions: ParsableArguments {
    @Option(help: "HS256 shared secret for bridge and client tokens (or env TETHER_JWT_SECRET).")
    var jwtSecret: String?
    @Option(help: "Local JWKS file with RS256/ES256 public keys, selected by `kid`.")
    var jwksFile: String?
    @Option(help: "Required `iss` claim (and the issuer of minted tokens).")
    var jwtIssuer: String?
    @Option(help: "Required `aud` claim (and the audience of minted tokens).")
    var jwtAudience: String?
    @Option(help: "Seconds of clock skew tolerated on exp and nbf.")
    var jwtLeeway = 60

    var secret: String? {
        if let jwtSecret { return jwtSecret }
        guard let raw = getenv("TETHER_JWT_SECRET") else { return nil }
        let value = String(cString: raw)
        return value.isEmpty ? nil : value
    }

    func validate() throws {
        if let secret, secret.utf8.count < 16 {
            throw ValidationError("--jwt-secret must be at least 16 bytes")
        }
        guard (0...3600).contains(jwtLeeway) else { throw ValidationError("--jwt-leeway must be 0...3600 seconds") }
    }

    var configuration: AuthConfiguration {
        var c = AuthConfiguration()
        c.hs256Secret = secret
        c.jwksFile = jwksFile
        c.issuer = jwtIssuer
        c.audience = jwtAudience
        c.leewaySeconds = jwtLeeway
        return c
    }
}
