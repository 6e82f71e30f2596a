// Parsing of the two kinds of URL the bridge is configured with: the relay (ws/wss) and the
// local targets (http/https). Hand-rolled rather than Foundation.URL so that what is accepted
// is exactly what we check (no userinfo tricks, no silent normalisation).

/// Where the tunnel goes: `ws[s]://host[:port][/path][?query]`.
struct RelayEndpoint: Sendable, Equatable, CustomStringConvertible {
    var useTLS: Bool
    var host: String
    var port: Int
    /// Request target of the upgrade (path plus query), `/ws/tunnel` when the URL has no path.
    var target: String

    static let defaultPath = "/ws/tunnel"

    init(parsing string: String) throws(ConfigurationError) {
        let lower = string.lowercased()
        let rest: Substring
        if lower.hasPrefix("wss://") {
            useTLS = true
            rest = string.dropFirst(6)
        } else if lower.hasPrefix("ws://") {
            useTLS = false
            rest = string.dropFirst(5)
        } else if lower.hasPrefix("https://") {
            // Accepted as a convenience: the same relay address a browser would use.
            useTLS = true
            rest = string.dropFirst(8)
        } else if lower.hasPrefix("http://") {
            useTLS = false
            rest = string.dropFirst(7)
        } else {
            throw ConfigurationError("relay URL must start with ws:// or wss://: \(string)")
        }
        let authorityEnd = rest.firstIndex { $0 == "/" || $0 == "?" || $0 == "#" } ?? rest.endIndex
        let authority = try Authority(parsing: rest[..<authorityEnd], defaultPort: useTLS ? 443 : 80,
                                      what: "relay URL")
        host = authority.host
        port = authority.port
        var tail = rest[authorityEnd...]
        if let hash = tail.firstIndex(of: "#") { tail = tail[..<hash] }
        if tail.hasPrefix("/") && (tail.count == 1 || tail.dropFirst().first == "?") { tail = tail.dropFirst() }
        if tail.isEmpty || tail.first == "?" {
            // No path (or just "/"): the tunnel endpoint.
            target = Self.defaultPath + tail
        } else {
            target = String(tail)
        }
        guard target.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7F }) else {
            throw ConfigurationError("relay URL path must be printable ASCII: \(string)")
        }
    }

    /// `Host` header value: the port only when it is not the scheme's default.
    var hostHeader: String {
        let h = host.contains(":") ? "[\(host)]" : host
        return port == (useTLS ? 443 : 80) ? h : "\(h):\(port)"
    }

    /// For logs and the status file: no query, which might carry a token.
    var description: String {
        let path = target.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false).first ?? ""
        let h = host.contains(":") ? "[\(host)]" : host
        return "\(useTLS ? "wss" : "ws")://\(h):\(port)\(path)"
    }
}

/// A local service streams may be forwarded to: `http[s]://host[:port][/base-path]`.
struct LocalTarget: Sendable, Equatable, CustomStringConvertible {
    var useTLS: Bool
    var host: String
    var port: Int
    /// Path prefix without a trailing slash ("" for none); the stream's target is appended.
    var basePath: String

    init(parsing string: String) throws(ConfigurationError) {
        let lower = string.lowercased()
        let rest: Substring
        if lower.hasPrefix("http://") {
            useTLS = false
            rest = string.dropFirst(7)
        } else if lower.hasPrefix("https://") {
            useTLS = true
            rest = string.dropFirst(8)
        } else {
            throw ConfigurationError("target must be an http:// or https:// URL: \(string)")
        }
        let authorityEnd = rest.firstIndex { $0 == "/" || $0 == "?" || $0 == "#" } ?? rest.endIndex
        let authority = try Authority(parsing: rest[..<authorityEnd], defaultPort: useTLS ? 443 : 80, what: "target")
        host = authority.host
        port = authority.port
        let tail = rest[authorityEnd...]
        guard !tail.contains("?"), !tail.contains("#") else {
            throw ConfigurationError("target must not have a query or fragment: \(string)")
        }
        var path = String(tail)
        while path.hasSuffix("/") { path.removeLast() }
        guard path.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7F }) else {
            throw ConfigurationError("target path must be printable ASCII: \(string)")
        }
        basePath = path
    }

    /// What the local service must see as `Host` (Ollama refuses foreign hosts with 403).
    var hostHeader: String {
        let h = host.contains(":") ? "[\(host)]" : host
        return port == (useTLS ? 443 : 80) ? h : "\(h):\(port)"
    }

    /// Scheme and authority, always with the port: the prefix of every forwarded URL.
    var origin: String {
        let h = host.contains(":") ? "[\(host)]" : host
        return "\(useTLS ? "https" : "http")://\(h):\(port)"
    }

    var description: String { origin + basePath }
}

/// `host[:port]`, with `[v6]` literals. Userinfo (`user@host`) is rejected outright: it is the
/// classic way of making a URL look like it goes somewhere it doesn't.
private struct Authority {
    var host: String
    var port: Int

    init(parsing s: Substring, defaultPort: Int, what: String) throws(ConfigurationError) {
        guard !s.contains("@") else { throw ConfigurationError("\(what) must not contain userinfo (@)") }
        var hostPart: Substring
        var portPart: Substring?
        if s.first == "[" {
            guard let close = s.firstIndex(of: "]") else { throw ConfigurationError("\(what): unterminated [IPv6] host") }
            hostPart = s[s.index(after: s.startIndex)..<close]
            let after = s[s.index(after: close)...]
            if !after.isEmpty {
                guard after.first == ":" else { throw ConfigurationError("\(what): junk after ]") }
                portPart = after.dropFirst()
            }
        } else if let colon = s.lastIndex(of: ":") {
            hostPart = s[..<colon]
            portPart = s[s.index(after: colon)...]
        } else {
            hostPart = s
        }
        guard !hostPart.isEmpty else { throw ConfigurationError("\(what) has no host") }
        guard hostPart.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7F && $0 != UInt8(ascii: "/") }) else {
            throw ConfigurationError("\(what): invalid host \(hostPart)")
        }
        host = String(hostPart)
        if let portPart {
            guard let p = Int(portPart), (1...65535).contains(p) else {
                throw ConfigurationError("\(what): invalid port \(portPart)")
            }
            port = p
        } else {
            port = defaultPort
        }
    }
}

struct ConfigurationError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// Byte counts on the command line: `1048576`, `64KiB`, `8MiB`, `1MB` (powers of 1024 either way,
/// as the relay's flags read them).
enum ByteSize {
    static func parse(_ text: String) -> Int? {
        let s = text.trimmingWhitespace().lowercased()
        let digits = s.prefix { $0.isNumber }
        guard !digits.isEmpty, let value = Int(digits) else { return nil }
        let unit = s.dropFirst(digits.count).trimmingWhitespace()
        let multiplier: Int
        switch unit {
        case "", "b": multiplier = 1
        case "k", "kb", "kib": multiplier = 1 << 10
        case "m", "mb", "mib": multiplier = 1 << 20
        case "g", "gb", "gib": multiplier = 1 << 30
        default: return nil
        }
        let (product, overflow) = value.multipliedReportingOverflow(by: multiplier)
        return overflow ? nil : product
    }
}

extension StringProtocol {
    func trimmingWhitespace() -> String {
        let scalars = unicodeScalars
        guard let first = scalars.firstIndex(where: { !$0.properties.isWhitespace }),
              let last = scalars.lastIndex(where: { !$0.properties.isWhitespace }) else { return "" }
        return String(String.UnicodeScalarView(scalars[first...last]))
    }
}
