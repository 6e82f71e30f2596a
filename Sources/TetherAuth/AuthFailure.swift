/// Why a request could not be authenticated. Each case maps to a stable HTTP error code, a short
/// reason (401 messages, WebSocket 4001 close reasons) and a bounded metric label.
public enum AuthFailure: Error, Sendable, Equatable, CaseIterable, CustomStringConvertible {
    case missing
    case malformed
    case expired
    case notYetValid
    case badSignature
    case unknownKey
    case algorithmNotAllowed
    case wrongIssuer
    case wrongAudience
    case noKeysConfigured

    /// PROTOCOL.md §8: AUTH_REQUIRED only when no token was given at all.
    public var httpCode: String {
        self == .missing ? "AUTH_REQUIRED" : "AUTH_INVALID"
    }

    /// Short enough for a WebSocket close reason (at most 123 bytes).
    public var reason: String {
        switch self {
        case .missing: return "token missing"
        case .malformed: return "token malformed"
        case .expired: return "token expired"
        case .notYetValid: return "token not yet valid"
        case .badSignature: return "bad signature"
        case .unknownKey: return "unknown signing key"
        case .algorithmNotAllowed: return "algorithm not allowed"
        case .wrongIssuer: return "wrong issuer"
        case .wrongAudience: return "wrong audience"
        case .noKeysConfigured: return "no verification keys configured"
        }
    }

    public var metricLabel: String {
        switch self {
        case .missing: return "missing"
        case .malformed: return "malformed"
        case .expired: return "expired"
        case .notYetValid: return "not_yet_valid"
        case .badSignature: return "bad_signature"
        case .unknownKey: return "unknown_key"
        case .algorithmNotAllowed: return "algorithm_not_allowed"
        case .wrongIssuer: return "wrong_issuer"
        case .wrongAudience: return "wrong_audience"
        case .noKeysConfigured: return "no_keys"
        }
    }

    public var description: String { reason }
}

/// A verified caller.
public struct Identity: Sendable, Equatable {
    /// `iss` of the token, "" when it had none (PROTOCOL.md §9).
    public let issuer: String
    public let subject: String
    public let session: SessionID
    /// `exp` of the token, in Unix seconds.
    public let expiresAt: Double
    /// The configured tier claim, when present as a string or integer.
    public let tier: String?

    public init(issuer: String, subject: String, expiresAt: Double, tier: String? = nil) {
        self.issuer = issuer
        self.subject = subject
        self.session = SessionID.derive(issuer: issuer, subject: subject)
        self.expiresAt = expiresAt
        self.tier = tier
    }

    /// An identity vouched for by the relay rather than by a token (a Docker-isolated session's
    /// worker knows its session id, never the user id).
    public init(session: SessionID, tier: String? = nil) {
        self.issuer = ""
        self.subject = ""
        self.session = session
        self.expiresAt = .infinity
        self.tier = tier
    }
}
