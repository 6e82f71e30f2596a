#if os(Linux)
import Glibc
import Synchronization
import TetherHTTP

/// A blocking Docker Engine API client over the engine's unix socket, for background threads
/// only (never an event loop). One connection per call; the API version is negotiated once
/// (`GET /version`) and again after the engine was unreachable (it may have been upgraded).
public final class DockerClient: Sendable {
    public let socketPath: String
    /// Per call: connect, send and every read wait at most this long.
    public let timeoutSeconds: Int
    private let negotiated = Mutex<String?>(nil)

    /// Largest response accepted (a container list of thousands fits).
    static let maxResponseBytes = 16 * 1024 * 1024

    public init(socketPath: String, timeoutSeconds: Int = 30) {
        self.socketPath = socketPath
        self.timeoutSeconds = max(1, timeoutSeconds)
    }

    /// The API version to use, negotiated on first use.
    public func apiVersion() throws(DockerError) -> String {
        if let known = negotiated.withLock({ $0 }) { return known }
        let (server, minimum) = try DockerAPI.decodeVersion(try send(DockerAPI.version()))
        let version = try DockerAPI.negotiate(server: server, minimum: minimum).get()
        negotiated.withLock { $0 = version }
        return version
    }

    public func send(_ request: DockerRequest) throws(DockerError) -> DockerResponse {
        do {
            return try exchange(request)
        } catch {
            if case .unreachable = error { negotiated.withLock { $0 = nil } }
            throw error
        }
    }

    private func exchange(_ request: DockerRequest) throws(DockerError) -> DockerResponse {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw .unreachable("socket: \(DockerClient.errorText(errno))") }
        defer { close(fd) }
        var tv = timeval(tv_sec: timeoutSeconds, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let path = Array(socketPath.utf8)
        guard path.count < MemoryLayout.size(ofValue: address.sun_path) else { throw .unreachable("socket path too long") }
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: path) }
        let length = socklen_t(MemoryLayout<sa_family_t>.size + path.count + 1)
        var rc: Int32
        repeat {
            rc = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, length) }
            }
        } while rc != 0 && errno == EINTR
        guard rc == 0 else { throw .unreachable("\(socketPath): \(DockerClient.errorText(errno))") }

        let out = request.encoded()
        var sent = 0
        while sent < out.count {
            let n = out.withUnsafeBytes { Glibc.send(fd, $0.baseAddress.map { $0 + sent }, out.count - sent, Int32(MSG_NOSIGNAL)) }
            if n > 0 {
                sent += n
            } else if n < 0 && errno == EINTR {
                continue
            } else if n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) {
                throw .timeout("\(request.method) \(request.path)")
            } else {
                throw .unreachable("send: \(DockerClient.errorText(errno))")
            }
        }

        var decoder = HTTPResponseDecoder()
        decoder.expectResponse(toMethod: request.method)
        var status: Int?
        var body: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65_536)
        var eof = false
        while true {
            do {
                while let event = try decoder.next() {
                    switch event {
                    case .head(let head):
                        if head.status >= 200 { status = head.status }
                    case .body(let bytes):
                        body += bytes
                        guard body.count <= DockerClient.maxResponseBytes else {
                            throw DockerError.protocolError("response over \(DockerClient.maxResponseBytes) bytes")
                        }
                    case .end:
                        if let status { return DockerResponse(status: status, body: body) }
                    }
                }
                if eof {
                    if let error = decoder.finish() {
                        throw DockerError.protocolError("\(request.method) \(request.path): \(error.reason)")
                    }
                    while let event = try decoder.next() {
                        if case .end = event, let status { return DockerResponse(status: status, body: body) }
                    }
                    throw DockerError.protocolError("\(request.method) \(request.path): connection closed early")
                }
            } catch let error as DockerError {
                throw error
            } catch {
                throw .protocolError("\(request.method) \(request.path): \(error)")
            }
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n > 0 {
                buffer.withUnsafeBytes { decoder.feed(UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
            } else if n == 0 {
                eof = true
            } else if errno == EINTR {
                continue
            } else if errno == EAGAIN || errno == EWOULDBLOCK {
                throw .timeout("\(request.method) \(request.path)")
            } else {
                throw .unreachable("recv: \(DockerClient.errorText(errno))")
            }
        }
    }

    static func errorText(_ code: Int32) -> String {
        strerror(code).map { String(cString: $0) } ?? "errno \(code)"
    }
}
#endif
