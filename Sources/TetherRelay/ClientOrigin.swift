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

    /// Longest X-Forwarded-For walked (entries, from the right): a proxy chain is short.
    static let maxHops = 16

    /// Walks X-Forwarded-For from the right (entries a proxy appended itself) past every
    /// trusted proxy; the first other address is the client. Anything a client wrote lies to
    /// the left of what its first proxy appended, so it is never reached. An entry that is not
    /// an address stops the walk at the last trusted hop. X-Forwarded-Proto is taken from a
    /// trusted peer only.
    static func of(_ head: HTTPRequestHead, peer: SocketAddress?, tls: Bool, trusting proxies: [AddressPrefix]) -> ClientOrigin {
        guard !proxies.isEmpty, let peer, isTrusted(peer, proxies) else { return ClientOrigin(address: peer, tls: tls) }
        var origin = ClientOrigin(address: peer, tls: tls)
        switch head.headers.first(name: "x-forwarded-proto")?.lowercased() {
        case "https"?: origin.tls = true
        case "http"?: origin.tls = false
        default: break
        }
        var entries: [Substring] = []
        for value in head.headers["x-forwarded-for"] {
            entries += value.split(separator: ",", omittingEmptySubsequences: false)
        }
        for entry in entries.reversed().prefix(maxHops) {
            guard let address = parse(entry) else { break }
            origin.address = address
            if !isTrusted(address, proxies) { break }
        }
        return origin
    }

    static func isTrusted(_ address: SocketAddress, _ proxies: [AddressPrefix]) -> Bool {
        guard address.family != .unix else { return false }
        let key = AddressKey(address.bytes)
        return proxies.contains { $0.contains(key) }
    }

    /// `192.0.2.1`, `192.0.2.1:443`, `2001:db8::1`, `[2001:db8::1]:443`.
    static func parse(_ entry: Substring) -> SocketAddress? {
        var text = entry.trimmingCharacters(in: " \t")
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]") else { return nil }
            text = text[text.index(after: text.startIndex)..<close]
        } else if text.filter({ $0 == ":" }).count == 1, let colon = text.firstIndex(of: ":") {
            text = text[..<colon]
        }
        return SocketAddress(host: String(text), port: 0)
    }
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
