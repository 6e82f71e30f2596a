// Byte classes from RFC 9110 / 9112. Bitmask tests instead of lookup tables: no global
// initialisation and no memory loads on the hot path.

@usableFromInline let asciiCR: UInt8 = 0x0D
@usableFromInline let asciiLF: UInt8 = 0x0A
@usableFromInline let asciiSP: UInt8 = 0x20
@usableFromInline let asciiHT: UInt8 = 0x09
@usableFromInline let asciiColon: UInt8 = 0x3A

/// tchar = "!" / "#" / "$" / "%" / "&" / "'" / "*" / "+" / "-" / "." / "^" / "_" / "`" / "|" / "~" / DIGIT / ALPHA
@inline(__always) @usableFromInline
func isTokenChar(_ b: UInt8) -> Bool {
    if b < 64 { return (0x03FF_6CFA_0000_0000 as UInt64) &>> UInt64(b) & 1 != 0 }
    if b < 128 { return (0x57FF_FFFF_C7FF_FFFE as UInt64) &>> UInt64(b &- 64) & 1 != 0 }
    return false
}

/// field-vchar / SP / HTAB / obs-text: everything except CTLs (but HT) and DEL.
@inline(__always) @usableFromInline
func isFieldValueByte(_ b: UInt8) -> Bool {
    b >= 0x20 ? b != 0x7F : b == asciiHT
}

@inline(__always) @usableFromInline
func isOWS(_ b: UInt8) -> Bool { b == asciiSP || b == asciiHT }

@inline(__always) @usableFromInline
func asciiLower(_ b: UInt8) -> UInt8 { b &- 0x41 < 26 ? b | 0x20 : b }

@inline(__always)
func isDigit(_ b: UInt8) -> Bool { b &- 0x30 < 10 }

/// Value of a hex digit, or nil.
@inline(__always)
func hexValue(_ b: UInt8) -> Int? {
    if b &- 0x30 < 10 { return Int(b &- 0x30) }
    let l = b | 0x20
    if l &- 0x61 < 6 { return Int(l &- 0x61) + 10 }
    return nil
}

/// Case-insensitive comparison of raw bytes against a lowercase ASCII literal.
@inline(__always)
func bytesEqualLowercase(_ p: UnsafeBufferPointer<UInt8>, _ literal: StaticString) -> Bool {
    guard p.count == literal.utf8CodeUnitCount else { return false }
    let l = literal.utf8Start
    for i in 0..<p.count where asciiLower(p[i]) != l[i] { return false }
    return true
}

/// Case-insensitive ASCII comparison of two buffers.
@inline(__always)
func bytesEqualIgnoringCase(_ a: UnsafeBufferPointer<UInt8>, _ b: UnsafeBufferPointer<UInt8>) -> Bool {
    guard a.count == b.count else { return false }
    for i in 0..<a.count where asciiLower(a[i]) != asciiLower(b[i]) { return false }
    return true
}

@inline(__always)
func makeString(_ p: UnsafeBufferPointer<UInt8>, _ range: Range<Int>) -> String {
    String(decoding: UnsafeBufferPointer(rebasing: p[range]), as: UTF8.self)
}

/// Calls `body` with the UTF-8 bytes of `s`, without copying for native strings.
@inline(__always)
func withUTF8Bytes<R>(_ s: String, _ body: (UnsafeBufferPointer<UInt8>) -> R) -> R {
    if let r = s.utf8.withContiguousStorageIfAvailable(body) { return r }
    var copy = s
    return copy.withUTF8(body)
}

/// Calls `body` for every non-empty element of a comma-separated list, OWS-trimmed.
/// Returns early (true) as soon as `body` returns true.
@inline(__always)
func anyListElement(_ p: UnsafeBufferPointer<UInt8>, _ body: (UnsafeBufferPointer<UInt8>) -> Bool) -> Bool {
    var i = 0
    let n = p.count
    while i <= n {
        var end = i
        while end < n && p[end] != 0x2C { end += 1 }
        var s = i, e = end
        while s < e && isOWS(p[s]) { s += 1 }
        while e > s && isOWS(p[e - 1]) { e -= 1 }
        if e > s && body(UnsafeBufferPointer(rebasing: p[s..<e])) { return true }
        i = end + 1
    }
    return false
}

// Word-at-a-time scans (8 bytes per step) for the two loops that touch every head byte.
// Standard SWAR zero-byte tests; a word that may contain a hit is re-checked bytewise,
// so false positives only cost time.

private let lowBits: UInt64 = 0x0101_0101_0101_0101
private let highBits: UInt64 = 0x8080_8080_8080_8080

@inline(__always)
private func loadWord(_ p: UnsafeBufferPointer<UInt8>, _ i: Int) -> UInt64? {
    guard let base = p.baseAddress else { return nil }
    return UInt64(littleEndian: UnsafeRawPointer(base).loadUnaligned(fromByteOffset: i, as: UInt64.self))
}

/// Index of the first LF in p[from..<to], or -1.
@inline(__always)
func firstLF(in p: UnsafeBufferPointer<UInt8>, from: Int, to: Int) -> Int {
    var i = from
    while i + 8 <= to, let w = loadWord(p, i) {
        let x = w ^ (lowBits &* UInt64(asciiLF))
        let hit = (x &- lowBits) & ~x & highBits
        // The lowest flagged byte is always a real match (borrows only move upwards).
        if hit != 0 { return i + hit.trailingZeroBitCount >> 3 }
        i += 8
    }
    while i < to {
        if p[i] == asciiLF { return i }
        i += 1
    }
    return -1
}

/// Index of the first byte in p[from..<to] that is not allowed in a field value, or nil.
@inline(__always)
func firstInvalidValueByte(in p: UnsafeBufferPointer<UInt8>, from: Int, to: Int) -> Int? {
    var i = from
    while i + 8 <= to, let w = loadWord(p, i) {
        // Flags bytes < 0x20 (HT included: rechecked below) and bytes == 0x7F.
        let below = (w &- lowBits &* 0x20) & ~w & highBits
        let x = w ^ (lowBits &* 0x7F)
        let del = (x &- lowBits) & ~x & highBits
        if below | del != 0 {
            for j in i..<(i + 8) where !isFieldValueByte(p[j]) { return j }
        }
        i += 8
    }
    while i < to {
        if !isFieldValueByte(p[i]) { return i }
        i += 1
    }
    return nil
}
