#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// Issues HS256 tokens for development and tests (the relay itself only verifies).
/// Synchronous, so it works from command-line tools without an async context.
public struct TokenMinter: Sendable {
    private let secret: String
    private let issuer: String?
    private let audience: String?
    private let tierClaim: String

    public init(secret: String, issuer: String?, audience: String?, tierClaim: String = "tier") {
        self.secret = secret
        self.issuer = issuer
        self.audience = audience
        self.tierClaim = tierClaim
    }

    /// An HS256 JWT with sub, iat, exp (+ iss, aud, tier when set). Times are whole seconds.
    public func mint(subject: String, ttlSeconds: Int, tier: String? = nil, now: Double) throws -> String {
        guard !secret.isEmpty else { throw AuthConfigurationError("cannot mint: the HS256 secret is empty") }
        guard !subject.isEmpty else { throw AuthConfigurationError("cannot mint: the subject is empty") }
        guard ttlSeconds > 0 else { throw AuthConfigurationError("cannot mint: ttl must be positive") }
        guard now.isFinite, abs(now) < 1e15 else { throw AuthConfigurationError("cannot mint: bad clock value") }
        let issuedAt = Int(now)
        let (expiresAt, overflow) = issuedAt.addingReportingOverflow(ttlSeconds)
        guard !overflow else { throw AuthConfigurationError("cannot mint: ttl too large") }

        let claims = MintedClaims(sub: subject, iat: issuedAt, exp: expiresAt,
                                  iss: issuer.flatMap { $0.isEmpty ? nil : $0 },
                                  aud: audience.flatMap { $0.isEmpty ? nil : $0 },
                                  tierClaim: tierClaim, tier: tier)
        let encoder = JSONEncoder()
        // Stable output makes tokens reproducible for a given clock.
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        let header = #"{"alg":"HS256","typ":"JWT"}"#
        let signingInput = Base64URL.encode(Array(header.utf8)) + "." + Base64URL.encode(try encoder.encode(claims))
        let signature = try HS256Algorithm(secret: secret).sign(Array(signingInput.utf8))
        return signingInput + "." + Base64URL.encode(signature)
    }
}

private struct MintedClaims: Encodable {
    let sub: String
    let iat: Int
    let exp: Int
    let iss: String?
    let aud: String?
    let tierClaim: String
    let tier: String?

    private struct Key: CodingKey {
        let stringValue: String
        var intValue: Int? { nil }
        init(_ name: String) { stringValue = name }
        init?(stringValue: String) { self.stringValue = stringValue }
        init?(intValue _: Int) { nil }
    }

    func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: Key.self)
        try c.encode(sub, forKey: Key("sub"))
        try c.encode(iat, forKey: Key("iat"))
        try c.encode(exp, forKey: Key("exp"))
        try c.encodeIfPresent(iss, forKey: Key("iss"))
        try c.encodeIfPresent(aud, forKey: Key("aud"))
        try c.encodeIfPresent(tier, forKey: Key(tierClaim))
    }
}
