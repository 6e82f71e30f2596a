import Crypto

/// The name of a session (PROTOCOL.md §9): lowercase hex SHA-256 over a domain-separated,
/// length-prefixed encoding of issuer and subject, so no two (iss, sub) pairs collide by
/// concatenation ("a"+"bc" vs "ab"+"c").
public struct SessionID: Hashable, Sendable, CustomStringConvertible {
    /// 64 lowercase hex characters.
    public let hex: String

    /// First 8 digest bytes, big-endian; kept alongside `hex` so picking a worker costs nothing.
    public let shard: UInt64

    public static func derive(issuer: String, subject: String) -> SessionID {
        var hasher = SHA256()
        hasher.update(data: Array("tether-session-v1".utf8))
        hasher.update(data: [0])
        for field in [issuer, subject] {
            let bytes = Array(field.utf8)
            // Lengths beyond UInt32 cannot occur for header-sized tokens; clamp rather than trap.
            let n = UInt32(clamping: bytes.count)
            hasher.update(data: [UInt8(n >> 24), UInt8(truncatingIfNeeded: n >> 16),
                                 UInt8(truncatingIfNeeded: n >> 8), UInt8(truncatingIfNeeded: n)])
            hasher.update(data: bytes)
        }
        return SessionID(digest: Array(hasher.finalize()))
    }

    /// Accepts exactly 64 lowercase hex characters (the form `hex` produces).
    public init?(hex: String) {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(32)
        var high: UInt8? = nil
        var count = 0
        for c in hex.utf8 {
            let v: UInt8
            switch c {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): v = c &- UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): v = c &- UInt8(ascii: "a") &+ 10
            default: return nil
            }
            count += 1
            guard count <= 64 else { return nil }
            if let h = high {
                bytes.append(h << 4 | v)
                high = nil
            } else {
                high = v
            }
        }
        guard count == 64 else { return nil }
        self.init(digest: bytes)
    }

    private init(digest: [UInt8]) {
        let digits = Array("0123456789abcdef".utf8)
        var out: [UInt8] = []
        out.reserveCapacity(digest.count * 2)
        var shard: UInt64 = 0
        for (i, b) in digest.enumerated() {
            out.append(digits[Int(b >> 4)])
            out.append(digits[Int(b & 0x0f)])
            if i < 8 { shard = shard << 8 | UInt64(b) }
        }
        self.hex = String(decoding: out, as: UTF8.self)
        self.shard = shard
    }

    public var description: String { hex }
}
