import TetherHTTP
import TetherTunnel

/// Decides where a stream may go. The bridge is never an open proxy: the only destinations are
/// the configured targets, and the relay can choose the path, never the host.
struct Router: Sendable {
    /// Configured targets; the first one is the default (and, in `tether.v1`, the only one an
    /// origin-form OPEN can reach).
    let targets: [LocalTarget]
    /// The default target's base path and `Host` value (computed once, not per stream).
    private let basePath: String
    private let hostHeader: String

    init(targets: [LocalTarget]) {
        self.targets = targets
        basePath = targets.first?.basePath ?? ""
        hostHeader = targets.first?.hostHeader ?? ""
    }

    struct Route: Sendable {
        var target: LocalTarget
        /// Request target sent to the local service: the target's base path + the stream's target.
        var path: String
        /// The target's `Host` value.
        var hostHeader: String
    }

    enum Decision: Sendable {
        case forward(Route)
        case refuse(String)
    }

    func route(method: String, target: String) -> Decision {
        guard let target0 = targets.first else { return .refuse("no local target configured") }
        guard !method.isEmpty, method.utf8.allSatisfy(Self.isTokenByte) else { return .refuse("invalid method") }
        // CONNECT would make us a TCP relay to wherever its authority points.
        guard !HopByHop.equalsIgnoringCase(method, "connect") else { return .refuse("CONNECT is not forwarded") }
        // Origin-form only: absolute-form (`http://evil/`), authority-form (`evil:443`) and
        // asterisk-form (`*`) all name a destination of their own.
        guard target.utf8.first == UInt8(ascii: "/") else {
            return .refuse("request target must be origin-form (start with /)")
        }
        // `//host/path` is a network-path reference: URL parsers read `host` as the authority.
        guard !target.hasPrefix("//") else { return .refuse("request target must not start with //") }
        // Printable ASCII only; no fragment (never sent by HTTP clients) and no backslash,
        // which some URL parsers treat as a path separator.
        for b in target.utf8 where b <= 0x20 || b >= 0x7F || b == UInt8(ascii: "#") || b == UInt8(ascii: "\\") {
            return .refuse("request target contains a forbidden character")
        }
        return .forward(Route(target: target0, path: basePath.isEmpty ? target : basePath + target, hostHeader: hostHeader))
    }

    private static func isTokenByte(_ b: UInt8) -> Bool {
        switch b {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"):
            return true
        default:
            return "!#$%&'*+-.^_`|~".utf8.contains(b)
        }
    }
}

/// Header filtering for both directions (RFC 9110 §7.6.1). Names compare ASCII
/// case-insensitively in place (no lowercased copies: this runs for every header of every
/// stream), and by length first, so most names are dismissed without looking at a byte.
enum HopByHop {
    /// Never forwarded, whichever direction: connection, keep-alive, proxy-connection,
    /// proxy-authenticate, proxy-authorization, te, trailer, trailers, transfer-encoding, upgrade.
    static func isHopByHop(_ name: String) -> Bool {
        switch name.utf8.count {
        case 2: return equalsIgnoringCase(name, "te")
        case 7: return equalsIgnoringCase(name, "trailer") || equalsIgnoringCase(name, "upgrade")
        case 8: return equalsIgnoringCase(name, "trailers")
        case 10: return equalsIgnoringCase(name, "connection") || equalsIgnoringCase(name, "keep-alive")
        case 16: return equalsIgnoringCase(name, "proxy-connection")
        case 17: return equalsIgnoringCase(name, "transfer-encoding")
        case 18: return equalsIgnoringCase(name, "proxy-authenticate")
        case 19: return equalsIgnoringCase(name, "proxy-authorization")
        default: return false
        }
    }

    /// Request headers we set ourselves (`Host`, body framing) or can't honour (`Expect:
    /// 100-continue`: the body is already on its way through the tunnel).
    static func isRequestOnly(_ name: String) -> Bool {
        switch name.utf8.count {
        case 4: return equalsIgnoringCase(name, "host")
        case 6: return equalsIgnoringCase(name, "expect")
        case 14: return equalsIgnoringCase(name, "content-length")
        default: return false
        }
    }

    /// Fields listed in `Connection` are hop-by-hop as well (lowercased tokens; ASCII
    /// whitespace trimmed; no Unicode-aware string work, this runs for nearly every response).
    static func connectionListed<S: Sequence>(_ headers: S) -> [String] where S.Element == (name: String, value: String) {
        var out: [String] = []
        for field in headers where field.name.utf8.count == 10 && equalsIgnoringCase(field.name, "connection") {
            for token in field.value.utf8.split(separator: UInt8(ascii: ",")) {
                var bytes = token[...]
                while let b = bytes.first, b == 0x20 || b == 0x09 { bytes = bytes.dropFirst() }
                while let b = bytes.last, b == 0x20 || b == 0x09 { bytes = bytes.dropLast() }
                if bytes.isEmpty { continue }
                out.append(String(decoding: bytes.map { $0 >= 0x41 && $0 <= 0x5A ? $0 | 0x20 : $0 }, as: UTF8.self))
            }
        }
        return out
    }

    /// Request headers for the local service: hop-by-hop removed, and the request-only ones too.
    static func forEachRequestHeader<S: Sequence>(_ headers: S, _ body: (String, String) -> Void)
    where S.Element == (name: String, value: String) {
        let listed = connectionListed(headers)
        for field in headers where !isHopByHop(field.name) && !isRequestOnly(field.name) && !isListed(field.name, listed) {
            body(field.name, field.value)
        }
    }

    /// Response headers for the relay: hop-by-hop removed; `Content-Length` kept when present.
    /// The headers themselves when nothing is hop-by-hop (no copy).
    static func responseHeaders(_ headers: HTTPHeaders) -> HTTPHeaders {
        let listed = connectionListed(headers)
        guard headers.contains(where: { isHopByHop($0.name) || isListed($0.name, listed) }) else { return headers }
        var out = HTTPHeaders()
        out.reserveCapacity(headers.count)
        for field in headers where !isHopByHop(field.name) && !isListed(field.name, listed) {
            out.add(name: field.name, value: field.value)
        }
        return out
    }

    private static func isListed(_ name: String, _ lowercaseNames: [String]) -> Bool {
        !lowercaseNames.isEmpty && lowercaseNames.contains { equalsIgnoringCase(name, $0) }
    }

    /// `name` equals `lowercase` (all lowercase) ignoring ASCII case.
    static func equalsIgnoringCase(_ name: String, _ lowercase: String) -> Bool {
        let a = name.utf8, b = lowercase.utf8
        guard a.count == b.count else { return false }
        // Native strings hand out their bytes directly; others (bridged) take the slow path.
        let equal = a.withContiguousStorageIfAvailable { p in
            b.withContiguousStorageIfAvailable { q in
                for i in 0 ..< p.count where lowered(p[i]) != q[i] { return false }
                return true
            }
        }
        if let equal, let equal { return equal }
        return zip(a, b).allSatisfy { lowered($0) == $1 }
    }

    @inline(__always)
    private static func lowered(_ b: UInt8) -> UInt8 {
        b >= UInt8(ascii: "A") && b <= UInt8(ascii: "Z") ? b | 0x20 : b
    }
}
