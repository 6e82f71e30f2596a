/// An HTTP protocol version as carried on the start line.
public struct HTTPVersion: Sendable, Hashable, Comparable, CustomStringConvertible {
    public var major: Int
    public var minor: Int

    public init(major: Int, minor: Int) {
        self.major = major
        self.minor = minor
    }

    public static let http1_0 = HTTPVersion(major: 1, minor: 0)
    public static let http1_1 = HTTPVersion(major: 1, minor: 1)

    public static func < (lhs: HTTPVersion, rhs: HTTPVersion) -> Bool {
        (lhs.major, lhs.minor) < (rhs.major, rhs.minor)
    }

    public var description: String { "HTTP/\(major).\(minor)" }
}

/// Resource limits enforced while decoding. All limits are checked as bytes arrive,
/// so an oversized element is rejected without buffering it whole.
public struct HTTPLimits: Sendable, Equatable {
    /// Longest request line (or status line, for responses), excluding the line terminator.
    public var maxRequestLineLength: Int
    /// Total size of all field lines of a head (terminators included), and of a chunked
    /// body's trailer section, which is counted on top of the head's fields.
    public var maxHeaderBytes: Int
    /// Most field lines in a head (plus trailers).
    public var maxHeaderCount: Int
    /// Largest body, whether framed by Content-Length, chunked or read until EOF.
    public var maxBodySize: Int
    /// Longest chunk-size line (size plus extensions), excluding the terminator.
    public var maxChunkLineLength: Int

    public init(
        maxRequestLineLength: Int = 8192,
        maxHeaderBytes: Int = 16384,
        maxHeaderCount: Int = 100,
        maxBodySize: Int = 10 * 1024 * 1024,
        maxChunkLineLength: Int = 1024
    ) {
        self.maxRequestLineLength = maxRequestLineLength
        self.maxHeaderBytes = maxHeaderBytes
        self.maxHeaderCount = maxHeaderCount
        self.maxBodySize = maxBodySize
        self.maxChunkLineLength = maxChunkLineLength
    }
}

/// A protocol violation or limit breach. For requests, `status` is the response the server
/// should send before closing; a response decoder reports malformed input as `.invalidResponse`
/// (limit breaches keep their specific case).
public enum HTTPParseError: Error, Sendable, Equatable, CustomStringConvertible {
    case badRequest(reason: String)
    case uriTooLong
    case headersTooLarge
    case payloadTooLarge
    case notImplemented(reason: String)
    case versionNotSupported
    case invalidResponse(reason: String)

    public var status: Int {
        switch self {
        case .badRequest: return 400
        case .uriTooLong: return 414
        case .headersTooLarge: return 431
        case .payloadTooLarge: return 413
        case .notImplemented: return 501
        case .versionNotSupported: return 505
        case .invalidResponse: return 502
        }
    }

    /// Stable machine-readable code (used in JSON error bodies).
    public var code: String {
        switch self {
        case .badRequest: return "BAD_REQUEST"
        case .uriTooLong: return "URI_TOO_LONG"
        case .headersTooLarge: return "HEADERS_TOO_LARGE"
        case .payloadTooLarge: return "PAYLOAD_TOO_LARGE"
        case .notImplemented: return "NOT_IMPLEMENTED"
        case .versionNotSupported: return "VERSION_NOT_SUPPORTED"
        case .invalidResponse: return "INVALID_RESPONSE"
        }
    }

    /// Human-readable explanation.
    public var reason: String {
        switch self {
        case .badRequest(let reason): return reason
        case .uriTooLong: return "request line too long"
        case .headersTooLarge: return "header section too large"
        case .payloadTooLarge: return "body too large"
        case .notImplemented(let reason): return reason
        case .versionNotSupported: return "HTTP version not supported"
        case .invalidResponse(let reason): return reason
        }
    }

    public var description: String { "\(status) \(code): \(reason)" }
}
