import Testing
import TetherAuth

@Suite struct TokenCacheTests {
    @Test func hitsMatchVerification() throws {
        let verifier = try TokenVerifier(configuration: hsConfig())
        let cache = TokenCache()
        let token = Substring(hs256(#"{"sub":"u","exp":\#(Int(now) + 100),"tier":"pro"}"#))
        let first = try cache.verify(token, with: verifier, now: now).get()
        #expect(cache.count == 1)
        let second = try cache.verify(token, with: verifier, now: now + 1).get()
        #expect(first == second)
        #expect(first == (try verifier.verify(token, now: now).get()))
        // Expiry (with the 60 s leeway) is enforced on hits, and the entry goes away.
        #expect(cache.verify(token, with: verifier, now: now + 161).failure == .expired)
        #expect(cache.count == 0)
    }

    @Test func failuresAreNotCached() throws {
        let verifier = try TokenVerifier(configuration: hsConfig())
        let cache = TokenCache()
        let forged = Substring(hs256(#"{"sub":"u","exp":\#(Int(now) + 100)}"#, key: "wrong"))
        #expect(cache.verify(forged, with: verifier, now: now).failure == .badSignature)
        #expect(cache.verify(forged, with: verifier, now: now).failure == .badSignature)
        #expect(cache.verify("", with: verifier, now: now).failure == .missing)
        #expect(cache.count == 0)
    }

    @Test func notBeforeRecheckedOnHits() throws {
        let verifier = try TokenVerifier(configuration: hsConfig())
        let cache = TokenCache()
        let token = Substring(hs256(#"{"sub":"u","exp":\#(Int(now) + 1000),"nbf":\#(Int(now) + 30)}"#))
        #expect(cache.verify(token, with: verifier, now: now).success != nil)
        // A clock that steps back is still held to nbf.
        #expect(cache.verify(token, with: verifier, now: now - 100).failure == .notYetValid)
    }

    @Test func newVerifierFlushes() throws {
        let cache = TokenCache()
        let token = Substring(hs256(#"{"sub":"u","exp":\#(Int(now) + 100)}"#))
        #expect(cache.verify(token, with: try TokenVerifier(configuration: hsConfig()), now: now).success != nil)
        // Keys rotated: the cached success must not survive.
        var rotated = AuthConfiguration()
        rotated.hs256Secret = "the rotated secret, 32 bytes long"
        #expect(cache.verify(token, with: try TokenVerifier(configuration: rotated), now: now).failure == .badSignature)
        // Policy changed: same.
        #expect(cache.verify(token, with: try TokenVerifier(configuration: hsConfig(audience: "tether")), now: now).failure == .wrongAudience)
    }

    @Test func bounded() throws {
        let verifier = try TokenVerifier(configuration: hsConfig())
        let cache = TokenCache(capacity: 8)
        for i in 0..<50 {
            let token = Substring(hs256(#"{"sub":"u\#(i)","exp":\#(Int(now) + 100)}"#))
            #expect(cache.verify(token, with: verifier, now: now).success?.subject == "u\(i)")
            #expect(cache.count <= 8)
        }
    }
}
