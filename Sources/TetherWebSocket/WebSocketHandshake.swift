import TetherHTTP

/// Why an opening handshake was refused. `status`/`code`/`reason` map directly onto the HTTP
/// error response a server sends (or, client side, describe what was wrong with the server).
public enum WebSocketHandshakeError: Error, Sendable, Equatable, CustomStringConvertible {
    /// Not a valid WebSocket upgrade request (400).
    case badRequest(reason: String)
    /// Missing or unsupported Sec-WebSocket-Version (426, with `Sec-WebSocket-Version: 13`).
    case unsupportedVersion(reason: String)
    /// Client side: the server answered with this non-101 status.
    case unexpectedStatus(Int)
    /// Client side: a 101 response that doesn't complete the handshake correctly.
    case badResponse(reason: String)

    public var status: Int {
        switch self {
        case .badRequest: return 400
        case .unsupportedVersion: return 426
        case .unexpectedStatus(let status): return status
        case .badResponse: return 502
        }
    }

    /// Stable machine-readable code (for JSON error bodies and logs).
    public var code: String {
        switch self {
        case .badRequest: return "WS_BAD_HANDSHAKE"
        case .unsupportedVersion: return "WS_VERSION"
        case .unexpectedStatus: return "WS_UNEXPECTED_STATUS"
        case .badResponse: return "WS_BAD_RESPONSE"
        }
    }

    public var reason: String {
        switch self {
        case .badRequest(let reason), .unsupportedVersion(let reason), .badResponse(let reason): return reason
        case .unexpectedStatus(let status): return "server answered \(status) instead of 101"
        }
    }

    /// Headers the server's error response must carry (RFC 6455 §4.4 for 426).
    public var responseHeaders: HTTPHeaders {
        if case .unsupportedVersion = self { return WebSocketHandshake.versionErrorHeaders }
        return HTTPHeaders()
    }

    public var description: String { "\(status) \(code): \(reason)" }
}

/// The HTTP/1.1 opening handshake (RFC 6455 §4), both sides. No extensions are supported, so
/// none are ever negotiated.
public enum WebSocketHandshake {
    public static let guid = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
    public static let version = "13"

    /// `Sec-WebSocket-Accept` for a key: base64(SHA-1(key + GUID)).
    public static func acceptValue(forKey key: String) -> String {
        Base64.encode(SHA1.hash((key + guid).utf8))
    }

    /// Headers for the 426 response to an unsupported version.
    public static var versionErrorHeaders: HTTPHeaders { ["Sec-WebSocket-Version": version] }

    /// The error response head for a refused handshake (status, standard reason phrase and the
    /// headers the status requires); the body, if any, is up to the caller.
    public static func errorResponse(for error: WebSocketHandshakeError) -> HTTPResponseHead {
        HTTPResponseHead(status: error.status, headers: error.responseHeaders, version: .http1_1)
    }

    /// Checks a client's upgrade request. Returns the (trimmed) key and the offered
    /// subprotocols in order (comma-separated lists across all Sec-WebSocket-Protocol fields).
    public static func validateClientRequest(_ head: HTTPRequestHead) throws(WebSocketHandshakeError)
        -> (key: String, protocols: [String]) {
        let h = head.headers
        guard head.method == "GET" else { throw .badRequest(reason: "method must be GET") }
        guard head.version >= .http1_1 else { throw .badRequest(reason: "HTTP/1.1 or later required") }
        guard h.containsToken("websocket", in: "Upgrade") else {
            throw .badRequest(reason: "missing Upgrade: websocket")
        }
        guard h.containsToken("upgrade", in: "Connection") else {
            throw .badRequest(reason: "missing Connection: upgrade")
        }
        guard let host = h.first(name: "Host"), !trim(host).isEmpty else {
            throw .badRequest(reason: "missing Host")
        }
        let versions = h["Sec-WebSocket-Version"]
        guard versions.count == 1, trim(versions[0]) == version else {
            throw .unsupportedVersion(reason: versions.isEmpty ? "missing Sec-WebSocket-Version" : "unsupported Sec-WebSocket-Version")
        }
        let keys = h["Sec-WebSocket-Key"]
        guard keys.count == 1 else { throw .badRequest(reason: keys.isEmpty ? "missing Sec-WebSocket-Key" : "duplicate Sec-WebSocket-Key") }
        let key = trim(keys[0])
        guard let decoded = Base64.decode(key), decoded.count == 16 else {
            throw .badRequest(reason: "Sec-WebSocket-Key must be base64 of 16 bytes")
        }
        return (key, list(h["Sec-WebSocket-Protocol"]))
    }

    /// The 101 response completing the handshake. `subprotocol` must be one the client offered.
    public static func serverResponse(key: String, subprotocol: String? = nil,
                                      extraHeaders: HTTPHeaders = HTTPHeaders()) -> HTTPResponseHead {
        var headers: HTTPHeaders = [
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Accept": acceptValue(forKey: key),
        ]
        if let subprotocol { headers.add(name: "Sec-WebSocket-Protocol", value: subprotocol) }
        for field in extraHeaders { headers.add(name: field.name, value: field.value) }
        return HTTPResponseHead(status: 101, reason: "Switching Protocols", headers: headers, version: .http1_1)
    }

    /// A client upgrade request with a fresh random key (keep `key` to validate the response).
    public static func clientRequest(host: String, target: String, protocols: [String] = [],
                                     extraHeaders: HTTPHeaders = HTTPHeaders()) -> (head: HTTPRequestHead, key: String) {
        var rng = SystemRandomNumberGenerator()
        var nonce = [UInt8](repeating: 0, count: 16)
        for i in stride(from: 0, to: 16, by: 8) {
            let r = rng.next()
            for j in 0 ..< 8 { nonce[i + j] = UInt8(truncatingIfNeeded: r >> UInt64(8 * j)) }
        }
        let key = Base64.encode(nonce)
        var headers: HTTPHeaders = [
            "Host": host,
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Key": key,
            "Sec-WebSocket-Version": version,
        ]
        if !protocols.isEmpty { headers.add(name: "Sec-WebSocket-Protocol", value: protocols.joined(separator: ", ")) }
        for field in extraHeaders { headers.add(name: field.name, value: field.value) }
        return (HTTPRequestHead(method: "GET", target: target, version: .http1_1, headers: headers), key)
    }

    /// Checks the server's answer to `clientRequest`. Returns the selected subprotocol, if any.
    public static func validateServerResponse(_ head: HTTPResponseHead, key: String,
                                              requestedProtocols: [String]) throws(WebSocketHandshakeError) -> String? {
        let h = head.headers
        guard head.status == 101 else { throw .unexpectedStatus(head.status) }
        guard h.containsToken("websocket", in: "Upgrade") else { throw .badResponse(reason: "missing Upgrade: websocket") }
        guard h.containsToken("upgrade", in: "Connection") else { throw .badResponse(reason: "missing Connection: upgrade") }
        let accepts = h["Sec-WebSocket-Accept"]
        guard accepts.count == 1, trim(accepts[0]) == acceptValue(forKey: key) else {
            throw .badResponse(reason: "wrong Sec-WebSocket-Accept")
        }
        guard list(h["Sec-WebSocket-Extensions"]).isEmpty else {
            throw .badResponse(reason: "server selected an extension that was not offered")
        }
        let selected = list(h["Sec-WebSocket-Protocol"])
        switch selected.count {
        case 0: return nil
        case 1:
            guard requestedProtocols.contains(selected[0]) else {
                throw .badResponse(reason: "server selected a subprotocol that was not offered")
            }
            return selected[0]
        default:
            throw .badResponse(reason: "server selected several subprotocols")
        }
    }

    /// Elements of comma-separated header values, trimmed, empties dropped (RFC 9110 §5.6.1).
    static func list(_ values: [String]) -> [String] {
        var out: [String] = []
        for value in values {
            for element in value.split(separator: ",", omittingEmptySubsequences: true) {
                let t = trim(element)
                if !t.isEmpty { out.append(t) }
            }
        }
        return out
    }

    /// Strips optional whitespace (SP / HTAB).
    static func trim<S: StringProtocol>(_ s: S) -> String {
        let utf8 = Array(s.utf8)
        var lo = 0, hi = utf8.count
        while lo < hi, utf8[lo] == 0x20 || utf8[lo] == 0x09 { lo += 1 }
        while hi > lo, utf8[hi - 1] == 0x20 || utf8[hi - 1] == 0x09 { hi -= 1 }
        return String(decoding: utf8[lo ..< hi], as: UTF8.self)
    }
}
