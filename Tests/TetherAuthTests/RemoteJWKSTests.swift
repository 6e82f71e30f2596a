import Foundation
import JWTKit
import Testing
@testable import TetherAuth

/// Keys from already-fetched JWKS bytes (the URL source), next to the secret and the file.
@Suite struct RemoteJWKSTests {
    let keys: KeyFixture

    init() throws {
        keys = try KeyFixture.shared.get()
    }

    func body(_ jwks: [[String: String]], pretty: Bool = false) throws -> [UInt8] {
        Array(try JSONSerialization.data(withJSONObject: ["keys": jwks],
                                         options: pretty ? [.prettyPrinted] : [.sortedKeys]))
    }

    func urlConfig() -> AuthConfiguration {
        var c = AuthConfiguration()
        c.jwksURL = "https://idp.example/.well-known/jwks.json"
        return c
    }

    @Test func urlKeysJoinTheSecretAndTheFile() async throws {
        let dir = try makeTempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        var config = urlConfig()
        config.hs256Secret = secret
        config.jwksFile = try writeJWKS([KeyFixture.rsaJWK(keys.rsa1, kid: "r1")], in: dir)
        let verifier = try await TokenVerifier.load(configuration: config,
                                                    remoteJWKS: body([KeyFixture.ecJWK(keys.ec1, kid: "e1")]))
        #expect(verifier.keySummary == ["HS256 (shared secret)", "RS256 kid=r1", "ES256 kid=e1"])
        let rs = try await keys.sign(testClaims(sub: "file"), rsa: keys.rsa1, kid: "r1")
        let es = try await keys.sign(testClaims(sub: "url"), ec: keys.ec1, kid: "e1")
        #expect(verifier.verify(Substring(rs), now: now).success?.subject == "file")
        #expect(verifier.verify(Substring(es), now: now).success?.subject == "url")
        #expect(verifier.verify(Substring(hs256(#"{"sub":"hs","exp":\#(Int(now) + 60)}"#)), now: now).success?.subject == "hs")
    }

    @Test func withoutBytesTheURLContributesNothing() async throws {
        // The verifier does no I/O: a configured URL whose body has not been fetched adds no key.
        let verifier = try await TokenVerifier.load(configuration: urlConfig())
        #expect(verifier.keyCount == 0)
        let token = try await keys.sign(testClaims(), rsa: keys.rsa1, kid: "r1")
        #expect(verifier.verify(Substring(token), now: now).failure == .noKeysConfigured)
    }

    @Test func theFileWinsAKidConflict() async throws {
        let dir = try makeTempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        var config = urlConfig()
        config.jwksFile = try writeJWKS([KeyFixture.rsaJWK(keys.rsa1, kid: "k")], in: dir)
        let verifier = try await TokenVerifier.load(configuration: config, remoteJWKS: body([
            KeyFixture.rsaJWK(keys.rsa2, kid: "k"), KeyFixture.ecJWK(keys.ec1, kid: "e1"),
        ]))
        #expect(verifier.keySummary == ["RS256 kid=k", "ES256 kid=e1"])
        #expect(verifier.warnings.contains { $0.contains("kid 'k'") && $0.contains("JWKS file has a key") })
        let byFileKey = try await keys.sign(testClaims(sub: "f"), rsa: keys.rsa1, kid: "k")
        let byURLKey = try await keys.sign(testClaims(), rsa: keys.rsa2, kid: "k")
        #expect(verifier.verify(Substring(byFileKey), now: now).success?.subject == "f")
        #expect(verifier.verify(Substring(byURLKey), now: now).failure == .badSignature)
    }

    /// Providers publish encryption keys and key types jwt-kit does not know next to the signing
    /// keys; those are skipped (with a warning), not fatal.
    @Test func unusableURLKeysAreSkipped() async throws {
        let verifier = try await TokenVerifier.load(configuration: urlConfig(), remoteJWKS: body([
            KeyFixture.rsaJWK(keys.rsa2, kid: "enc", alg: "RSA-OAEP"),
            ["kty": "oct", "kid": "sym", "k": "c2VjcmV0"],
            KeyFixture.rsaJWK(keys.rsa2, kid: "enc256", alg: "RSA-OAEP-256"),
            KeyFixture.ecJWK(keys.ec1, kid: "e1"),
        ]))
        #expect(verifier.keySummary == ["ES256 kid=e1"])
        #expect(verifier.warnings.count == 3)
        let es = try await keys.sign(testClaims(sub: "ok"), ec: keys.ec1, kid: "e1")
        #expect(verifier.verify(Substring(es), now: now).success?.subject == "ok")
        let enc = try await keys.sign(testClaims(), rsa: keys.rsa2, kid: "enc")
        #expect(verifier.verify(Substring(enc), now: now).failure == .unknownKey)
    }

    @Test func unusableURLSetsThrow() async throws {
        func loadError(_ bytes: [UInt8]) async -> String {
            do {
                _ = try await TokenVerifier.load(configuration: urlConfig(), remoteJWKS: bytes)
                return "loaded"
            } catch {
                return String(describing: error)
            }
        }
        #expect(await loadError(Array("<html>".utf8)).contains("is not a valid JSON Web Key Set"))
        #expect(await loadError(Array(#"{"keys":[]}"#.utf8)).contains("no usable signature keys"))
        #expect(await loadError(try body([KeyFixture.rsaJWK(keys.rsa1, kid: "x", alg: "RSA-OAEP")]))
            .contains("no usable signature keys"))
        #expect(await loadError(try body([KeyFixture.rsaJWK(keys.rsa1, kid: "d"), KeyFixture.rsaJWK(keys.rsa2, kid: "d")]))
            .contains("two keys with kid 'd'"))
        #expect(await loadError(try body([["kty": "EC", "crv": "P-256", "kid": "bad", "x": "AAAA", "y": "AAAA"]]))
            .contains("JWKS from 'https://idp.example/.well-known/jwks.json', kid 'bad'"))
    }

    @Test func sameKeysWhateverTheFormatting() async throws {
        let set = [try KeyFixture.rsaJWK(keys.rsa1, kid: "r1"), try KeyFixture.ecJWK(keys.ec1, kid: "e1")]
        let a = try await TokenVerifier.load(configuration: urlConfig(), remoteJWKS: body(set))
        let reformatted = try await TokenVerifier.load(configuration: urlConfig(), remoteJWKS: body(set, pretty: true))
        #expect(a.hasSameKeys(as: reformatted))
        #expect(a.hasSameKeys(as: a))

        let added = try await TokenVerifier.load(configuration: urlConfig(),
                                                 remoteJWKS: body(set + [KeyFixture.rsaJWK(keys.rsa2, kid: "r2")]))
        #expect(!a.hasSameKeys(as: added))
        let renamed = try await TokenVerifier.load(configuration: urlConfig(), remoteJWKS: body([
            try KeyFixture.rsaJWK(keys.rsa1, kid: "r1-renamed"), try KeyFixture.ecJWK(keys.ec1, kid: "e1"),
        ]))
        #expect(!a.hasSameKeys(as: renamed))
        var withSecret = urlConfig()
        withSecret.hs256Secret = secret
        #expect(!a.hasSameKeys(as: try await TokenVerifier.load(configuration: withSecret, remoteJWKS: body(set))))
    }
}
