/// SHA-1 (RFC 3174).
///
/// Exists because RFC 6455 mandates SHA-1 for `Sec-WebSocket-Accept` and this module may not
/// depend on Foundation or a crypto library. SHA-1 is broken for collision resistance: do not
/// use it for anything security-sensitive.
public struct SHA1: Sendable {
    public static let digestSize = 20

    private var h0: UInt32 = 0x6745_2301
    private var h1: UInt32 = 0xEFCD_AB89
    private var h2: UInt32 = 0x98BA_DCFE
    private var h3: UInt32 = 0x1032_5476
    private var h4: UInt32 = 0xC3D2_E1F0
    /// Partial block, kept inline (4 × 16 bytes) so hashing never allocates until `finalize`.
    private var block: (UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0, 0, 0, 0, 0)
    private var blockCount = 0
    private var totalBytes: UInt64 = 0

    public init() {}

    /// One-shot digest (20 bytes).
    public static func hash(_ bytes: UnsafeRawBufferPointer) -> [UInt8] {
        var h = SHA1()
        h.update(bytes)
        return h.finalize()
    }

    /// One-shot digest (20 bytes) of any byte collection (e.g. `[UInt8]`, `"abc".utf8`).
    public static func hash<C: Collection>(_ bytes: C) -> [UInt8] where C.Element == UInt8 {
        var h = SHA1()
        h.update(bytes)
        return h.finalize()
    }

    public mutating func update<C: Collection>(_ bytes: C) where C.Element == UInt8 {
        let done: Void? = bytes.withContiguousStorageIfAvailable { update(UnsafeRawBufferPointer($0)) }
        if done == nil {
            let copy = Array(bytes)
            copy.withUnsafeBytes { update($0) }
        }
    }

    public mutating func update(_ bytes: UnsafeRawBufferPointer) {
        guard let base = bytes.baseAddress, bytes.count > 0 else { return }
        totalBytes &+= UInt64(bytes.count)
        var pos = 0
        let n = bytes.count
        if blockCount > 0 {
            let take = min(64 - blockCount, n)
            withUnsafeMutableBytes(of: &block) { b in
                b.baseAddress?.advanced(by: blockCount).copyMemory(from: base, byteCount: take)
            }
            blockCount += take
            pos = take
            if blockCount < 64 { return }
            let full = block
            withUnsafeBytes(of: full) { compress($0.baseAddress.unsafelyUnwrapped) }
            blockCount = 0
        }
        // Full blocks straight from the input: no copy.
        while n - pos >= 64 {
            compress(base + pos)
            pos += 64
        }
        if pos < n {
            let rest = n - pos
            withUnsafeMutableBytes(of: &block) { b in
                b.baseAddress?.copyMemory(from: base + pos, byteCount: rest)
            }
            blockCount = rest
        }
    }

    /// Pads, processes the final block(s) and returns the 20-byte digest. Start a new `SHA1`
    /// for the next message.
    public mutating func finalize() -> [UInt8] {
        let bitLength = totalBytes &* 8
        // Padding: 0x80, zeros up to 56 mod 64, then the 64-bit big-endian bit length.
        var pad: (UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0, 0, 0, 0, 0, 0)
        let padCount = (blockCount < 56 ? 56 : 120) - blockCount
        withUnsafeMutableBytes(of: &pad) { p in
            p[0] = 0x80
            p.storeBytes(of: bitLength.bigEndian, toByteOffset: padCount, as: UInt64.self)
        }
        let savedTotal = totalBytes
        withUnsafeBytes(of: &pad) { update(UnsafeRawBufferPointer(rebasing: $0[0 ..< padCount + 8])) }
        totalBytes = savedTotal
        var out = [UInt8](repeating: 0, count: 20)
        for (i, word) in [h0, h1, h2, h3, h4].enumerated() {
            out[i * 4] = UInt8(truncatingIfNeeded: word >> 24)
            out[i * 4 + 1] = UInt8(truncatingIfNeeded: word >> 16)
            out[i * 4 + 2] = UInt8(truncatingIfNeeded: word >> 8)
            out[i * 4 + 3] = UInt8(truncatingIfNeeded: word)
        }
        return out
    }

    private mutating func compress(_ p: UnsafeRawPointer) {
        // 16-word rolling message schedule instead of 80 words: keeps it on the stack.
        var w: (UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0, 0, 0, 0, 0)
        var a = h0, b = h1, c = h2, d = h3, e = h4
        withUnsafeMutableBytes(of: &w) { raw in
            let w = raw.bindMemory(to: UInt32.self)
            for i in 0 ..< 16 {
                w[i] = UInt32(bigEndian: p.loadUnaligned(fromByteOffset: i * 4, as: UInt32.self))
            }
            for i in 0 ..< 80 {
                let wi: UInt32
                if i < 16 {
                    wi = w[i]
                } else {
                    let x = w[(i - 3) & 15] ^ w[(i - 8) & 15] ^ w[(i - 14) & 15] ^ w[i & 15]
                    wi = (x << 1) | (x >> 31)
                    w[i & 15] = wi
                }
                let f: UInt32, k: UInt32
                switch i {
                case 0 ..< 20: f = (b & c) | (~b & d); k = 0x5A82_7999
                case 20 ..< 40: f = b ^ c ^ d; k = 0x6ED9_EBA1
                case 40 ..< 60: f = (b & c) | (b & d) | (c & d); k = 0x8F1B_BCDC
                default: f = b ^ c ^ d; k = 0xCA62_C1D6
                }
                let t = ((a << 5) | (a >> 27)) &+ f &+ e &+ k &+ wi
                e = d
                d = c
                c = (b << 30) | (b >> 2)
                b = a
                a = t
            }
        }
        h0 &+= a
        h1 &+= b
        h2 &+= c
        h3 &+= d
        h4 &+= e
    }
}
