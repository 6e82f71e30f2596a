/// An IP network (`10.0.0.0/8`, `fd00::/64`, or one address): the relay's trusted proxies.
/// IPv4 networks match IPv4 clients (including IPv4-mapped IPv6 ones, which `AddressKey`
/// folds to IPv4); IPv6 networks match IPv6 clients.
public struct AddressPrefix: Hashable, Sendable, CustomStringConvertible {
    public let network: AddressKey
    public let bits: Int

    /// `bytes`: 4 or 16 raw address bytes; `bits`: the prefix length (nil: the whole address).
    /// An IPv4-mapped IPv6 network (::ffff:10.0.0.0/104) becomes its IPv4 network (/8).
    public init?(bytes: [UInt8], bits: Int?) {
        guard bytes.count == 4 || bytes.count == 16 else { return nil }
        let key = AddressKey(bytes)
        let mapped = bytes.count == 16 && key.isIPv4
        let width = key.isIPv4 ? 32 : 128
        var length = bits ?? (mapped ? 128 : width)
        if mapped {
            guard length >= 96 else { return nil }
            length -= 96
        }
        guard (0...width).contains(length) else { return nil }
        self.bits = length
        self.network = key.masked(prefixLength: length)
    }

    public func contains(_ address: AddressKey) -> Bool {
        address.isIPv4 == network.isIPv4 && address.masked(prefixLength: bits) == network
    }

    public var description: String { "\(network)/\(bits)" }
}

extension AddressKey {
    /// The address with all but its first `bits` bits cleared (IPv4: of 32, IPv6: of 128).
    public func masked(prefixLength bits: Int) -> AddressKey {
        isIPv4 ? maskedIPv4(bits) : masked(ipv6PrefixLength: bits)
    }
}
