/// Where verification keys come from and which claims a token must carry.
public struct AuthConfiguration: Sendable, Equatable {
    /// Shared secret for HS256 tokens (UTF-8 bytes of the string are the key).
    public var hs256Secret: String?
    /// Path of a local JWKS JSON file with RS/PS/ES/EdDSA public keys, selected by `kid`.
    public var jwksFile: String?
    /// JWKS URL (e.g. Auth0's https://<domain>/.well-known/jwks.json); `http://` only for
    /// loopback hosts. The verifier does no I/O: the caller fetches (`JWKSFetcher`) and passes
    /// the bytes to `TokenVerifier(configuration:remoteJWKS:)`.
    public var jwksURL: String?
    /// PEM CA bundle that verifies the JWKS server; nil = the system's trust roots.
    public var jwksCAFile: String?
    /// Seconds between re-reads of the JWKS file and re-fetches of the URL.
    public var jwksRefreshSeconds: Double = 300
    /// Refreshes asked for by tokens with an unknown `kid` happen at most this often.
    public var jwksMinRefreshSeconds: Double = 30
    /// When set, tokens must carry exactly this `iss`; the minter also writes it.
    public var issuer: String?
    /// When set, tokens must list this value in `aud` (string or array); the minter also writes it.
    public var audience: String?
    /// Clock skew tolerated on `exp` and `nbf`, in seconds.
    public var leewaySeconds: Int = 60
    /// Name of the optional claim copied into `Identity.tier`.
    public var tierClaim: String = "tier"

    public init() {}
}

/// A configuration that cannot be loaded: unreadable or invalid JWKS file, empty secret, ...
public struct AuthConfigurationError: Error, Sendable, Equatable, CustomStringConvertible {
    public let message: String

    public init(_ message: String) {
        self.message = message
    }

    public var description: String { message }
}
