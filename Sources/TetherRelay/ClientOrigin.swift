import TetherHTTP
import TetherIO
import TetherQuota

/// Where a request comes from: the peer, or, when the peer is one of the operator's trusted
/// proxies (`limits.trusted_proxies`), the client that proxy names. Per-address limits, audit
/// lines and the X-Forwarded-* fields the bridge sees all use it. Computed per request: a
/// proxy's keep-alive connection carries many clients.
struct ClientOrigin {
    var address: SocketAddress?
    var tls: Bool
    /// The address came from X-Forwarded-For, not from the socket: never exempt as loopback.
    var forwarded = false

    /// Entries of X-Forwarded-For walked, from the right: a proxy chain is short.
    static let maxHops = 16

    /// Walks X-Forwarded-For from the right (entries a proxy appended itself) past every
    /// trusted proxy; the first other address is the client. Anything a client wrote lies to
    /// the left of what its first proxy appended, so it is never reached, as long as no
    /// client sits inside a trusted network. An entry that is not an address stops the walk at
    /// the last trusted hop. X-Forwarded-Proto is taken from a trusted peer only (the proxy
    /// must set it, not pass the client's on).
    static func of(_ head: HTTPRequestHead, peer: SocketAddress?, tls: Bool, trusting proxies: [AddressPrefix]) -> ClientOrigin {
        guard !proxies.isEmpty, let peer, isTrusted(peer, proxies) else { return ClientOrigin(address: peer, tls: tls) }
        var origin = ClientOrigin(address: peer, tls: tls)
        switch head.headers.first(name: "x-forwarded-proto")?.lowercased() {
        case "https"?: origin.tls = true
        case "http"?: origin.tls = false
        default: break
        }
        // Backwards, without splitting whole values: a long header costs at most maxHops entries.
        var hops = 0
        for value in head.headers["x-forwarded-for"].reversed() {
            var rest = Substring(value)
            while hops < maxHops {
                let entry: Substring
                if let comma = rest.lastIndex(of: ",") {
                    entry = rest[rest.index(after: comma)...]
                    rest = rest[..<comma]
                } else {
                    entry = rest
                    rest = rest[rest.endIndex...]
                }
                hops += 1
                guard let address = parse(entry) else { return origin }
                origin.address = address
                origin.forwarded = true
                if !isTrusted(address, proxies) { return origin }
                if rest.isEmpty { break }
            }
            if hops >= maxHops { break }
        }
        return origin
    }

    static func isTrusted(_ address: SocketAddress, _ proxies: [AddressPrefix]) -> Bool {
        guard address.family != .unix else { return false }
        let key = AddressKey(address.bytes)
        return proxies.contains { $0.contains(key) }
    }

    /// `192.0.2.1`, `192.0.2.1:443`, `2001:db8::1`, `[2001:db8::1]:443`; numeric only (no
    /// names such as localhost).
    static func parse(_ entry: Substring) -> SocketAddress? {
        var text = entry.trimmingCharacters(in: " \t")
        if text.first == "[" {
            guard let close = text.firstIndex(of: "]") else { return nil }
            let after = text[text.index(after: close)...]
            guard after.isEmpty || (after.first == ":" && after.dropFirst().allSatisfy(\.isASCIIDigit)) else { return nil }
            text = text[text.index(after: text.startIndex)..<close]
        } else if let colon = text.firstIndex(of: ":"), text[text.index(after: colon)...].firstIndex(of: ":") == nil {
            guard text[text.index(after: colon)...].allSatisfy(\.isASCIIDigit) else { return nil }
            text = text[..<colon]
        }
        guard !text.isEmpty, text.allSatisfy({ $0.isHexDigit || $0 == "." || $0 == ":" }) else { return nil }
        return SocketAddress(host: String(text), port: 0)
    }
}

extension Character {
    fileprivate var isASCIIDigit: Bool { ("0"..."9").contains(self) }
}

extension Substring {
    fileprivate func trimmingCharacters(in set: String) -> Substring {
        var s = self
        while let first = s.first, set.contains(first) { s = s.dropFirst() }
        while let last = s.last, set.contains(last) { s = s.dropLast() }
        return s
    }
}

extension AddressPrefix {
    /// `10.0.0.0/8`, `fd00::/64` or a bare address; nil when it is neither.
    public static func parse(_ text: String) -> AddressPrefix? {
        let parts = text.split(separator: "/", maxSplits: 1, omittingEmptySubsequences: false)
        guard let host = parts.first, !host.isEmpty, let address = SocketAddress(host: String(host), port: 0),
              address.family != .unix else { return nil }
        var bits: Int?
        if parts.count == 2 {
            guard let n = Int(parts[1]), String(n) == parts[1] else { return nil }
            bits = n
        }
        return AddressPrefix(bytes: address.bytes, bits: bits)
    }
}
