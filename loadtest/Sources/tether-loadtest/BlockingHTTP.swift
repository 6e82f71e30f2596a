import Glibc
import TetherHTTP
import TetherIO

/// Blocking socket calls for the main thread only (preflight, /metrics): never on a loop.
enum BlockingHTTP {
    /// Connects with a timeout; the fd or a readable error.
    static func connect(_ address: SocketAddress, timeoutMilliseconds: Int32 = 2000) -> Result<Int32, LoadTestError> {
        let fd = socket(address.family == .v4 ? AF_INET : AF_INET6, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
        guard fd >= 0 else { return .failure(.failed("socket: \(String(cString: strerror(errno)))")) }
        var rc: Int32
        switch address.family {
        case .v4:
            var sa = sockaddr_in()
            sa.sin_family = sa_family_t(AF_INET)
            sa.sin_port = address.port.bigEndian
            withUnsafeMutableBytes(of: &sa.sin_addr) { $0.copyBytes(from: address.bytes) }
            rc = withUnsafePointer(to: &sa) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
        case .v6:
            var sa = sockaddr_in6()
            sa.sin6_family = sa_family_t(AF_INET6)
            sa.sin6_port = address.port.bigEndian
            withUnsafeMutableBytes(of: &sa.sin6_addr) { $0.copyBytes(from: address.bytes) }
            rc = withUnsafePointer(to: &sa) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in6>.size)) }
            }
        case .unix:
            // Targets are loopback TCP addresses (parseLoopbackTarget): never a unix path.
            close(fd)
            return .failure(.failed("unix-domain targets are not supported"))
        }
        if rc != 0 && errno == EINPROGRESS {
            var p = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
            if poll(&p, 1, timeoutMilliseconds) == 1 {
                var err: Int32 = 0
                var len = socklen_t(MemoryLayout<Int32>.size)
                getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len)
                rc = err == 0 ? 0 : -1
                errno = err
            } else {
                errno = ETIMEDOUT
            }
        }
        guard rc == 0 else {
            let message = String(cString: strerror(errno))
            close(fd)
            return .failure(.failed("cannot connect to \(address): \(message)"))
        }
        // Back to blocking, with timeouts, for the simple request/response below.
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK)
        var tv = timeval(tv_sec: Int(timeoutMilliseconds / 1000), tv_usec: Int(timeoutMilliseconds % 1000) * 1000)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        return .success(fd)
    }

    /// The relay must be reachable before any load starts: a clear message instead of N
    /// failed connects.
    static func checkReachable(_ address: SocketAddress) throws {
        switch connect(address) {
        case .success(let fd): close(fd)
        case .failure(let error): throw LoadTestError.failed("the relay is not reachable: \(error)")
        }
    }

    /// GET over plain HTTP/1.1: (status, body).
    static func get(_ address: SocketAddress, path: String) throws -> (Int, [UInt8]) {
        let fd: Int32
        switch connect(address) {
        case .success(let s): fd = s
        case .failure(let error): throw error
        }
        defer { close(fd) }
        var headers = HTTPHeaders()
        headers.add(name: "Host", value: address.description)
        headers.add(name: "Connection", value: "close")
        let request = HTTPRequestHead(method: "GET", target: path, headers: headers).encoded()
        let sent = request.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        guard sent == request.count else { throw LoadTestError.failed("GET \(path): send failed") }
        var decoder = HTTPResponseDecoder()
        decoder.expectResponse(toMethod: "GET")
        var status = 0
        var body: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n > 0 {
                buffer.withUnsafeBytes { decoder.feed(UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
            } else if n == 0 {
                if let error = decoder.finish() { throw LoadTestError.failed("GET \(path): \(error)") }
            } else {
                throw LoadTestError.failed("GET \(path): \(String(cString: strerror(errno)))")
            }
            do {
                while let event = try decoder.next() {
                    switch event {
                    case .head(let head): status = head.status
                    case .body(let bytes):
                        guard body.count < 16 << 20 else { throw LoadTestError.failed("GET \(path): body too large") }
                        body += bytes
                    case .end: return (status, body)
                    }
                }
            } catch let error as LoadTestError {
                throw error
            } catch {
                throw LoadTestError.failed("GET \(path): \(error)")
            }
            if n == 0 { throw LoadTestError.failed("GET \(path): connection closed early") }
        }
    }
}

/// Where the relay's memory is read: /proc/PID/status, or its Prometheus endpoint.
enum MemoryProbe: Sendable {
    case pid(Int32)
    case metrics(SocketAddress, path: String)

    /// From `--relay-pid` / `--metrics-url http://127.0.0.1:9464/metrics` (loopback only).
    static func make(pid: Int32?, metricsURL: String?) throws -> MemoryProbe? {
        if let pid { return .pid(pid) }
        guard let url = metricsURL else { return nil }
        guard url.hasPrefix("http://") else { throw LoadTestError.failed("--metrics-url must be http://HOST:PORT/PATH") }
        let rest = url.dropFirst("http://".count)
        let slash = rest.firstIndex(of: "/") ?? rest.endIndex
        let address = try parseLoopbackTarget(String(rest[..<slash]))
        let path = slash == rest.endIndex ? "/metrics" : String(rest[slash...])
        return .metrics(address, path: path)
    }

    /// Resident bytes now, or nil if unreadable.
    func residentBytes() -> Int? {
        switch self {
        case .pid(let pid):
            return vmRSS(pid: pid)
        case .metrics(let address, let path):
            guard let (status, body) = try? BlockingHTTP.get(address, path: path), status == 200 else { return nil }
            return MemoryProbe.parseResident(String(decoding: body, as: UTF8.self))
        }
    }

    /// `process_resident_memory_bytes <value>` from a Prometheus text exposition.
    static func parseResident(_ text: String) -> Int? {
        for line in text.split(separator: "\n") where line.hasPrefix("process_resident_memory_bytes") {
            let parts = line.split(separator: " ")
            guard parts.count >= 2, parts[0] == "process_resident_memory_bytes" || parts[0].hasPrefix("process_resident_memory_bytes{"),
                  let value = Double(parts[1]) else { continue }
            return Int(value)
        }
        return nil
    }

    var description: String {
        switch self {
        case .pid(let pid): return "/proc/\(pid)/status VmRSS"
        case .metrics(let address, let path): return "http://\(address)\(path) process_resident_memory_bytes"
        }
    }
}
