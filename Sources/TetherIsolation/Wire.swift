/// Big-endian writer and bounds-checked reader for the relay ↔ session-worker messages. Every
/// read is checked: a worker runs untrusted code, so what it sends is parsed like input from
/// the network.
struct WireWriter {
    var bytes: [UInt8] = []

    mutating func u8(_ v: UInt8) { bytes.append(v) }
    mutating func bool(_ v: Bool) { bytes.append(v ? 1 : 0) }

    mutating func u16(_ v: UInt16) {
        bytes.append(UInt8(truncatingIfNeeded: v >> 8))
        bytes.append(UInt8(truncatingIfNeeded: v))
    }

    mutating func u32(_ v: UInt32) {
        for shift in stride(from: 24, through: 0, by: -8) { bytes.append(UInt8(truncatingIfNeeded: v >> UInt32(shift))) }
    }

    mutating func u64(_ v: UInt64) {
        for shift in stride(from: 56, through: 0, by: -8) { bytes.append(UInt8(truncatingIfNeeded: v >> UInt64(shift))) }
    }

    /// Non-negative Int as u64 (negative values are clamped to 0: nothing encoded is negative).
    mutating func count(_ v: Int) { u64(UInt64(max(0, v))) }

    mutating func double(_ v: Double) { u64(v.bitPattern) }

    /// u16 length + UTF-8 (cut at 65,535 bytes, on a character boundary).
    mutating func string(_ s: String) {
        var utf8 = Array(s.utf8)
        if utf8.count > 65_535 {
            var cut = 65_535
            while cut > 0 && utf8[cut] & 0xC0 == 0x80 { cut -= 1 }
            utf8 = Array(utf8[..<cut])
        }
        u16(UInt16(utf8.count))
        bytes += utf8
    }

    /// u32 length + bytes.
    mutating func blob(_ b: [UInt8]) {
        u32(UInt32(clamping: b.count))
        bytes += b
    }
}

struct WireReader {
    private let bytes: ArraySlice<UInt8>
    private var position: Int

    init(_ bytes: ArraySlice<UInt8>) {
        self.bytes = bytes
        position = bytes.startIndex
    }

    var remaining: Int { bytes.endIndex - position }

    mutating func u8() throws(WireError) -> UInt8 {
        guard remaining >= 1 else { throw .truncated }
        defer { position += 1 }
        return bytes[position]
    }

    mutating func bool() throws(WireError) -> Bool {
        switch try u8() {
        case 0: return false
        case 1: return true
        default: throw .invalid("bad boolean")
        }
    }

    mutating func u16() throws(WireError) -> UInt16 {
        UInt16(try u8()) << 8 | UInt16(try u8())
    }

    mutating func u32() throws(WireError) -> UInt32 {
        var v: UInt32 = 0
        for _ in 0..<4 { v = v << 8 | UInt32(try u8()) }
        return v
    }

    mutating func u64() throws(WireError) -> UInt64 {
        var v: UInt64 = 0
        for _ in 0..<8 { v = v << 8 | UInt64(try u8()) }
        return v
    }

    /// A u64 that must fit `range` (sizes, durations): refuses absurd values early.
    mutating func count(_ range: ClosedRange<Int> = 0...Int(Int64.max)) throws(WireError) -> Int {
        let v = try u64()
        guard v <= UInt64(Int64.max), range.contains(Int(v)) else { throw .invalid("value \(v) out of range") }
        return Int(v)
    }

    mutating func double() throws(WireError) -> Double {
        let d = Double(bitPattern: try u64())
        guard d.isFinite else { throw .invalid("non-finite number") }
        return d
    }

    mutating func string(maxBytes: Int = 4096) throws(WireError) -> String {
        let n = Int(try u16())
        guard n <= maxBytes else { throw .invalid("string of \(n) bytes") }
        let raw = try take(n)
        guard let s = String(validating: raw, as: UTF8.self) else { throw .invalid("string is not UTF-8") }
        return s
    }

    mutating func blob(maxBytes: Int) throws(WireError) -> ArraySlice<UInt8> {
        let n = Int(try u32())
        guard n <= maxBytes else { throw .invalid("blob of \(n) bytes") }
        return try take(n)
    }

    mutating func take(_ n: Int) throws(WireError) -> ArraySlice<UInt8> {
        guard n >= 0, remaining >= n else { throw .truncated }
        defer { position += n }
        return bytes[position ..< position + n]
    }

    func expectEnd() throws(WireError) {
        guard remaining == 0 else { throw .invalid("\(remaining) trailing bytes") }
    }
}

public enum WireError: Error, Sendable, Equatable, CustomStringConvertible {
    case truncated
    case badMagic
    case unsupportedVersion(UInt8)
    case tooLarge(Int)
    case invalid(String)

    public var description: String {
        switch self {
        case .truncated: return "message truncated"
        case .badMagic: return "not a Tether worker preamble"
        case .unsupportedVersion(let v): return "preamble version \(v) not supported"
        case .tooLarge(let n): return "message of \(n) bytes is too large"
        case .invalid(let why): return why
        }
    }
}
