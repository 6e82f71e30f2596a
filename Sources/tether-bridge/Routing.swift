import TetherHTTP
import TetherTunnel

/// Decides where a stream may go. The bridge is never an open proxy: the only destinations are
/// the configured targets, and the relay can choose the path, never the host.
struct Router: Sendable {
    /// Configured targets; the first one is the default (and, in `tether.v1`, the only one an
    /// origin-form OPEN can reach).
    let targets: [LocalTarget]

    struct Route: Sendable {
        var target: LocalTarget
        /// Absolute URL handed to the HTTP client: the target's origin + base path + stream target.
        var url: String
    }

    enum Decision: Sendable {
        case forward(Route)
        case refuse(String)
    }

    func route(method: String, target: String) -> Decision {
        guard let target0 = targets.first else { return .refuse("no local target configured") }
        guard !method.isEmpty, method.utf8.allSatisfy(Self.isTokenByte) else { return .refuse("invalid method") }
        // CONNECT would make us a TCP relay to wherever its authority points.
        guard method.uppercased() != "CONNECT" else { return .refuse("CONNECT is not forwarded") }
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
        return .forward(Route(target: target0, url: target0.origin + target0.basePath + target))
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

/// Header filtering for both directions (RFC 9110 §7.6.1).
enum HopByHop {
    /// Never forwarded, whichever direction.
    static let names: Set<String> = [
        "connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization",
        "te", "trailer", "trailers", "transfer-encoding", "upgrade",
    ]

    /// Fields listed in `Connection` are hop-by-hop as well.
    static func connectionListed(_ headers: [(name: String, value: String)]) -> Set<String> {
        var out: Set<String> = []
        for field in headers where field.name.lowercased() == "connection" {
            for token in field.value.split(separator: ",") {
                let t = token.trimmingWhitespace().lowercased()
                if !t.isEmpty { out.insert(t) }
            }
        }
        return out
    }

    /// Request headers for the local service: hop-by-hop removed, and also the ones we set
    /// ourselves (`Host`, body framing) or can't honour (`Expect: 100-continue`: the body is
    /// already on its way through the tunnel).
    static func requestHeaders(_ headers: [(name: String, value: String)]) -> [(name: String, value: String)] {
        let listed = connectionListed(headers)
        return headers.filter { field in
            let n = field.name.lowercased()
            return !names.contains(n) && !listed.contains(n) && n != "host" && n != "content-length" && n != "expect"
        }
    }

    /// Response headers for the relay: hop-by-hop removed; `Content-Length` kept when present.
    static func responseHeaders(_ headers: [(name: String, value: String)]) -> [(name: String, value: String)] {
        let listed = connectionListed(headers)
        return headers.filter { field in
            let n = field.name.lowercased()
            return !names.contains(n) && !listed.contains(n)
        }
    }
}
