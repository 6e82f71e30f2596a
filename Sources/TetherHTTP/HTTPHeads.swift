/// A request line plus header fields.
public struct HTTPRequestHead: Sendable, Equatable {
    public var method: String
    /// The request-target exactly as received (origin-, absolute-, authority- or asterisk-form).
    public var target: String
    public var version: HTTPVersion
    public var headers: HTTPHeaders

    public init(method: String, target: String, version: HTTPVersion = .http1_1, headers: HTTPHeaders = HTTPHeaders()) {
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers
    }

    /// The target up to (not including) the first "?".
    public var path: String {
        guard let q = target.utf8.firstIndex(of: UInt8(ascii: "?")) else { return target }
        return String(target[..<q])
    }

    /// The target after the first "?", or nil when there is no "?".
    public var query: String? {
        guard let q = target.utf8.firstIndex(of: UInt8(ascii: "?")) else { return nil }
        return String(target[target.utf8.index(after: q)...])
    }

    /// HTTP/1.1+ keeps the connection open unless "Connection: close";
    /// HTTP/1.0 only with "Connection: keep-alive".
    public var isKeepAlive: Bool {
        keepAlive(version: version, headers: headers)
    }

    /// "Transfer-Encoding: chunked": the body is framed in chunks.
    public var isChunked: Bool {
        headers.containsToken("chunked", in: "transfer-encoding")
    }

    /// A body follows the head: chunked, or a Content-Length above 0 (RFC 9112 6.3: neither
    /// means none).
    public var hasBody: Bool {
        isChunked || (headers.first(name: "content-length").flatMap { Int($0) } ?? 0) > 0
    }

    /// "Expect: 100-continue" on an HTTP/1.1+ request (RFC 9110 10.1.1: ignored for 1.0).
    public var expectsContinue: Bool {
        version >= .http1_1 && headers.containsToken("100-continue", in: "Expect")
    }

    /// "Connection: upgrade" together with an Upgrade header field.
    public var isUpgradeRequest: Bool {
        headers.contains(name: "Upgrade") && headers.containsToken("upgrade", in: "Connection")
    }
}

/// A status line plus header fields.
public struct HTTPResponseHead: Sendable, Equatable {
    public var version: HTTPVersion
    public var status: Int
    public var reason: String
    public var headers: HTTPHeaders

    /// `reason` defaults to the standard phrase for `status`.
    public init(status: Int, reason: String? = nil, headers: HTTPHeaders = HTTPHeaders(), version: HTTPVersion = .http1_1) {
        self.version = version
        self.status = status
        self.reason = reason ?? HTTPResponseHead.standardReason(for: status)
        self.headers = headers
    }

    /// Whether the connection stays open after this response (same rules as requests).
    public var isKeepAlive: Bool {
        keepAlive(version: version, headers: headers)
    }

    /// The registered reason phrase for `status`, or "" when there is none.
    public static func standardReason(for status: Int) -> String {
        switch status {
        case 100: return "Continue"
        case 101: return "Switching Protocols"
        case 102: return "Processing"
        case 103: return "Early Hints"
        case 200: return "OK"
        case 201: return "Created"
        case 202: return "Accepted"
        case 203: return "Non-Authoritative Information"
        case 204: return "No Content"
        case 205: return "Reset Content"
        case 206: return "Partial Content"
        case 207: return "Multi-Status"
        case 300: return "Multiple Choices"
        case 301: return "Moved Permanently"
        case 302: return "Found"
        case 303: return "See Other"
        case 304: return "Not Modified"
        case 307: return "Temporary Redirect"
        case 308: return "Permanent Redirect"
        case 400: return "Bad Request"
        case 401: return "Unauthorized"
        case 402: return "Payment Required"
        case 403: return "Forbidden"
        case 404: return "Not Found"
        case 405: return "Method Not Allowed"
        case 406: return "Not Acceptable"
        case 407: return "Proxy Authentication Required"
        case 408: return "Request Timeout"
        case 409: return "Conflict"
        case 410: return "Gone"
        case 411: return "Length Required"
        case 412: return "Precondition Failed"
        case 413: return "Content Too Large"
        case 414: return "URI Too Long"
        case 415: return "Unsupported Media Type"
        case 416: return "Range Not Satisfiable"
        case 417: return "Expectation Failed"
        case 421: return "Misdirected Request"
        case 422: return "Unprocessable Content"
        case 425: return "Too Early"
        case 426: return "Upgrade Required"
        case 428: return "Precondition Required"
        case 429: return "Too Many Requests"
        case 431: return "Request Header Fields Too Large"
        case 451: return "Unavailable For Legal Reasons"
        case 500: return "Internal Server Error"
        case 501: return "Not Implemented"
        case 502: return "Bad Gateway"
        case 503: return "Service Unavailable"
        case 504: return "Gateway Timeout"
        case 505: return "HTTP Version Not Supported"
        case 507: return "Insufficient Storage"
        case 511: return "Network Authentication Required"
        default: return ""
        }
    }
}

@inline(__always)
func keepAlive(version: HTTPVersion, headers: HTTPHeaders) -> Bool {
    if version >= .http1_1 {
        return !headers.containsToken("close", in: "Connection")
    }
    return version == .http1_0 && headers.containsToken("keep-alive", in: "Connection")
}
