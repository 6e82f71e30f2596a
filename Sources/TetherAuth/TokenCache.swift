import Crypto

/// Remembers tokens that verified, so a client's repeated requests skip JSON decoding and the
/// signature check (a cold HS256 verification is tens of microseconds, mostly JSON decoding;
/// a hit is about one SHA-256 of the token). Expiry and `nbf` are re-checked on every hit.
///
/// Not thread-safe by design: keep one per event loop, no locks on the hot path.
public final class TokenCache {
    private struct Entry {
        let identity: Identity
        let notBefore: Double?
    }

    /// SHA-256 of the token: fixed-size keys, and the tokens themselves are not kept around.
    private struct Key: Hashable {
        let a, b, c, d: UInt64
    }

    private let capacity: Int
    private var entries: [Key: Entry] = [:]
    /// Held strongly so that a replacement verifier (new keys or policy) is never mistaken for
    /// this one; entries made under another verifier are dropped.
    private var owner: TokenVerifier?

    public init(capacity: Int = 1024) {
        self.capacity = max(1, capacity)
    }

    public var count: Int { entries.count }

    /// Same answers as `verifier.verify(token, now:)`; only successes are cached.
    public func verify(_ token: Substring, with verifier: TokenVerifier, now: Double) -> Result<Identity, AuthFailure> {
        if owner !== verifier {
            entries.removeAll(keepingCapacity: true)
            owner = verifier
        }
        // Missing and oversized tokens are not worth hashing.
        guard !token.isEmpty, token.utf8.count <= TokenVerifier.maxTokenBytes else {
            return verifier.verify(token, now: now)
        }
        let key = Self.key(token)
        if let entry = entries[key] {
            guard now < entry.identity.expiresAt + verifier.leeway else {
                entries[key] = nil
                return .failure(.expired)
            }
            if let nbf = entry.notBefore, now + verifier.leeway < nbf { return .failure(.notYetValid) }
            return .success(entry.identity)
        }
        switch verifier.verifyDetailed(token, now: now) {
        case .success(let verified):
            if entries.count >= capacity {
                // Evict an arbitrary entry (hash order); cheap, and good enough when the
                // working set is one token per active client.
                entries.remove(at: entries.startIndex)
            }
            entries[key] = Entry(identity: verified.identity, notBefore: verified.notBefore)
            return .success(verified.identity)
        case .failure(let failure):
            return .failure(failure)
        }
    }

    public func removeAll() {
        entries.removeAll()
    }

    private static func key(_ token: Substring) -> Key {
        var hasher = SHA256()
        var token = token
        token.withUTF8 { hasher.update(bufferPointer: UnsafeRawBufferPointer($0)) }
        var k: (UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0)
        for (i, byte) in hasher.finalize().enumerated() {
            switch i >> 3 {
            case 0: k.0 = k.0 << 8 | UInt64(byte)
            case 1: k.1 = k.1 << 8 | UInt64(byte)
            case 2: k.2 = k.2 << 8 | UInt64(byte)
            default: k.3 = k.3 << 8 | UInt64(byte)
            }
        }
        return Key(a: k.0, b: k.1, c: k.2, d: k.3)
    }
}
