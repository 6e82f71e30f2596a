#if os(Linux)
import Glibc
internal import CURing

/// An IPv4, IPv6 or unix-domain socket address. Names are never resolved here: the data plane
/// only binds and connects to literal addresses, so no blocking DNS can sneak onto an event loop.
public struct SocketAddress: Sendable, Hashable, CustomStringConvertible {
    public enum Family: Sendable, Hashable { case v4, v6, unix }
    public let family: Family
    /// Address bytes in network order (4 or 16 bytes); for `.unix`, the path's UTF-8 bytes.
    public let bytes: [UInt8]
    public let port: UInt16

    public init?(host: String, port: Int) {
        guard (0...65535).contains(port) else { return nil }
        var host = host
        if host == "localhost" { host = "127.0.0.1" }
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        var v4 = in_addr()
        if inet_pton(AF_INET, host, &v4) == 1 {
            self.family = .v4
            self.bytes = withUnsafeBytes(of: &v4) { Array($0) }
            self.port = UInt16(port)
            return
        }
        var v6 = in6_addr()
        if inet_pton(AF_INET6, host, &v6) == 1 {
            self.family = .v6
            self.bytes = withUnsafeBytes(of: &v6) { Array($0) }
            self.port = UInt16(port)
            return
        }
        return nil
    }

    /// Longest unix socket path (sun_path holds 108 bytes with the terminating NUL).
    public static let maxUnixPathLength = 107

    /// A unix-domain stream socket path; nil if empty, too long or containing NUL.
    public init?(unixPath: String) {
        let path = Array(unixPath.utf8)
        guard !path.isEmpty, path.count <= SocketAddress.maxUnixPathLength, !path.contains(0) else { return nil }
        self.family = .unix
        self.bytes = path
        self.port = 0
    }

    init(family: Family, bytes: [UInt8], port: UInt16) {
        self.family = family
        self.bytes = bytes
        self.port = port
    }

    public var host: String {
        if family == .unix { return String(decoding: bytes, as: UTF8.self) }
        var out = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN) + 1)
        let af = family == .v4 ? AF_INET : AF_INET6
        return bytes.withUnsafeBytes { src in
            guard inet_ntop(af, src.baseAddress, &out, socklen_t(out.count)) != nil else { return "?" }
            return String(decoding: out.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        }
    }

    public var isLoopback: Bool {
        switch family {
        case .v4: return bytes.first == 127
        case .v6: return bytes == [UInt8](repeating: 0, count: 15) + [1]
        case .unix: return true
        }
    }

    public var description: String {
        switch family {
        case .v4: return "\(host):\(port)"
        case .v6: return "[\(host)]:\(port)"
        case .unix: return "unix:\(host)"
        }
    }

    /// Calls `body` with a sockaddr for this address.
    func withSockAddr<R>(_ body: (UnsafePointer<sockaddr>, socklen_t) -> R) -> R {
        switch family {
        case .v4:
            var sa = sockaddr_in()
            sa.sin_family = sa_family_t(AF_INET)
            sa.sin_port = port.bigEndian
            withUnsafeMutableBytes(of: &sa.sin_addr) { dst in dst.copyBytes(from: bytes) }
            return withUnsafePointer(to: &sa) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
        case .v6:
            var sa = sockaddr_in6()
            sa.sin6_family = sa_family_t(AF_INET6)
            sa.sin6_port = port.bigEndian
            withUnsafeMutableBytes(of: &sa.sin6_addr) { dst in dst.copyBytes(from: bytes) }
            return withUnsafePointer(to: &sa) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, socklen_t(MemoryLayout<sockaddr_in6>.size)) }
            }
        case .unix:
            var sa = sockaddr_un()
            sa.sun_family = sa_family_t(AF_UNIX)
            withUnsafeMutableBytes(of: &sa.sun_path) { dst in
                dst.copyBytes(from: bytes.prefix(SocketAddress.maxUnixPathLength))
            }
            let length = MemoryLayout<sa_family_t>.size + min(bytes.count, SocketAddress.maxUnixPathLength) + 1
            return withUnsafePointer(to: &sa) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, socklen_t(length)) }
            }
        }
    }

    static func from(storage: UnsafePointer<sockaddr_storage>) -> SocketAddress? {
        switch Int32(storage.pointee.ss_family) {
        case AF_INET:
            return storage.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { sa in
                var addr = sa.pointee.sin_addr
                return SocketAddress(family: .v4, bytes: withUnsafeBytes(of: &addr) { Array($0) },
                                     port: UInt16(bigEndian: sa.pointee.sin_port))
            }
        case AF_INET6:
            return storage.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { sa in
                var addr = sa.pointee.sin6_addr
                return SocketAddress(family: .v6, bytes: withUnsafeBytes(of: &addr) { Array($0) },
                                     port: UInt16(bigEndian: sa.pointee.sin6_port))
            }
        default:
            return nil
        }
    }

    static func peer(of fd: Int32) -> SocketAddress? {
        var storage = sockaddr_storage()
        var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let rc = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getpeername(fd, $0, &len) }
        }
        guard rc == 0 else { return nil }
        return from(storage: &storage)
    }

    static func local(of fd: Int32) -> SocketAddress? {
        var storage = sockaddr_storage()
        var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let rc = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) }
        }
        guard rc == 0 else { return nil }
        return from(storage: &storage)
    }
}

/// An errno-carrying error from a system call or an io_uring completion.
public struct IOError: Error, Sendable, Equatable, CustomStringConvertible {
    public let errno: Int32
    public let operation: String
    public init(errno: Int32, operation: String) {
        self.errno = errno
        self.operation = operation
    }
    public var description: String {
        "\(operation): \(strerror(errno).map { String(cString: $0) } ?? "error") (errno \(errno))"
    }
}

/// Blocking-free helpers for the few synchronous socket calls the core makes.
public enum Socket {
    /// Creates a listening socket. With `reusePort`, each worker binds its own socket to the
    /// same port and the kernel spreads incoming connections over them.
    public static func listen(on address: SocketAddress, backlog: Int32 = 4096,
                              reusePort: Bool = true) throws(IOError) -> (fd: Int32, address: SocketAddress) {
        guard address.family != .unix else { throw IOError(errno: EAFNOSUPPORT, operation: "listen: use listenUnix") }
        let af = address.family == .v4 ? AF_INET : AF_INET6
        let fd = socket(af, tether_sock_stream_cloexec(), 0)
        guard fd >= 0 else { throw IOError(errno: tether_errno(), operation: "socket") }
        _ = tether_setsockopt_int(fd, SOL_SOCKET, SO_REUSEADDR, 1)
        if reusePort { _ = tether_setsockopt_int(fd, SOL_SOCKET, SO_REUSEPORT, 1) }
        // Accepted sockets inherit it (Linux): small writes that follow one another (a
        // response head, then a streamed token) must not wait for the peer's delayed ACK.
        setNoDelay(fd)
        let rc = address.withSockAddr { Glibc.bind(fd, $0, $1) }
        guard rc == 0 else {
            let e = tether_errno()
            Glibc.close(fd)
            throw IOError(errno: e, operation: "bind \(address)")
        }
        guard Glibc.listen(fd, backlog) == 0 else {
            let e = tether_errno()
            Glibc.close(fd)
            throw IOError(errno: e, operation: "listen \(address)")
        }
        return (fd, SocketAddress.local(of: fd) ?? address)
    }

    /// One SO_REUSEPORT listening socket per worker, all on the same port (port 0 picks a free
    /// one for the first and the others join it). On failure none is left open.
    public static func listen(on address: SocketAddress, count: Int,
                              backlog: Int32 = 4096) throws(IOError) -> (fds: [Int32], address: SocketAddress) {
        var fds: [Int32] = []
        var bound = address
        do {
            for _ in 0..<Swift.max(1, count) {
                let l = try listen(on: bound, backlog: backlog, reusePort: true)
                fds.append(l.fd)
                bound = l.address
            }
        } catch {
            for fd in fds { Glibc.close(fd) }
            throw error
        }
        return (fds, bound)
    }

    /// Creates an unconnected client socket, optionally bound to a local source address (the
    /// load driver spreads connections over 127.0.0.x sources to pass the ephemeral-port limit).
    static func makeClient(for remote: SocketAddress, source: SocketAddress?) throws(IOError) -> Int32 {
        let af: Int32
        switch remote.family {
        case .v4: af = AF_INET
        case .v6: af = AF_INET6
        case .unix: af = AF_UNIX
        }
        let fd = socket(af, tether_sock_stream_cloexec(), 0)
        guard fd >= 0 else { throw IOError(errno: tether_errno(), operation: "socket") }
        if let source {
            // IP_BIND_ADDRESS_NO_PORT (24) defers port choice to connect(), so the 4-tuple, not
            // the source port alone, has to be unique.
            _ = tether_setsockopt_int(fd, Int32(IPPROTO_IP), 24, 1)
            let rc = source.withSockAddr { Glibc.bind(fd, $0, $1) }
            guard rc == 0 else {
                let e = tether_errno()
                Glibc.close(fd)
                throw IOError(errno: e, operation: "bind \(source)")
            }
        }
        return fd
    }

    /// A listening unix-domain stream socket at `path`. A socket file left there by an earlier
    /// run is replaced; any other kind of file is an error (never unlinked). `mode` is applied
    /// to the socket file (who may connect).
    public static func listenUnix(path: String, backlog: Int32 = 1024, mode: UInt32 = 0o600) throws(IOError) -> Int32 {
        guard let address = SocketAddress(unixPath: path) else {
            throw IOError(errno: ENAMETOOLONG, operation: "unix socket path \(path)")
        }
        var st = stat()
        if lstat(path, &st) == 0 {
            guard (st.st_mode & S_IFMT) == S_IFSOCK else { throw IOError(errno: EEXIST, operation: "bind \(path)") }
            unlink(path)
        }
        let fd = socket(AF_UNIX, tether_sock_stream_cloexec(), 0)
        guard fd >= 0 else { throw IOError(errno: tether_errno(), operation: "socket") }
        let rc = address.withSockAddr { Glibc.bind(fd, $0, $1) }
        guard rc == 0 else {
            let e = tether_errno()
            Glibc.close(fd)
            throw IOError(errno: e, operation: "bind \(path)")
        }
        _ = chmod(path, mode_t(mode))
        guard Glibc.listen(fd, backlog) == 0 else {
            let e = tether_errno()
            Glibc.close(fd)
            throw IOError(errno: e, operation: "listen \(path)")
        }
        return fd
    }

    /// A blocking connect to a unix socket, for background threads (never on a loop: a full
    /// backlog blocks). The descriptor is close-on-exec; hand it to a loop with `adopt`.
    public static func connectUnixBlocking(path: String) throws(IOError) -> Int32 {
        guard let address = SocketAddress(unixPath: path) else {
            throw IOError(errno: ENAMETOOLONG, operation: "unix socket path \(path)")
        }
        let fd = socket(AF_UNIX, tether_sock_stream_cloexec(), 0)
        guard fd >= 0 else { throw IOError(errno: tether_errno(), operation: "socket") }
        var rc: Int32
        repeat {
            rc = address.withSockAddr { Glibc.connect(fd, $0, $1) }
        } while rc != 0 && tether_errno() == EINTR
        guard rc == 0 else {
            let e = tether_errno()
            Glibc.close(fd)
            throw IOError(errno: e, operation: "connect \(path)")
        }
        return fd
    }

    static func setNoDelay(_ fd: Int32) {
        _ = tether_setsockopt_int(fd, Int32(IPPROTO_TCP), TCP_NODELAY, 1)
    }
}
#endif
