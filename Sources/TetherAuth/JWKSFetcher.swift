#if os(Linux)
import Glibc
import TetherHTTP
import TetherTLS

/// Why a JWKS URL could not be used or fetched; the message is meant for the log.
public struct JWKSFetchError: Error, Sendable, Equatable, CustomStringConvertible {
    public let message: String

    public init(_ message: String) {
        self.message = message
    }

    public var description: String { message }
}

/// A JWKS URL the relay may fetch: `https://`, or `http://` to a loopback host (a local test
/// server or sidecar; key material must not cross a network in the clear). No user info.
public struct JWKSURL: Sendable, Equatable, CustomStringConvertible {
    public let isTLS: Bool
    /// Without brackets for IPv6 literals.
    public let host: String
    public let port: Int
    /// Path and query, starting with "/"; the fragment is dropped.
    public let target: String
    public let description: String

    public init(_ text: String) throws(JWKSFetchError) {
        description = text
        let lower = text.lowercased()
        let rest: Substring
        if lower.hasPrefix("https://") {
            isTLS = true
            rest = text.dropFirst(8)
        } else if lower.hasPrefix("http://") {
            isTLS = false
            rest = text.dropFirst(7)
        } else {
            throw JWKSFetchError("JWKS URL '\(text)' must start with https:// (or http:// for a loopback host)")
        }
        let authorityEnd = rest.firstIndex { $0 == "/" || $0 == "?" || $0 == "#" } ?? rest.endIndex
        let authority = rest[..<authorityEnd]
        var target = rest[authorityEnd...]
        if let hash = target.firstIndex(of: "#") { target = target[..<hash] }
        guard !authority.contains("@") else { throw JWKSFetchError("JWKS URL '\(text)': user info is not supported") }

        var hostPart: Substring
        var portPart: Substring?
        if authority.hasPrefix("[") {
            guard let close = authority.firstIndex(of: "]") else { throw JWKSFetchError("JWKS URL '\(text)': bad IPv6 literal") }
            hostPart = authority[authority.index(after: authority.startIndex)..<close]
            let after = authority[authority.index(after: close)...]
            if !after.isEmpty {
                guard after.hasPrefix(":") else { throw JWKSFetchError("JWKS URL '\(text)': bad authority") }
                portPart = after.dropFirst()
            }
        } else if let colon = authority.lastIndex(of: ":") {
            hostPart = authority[..<colon]
            portPart = authority[authority.index(after: colon)...]
        } else {
            hostPart = authority
        }
        guard !hostPart.isEmpty, hostPart.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7f }) else {
            throw JWKSFetchError("JWKS URL '\(text)': missing or invalid host")
        }
        if let portPart {
            guard let port = Int(portPart), (1...65535).contains(port) else {
                throw JWKSFetchError("JWKS URL '\(text)': invalid port")
            }
            self.port = port
        } else {
            port = isTLS ? 443 : 80
        }
        // The target goes into the request line verbatim: no spaces or control characters.
        guard target.utf8.allSatisfy({ $0 > 0x20 && $0 != 0x7f }) else {
            throw JWKSFetchError("JWKS URL '\(text)': the path must be percent-encoded")
        }
        host = String(hostPart)
        self.target = target.hasPrefix("/") ? String(target) : "/" + target
        if !isTLS && !Self.isLoopbackName(host) {
            throw JWKSFetchError("JWKS URL '\(text)': http:// is only allowed for loopback hosts; use https://")
        }
    }

    /// "localhost", 127.0.0.0/8 or ::1. Also re-checked on the resolved addresses.
    static func isLoopbackName(_ host: String) -> Bool {
        if host.lowercased() == "localhost" { return true }
        var v4 = in_addr()
        if inet_pton(AF_INET, host, &v4) == 1 { return UInt32(bigEndian: v4.s_addr) >> 24 == 127 }
        var v6 = in6_addr()
        if inet_pton(AF_INET6, host, &v6) == 1 {
            return withUnsafeBytes(of: &v6) { $0.elementsEqual([UInt8](repeating: 0, count: 15) + [1]) }
        }
        return false
    }

    /// The Host header: the port only when it is not the scheme's default.
    var hostHeader: String {
        let name = host.contains(":") ? "[\(host)]" : host
        return port == (isTLS ? 443 : 80) ? name : "\(name):\(port)"
    }
}

/// A blocking HTTPS GET of a JWKS, for a background thread only (never an event loop): a plain
/// socket with timeouts, TetherTLS for TLS and TetherHTTP's response decoder, so the relay
/// needs no HTTP client stack. Answers other than 200 are errors; redirects are not followed
/// (a redirect to another host would move the trust anchor for the keys).
public struct JWKSFetcher: Sendable {
    public let url: JWKSURL
    /// PEM CA bundle for the server; nil = the system's trust roots.
    public let caFile: String?
    /// Per address tried. Name resolution (getaddrinfo) has no timeout of its own: it is
    /// bounded by the resolver configuration, one more reason to stay off the event loops.
    public var connectTimeoutSeconds: Double = 5
    /// The whole exchange, connect included.
    public var timeoutSeconds: Double = 15
    /// Larger bodies are refused; a key set is a few KiB.
    public var maxBodyBytes = 1 << 20

    public init(url: String, caFile: String? = nil) throws(JWKSFetchError) {
        self.url = try JWKSURL(url)
        self.caFile = caFile
    }

    /// The response body of a 200. Gives up early ("cancelled") once `cancelFD`, if given,
    /// becomes readable (the caller is shutting down).
    public func fetch(cancelFD: Int32? = nil) throws(JWKSFetchError) -> [UInt8] {
        // The context is built per fetch (tens of milliseconds at most), so a replaced CA file
        // is picked up without a restart.
        var tls: TLSConnection?
        if url.isTLS {
            do {
                let context = try TLSContext(configuration: .client(trustRootsFile: caFile, verifyPeer: true))
                tls = try TLSConnection(context: context, serverName: url.host)
            } catch {
                throw JWKSFetchError("JWKS \(url): TLS setup failed: \(error.message)")
            }
        }
        let deadline = monotonicSeconds() + timeoutSeconds
        let fd = try connect(deadline: deadline, cancelFD: cancelFD)
        defer { close(fd) }
        var transport = Transport(fd: fd, tls: tls, deadline: deadline, cancelFD: cancelFD, url: url)

        let request = "GET \(url.target) HTTP/1.1\r\nHost: \(url.hostHeader)\r\nAccept: application/json\r\n"
            + "User-Agent: tether-relay\r\nConnection: close\r\n\r\n"
        try transport.send(Array(request.utf8))

        var decoder = HTTPResponseDecoder(limits: HTTPLimits(maxBodySize: maxBodyBytes))
        decoder.expectResponse(toMethod: "GET")
        var body: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 16 * 1024)
        var eof = false
        while true {
            do {
                while let event = try decoder.next() {
                    switch event {
                    case .head(let head):
                        if head.status < 200 { continue }  // interim (100, 103)
                        guard head.status == 200 else {
                            let location = head.headers.first(name: "Location").map { ", Location: \($0) (redirects are not followed)" } ?? ""
                            throw JWKSFetchError("JWKS \(url): HTTP \(head.status)\(location)")
                        }
                    case .body(let bytes):
                        body.append(contentsOf: bytes)
                    case .end:
                        return body
                    }
                }
            } catch let error as HTTPParseError {
                if error == .payloadTooLarge { throw JWKSFetchError("JWKS \(url): body larger than \(maxBodyBytes) bytes") }
                throw JWKSFetchError("JWKS \(url): bad HTTP response: \(error)")
            } catch let error as JWKSFetchError {
                throw error
            } catch {
                throw JWKSFetchError("JWKS \(url): \(error)")
            }
            if eof {
                // `finish` turns a read-until-close body into `.end`, or reports truncation.
                if let error = decoder.finish() { throw JWKSFetchError("JWKS \(url): \(error)") }
                do {
                    while let event = try decoder.next() {
                        if case .body(let bytes) = event { body.append(contentsOf: bytes) }
                        if case .end = event { return body }
                    }
                } catch {
                    throw JWKSFetchError("JWKS \(url): \(error)")
                }
                throw JWKSFetchError("JWKS \(url): connection closed before the response was complete")
            }
            let n = try transport.receive(into: &buffer)
            if n == 0 {
                eof = true
            } else {
                decoder.feed(buffer[..<n])
            }
        }
    }

    /// Tries each resolved address in turn; for http:// every one must be loopback.
    private func connect(deadline: Double, cancelFD: Int32?) throws(JWKSFetchError) -> Int32 {
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        hints.ai_protocol = Int32(IPPROTO_TCP)
        var list: UnsafeMutablePointer<addrinfo>?
        let rc = getaddrinfo(url.host, String(url.port), &hints, &list)
        guard rc == 0, let list else {
            throw JWKSFetchError("JWKS \(url): cannot resolve '\(url.host)': \(String(cString: gai_strerror(rc)))")
        }
        defer { freeaddrinfo(list) }
        var lastError = "no address"
        var next: UnsafeMutablePointer<addrinfo>? = list
        while let ai = next {
            next = ai.pointee.ai_next
            guard let address = ai.pointee.ai_addr else { continue }
            if !url.isTLS && !Self.isLoopback(address) {
                lastError = "http:// host resolved to a non-loopback address"
                continue
            }
            let fd = socket(ai.pointee.ai_family,
                            Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue),
                            ai.pointee.ai_protocol)
            guard fd >= 0 else {
                lastError = String(cString: strerror(errno))
                continue
            }
            if Glibc.connect(fd, address, ai.pointee.ai_addrlen) == 0 { return fd }
            var error = errno
            if error == EINPROGRESS {
                let wait = min(connectTimeoutSeconds, deadline - monotonicSeconds())
                switch wait > 0 ? waitFor(fd, events: Int16(POLLOUT), seconds: wait, cancelFD: cancelFD) : .timedOut {
                case .ready:
                    var soError: Int32 = 0
                    var length = socklen_t(MemoryLayout<Int32>.size)
                    getsockopt(fd, SOL_SOCKET, SO_ERROR, &soError, &length)
                    if soError == 0 { return fd }
                    error = soError
                case .timedOut:
                    error = ETIMEDOUT
                case .cancelled:
                    close(fd)
                    throw JWKSFetchError("JWKS \(url): cancelled")
                }
            }
            lastError = String(cString: strerror(error))
            close(fd)
            if monotonicSeconds() >= deadline { break }
        }
        throw JWKSFetchError("JWKS \(url): cannot connect: \(lastError)")
    }

    private static func isLoopback(_ address: UnsafeMutablePointer<sockaddr>) -> Bool {
        switch Int32(address.pointee.sa_family) {
        case AF_INET:
            return address.withMemoryRebound(to: sockaddr_in.self, capacity: 1) {
                UInt32(bigEndian: $0.pointee.sin_addr.s_addr) >> 24 == 127
            }
        case AF_INET6:
            return address.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) {
                var a = $0.pointee.sin6_addr
                return withUnsafeBytes(of: &a) { $0.elementsEqual([UInt8](repeating: 0, count: 15) + [1]) }
            }
        default:
            return false
        }
    }
}

/// Plaintext or TLS over a non-blocking socket, every wait bounded by the deadline.
private struct Transport {
    let fd: Int32
    let tls: TLSConnection?
    let deadline: Double
    let cancelFD: Int32?
    let url: JWKSURL
    var eofFed = false

    init(fd: Int32, tls: TLSConnection?, deadline: Double, cancelFD: Int32?, url: JWKSURL) {
        self.fd = fd
        self.tls = tls
        self.deadline = deadline
        self.cancelFD = cancelFD
        self.url = url
    }

    mutating func send(_ bytes: [UInt8]) throws(JWKSFetchError) {
        guard let tls else {
            try write(bytes)
            return
        }
        tls.startHandshake()
        // Held by the engine until the handshake completes.
        let accepted = bytes.withUnsafeBytes { tls.writePlaintext($0) }
        guard accepted else { throw JWKSFetchError("JWKS \(url): TLS: \(tls.failure ?? "write failed")") }
        try flush(tls)
    }

    /// Plaintext bytes read into `buffer`; 0 at the end of the stream.
    mutating func receive(into buffer: inout [UInt8]) throws(JWKSFetchError) -> Int {
        guard let tls else { return try read(into: &buffer) }
        while true {
            let result = buffer.withUnsafeMutableBytes { tls.readPlaintext(into: $0) }
            try flush(tls)  // handshake messages and alerts are produced while reading
            switch result {
            case .bytes(let n) where n > 0:
                return n
            case .closed:
                return 0
            case .failed(let message):
                // A server that closes without close_notify: the HTTP framing decides whether
                // the response was complete.
                if eofFed && tls.isHandshakeComplete { return 0 }
                throw JWKSFetchError("JWKS \(url): TLS: \(message)")
            case .bytes, .wantMoreCiphertext:
                if eofFed { return 0 }
                var chunk = [UInt8](repeating: 0, count: 16 * 1024)
                let n = try read(into: &chunk)
                if n == 0 {
                    tls.feedEOF()
                    eofFed = true
                } else {
                    chunk.withUnsafeBytes { tls.feedCiphertext(UnsafeRawBufferPointer(rebasing: $0[..<n])) }
                }
            }
        }
    }

    private func flush(_ tls: TLSConnection) throws(JWKSFetchError) {
        guard tls.hasOutboundCiphertext else { return }
        try write(tls.takeOutboundCiphertext())
    }

    private func write(_ bytes: [UInt8]) throws(JWKSFetchError) {
        var offset = 0
        while offset < bytes.count {
            let n = bytes.withUnsafeBytes { raw -> Int in
                guard let base = raw.baseAddress else { return 0 }
                return Glibc.send(fd, base + offset, raw.count - offset, Int32(MSG_NOSIGNAL))
            }
            if n > 0 {
                offset += n
            } else if n < 0 && (errno == EAGAIN || errno == EINTR) {
                try wait(Int16(POLLOUT))
            } else {
                throw JWKSFetchError("JWKS \(url): send failed: \(String(cString: strerror(errno)))")
            }
        }
    }

    private func read(into buffer: inout [UInt8]) throws(JWKSFetchError) -> Int {
        while true {
            let n = buffer.withUnsafeMutableBytes { Glibc.recv(fd, $0.baseAddress, $0.count, 0) }
            if n >= 0 { return n }
            guard errno == EAGAIN || errno == EINTR else {
                throw JWKSFetchError("JWKS \(url): receive failed: \(String(cString: strerror(errno)))")
            }
            try wait(Int16(POLLIN))
        }
    }

    private func wait(_ events: Int16) throws(JWKSFetchError) {
        let left = deadline - monotonicSeconds()
        switch left > 0 ? waitFor(fd, events: events, seconds: left, cancelFD: cancelFD) : .timedOut {
        case .ready: return
        case .timedOut: throw JWKSFetchError("JWKS \(url): timed out")
        case .cancelled: throw JWKSFetchError("JWKS \(url): cancelled")
        }
    }
}

private enum WaitResult {
    case ready
    case timedOut
    case cancelled
}

/// Waits until `fd` is ready for `events` (or has an error to report), `seconds` pass, or
/// `cancelFD` becomes readable.
private func waitFor(_ fd: Int32, events: Int16, seconds: Double, cancelFD: Int32?) -> WaitResult {
    var pfds = [pollfd(fd: fd, events: events, revents: 0), pollfd(fd: cancelFD ?? -1, events: Int16(POLLIN), revents: 0)]
    let ms = Int32(min(max(seconds * 1000, 1), Double(Int32.max)))
    while true {
        let rc = poll(&pfds, 2, ms)  // a negative fd is ignored by poll
        if rc < 0 && errno == EINTR { continue }  // a retry may wait a little longer; harmless here
        if rc <= 0 { return .timedOut }
        if pfds[1].revents != 0 { return .cancelled }
        return .ready
    }
}

private func monotonicSeconds() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}
#endif
