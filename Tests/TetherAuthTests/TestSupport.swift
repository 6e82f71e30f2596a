import Crypto
import CryptoExtras
import Foundation
import JWTKit
@testable import TetherAuth

// JWTKit, Crypto and CryptoExtras are reached through TetherAuth's dependencies; the test target
// uses them only to build keys and sign tokens independently of the code under test.

typealias RSAPrivateKey = JWTKit.Insecure.RSA.PrivateKey

let now: Double = 1_750_000_000
let secret = "0123456789abcdef0123456789abcdef-test-secret"

func b64url(_ bytes: some DataProtocol) -> String {
    Data(bytes).base64EncodedString()
        .replacingOccurrences(of: "+", with: "-")
        .replacingOccurrences(of: "/", with: "_")
        .replacingOccurrences(of: "=", with: "")
}

func b64url(_ s: String) -> String { b64url(Array(s.utf8)) }

/// A compact JWS from literal header and payload JSON, HMAC-SHA256 signed with `key`
/// (swift-crypto directly, not the module's HS256 code).
func hs256(header: String = #"{"alg":"HS256","typ":"JWT"}"#, _ payload: String, key: String = secret) -> String {
    let input = b64url(header) + "." + b64url(payload)
    let mac = HMAC<SHA256>.authenticationCode(for: Array(input.utf8), using: SymmetricKey(data: Array(key.utf8)))
    return input + "." + b64url(Array(mac))
}

func hsConfig(issuer: String? = nil, audience: String? = nil) -> AuthConfiguration {
    var c = AuthConfiguration()
    c.hs256Secret = secret
    c.issuer = issuer
    c.audience = audience
    return c
}

extension Result {
    var failure: Failure? {
        if case .failure(let f) = self { return f }
        return nil
    }
    var success: Success? {
        if case .success(let s) = self { return s }
        return nil
    }
}

/// Claims signed by jwt-kit in the JWKS tests.
struct TestClaims: JWTPayload {
    var sub: SubjectClaim
    var exp: ExpirationClaim
    var iss: IssuerClaim?
    var aud: AudienceClaim?
    func verify(using _: some JWTAlgorithm) async throws {}
}

func testClaims(sub: String = "user-1", exp: Double = now + 3600) -> TestClaims {
    TestClaims(sub: SubjectClaim(value: sub), exp: ExpirationClaim(value: Date(timeIntervalSince1970: exp)))
}

/// Keys generated once per test run (RSA generation is slow in debug builds).
struct KeyFixture: Sendable {
    let rsa1: RSAPrivateKey
    let rsa2: RSAPrivateKey
    let rsaUnlisted: RSAPrivateKey
    let ec1: ES256PrivateKey

    static let shared: Result<KeyFixture, any Error> = Result { try KeyFixture() }

    private init() throws {
        rsa1 = try RSAPrivateKey(backing: _RSA.Signing.PrivateKey(keySize: .bits2048))
        rsa2 = try RSAPrivateKey(backing: _RSA.Signing.PrivateKey(keySize: .bits2048))
        rsaUnlisted = try RSAPrivateKey(backing: _RSA.Signing.PrivateKey(keySize: .bits2048))
        ec1 = ES256PrivateKey()
    }

    /// A JWKS entry for an RSA public key; `alg` nil leaves it to be inferred.
    static func rsaJWK(_ key: RSAPrivateKey, kid: String?, alg: String? = "RS256") throws -> [String: String] {
        let (n, e) = try key.publicKey.getKeyPrimitives()
        var jwk = ["kty": "RSA", "use": "sig", "n": b64url(n), "e": b64url(e)]
        jwk["kid"] = kid
        jwk["alg"] = alg
        return jwk
    }

    static func ecJWK(_ key: ES256PrivateKey, kid: String, alg: String? = "ES256") throws -> [String: String] {
        guard let p = key.parameters else { throw AuthConfigurationError("no EC parameters") }
        var jwk = ["kty": "EC", "crv": "P-256", "x": p.x, "y": p.y, "kid": kid]
        jwk["alg"] = alg
        return jwk
    }

    /// Signs with jwt-kit's own key collection (independent of TetherAuth's verification path).
    func sign(_ claims: TestClaims, rsa key: RSAPrivateKey, kid: String?) async throws -> String {
        let keys = JWTKeyCollection()
        if let kid {
            await keys.add(rsa: key, digestAlgorithm: .sha256, kid: JWKIdentifier(string: kid))
            return try await keys.sign(claims, kid: JWKIdentifier(string: kid))
        }
        await keys.add(rsa: key, digestAlgorithm: .sha256)
        return try await keys.sign(claims)
    }

    func sign(_ claims: TestClaims, ec key: ES256PrivateKey, kid: String) async throws -> String {
        let keys = JWTKeyCollection()
        await keys.add(ecdsa: key, kid: JWKIdentifier(string: kid))
        return try await keys.sign(claims, kid: JWKIdentifier(string: kid))
    }
}

/// A fresh directory under the system temp dir, removed by the caller.
func makeTempDir() throws -> URL {
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("tether-auth-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    return dir
}

func writeJWKS(_ keys: [[String: String]], in dir: URL, name: String = "jwks.json") throws -> String {
    let url = dir.appendingPathComponent(name)
    let data = try JSONSerialization.data(withJSONObject: ["keys": keys], options: [.sortedKeys])
    try data.write(to: url)
    return url.path
}
