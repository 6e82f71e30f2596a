import Foundation
import JWTKit
import Testing
@testable import TetherAuth

/// RS256 / ES256 keys from a JWKS file; tokens signed by jwt-kit's own key collection.
@Suite struct JWKSTests {
    let keys: KeyFixture

    init() throws {
        keys = try KeyFixture.shared.get()
    }

    /// r1: RS256 (alg given), r2: RSA without "alg" (inferred RS256), e1: ES256.
    func standardJWKS(in dir: URL) throws -> String {
        try writeJWKS([
            KeyFixture.rsaJWK(keys.rsa1, kid: "r1"),
            KeyFixture.rsaJWK(keys.rsa2, kid: "r2", alg: nil),
            KeyFixture.ecJWK(keys.ec1, kid: "e1"),
        ], in: dir)
    }

    func withVerifier(secret: String? = nil, issuer: String? = nil,
                      _ jwks: (URL) throws -> String,
                      _ body: (TokenVerifier) async throws -> Void) async throws {
        let dir = try makeTempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        var config = AuthConfiguration()
        config.jwksFile = try jwks(dir)
        config.hs256Secret = secret
        config.issuer = issuer
        try await body(try await TokenVerifier.load(configuration: config))
    }

    @Test func rs256AndES256() async throws {
        try await withVerifier(standardJWKS) { verifier in
            #expect(verifier.keyCount == 3)
            #expect(verifier.keySummary == ["RS256 kid=r1", "RS256 kid=r2", "ES256 kid=e1"])
            let rs = try await keys.sign(testClaims(sub: "alice"), rsa: keys.rsa1, kid: "r1")
            #expect(verifier.verify(Substring(rs), now: now).success?.subject == "alice")
            let es = try await keys.sign(testClaims(sub: "bob"), ec: keys.ec1, kid: "e1")
            #expect(verifier.verify(Substring(es), now: now).success?.subject == "bob")
            let expired = try await keys.sign(testClaims(exp: now - 3600), ec: keys.ec1, kid: "e1")
            #expect(verifier.verify(Substring(expired), now: now).failure == .expired)
        }
    }

    @Test func kidSelectsTheKey() async throws {
        try await withVerifier(standardJWKS) { verifier in
            let byR2 = try await keys.sign(testClaims(sub: "carol"), rsa: keys.rsa2, kid: "r2")
            #expect(verifier.verify(Substring(byR2), now: now).success?.subject == "carol")
            // Signed by r2 but claiming r1.
            let mislabelled = try await keys.sign(testClaims(), rsa: keys.rsa2, kid: "r1")
            #expect(verifier.verify(Substring(mislabelled), now: now).failure == .badSignature)
        }
    }

    @Test func unknownKid() async throws {
        try await withVerifier(standardJWKS) { verifier in
            let token = try await keys.sign(testClaims(), rsa: keys.rsaUnlisted, kid: "r9")
            #expect(verifier.verify(Substring(token), now: now).failure == .unknownKey)
        }
    }

    @Test func noKidNeedsAnUnambiguousKey() async throws {
        // Two RS256 keys: a token without kid is ambiguous.
        try await withVerifier(standardJWKS) { verifier in
            let token = try await keys.sign(testClaims(), rsa: keys.rsa1, kid: nil)
            #expect(verifier.verify(Substring(token), now: now).failure == .unknownKey)
        }
        // A single RSA key without kid in the file: used for tokens without kid.
        try await withVerifier({ try writeJWKS([KeyFixture.rsaJWK(keys.rsa1, kid: nil)], in: $0) }) { verifier in
            #expect(verifier.keySummary == ["RS256 (no kid)"])
            let token = try await keys.sign(testClaims(sub: "dave"), rsa: keys.rsa1, kid: nil)
            #expect(verifier.verify(Substring(token), now: now).success?.subject == "dave")
        }
    }

    @Test func algorithmConfusionRejected() async throws {
        try await withVerifier(secret: secret, standardJWKS) { verifier in
            // Classic attack: HS256 "signed" with the RSA public key, naming the RSA kid.
            let pem = keys.rsa1.publicKey.pemRepresentation
            let confused = hs256(header: #"{"alg":"HS256","kid":"r1"}"#, #"{"sub":"u","exp":\#(Int(now) + 60)}"#, key: pem)
            #expect(verifier.verify(Substring(confused), now: now).failure == .algorithmNotAllowed)
            // Even with the real shared secret: the kid names an RS256 key.
            let secretSigned = hs256(header: #"{"alg":"HS256","kid":"r1"}"#, #"{"sub":"u","exp":\#(Int(now) + 60)}"#)
            #expect(verifier.verify(Substring(secretSigned), now: now).failure == .algorithmNotAllowed)
            // ES256 header on an RSA key.
            let rs = try await keys.sign(testClaims(), rsa: keys.rsa1, kid: "r1").split(separator: ".")
            let relabelled = b64url(#"{"alg":"ES256","kid":"r1"}"#) + "." + rs[1] + "." + rs[2]
            #expect(verifier.verify(Substring(relabelled), now: now).failure == .algorithmNotAllowed)
            // `none` naming a real kid.
            let none = b64url(#"{"alg":"none","kid":"r1"}"#) + "." + rs[1] + "."
            #expect(verifier.verify(Substring(none), now: now).failure == .algorithmNotAllowed)
            // The shared secret still works for tokens without kid, alongside the JWKS keys.
            let plain = hs256(#"{"sub":"erin","exp":\#(Int(now) + 60)}"#)
            #expect(verifier.verify(Substring(plain), now: now).success?.subject == "erin")
            #expect(verifier.keyCount == 4)
        }
    }

    @Test func corruptSignatures() async throws {
        try await withVerifier(standardJWKS) { verifier in
            for token in [try await keys.sign(testClaims(), rsa: keys.rsa1, kid: "r1"),
                          try await keys.sign(testClaims(), ec: keys.ec1, kid: "e1")] {
                let parts = token.split(separator: ".")
                let short = parts[0] + "." + parts[1] + "." + parts[2].prefix(10)
                #expect(verifier.verify(short, now: now).failure == .badSignature)
                let empty = parts[0] + "." + parts[1] + "."
                #expect(verifier.verify(empty, now: now).failure == .badSignature)
                let first: Substring = parts[2].first == "A" ? "B" : "A"
                let flipped = parts[0] + "." + parts[1] + "." + first + parts[2].dropFirst()
                #expect(verifier.verify(flipped, now: now).failure == .badSignature)
            }
        }
    }

    @Test func issuerPolicyAppliesToJWKSTokens() async throws {
        try await withVerifier(issuer: "https://idp.example/", standardJWKS) { verifier in
            var claims = testClaims(sub: "frank")
            #expect(verifier.verify(Substring(try await keys.sign(claims, rsa: keys.rsa1, kid: "r1")), now: now).failure == .wrongIssuer)
            claims.iss = IssuerClaim(value: "https://idp.example/")
            let identity = try verifier.verify(Substring(try await keys.sign(claims, rsa: keys.rsa1, kid: "r1")), now: now).get()
            #expect(identity.session == SessionID.derive(issuer: "https://idp.example/", subject: "frank"))
        }
    }

    @Test func badKeyMaterialNamesTheKey() async throws {
        let dir = try makeTempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        var config = AuthConfiguration()
        config.jwksFile = try writeJWKS([["kty": "EC", "crv": "P-256", "kid": "broken", "x": "AAAA", "y": "AAAA"]], in: dir)
        do {
            _ = try await TokenVerifier.load(configuration: config)
            Issue.record("loaded a key with bad coordinates")
        } catch {
            #expect(String(describing: error).contains("kid 'broken'"))
        }
        config.jwksFile = try writeJWKS([try KeyFixture.rsaJWK(keys.rsa1, kid: "enc", alg: "RSA-OAEP")], in: dir, name: "enc.json")
        await #expect(throws: AuthConfigurationError.self) { try await TokenVerifier.load(configuration: config) }
    }

    /// The synchronous initializer waits for jwt-kit's actor; run it on a plain thread, as the
    /// relay does at startup, rather than on a cooperative-pool thread.
    @Test func synchronousLoadFromPlainThread() async throws {
        let dir = try makeTempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        var config = AuthConfiguration()
        config.jwksFile = try standardJWKS(in: dir)
        let loadConfig = config
        let loaded: Result<TokenVerifier, any Error> = await withCheckedContinuation { continuation in
            let thread = Thread {
                continuation.resume(returning: Result { try TokenVerifier(configuration: loadConfig) })
            }
            thread.start()
        }
        let verifier = try loaded.get()
        let token = try await keys.sign(testClaims(sub: "gina"), ec: keys.ec1, kid: "e1")
        #expect(verifier.verify(Substring(token), now: now).success?.subject == "gina")
    }

    @Test func concurrentVerification() async throws {
        try await withVerifier(secret: secret, standardJWKS) { verifier in
            let tokens: [(String, String?)] = [
                (try await keys.sign(testClaims(sub: "rs"), rsa: keys.rsa1, kid: "r1"), "rs"),
                (try await keys.sign(testClaims(sub: "es"), ec: keys.ec1, kid: "e1"), "es"),
                (hs256(#"{"sub":"hs","exp":\#(Int(now) + 60)}"#), "hs"),
                (hs256(#"{"sub":"hs","exp":\#(Int(now) + 60)}"#, key: "wrong"), nil),
                ("garbage", nil),
            ]
            let mismatches = Counter()
            // Dispatch worker threads, not tasks: verification is synchronous, like on a loop.
            DispatchQueue.concurrentPerform(iterations: 8) { worker in
                for i in 0..<200 {
                    let (token, subject) = tokens[(worker + i) % tokens.count]
                    if verifier.verify(Substring(token), now: now).success?.subject != subject {
                        mismatches.increment()
                    }
                }
            }
            #expect(mismatches.value == 0)
        }
    }
}

final class Counter: @unchecked Sendable {
    private let lock = NSLock()
    private var count = 0
    func increment() { lock.withLock { count += 1 } }
    var value: Int { lock.withLock { count } }
}
