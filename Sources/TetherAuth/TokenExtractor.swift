import TetherHTTP

/// Where a request's token was found.
public enum TokenSource: Sendable {
    case header
    case query
    case subprotocol
}

/// Finds the bearer token in a request head (PROTOCOL.md §1, §8).
public enum TokenExtractor {
    /// The `Sec-WebSocket-Protocol` entry prefix that carries a token (browsers cannot set headers).
    public static let subprotocolPrefix = "token-"

    /// Authorization: Bearer, then ?token= (percent-decoded), then a Sec-WebSocket-Protocol entry
    /// "token-<jwt>" (only when allowSubprotocol). Empty values are skipped.
    /// Scans bytes, never Characters: this runs on every request, over tokens of ~500 bytes.
    public static func token(in head: HTTPRequestHead, allowSubprotocol: Bool) -> (token: Substring, source: TokenSource)? {
        if let value = head.headers.first(name: "Authorization"), let token = bearerToken(value) {
            return (token, .header)
        }
        if let query = head.query, let token = queryToken(query) {
            return (token, .query)
        }
        if allowSubprotocol {
            for value in head.headers["Sec-WebSocket-Protocol"] {
                for entry in fields(Substring(value), separator: UInt8(ascii: ",")) {
                    let entry = trimmingOWS(entry)
                    if entry.utf8.starts(with: subprotocolPrefix.utf8) {
                        let token = entry[entry.utf8.index(entry.startIndex, offsetBy: subprotocolPrefix.utf8.count)...]
                        if !token.isEmpty { return (token, .subprotocol) }
                    }
                }
            }
        }
        return nil
    }

    /// The target with any `token` query parameter removed (others kept in order; "?" dropped
    /// if nothing is left), so the token is not forwarded to the local service.
    public static func removingToken(fromTarget target: String) -> String {
        guard let q = target.utf8.firstIndex(of: UInt8(ascii: "?")) else { return target }
        let query = target[target.utf8.index(after: q)...]
        let params = fields(query, separator: UInt8(ascii: "&")).filter { !$0.isEmpty }
        guard params.contains(where: isTokenParameter) else { return target }
        let kept = params.filter { !isTokenParameter($0) }
        let path = target[..<q]
        return kept.isEmpty ? String(path) : String(path) + "?" + kept.joined(separator: "&")
    }

    /// RFC 6750 §2.1: scheme is case-insensitive, then at least one space, then the token.
    static func bearerToken(_ value: String) -> Substring? {
        let value = trimmingOWS(Substring(value))
        let scheme = "bearer"
        guard value.utf8.count > scheme.utf8.count,
              value.utf8.prefix(scheme.utf8.count).elementsEqual(scheme.utf8, by: { asciiLower($0) == $1 })
        else { return nil }
        let rest = value[value.utf8.index(value.startIndex, offsetBy: scheme.utf8.count)...]
        guard let first = rest.utf8.first, first == UInt8(ascii: " ") || first == UInt8(ascii: "\t") else { return nil }
        let token = trimmingOWS(rest)
        return token.isEmpty ? nil : token
    }

    /// The first non-empty `token` parameter, percent-decoded. An invalid escape is kept raw so
    /// verification reports the token as malformed rather than missing.
    static func queryToken(_ query: String) -> Substring? {
        for param in fields(Substring(query), separator: UInt8(ascii: "&")) where isTokenParameter(param) {
            guard let eq = param.utf8.firstIndex(of: UInt8(ascii: "=")) else { continue }
            let raw = param[param.utf8.index(after: eq)...]
            guard !raw.isEmpty else { continue }
            guard raw.utf8.contains(UInt8(ascii: "%")) else { return raw }
            return percentDecoded(raw).map { Substring($0) } ?? raw
        }
        return nil
    }

    /// The pieces between ASCII separators (empty ones included), sliced at byte positions,
    /// which are always character boundaries for an ASCII separator.
    static func fields(_ s: Substring, separator: UInt8) -> [Substring] {
        var out: [Substring] = []
        var start = s.startIndex
        var i = s.utf8.startIndex
        while i < s.utf8.endIndex {
            if s.utf8[i] == separator {
                out.append(s[start..<i])
                start = s.utf8.index(after: i)
            }
            i = s.utf8.index(after: i)
        }
        out.append(s[start...])
        return out
    }

    /// Names compare after percent-decoding, so that extraction and removal always agree.
    private static func isTokenParameter(_ param: Substring) -> Bool {
        let name = param.utf8.firstIndex(of: UInt8(ascii: "=")).map { param[..<$0] } ?? param
        if name.utf8.elementsEqual("token".utf8) { return true }
        return name.utf8.contains(UInt8(ascii: "%")) && percentDecoded(name) == "token"
    }

    /// RFC 3986 percent-decoding; nil on a bad escape. "+" stays "+" (JWTs never contain
    /// spaces, and a literal "+" is still a malformed token); invalid UTF-8 becomes U+FFFD.
    static func percentDecoded(_ s: Substring) -> String? {
        var out: [UInt8] = []
        out.reserveCapacity(s.utf8.count)
        var it = s.utf8.makeIterator()
        while let c = it.next() {
            guard c == UInt8(ascii: "%") else {
                out.append(c)
                continue
            }
            guard let h = it.next().flatMap(hexValue), let l = it.next().flatMap(hexValue) else { return nil }
            out.append(h << 4 | l)
        }
        return String(decoding: out, as: UTF8.self)
    }

    private static func hexValue(_ c: UInt8) -> UInt8? {
        switch c {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return c &- UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): return c &- UInt8(ascii: "a") &+ 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): return c &- UInt8(ascii: "A") &+ 10
        default: return nil
        }
    }

    private static func trimmingOWS(_ s: Substring) -> Substring {
        var lower = s.utf8.startIndex
        var upper = s.utf8.endIndex
        while lower < upper, isOWS(s.utf8[lower]) { lower = s.utf8.index(after: lower) }
        while lower < upper, isOWS(s.utf8[s.utf8.index(before: upper)]) { upper = s.utf8.index(before: upper) }
        return s[lower..<upper]
    }

    private static func isOWS(_ c: UInt8) -> Bool { c == UInt8(ascii: " ") || c == UInt8(ascii: "\t") }

    private static func asciiLower(_ c: UInt8) -> UInt8 {
        (c >= UInt8(ascii: "A") && c <= UInt8(ascii: "Z")) ? c | 0x20 : c
    }
}
