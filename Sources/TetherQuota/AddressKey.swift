/// A client's raw IP address as a dictionary key: IPv4 (4 bytes) or IPv6 (16 bytes), held as
/// two integers and a length so hashing and comparing never touch the heap.
public struct AddressKey: Hashable, Sendable, CustomStringConvertible {
    /// Bytes 0..<8, big-endian (for IPv4: the 4 bytes in the low half).
    private var high: UInt64
    /// Bytes 8..<16, big-endian.
    private var low: UInt64
    /// Bytes given (saturating at 255), so a 4-byte and a 16-byte address never compare equal.
    private var length: UInt8

    /// The raw address bytes in network order. An IPv4-mapped IPv6 address (::ffff:a.b.c.d, as a
    /// dual-stack listener reports IPv4 clients) becomes the IPv4 address, so one client has one
    /// key whichever socket it came in on. Bytes past the 16th are ignored (they only count
    /// towards the length).
    public init(_ bytes: some Sequence<UInt8>) {
        var high: UInt64 = 0
        var low: UInt64 = 0
        var count = 0
        for byte in bytes {
            if count < 8 {
                high = high << 8 | UInt64(byte)
            } else if count < 16 {
                low = low << 8 | UInt64(byte)
            }
            count += 1
        }
        if count == 16 && high == 0 && low >> 32 == 0xFFFF {
            self.high = low & 0xFFFF_FFFF
            self.low = 0
            self.length = 4
        } else {
            self.high = high
            self.low = low
            self.length = UInt8(clamping: count)
        }
    }

    public var isIPv4: Bool { length == 4 }

    /// 127.0.0.0/8 (also as ::ffff:127.x.y.z, folded to IPv4) or ::1.
    public var isLoopback: Bool {
        switch length {
        case 4: return (high >> 24) & 0xFF == 127
        case 16: return high == 0 && low == 1
        default: return false
        }
    }

    /// For IPv6 keys, the address with all but the first `bits` bits cleared (e.g. 64: one key
    /// per /64, since a single IPv6 client usually controls a whole /64 and could otherwise rotate
    /// addresses to get a fresh bucket each time). Other keys are returned unchanged.
    public func masked(ipv6PrefixLength bits: Int) -> AddressKey {
        guard length == 16 else { return self }
        var key = self
        key.high &= Self.mask(bits)
        key.low &= Self.mask(bits - 64)
        return key
    }

    /// For IPv4 keys, the address with all but the first `bits` of its 32 bits cleared.
    func maskedIPv4(_ bits: Int) -> AddressKey {
        guard length == 4 else { return self }
        var key = self
        key.high &= Self.mask(bits) >> 32
        return key
    }

    /// The first `bits` bits of a UInt64 set (clamped to 0...64).
    private static func mask(_ bits: Int) -> UInt64 {
        if bits <= 0 { return 0 }
        if bits >= 64 { return .max }
        return ~(UInt64.max >> UInt64(bits))
    }

    /// Dotted quad for IPv4, eight uncompressed hex groups for IPv6: for logs.
    public var description: String {
        switch length {
        case 4:
            let octets: [UInt64] = [24, 16, 8, 0].map { shift in (high >> shift) & 0xFF }
            return octets.map { String($0) }.joined(separator: ".")
        case 16:
            let shifts: [UInt64] = [48, 32, 16, 0]
            let groups: [UInt64] = shifts.map { (high >> $0) & 0xFFFF } + shifts.map { (low >> $0) & 0xFFFF }
            return groups.map { String($0, radix: 16) }.joined(separator: ":")
        default:
            return "address(\(length) bytes)"
        }
    }
}
