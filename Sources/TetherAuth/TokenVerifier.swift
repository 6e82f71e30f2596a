import Crypto
import Dispatch
import JWTKit

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// Verifies JWTs synchronously, from any thread, with keys fixed at load time.
///
/// jwt-kit's `JWTKeyCollection` is an actor with async methods, unusable on the relay's
/// event-loop threads. So it is used only while loading, to turn each JWK into a
/// `JWTAlgorithm`; verification then calls the algorithms' synchronous `verify(_:signs:)`
/// and checks the claims itself. To reload keys, build a new verifier and swap it in.
public final class TokenVerifier: Sendable {
    /// Longer tokens are rejected before any parsing; real ones are well under 4 KiB.
    public static let maxTokenBytes = 16 * 1024

    private let keys: [VerificationKey]
    private let keysByKid: [String: VerificationKey]
    private let secretKey: VerificationKey?
    private let issuer: String?
    private let audience: String?
    let leeway: Double
    private let parser: DefaultJWTParser
    private let keySetDigest: [UInt8]

    /// Number of verification keys (the HS256 secret counts as one).
    public var keyCount: Int { keys.count }

    /// One line per key for the startup log, e.g. "HS256 (shared secret)", "RS256 kid=k1".
    public let keySummary: [String]

    /// Loadable but questionable settings (e.g. a short HS256 secret), for the caller to log.
    public let warnings: [String]

    /// Loads the secret and the JWKS file, plus `remoteJWKS`: the body fetched from
    /// `configuration.jwksURL`, if any (the verifier itself never touches the network).
    /// Throws `AuthConfigurationError` naming the problem.
    ///
    /// Blocks while jwt-kit builds the JWKS keys, so call it from a plain thread (startup,
    /// reload) and never from an event loop. From async code use `load(configuration:)`,
    /// which does not block a cooperative thread.
    public convenience init(configuration: AuthConfiguration, remoteJWKS: [UInt8]? = nil) throws {
        let source = try KeySource(configuration, remoteJWKS: remoteJWKS)
        let jwksKeys: [VerificationKey]
        if source.jwks.isEmpty {
            jwksKeys = []
        } else {
            jwksKeys = try waitBlocking { try await source.makeJWKSKeys() }
        }
        try self.init(configuration, source: source, jwksKeys: jwksKeys)
    }

    /// Same as `init(configuration:remoteJWKS:)`, for async callers (tests, async tooling).
    public static func load(configuration: AuthConfiguration, remoteJWKS: [UInt8]? = nil) async throws -> TokenVerifier {
        let source = try KeySource(configuration, remoteJWKS: remoteJWKS)
        let jwksKeys = try await source.makeJWKSKeys()
        return try TokenVerifier(configuration, source: source, jwksKeys: jwksKeys)
    }

    /// True when both verifiers hold the same keys (same material and kids, whatever the JSON
    /// formatting), so a refresh that changed nothing need not replace the verifier (and
    /// empty every worker's token cache).
    public func hasSameKeys(as other: TokenVerifier) -> Bool {
        keySetDigest == other.keySetDigest
    }

    private init(_ configuration: AuthConfiguration, source: KeySource, jwksKeys: [VerificationKey]) throws {
        guard let tierKey = TokenClaims.tierClaimKey else {
            throw AuthConfigurationError("cannot create the JSON decoder's user-info key")
        }
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .secondsSince1970
        decoder.userInfo[tierKey] = configuration.tierClaim
        parser = DefaultJWTParser(jsonDecoder: decoder)

        secretKey = source.secret
        keys = (source.secret.map { [$0] } ?? []) + jwksKeys
        var byKid: [String: VerificationKey] = [:]
        for key in jwksKeys {
            if let kid = key.kid { byKid[kid] = key }
        }
        keysByKid = byKid
        // An empty string from a flag or environment variable means "not configured".
        issuer = configuration.issuer.flatMap { $0.isEmpty ? nil : $0 }
        audience = configuration.audience.flatMap { $0.isEmpty ? nil : $0 }
        leeway = Double(max(0, configuration.leewaySeconds))
        warnings = source.warnings
        keySetDigest = source.digest
        keySummary = keys.map { key in
            if key.isSharedSecret { return "HS256 (shared secret)" }
            return key.kid.map { "\(key.name) kid=\($0)" } ?? "\(key.name) (no kid)"
        }
    }

    /// Checks the signature, then `exp` (required), `nbf`, `iss` and `aud`, with the leeway.
    /// `now` is Unix seconds.
    public func verify(_ token: Substring, now: Double) -> Result<Identity, AuthFailure> {
        verifyDetailed(token, now: now).map(\.identity)
    }

    /// `verify` plus the `nbf` claim, which `TokenCache` re-checks on every hit.
    func verifyDetailed(_ token: Substring, now: Double) -> Result<(identity: Identity, notBefore: Double?), AuthFailure> {
        guard !token.isEmpty else { return .failure(.missing) }
        guard !keys.isEmpty else { return .failure(.noKeysConfigured) }
        guard token.utf8.count <= Self.maxTokenBytes else { return .failure(.malformed) }

        let bytes = Array(token.utf8)
        // The signature covers "header.payload": everything before the second period.
        guard let firstDot = bytes.firstIndex(of: UInt8(ascii: ".")),
              let secondDot = bytes[(firstDot + 1)...].firstIndex(of: UInt8(ascii: "."))
        else { return .failure(.malformed) }

        let parsed: (header: JWTHeader, payload: TokenClaims, signature: Data)
        do {
            parsed = try parser.parse(bytes, as: TokenClaims.self)
        } catch {
            return .failure(.malformed)
        }
        let header = parsed.header

        guard let alg = header.alg else { return .failure(.malformed) }
        // Unsecured JWTs are never acceptable, whatever the key set.
        guard alg.lowercased() != "none" else { return .failure(.algorithmNotAllowed) }
        // We implement no extensions, so any critical one must be refused (RFC 7515 §4.1.11).
        guard header.fields["crit"] == nil else { return .failure(.malformed) }
        let kid: String?
        switch header.fields["kid"] {
        case nil, .null?: kid = nil
        case .string(let s)?: kid = s
        default: return .failure(.malformed)
        }

        let key: VerificationKey
        switch selectKey(kid: kid, alg: alg) {
        case .success(let k): key = k
        case .failure(let failure): return .failure(failure)
        }
        // Each key is bound to one algorithm at load time; the header may not pick another
        // (RS256 public key used as an HMAC secret, and the like).
        guard key.name == alg else { return .failure(.algorithmNotAllowed) }

        let valid = (try? key.algorithm.verify(parsed.signature, signs: bytes[..<secondDot])) ?? false
        guard valid else { return .failure(.badSignature) }

        let claims = parsed.payload
        guard let subject = claims.sub?.value, !subject.isEmpty,
              let expiresAt = claims.exp?.value.timeIntervalSince1970
        else { return .failure(.malformed) }
        guard now < expiresAt + leeway else { return .failure(.expired) }
        let notBefore = claims.nbf?.value.timeIntervalSince1970
        if let notBefore, now + leeway < notBefore { return .failure(.notYetValid) }
        if let issuer, claims.iss?.value != issuer { return .failure(.wrongIssuer) }
        if let audience, !(claims.aud?.value.contains(audience) ?? false) {
            return .failure(.wrongAudience)
        }
        let identity = Identity(issuer: claims.iss?.value ?? "", subject: subject,
                                expiresAt: expiresAt, tier: claims.tier)
        return .success((identity, notBefore))
    }

    private func selectKey(kid: String?, alg: String) -> Result<VerificationKey, AuthFailure> {
        if let kid {
            if let key = keysByKid[kid] { return .success(key) }
            // Some issuers (Supabase, for one) put a kid naming the shared secret on HS256 tokens.
            if alg == "HS256", let secretKey { return .success(secretKey) }
            return .failure(.unknownKey)
        }
        // Without a kid, the one key for this algorithm; several would be a guess.
        var match: VerificationKey?
        for key in keys where key.name == alg {
            guard match == nil else { return .failure(.unknownKey) }
            match = key
        }
        return match.map { .success($0) } ?? .failure(.algorithmNotAllowed)
    }
}

/// A key bound to exactly one algorithm name.
struct VerificationKey: Sendable {
    let kid: String?
    let algorithm: any JWTAlgorithm
    let name: String
    let isSharedSecret: Bool
}

/// The payload claims we look at. Decoded leniently (all optional) so that presence is
/// checked after the signature, with one answer for every malformed token.
struct TokenClaims: JWTPayload {
    /// Carries the configured tier claim name into `init(from:)`.
    static let tierClaimKey = CodingUserInfoKey(rawValue: "tether.tierClaim")

    var sub: SubjectClaim?
    var iss: IssuerClaim?
    var aud: AudienceClaim?
    var exp: ExpirationClaim?
    var nbf: NotBeforeClaim?
    var tier: String?

    private struct Key: CodingKey {
        let stringValue: String
        var intValue: Int? { nil }
        init(_ name: String) { stringValue = name }
        init?(stringValue: String) { self.stringValue = stringValue }
        init?(intValue _: Int) { nil }
    }

    init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: Key.self)
        sub = try c.decodeIfPresent(SubjectClaim.self, forKey: Key("sub"))
        iss = try c.decodeIfPresent(IssuerClaim.self, forKey: Key("iss"))
        aud = try c.decodeIfPresent(AudienceClaim.self, forKey: Key("aud"))
        exp = try c.decodeIfPresent(ExpirationClaim.self, forKey: Key("exp"))
        nbf = try c.decodeIfPresent(NotBeforeClaim.self, forKey: Key("nbf"))
        if let userInfoKey = Self.tierClaimKey, let name = decoder.userInfo[userInfoKey] as? String {
            // The tier is informational: a value of another type is ignored, not fatal.
            let key = Key(name)
            if let s = try? c.decodeIfPresent(String.self, forKey: key) {
                tier = s
            } else if let n = try? c.decodeIfPresent(Int.self, forKey: key) {
                tier = String(n)
            }
        }
    }

    func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: Key.self)
        try c.encodeIfPresent(sub, forKey: Key("sub"))
        try c.encodeIfPresent(iss, forKey: Key("iss"))
        try c.encodeIfPresent(aud, forKey: Key("aud"))
        try c.encodeIfPresent(exp, forKey: Key("exp"))
        try c.encodeIfPresent(nbf, forKey: Key("nbf"))
        try c.encodeIfPresent(tier, forKey: Key("tier"))
    }

    /// Unused: claims are checked synchronously by `TokenVerifier`, with its leeway.
    func verify(using _: some JWTAlgorithm) async throws {}
}

/// Everything about the configured keys that can be read without jwt-kit's actor.
struct KeySource: Sendable {
    struct Entry: Sendable {
        /// The kid the key is known by (nil when the set gave none).
        let kid: String?
        let jwk: JWK
        /// "JWKS file '<path>'" or "JWKS from '<url>'", for error messages.
        let origin: String
    }

    var secret: VerificationKey?
    var jwks: [Entry] = []
    var warnings: [String] = []
    /// SHA-256 over the secret and the canonical JSON of every key: equal digests, same keys.
    private(set) var digest: [UInt8] = []

    /// The signature algorithms a JWK may name; others (RSA-OAEP, ...) are encryption keys.
    static let signatureAlgorithms: Set<String> = [
        "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA",
    ]

    init(_ configuration: AuthConfiguration, remoteJWKS: [UInt8]? = nil) throws {
        var hasher = SHA256()
        if let secret = configuration.hs256Secret {
            guard !secret.isEmpty else { throw AuthConfigurationError("the HS256 secret is empty") }
            if secret.utf8.count < 32 {
                warnings.append("the HS256 secret is \(secret.utf8.count) bytes; RFC 7518 §3.2 asks for at least 32")
            }
            self.secret = VerificationKey(kid: nil, algorithm: HS256Algorithm(secret: secret),
                                          name: "HS256", isSharedSecret: true)
            hasher.update(data: Array("secret".utf8) + [0] + Array(SHA256.hash(data: Array(secret.utf8))))
        }
        if let path = configuration.jwksFile {
            try addFileJWKS(readFile(path, what: "JWKS file"), origin: "JWKS file '\(path)'")
        }
        if let remoteJWKS {
            try addRemoteJWKS(remoteJWKS, origin: "JWKS from '\(configuration.jwksURL ?? "the URL")'")
        }
        // Sorted-key JSON of each parsed JWK: reformatting or reordering fields in the source
        // leaves the digest alone; any change to a key or its kid changes it.
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        for entry in jwks {
            do {
                hasher.update(data: Array((entry.kid ?? "").utf8) + [0])
                hasher.update(data: Array(try encoder.encode(entry.jwk)) + [0])
            } catch {
                throw AuthConfigurationError("\(entry.origin): cannot re-encode a key: \(error)")
            }
        }
        digest = Array(hasher.finalize())
    }

    /// The file is the operator's own: any problem in it is an error.
    private mutating func addFileJWKS(_ data: Data, origin: String) throws {
        let set: JWKS
        do {
            set = try JSONDecoder().decode(JWKS.self, from: data)
        } catch {
            throw AuthConfigurationError("\(origin) is not a valid JSON Web Key Set: \(jsonProblem(error))")
        }
        guard !set.keys.isEmpty else { throw AuthConfigurationError("\(origin) contains no keys") }
        var seen = Set<String>()
        for jwk in set.keys {
            let kid = jwk.keyIdentifier?.string
            if let kid {
                guard seen.insert(kid).inserted else {
                    throw AuthConfigurationError("\(origin) has two keys with kid '\(kid)'")
                }
            }
            jwks.append(Entry(kid: kid, jwk: jwk, origin: origin))
        }
    }

    /// A provider's set (Keycloak, for one, lists encryption keys next to signing keys): keys
    /// that cannot verify signatures are skipped with a warning, as long as one usable key is
    /// left. A kid the file already has keeps the file's key.
    private mutating func addRemoteJWKS(_ bytes: [UInt8], origin: String) throws {
        let set: LenientJWKS
        do {
            set = try JSONDecoder().decode(LenientJWKS.self, from: Data(bytes))
        } catch {
            throw AuthConfigurationError("\(origin) is not a valid JSON Web Key Set: \(jsonProblem(error))")
        }
        let known = Set(jwks.compactMap(\.kid))
        var seen = Set<String>()
        var added = 0
        for (index, element) in set.keys.enumerated() {
            guard let jwk = element.jwk else {
                warnings.append("\(origin): key #\(index + 1) skipped: \(element.error ?? "not a JWK")")
                continue
            }
            let kid = jwk.keyIdentifier?.string
            let label = kid.map { "kid '\($0)'" } ?? "key #\(index + 1) (no kid)"
            guard let alg = jwk.algorithm?.rawValue ?? Self.defaultAlgorithm(for: jwk),
                  Self.signatureAlgorithms.contains(alg)
            else {
                warnings.append("\(origin), \(label): skipped (not a signature key)")
                continue
            }
            if let kid {
                guard seen.insert(kid).inserted else {
                    throw AuthConfigurationError("\(origin) has two keys with kid '\(kid)'")
                }
                if known.contains(kid) {
                    warnings.append("\(origin), kid '\(kid)': skipped, the JWKS file has a key with this kid")
                    continue
                }
            }
            jwks.append(Entry(kid: kid, jwk: jwk, origin: origin))
            added += 1
        }
        guard added > 0 else { throw AuthConfigurationError("\(origin) contains no usable signature keys") }
    }

    /// jwt-kit builds the `JWTAlgorithm` for each JWK; only reachable through its actor.
    func makeJWKSKeys() async throws -> [VerificationKey] {
        var out: [VerificationKey] = []
        for (index, entry) in jwks.enumerated() {
            let label = entry.kid.map { "kid '\($0)'" } ?? "key #\(index + 1) (no kid)"
            guard let alg = entry.jwk.algorithm?.rawValue ?? Self.defaultAlgorithm(for: entry.jwk) else {
                throw AuthConfigurationError("\(entry.origin), \(label): no \"alg\" and none can be inferred")
            }
            // The collection wants a kid; a key without one gets a name used only here.
            var jwk = entry.jwk
            let lookup = JWKIdentifier(string: entry.kid ?? "tether-unnamed-\(index)")
            jwk.keyIdentifier = lookup
            do {
                // A fresh collection per key so that lookup can never fall back to another key.
                let collection = JWTKeyCollection()
                try await collection.add(jwk: jwk)
                let algorithm = try await collection.getKey(for: lookup, alg: alg)
                out.append(VerificationKey(kid: entry.kid, algorithm: algorithm, name: algorithm.name,
                                           isSharedSecret: false))
            } catch {
                throw AuthConfigurationError("\(entry.origin), \(label): unusable \(alg) key: \(error)")
            }
        }
        return out
    }

    /// The algorithm a JWK without "alg" is taken to use. RSA keys are assumed PKCS#1 (RS256);
    /// a PSS key must say so.
    static func defaultAlgorithm(for jwk: JWK) -> String? {
        switch jwk.keyType {
        case .rsa: return "RS256"
        case .ecdsa:
            switch jwk.curve?.rawValue {
            case "P-256": return "ES256"
            case "P-384": return "ES384"
            case "P-521": return "ES512"
            default: return nil
            }
        case .octetKeyPair: return "EdDSA"
        default: return nil
        }
    }
}

/// `{"keys": [...]}` where each element is decoded on its own, so one key of a type jwt-kit
/// does not know (kty "oct", alg "RSA-OAEP-256", ...) does not sink the whole set.
private struct LenientJWKS: Decodable {
    struct Element: Decodable {
        let jwk: JWK?
        let error: String?

        init(from decoder: any Decoder) throws {
            do {
                jwk = try JWK(from: decoder)
                error = nil
            } catch {
                jwk = nil
                self.error = "\(error)"
            }
        }
    }

    let keys: [Element]
}

/// One line for the log: Foundation's `DecodingError` description is a multi-line dump.
private func jsonProblem(_ error: any Error) -> String {
    guard let error = error as? DecodingError else { return "\(error)" }
    func at(_ context: DecodingError.Context) -> String {
        let path = context.codingPath.map { $0.intValue.map { "[\($0)]" } ?? $0.stringValue }.joined(separator: ".")
        return path.isEmpty ? "" : "at \(path): "
    }
    switch error {
    case .dataCorrupted(let context):
        return at(context) + context.debugDescription
    case .keyNotFound(let key, let context):
        return at(context) + "missing \"\(key.stringValue)\""
    case .typeMismatch(_, let context), .valueNotFound(_, let context):
        return at(context) + context.debugDescription
    @unknown default:
        return "\(error)"
    }
}

/// The whole file, or an error with the OS's reason ("No such file or directory"); Foundation's
/// errors here are NSError dumps, unfit for a startup message.
private func readFile(_ path: String, what: String) throws -> Data {
    let fd = open(path, O_RDONLY)
    guard fd >= 0 else {
        throw AuthConfigurationError("cannot read \(what) '\(path)': \(String(cString: strerror(errno)))")
    }
    defer { close(fd) }
    var data = Data()
    var chunk = [UInt8](repeating: 0, count: 64 * 1024)
    while true {
        let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if n == 0 { return data }
        if n < 0 {
            if errno == EINTR { continue }
            throw AuthConfigurationError("cannot read \(what) '\(path)': \(String(cString: strerror(errno)))")
        }
        data.append(contentsOf: chunk[..<n])
        // A key set is a few KiB; anything this large is the wrong file.
        guard data.count <= 16 * 1024 * 1024 else {
            throw AuthConfigurationError("\(what) '\(path)' is larger than 16 MiB")
        }
    }
}

/// Runs async work to completion from synchronous code, on the global executor. Only for load
/// time on a thread outside the cooperative pool; a pool thread blocked here could deadlock.
private func waitBlocking<T: Sendable>(_ body: @escaping @Sendable () async throws -> T) throws -> T {
    let slot = ResultSlot<T>()
    // Detached: inheriting the caller's actor (e.g. the main actor) would deadlock on it.
    Task.detached {
        do {
            slot.result = .success(try await body())
        } catch {
            slot.result = .failure(error)
        }
        slot.done.signal()
    }
    slot.done.wait()
    guard let result = slot.result else { throw AuthConfigurationError("key loading did not finish") }
    return try result.get()
}

/// Written once by the task before `done.signal()` and read after `done.wait()`; the
/// semaphore orders the two accesses, hence the unchecked Sendable.
private final class ResultSlot<T: Sendable>: @unchecked Sendable {
    var result: Result<T, any Error>?
    let done = DispatchSemaphore(value: 0)
}
