import Foundation
import Testing
import TetherAuth

@Suite struct TokenMinterTests {
    @Test func mintedTokenVerifies() throws {
        let minter = TokenMinter(secret: secret, issuer: "tether-dev", audience: "tether")
        let token = try minter.mint(subject: "dev-user", ttlSeconds: 3600, tier: "pro", now: now)
        let verifier = try TokenVerifier(configuration: hsConfig(issuer: "tether-dev", audience: "tether"))
        let identity = try verifier.verify(Substring(token), now: now + 10).get()
        #expect(identity.subject == "dev-user")
        #expect(identity.issuer == "tether-dev")
        #expect(identity.tier == "pro")
        #expect(identity.expiresAt == now + 3600)
        #expect(verifier.verify(Substring(token), now: now + 3600 + 61).failure == .expired)

        let other = try TokenVerifier(configuration: {
            var c = AuthConfiguration()
            c.hs256Secret = "a different secret, also long enough"
            return c
        }())
        #expect(other.verify(Substring(token), now: now).failure == .badSignature)
    }

    @Test func minimalToken() throws {
        let token = try TokenMinter(secret: secret, issuer: nil, audience: nil).mint(subject: "u", ttlSeconds: 60, now: now)
        let parts = token.split(separator: ".")
        #expect(parts.count == 3)
        #expect(!token.contains("=") && !token.contains("+") && !token.contains("/"))
        let identity = try TokenVerifier(configuration: hsConfig()).verify(Substring(token), now: now).get()
        #expect(identity.issuer == "" && identity.tier == nil)
        // Deterministic for a given clock.
        #expect(try TokenMinter(secret: secret, issuer: nil, audience: nil).mint(subject: "u", ttlSeconds: 60, now: now) == token)
    }

    @Test func customTierClaim() throws {
        let token = try TokenMinter(secret: secret, issuer: nil, audience: nil, tierClaim: "plan")
            .mint(subject: "u", ttlSeconds: 60, tier: "team", now: now)
        var config = hsConfig()
        config.tierClaim = "plan"
        #expect(try TokenVerifier(configuration: config).verify(Substring(token), now: now).get().tier == "team")
    }

    @Test func invalidInput() {
        let minter = TokenMinter(secret: secret, issuer: nil, audience: nil)
        #expect(throws: AuthConfigurationError.self) { try minter.mint(subject: "", ttlSeconds: 60, now: now) }
        #expect(throws: AuthConfigurationError.self) { try minter.mint(subject: "u", ttlSeconds: 0, now: now) }
        #expect(throws: AuthConfigurationError.self) { try minter.mint(subject: "u", ttlSeconds: .max, now: now) }
        #expect(throws: AuthConfigurationError.self) { try minter.mint(subject: "u", ttlSeconds: 60, now: .nan) }
        #expect(throws: AuthConfigurationError.self) {
            try TokenMinter(secret: "", issuer: nil, audience: nil).mint(subject: "u", ttlSeconds: 60, now: now)
        }
    }

    /// Cross-check with Python: PyJWT when installed, else the standard library's hmac.
    @Test func pythonAgrees() throws {
        let token = try TokenMinter(secret: secret, issuer: "iss", audience: "aud").mint(subject: "py", ttlSeconds: 600, now: now)
        let script = #"""
        import base64, hashlib, hmac, json, sys
        token, key = sys.argv[1], sys.argv[2]
        try:
            import jwt
            claims = jwt.decode(token, key, algorithms=["HS256"], audience="aud", issuer="iss",
                                options={"verify_exp": False})
        except ImportError:
            h, p, s = token.split(".")
            pad = lambda x: x + "=" * (-len(x) % 4)
            mac = hmac.new(key.encode(), (h + "." + p).encode(), hashlib.sha256).digest()
            assert hmac.compare_digest(mac, base64.urlsafe_b64decode(pad(s))), "bad signature"
            assert json.loads(base64.urlsafe_b64decode(pad(h))) == {"alg": "HS256", "typ": "JWT"}
            claims = json.loads(base64.urlsafe_b64decode(pad(p)))
        print(claims["sub"], claims["iss"], claims["aud"], claims["exp"] - claims["iat"])
        """#
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3", "-c", script, token, secret]
        let out = Pipe()
        process.standardOutput = out
        process.standardError = Pipe()
        do {
            try process.run()
        } catch {
            return  // no python3 here: nothing to compare against
        }
        process.waitUntilExit()
        guard process.terminationStatus != 127 else { return }
        let text = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        #expect(process.terminationStatus == 0)
        #expect(text == "py iss aud 600\n")
    }
}
