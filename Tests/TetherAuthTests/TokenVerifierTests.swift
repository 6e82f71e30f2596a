import Foundation
import Testing
@testable import TetherAuth

@Suite struct HS256VerificationTests {
    let verifier: TokenVerifier

    init() throws {
        verifier = try TokenVerifier(configuration: hsConfig())
    }

    @Test func validToken() throws {
        let token = hs256(#"{"sub":"user-42","iss":"https://auth.example.com/","exp":\#(Int(now) + 600),"tier":"pro"}"#)
        let identity = try verifier.verify(Substring(token), now: now).get()
        #expect(identity.subject == "user-42")
        #expect(identity.issuer == "https://auth.example.com/")
        #expect(identity.expiresAt == now + 600)
        #expect(identity.tier == "pro")
        #expect(identity.session == SessionID.derive(issuer: "https://auth.example.com/", subject: "user-42"))
        #expect(verifier.keyCount == 1)
        #expect(verifier.warnings.isEmpty)
    }

    @Test func missingIssuerIsTheEmptyString() throws {
        let identity = try verifier.verify(Substring(hs256(#"{"sub":"u","exp":\#(Int(now) + 60)}"#)), now: now).get()
        #expect(identity.issuer == "")
        #expect(identity.session == SessionID.derive(issuer: "", subject: "u"))
        #expect(identity.tier == nil)
    }

    @Test func expiryHonoursLeeway() {
        let justExpired = hs256(#"{"sub":"u","exp":\#(Int(now) - 30)}"#)
        #expect(verifier.verify(Substring(justExpired), now: now).success != nil)
        let longExpired = hs256(#"{"sub":"u","exp":\#(Int(now) - 61)}"#)
        #expect(verifier.verify(Substring(longExpired), now: now).failure == .expired)
        // exp is exclusive: exactly at exp + leeway the token is no longer accepted.
        let boundary = hs256(#"{"sub":"u","exp":\#(Int(now) - 60)}"#)
        #expect(verifier.verify(Substring(boundary), now: now).failure == .expired)
    }

    @Test func zeroLeeway() throws {
        var config = hsConfig()
        config.leewaySeconds = 0
        let strict = try TokenVerifier(configuration: config)
        let token = hs256(#"{"sub":"u","exp":\#(Int(now) - 1)}"#)
        #expect(strict.verify(Substring(token), now: now).failure == .expired)
        #expect(strict.verify(Substring(token), now: now - 2).success != nil)
    }

    @Test func notBefore() {
        let future = hs256(#"{"sub":"u","exp":\#(Int(now) + 600),"nbf":\#(Int(now) + 120)}"#)
        #expect(verifier.verify(Substring(future), now: now).failure == .notYetValid)
        let withinLeeway = hs256(#"{"sub":"u","exp":\#(Int(now) + 600),"nbf":\#(Int(now) + 30)}"#)
        #expect(verifier.verify(Substring(withinLeeway), now: now).success != nil)
    }

    @Test func fractionalTimes() {
        let token = hs256(#"{"sub":"u","exp":\#(now + 0.5),"nbf":\#(now - 0.5)}"#)
        #expect(verifier.verify(Substring(token), now: now).success?.expiresAt == now + 0.5)
    }

    @Test func wrongSignature() {
        let otherKey = hs256(#"{"sub":"u","exp":\#(Int(now) + 600)}"#, key: "another secret of decent length!!")
        #expect(verifier.verify(Substring(otherKey), now: now).failure == .badSignature)

        // Payload swapped after signing.
        let good = hs256(#"{"sub":"u","exp":\#(Int(now) + 600)}"#).split(separator: ".")
        let forged = [good[0], Substring(b64url(#"{"sub":"admin","exp":\#(Int(now) + 600)}"#)), good[2]].joined(separator: ".")
        #expect(verifier.verify(Substring(forged), now: now).failure == .badSignature)

        // Truncated and empty signatures.
        let truncated = good[0] + "." + good[1] + "." + good[2].dropLast(4)
        #expect(verifier.verify(truncated, now: now).failure == .badSignature)
        let empty = good[0] + "." + good[1] + "."
        #expect(verifier.verify(empty, now: now).failure == .badSignature)
    }

    @Test func signatureCheckedBeforeClaims() {
        // A forged token must not learn that its claims would have been expired.
        let forged = hs256(#"{"sub":"u","exp":1}"#, key: "not the secret")
        #expect(verifier.verify(Substring(forged), now: now).failure == .badSignature)
    }

    @Test(arguments: ["none", "None", "NONE", "nOnE"])
    func unsecuredTokenRejected(alg: String) {
        let header = b64url(#"{"alg":"\#(alg)","typ":"JWT"}"#)
        let payload = b64url(#"{"sub":"u","exp":\#(Int(now) + 600)}"#)
        #expect(verifier.verify(Substring(header + "." + payload + "."), now: now).failure == .algorithmNotAllowed)
        // Even carrying a valid HS256 MAC of the same input.
        let mac = hs256(header: #"{"alg":"\#(alg)","typ":"JWT"}"#, #"{"sub":"u","exp":\#(Int(now) + 600)}"#)
        #expect(verifier.verify(Substring(mac), now: now).failure == .algorithmNotAllowed)
    }

    @Test func otherHMACAlgorithmsRejected() {
        let token = hs256(header: #"{"alg":"HS512"}"#, #"{"sub":"u","exp":\#(Int(now) + 600)}"#)
        #expect(verifier.verify(Substring(token), now: now).failure == .algorithmNotAllowed)
    }

    @Test func requiredClaims() {
        #expect(verifier.verify(Substring(hs256(#"{"sub":"u"}"#)), now: now).failure == .malformed)
        #expect(verifier.verify(Substring(hs256(#"{"exp":\#(Int(now) + 60)}"#)), now: now).failure == .malformed)
        #expect(verifier.verify(Substring(hs256(#"{"sub":"","exp":\#(Int(now) + 60)}"#)), now: now).failure == .malformed)
        #expect(verifier.verify(Substring(hs256(#"{"sub":"u","exp":"tomorrow"}"#)), now: now).failure == .malformed)
        #expect(verifier.verify(Substring(hs256(#"{"sub":7,"exp":\#(Int(now) + 60)}"#)), now: now).failure == .malformed)
    }

    @Test func headerChecks() {
        let payload = #"{"sub":"u","exp":\#(Int(now) + 60)}"#
        #expect(verifier.verify(Substring(hs256(header: #"{"typ":"JWT"}"#, payload)), now: now).failure == .malformed)
        #expect(verifier.verify(Substring(hs256(header: #"{"alg":256}"#, payload)), now: now).failure == .malformed)
        #expect(verifier.verify(Substring(hs256(header: #"{"alg":"HS256","kid":5}"#, payload)), now: now).failure == .malformed)
        #expect(verifier.verify(Substring(hs256(header: #"{"alg":"HS256","crit":["exp"]}"#, payload)), now: now).failure == .malformed)
    }

    @Test func kidOnSharedSecretToken() {
        // Issuers such as Supabase name the shared secret with a kid; with no JWKS key of that
        // name the secret is used.
        let token = hs256(header: #"{"alg":"HS256","kid":"secret-2024"}"#, #"{"sub":"u","exp":\#(Int(now) + 60)}"#)
        #expect(verifier.verify(Substring(token), now: now).success?.subject == "u")
    }

    @Test func tierClaim() throws {
        let numeric = hs256(#"{"sub":"u","exp":\#(Int(now) + 60),"tier":3}"#)
        #expect(verifier.verify(Substring(numeric), now: now).success?.tier == "3")
        let odd = hs256(#"{"sub":"u","exp":\#(Int(now) + 60),"tier":{"a":1}}"#)
        #expect(verifier.verify(Substring(odd), now: now).success?.tier == nil)

        var config = hsConfig()
        config.tierClaim = "https://example.com/plan"
        let custom = try TokenVerifier(configuration: config)
        let token = hs256(#"{"sub":"u","exp":\#(Int(now) + 60),"tier":"x","https://example.com/plan":"team"}"#)
        #expect(custom.verify(Substring(token), now: now).success?.tier == "team")
    }

    @Test func missingToken() {
        #expect(verifier.verify("", now: now).failure == .missing)
    }
}

@Suite struct ClaimPolicyTests {
    @Test func issuer() throws {
        let verifier = try TokenVerifier(configuration: hsConfig(issuer: "https://auth.example.com/"))
        let good = hs256(#"{"sub":"u","iss":"https://auth.example.com/","exp":\#(Int(now) + 60)}"#)
        #expect(verifier.verify(Substring(good), now: now).success != nil)
        let wrong = hs256(#"{"sub":"u","iss":"https://evil.example.com/","exp":\#(Int(now) + 60)}"#)
        #expect(verifier.verify(Substring(wrong), now: now).failure == .wrongIssuer)
        let absent = hs256(#"{"sub":"u","exp":\#(Int(now) + 60)}"#)
        #expect(verifier.verify(Substring(absent), now: now).failure == .wrongIssuer)
    }

    @Test func audience() throws {
        let verifier = try TokenVerifier(configuration: hsConfig(audience: "tether"))
        func check(_ aud: String) -> Result<Identity, AuthFailure> {
            verifier.verify(Substring(hs256(#"{"sub":"u","exp":\#(Int(now) + 60)\#(aud)}"#)), now: now)
        }
        #expect(check(#","aud":"tether""#).success != nil)
        #expect(check(#","aud":["web","tether"]"#).success != nil)
        #expect(check(#","aud":"web""#).failure == .wrongAudience)
        #expect(check(#","aud":["web","mobile"]"#).failure == .wrongAudience)
        #expect(check(#","aud":[]"#).failure == .wrongAudience)
        #expect(check("").failure == .wrongAudience)
        #expect(check(#","aud":42"#).failure == .malformed)
    }

    @Test func audienceIgnoredWhenNotConfigured() throws {
        let verifier = try TokenVerifier(configuration: hsConfig())
        let token = hs256(#"{"sub":"u","aud":["anything"],"exp":\#(Int(now) + 60)}"#)
        #expect(verifier.verify(Substring(token), now: now).success != nil)
    }

    @Test func emptyPolicyStringsMeanUnset() throws {
        let verifier = try TokenVerifier(configuration: hsConfig(issuer: "", audience: ""))
        let token = hs256(#"{"sub":"u","exp":\#(Int(now) + 60)}"#)
        #expect(verifier.verify(Substring(token), now: now).success != nil)
    }
}

@Suite struct MalformedTokenTests {
    let verifier: TokenVerifier

    init() throws {
        verifier = try TokenVerifier(configuration: hsConfig())
    }

    @Test(arguments: [
        "garbage",
        "two.parts",
        "a.b.c.d",
        "..",
        "...",
        ".payload.sig",
        "!!!.???.###",
        "eyJhbGciOiJIUzI1NiJ9.%%%.abc",
        "eyJhbGciOiJIUzI1NiJ9.e30.!!",
        "W10.e30.",                    // header is a JSON array
        "bnVsbA.e30.",                 // header is null
        "eyJhbGciOiJIUzI1NiJ9.W10.",   // payload is a JSON array
        "eyJhbGciOiJIUzI1NiJ9.bm90IGpzb24.", // payload "not json"
        "eyJhbGciOiJIUzI1NiJ9..",
        "é.ü.ß",
        "\u{0}.\u{0}.\u{0}",
    ])
    func rejected(token: String) {
        let result = verifier.verify(Substring(token), now: now)
        #expect(result.failure == .malformed)
    }

    @Test func huge() {
        let big = String(repeating: "A", count: TokenVerifier.maxTokenBytes + 1)
        #expect(verifier.verify(Substring(big), now: now).failure == .malformed)
        // A well-formed token with an enormous claim is refused before any parsing.
        let padded = hs256(#"{"sub":"u","exp":\#(Int(now) + 60),"pad":"\#(String(repeating: "x", count: 20_000))"}"#)
        #expect(verifier.verify(Substring(padded), now: now).failure == .malformed)
        // Deep nesting just under the limit must not crash the JSON decoder either.
        let deep = hs256(#"{"sub":"u","exp":\#(Int(now) + 60),"x":\#(String(repeating: "[", count: 5000))\#(String(repeating: "]", count: 5000))}"#)
        _ = verifier.verify(Substring(deep), now: now)
    }

    @Test func randomInputNeverVerifies() {
        var rng = SplitMix64(seed: 0x7e7e_7e7e)
        let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/ %".utf8)
        let valid = Array(hs256(#"{"sub":"u","exp":\#(Int(now) + 60)}"#).utf8)
        for i in 0..<3000 {
            var bytes: [UInt8]
            if i % 2 == 0 {
                bytes = (0..<Int(rng.next() % 300)).map { _ in alphabet[Int(rng.next() % UInt64(alphabet.count))] }
            } else {
                // Mutations of a valid token: one to three bytes flipped, dropped or inserted.
                bytes = valid
                for _ in 0..<(1 + Int(rng.next() % 3)) {
                    let at = Int(rng.next() % UInt64(bytes.count))
                    switch rng.next() % 3 {
                    case 0: bytes[at] = alphabet[Int(rng.next() % UInt64(alphabet.count))]
                    case 1: bytes.remove(at: at)
                    default: bytes.insert(alphabet[Int(rng.next() % UInt64(alphabet.count))], at: at)
                    }
                }
                if bytes == valid { continue }
            }
            let token = String(decoding: bytes, as: UTF8.self)
            let result = verifier.verify(Substring(token), now: now)
            // Base64 padding bits or trailing characters may decode to the same bytes; anything
            // that verifies must then name the same subject.
            if let identity = result.success { #expect(identity.subject == "u") }
        }
    }
}

/// Deterministic PRNG so a failing input can be reproduced.
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

@Suite struct ConfigurationTests {
    @Test func noKeys() throws {
        let verifier = try TokenVerifier(configuration: AuthConfiguration())
        #expect(verifier.keyCount == 0)
        let token = hs256(#"{"sub":"u","exp":\#(Int(now) + 60)}"#)
        #expect(verifier.verify(Substring(token), now: now).failure == .noKeysConfigured)
        #expect(verifier.verify("", now: now).failure == .missing)
    }

    @Test func emptySecretIsAnError() {
        var config = AuthConfiguration()
        config.hs256Secret = ""
        #expect(throws: AuthConfigurationError.self) { try TokenVerifier(configuration: config) }
    }

    @Test func shortSecretWarns() throws {
        var config = AuthConfiguration()
        config.hs256Secret = "short"
        let verifier = try TokenVerifier(configuration: config)
        #expect(verifier.warnings.count == 1)
        #expect(verifier.keySummary == ["HS256 (shared secret)"])
        let token = hs256(#"{"sub":"u","exp":\#(Int(now) + 60)}"#, key: "short")
        #expect(verifier.verify(Substring(token), now: now).success != nil)
    }

    @Test func jwksFileProblemsNameTheFile() throws {
        let dir = try makeTempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        func loadError(_ path: String) -> String {
            var config = AuthConfiguration()
            config.jwksFile = path
            do {
                _ = try TokenVerifier(configuration: config)
                return "no error"
            } catch {
                return String(describing: error)
            }
        }
        let missing = dir.appendingPathComponent("absent.json").path
        #expect(loadError(missing).contains(missing))

        let notJSON = dir.appendingPathComponent("bad.json")
        try Data("not json".utf8).write(to: notJSON)
        #expect(loadError(notJSON.path).contains("not a valid JSON Web Key Set"))

        let empty = try writeJWKS([], in: dir, name: "empty.json")
        #expect(loadError(empty).contains("contains no keys"))

        let unknownType = dir.appendingPathComponent("oct.json")
        try Data(#"{"keys":[{"kty":"oct","k":"c2VjcmV0","kid":"x"}]}"#.utf8).write(to: unknownType)
        #expect(loadError(unknownType.path).contains(unknownType.path))

        let dup = try writeJWKS([["kty": "EC", "crv": "P-256", "kid": "k", "x": "AA", "y": "AA"],
                                 ["kty": "EC", "crv": "P-256", "kid": "k", "x": "AA", "y": "AA"]], in: dir, name: "dup.json")
        #expect(loadError(dup).contains("two keys with kid 'k'"))
    }

    @Test func failureMapping() {
        #expect(AuthFailure.missing.httpCode == "AUTH_REQUIRED")
        let all: [AuthFailure] = [.missing, .malformed, .expired, .notYetValid, .badSignature, .unknownKey,
                                  .algorithmNotAllowed, .wrongIssuer, .wrongAudience, .noKeysConfigured]
        for failure in all where failure != .missing {
            #expect(failure.httpCode == "AUTH_INVALID")
        }
        #expect(AuthFailure.expired.reason == "token expired")
        #expect(AuthFailure.badSignature.reason == "bad signature")
        #expect(AuthFailure.missing.reason == "token missing")
        #expect(Set(all.map(\.metricLabel)).count == all.count)
        #expect(Set(all.map(\.reason)).count == all.count)
        for failure in all {
            #expect(failure.reason.utf8.count <= 123)  // fits a WebSocket close reason
            #expect(failure.description == failure.reason)
        }
    }
}
