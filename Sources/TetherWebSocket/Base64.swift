/// Base64 (RFC 4648 §4) and base64url (§5), without Foundation.
///
/// Decoding is strict so that it can double as validation (e.g. `Sec-WebSocket-Key`): no
/// whitespace, no characters outside the alphabet, canonical padding and zero pad bits.
public enum Base64 {
    private static let standard: [UInt8] = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)
    private static let url: [UInt8] = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".utf8)

    /// Encodes with `=` padding (standard alphabet), or unpadded base64url when `urlSafe`.
    public static func encode<C: Collection>(_ bytes: C, urlSafe: Bool = false) -> String where C.Element == UInt8 {
        if let s = bytes.withContiguousStorageIfAvailable({ encode(UnsafeRawBufferPointer($0), urlSafe: urlSafe) }) {
            return s
        }
        return Array(bytes).withUnsafeBytes { encode($0, urlSafe: urlSafe) }
    }

    public static func encode(_ bytes: UnsafeRawBufferPointer, urlSafe: Bool = false) -> String {
        let table = urlSafe ? url : standard
        let n = bytes.count
        let outCount = urlSafe ? (n * 4 + 2) / 3 : (n + 2) / 3 * 4
        let out = [UInt8](unsafeUninitializedCapacity: outCount) { out, initialized in
            var o = 0
            var i = 0
            while i + 3 <= n {
                let v = UInt32(bytes[i]) << 16 | UInt32(bytes[i + 1]) << 8 | UInt32(bytes[i + 2])
                out[o] = table[Int(v >> 18)]
                out[o + 1] = table[Int((v >> 12) & 63)]
                out[o + 2] = table[Int((v >> 6) & 63)]
                out[o + 3] = table[Int(v & 63)]
                i += 3
                o += 4
            }
            let rest = n - i
            if rest > 0 {
                let v = UInt32(bytes[i]) << 16 | (rest == 2 ? UInt32(bytes[i + 1]) << 8 : 0)
                out[o] = table[Int(v >> 18)]
                out[o + 1] = table[Int((v >> 12) & 63)]
                o += 2
                if rest == 2 {
                    out[o] = table[Int((v >> 6) & 63)]
                    o += 1
                }
                if !urlSafe {
                    while o < outCount {
                        out[o] = UInt8(ascii: "=")
                        o += 1
                    }
                }
            }
            initialized = o
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// Strict decode. Standard alphabet requires padding; base64url accepts it optionally.
    /// Returns nil for anything malformed.
    public static func decode(_ string: String, urlSafe: Bool = false) -> [UInt8]? {
        var s = string
        return s.withUTF8 { decode(UnsafeRawBufferPointer($0), urlSafe: urlSafe) }
    }

    public static func decode(_ chars: UnsafeRawBufferPointer, urlSafe: Bool = false) -> [UInt8]? {
        var n = chars.count
        // Strip up to two '=' and check the resulting length is a legal unpadded length.
        var padding = 0
        while padding < 2, n > 0, chars[n - 1] == UInt8(ascii: "=") {
            n -= 1
            padding += 1
        }
        if !urlSafe || padding > 0 {
            guard chars.count % 4 == 0 else { return nil }
        }
        let rest = n % 4
        guard rest != 1 else { return nil }
        let outCount = n / 4 * 3 + (rest == 0 ? 0 : rest - 1)
        var failed = false
        let out = [UInt8](unsafeUninitializedCapacity: outCount) { out, initialized in
            var acc: UInt32 = 0
            var bits = 0
            var o = 0
            for i in 0 ..< n {
                let v = value(of: chars[i], urlSafe: urlSafe)
                if v == 0xFF { failed = true; return }
                acc = (acc << 6) | UInt32(v)
                bits += 6
                if bits >= 8 {
                    bits -= 8
                    out[o] = UInt8(truncatingIfNeeded: acc >> UInt32(bits))
                    o += 1
                }
            }
            // Non-zero leftover bits mean a non-canonical encoding.
            if bits > 0, acc & ((1 << UInt32(bits)) - 1) != 0 { failed = true }
            initialized = o
        }
        return failed ? nil : out
    }

    @inline(__always)
    private static func value(of c: UInt8, urlSafe: Bool) -> UInt8 {
        switch c {
        case UInt8(ascii: "A") ... UInt8(ascii: "Z"): return c &- UInt8(ascii: "A")
        case UInt8(ascii: "a") ... UInt8(ascii: "z"): return c &- UInt8(ascii: "a") &+ 26
        case UInt8(ascii: "0") ... UInt8(ascii: "9"): return c &- UInt8(ascii: "0") &+ 52
        case UInt8(ascii: "+"): return urlSafe ? 0xFF : 62
        case UInt8(ascii: "/"): return urlSafe ? 0xFF : 63
        case UInt8(ascii: "-"): return urlSafe ? 62 : 0xFF
        case UInt8(ascii: "_"): return urlSafe ? 63 : 0xFF
        default: return 0xFF
        }
    }
}
