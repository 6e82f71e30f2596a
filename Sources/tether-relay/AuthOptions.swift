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

/// Where JWKS keys are refreshed from, for `run` only.
struct JWKSOptions: ParsableArguments {
    @Option(help: "JWKS URL, e.g. https://<tenant>.auth0.com/.well-known/jwks.json (or env TETHER_JWKS_URL; http:// only for loopback hosts).")
    var jwksUrl: String?
    @Option(help: "PEM CA bundle that verifies the JWKS server (default: the system's trust roots).")
    var jwksCaFile: String?
    @Option(help: "Seconds between re-reads of --jwks-file and re-fetches of --jwks-url.")
    var jwksRefreshInterval = 300.0
    @Option(help: "Least seconds between refreshes caused by tokens with an unknown kid.")
    var jwksMinRefreshInterval = 30.0

    var url: String? {
        if let jwksUrl { return jwksUrl }
        guard let raw = getenv("TETHER_JWKS_URL") else { return nil }
        let value = String(cString: raw)
        return value.isEmpty ? nil : value
    }

    func validate() throws {
        if let url {
            do {
                _ = try JWKSURL(url)
            } catch {
                throw ValidationError("--jwks-url: \(error)")
            }
        }
        if let jwksCaFile {
            guard url != nil else { throw ValidationError("--jwks-ca-file needs --jwks-url") }
            guard access(jwksCaFile, R_OK) == 0 else { throw ValidationError("--jwks-ca-file: cannot read '\(jwksCaFile)'") }
        }
        guard jwksRefreshInterval >= 1 && jwksRefreshInterval <= 86_400 else {
            throw ValidationError("--jwks-refresh-interval must be between 1 and 86400 seconds")
        }
        guard jwksMinRefreshInterval >= 1 && jwksMinRefreshInterval <= 86_400 else {
            throw ValidationError("--jwks-min-refresh-interval must be between 1 and 86400 seconds")
        }
    }

    func apply(to c: inout AuthConfiguration) {
        c.jwksURL = url
        c.jwksCAFile = jwksCaFile
        c.jwksRefreshSeconds = jwksRefreshInterval
        c.jwksMinRefreshSeconds = jwksMinRefreshInterval
    }
}
