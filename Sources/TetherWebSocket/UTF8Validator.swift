/// Incremental UTF-8 validator (Unicode Table 3-7 well-formed byte sequences).
///
/// Fed chunk by chunk as payload bytes arrive, so invalid text fails fast (RFC 6455 §8.1)
/// while a code point split across chunks/fragments is fine until the message ends. Rejects
/// overlong forms, surrogates (U+D800-DFFF) and anything above U+10FFFF. Three bytes of state.
/// Public only so that Benchmarks/ can measure it on its own.
public struct UTF8Validator: Sendable {
    /// Continuation bytes still expected for the current code point.
    private var needed: UInt8 = 0
    /// Allowed range of the next continuation byte (narrowed right after some lead bytes).
    private var lower: UInt8 = 0x80
    private var upper: UInt8 = 0xBF

    init() {}

    /// True when no code point is left unfinished.
    var isComplete: Bool { needed == 0 }

    /// Validates the next chunk; false as soon as an invalid byte is seen.
    mutating func validate(_ bytes: UnsafeRawBufferPointer) -> Bool {
        guard let base = bytes.baseAddress else { return true }
        let n = bytes.count
        var i = 0
        var needed = self.needed, lower = self.lower, upper = self.upper
        defer { self.needed = needed; self.lower = lower; self.upper = upper }
        while i < n {
            if needed == 0 {
                // ASCII fast path, 8 bytes at a time.
                while i + 8 <= n, base.loadUnaligned(fromByteOffset: i, as: UInt64.self) & 0x8080_8080_8080_8080 == 0 {
                    i += 8
                }
                if i >= n { break }
                let b = base.load(fromByteOffset: i, as: UInt8.self)
                i += 1
                switch b {
                case 0x00 ... 0x7F: continue
                case 0xC2 ... 0xDF: needed = 1; lower = 0x80; upper = 0xBF
                case 0xE0: needed = 2; lower = 0xA0; upper = 0xBF            // no overlongs
                case 0xE1 ... 0xEC, 0xEE ... 0xEF: needed = 2; lower = 0x80; upper = 0xBF
                case 0xED: needed = 2; lower = 0x80; upper = 0x9F            // no surrogates
                case 0xF0: needed = 3; lower = 0x90; upper = 0xBF            // no overlongs
                case 0xF1 ... 0xF3: needed = 3; lower = 0x80; upper = 0xBF
                case 0xF4: needed = 3; lower = 0x80; upper = 0x8F            // <= U+10FFFF
                default: return false                                        // 80-C1, F5-FF
                }
            } else {
                let b = base.load(fromByteOffset: i, as: UInt8.self)
                guard b >= lower, b <= upper else { return false }
                i += 1
                needed -= 1
                lower = 0x80
                upper = 0xBF
            }
        }
        return true
    }

    /// Validates a complete byte sequence.
    public static func isValid(_ bytes: UnsafeRawBufferPointer) -> Bool {
        var v = UTF8Validator()
        return v.validate(bytes) && v.isComplete
    }
}
