import Glibc
import Synchronization
import XCTest
import TetherIO

/// Thread-safe bag of results written by handlers on loop threads.
final class Box<T: Sendable>: Sendable {
    private let value: Mutex<T>
    init(_ initial: T) { value = Mutex(initial) }
    func with<R: Sendable>(_ body: (inout T) -> R) -> R { value.withLock { body(&$0) } }
    var get: T { value.withLock { $0 } }
}

/// Polls `condition` until it holds or the timeout passes. No timing assertions: the timeout
/// only bounds how long a broken build can hang the suite.
func waitUntil(timeout seconds: Double = 60, _ condition: () -> Bool) -> Bool {
    let deadline = EventLoop.monotonicMilliseconds() + UInt64(seconds * 1000)
    while EventLoop.monotonicMilliseconds() < deadline {
        if condition() { return true }
        usleep(2_000)
    }
    return condition()
}

func openFileDescriptorCount() -> Int {
    guard let dir = opendir("/proc/self/fd") else { return -1 }
    defer { closedir(dir) }
    var n = 0
    while readdir(dir) != nil { n += 1 }
    return n - 3 // ".", ".." and the directory's own descriptor
}

func raiseFileLimit() {
    var limit = rlimit()
    getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
    limit.rlim_cur = limit.rlim_max
    setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
}

/// Deterministic pseudo-random bytes (SplitMix64) so failures reproduce.
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    mutating func bytes(_ n: Int) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: n)
        var i = 0
        while i < n {
            var v = next()
            for _ in 0..<8 where i < n {
                out[i] = UInt8(truncatingIfNeeded: v)
                v >>= 8
                i += 1
            }
        }
        return out
    }
}

/// Echoes everything back, respecting backpressure.
final class EchoHandler: ConnectionHandler {
    let deadline: UInt64?
    init(deadline: UInt64? = nil) { self.deadline = deadline }
    func connectionDidOpen(_ connection: Connection) {
        if let deadline { connection.setDeadline(milliseconds: deadline) }
    }
    func connection(_ connection: Connection, didRead bytes: UnsafeRawBufferPointer) {
        connection.write(bytes)
        if !connection.isWritable { connection.pauseReading() }
    }
    func connectionWritable(_ connection: Connection) { connection.resumeReading() }
}

/// A server group listening on an ephemeral loopback port.
struct TestServer {
    let group: EventLoopGroup
    let address: SocketAddress

    static func start(workers: Int = 2, configure: (inout IOConfiguration) -> Void = { _ in },
                      tls: TLSContextBox? = nil,
                      makeHandler: @escaping @Sendable () -> any ConnectionHandler) throws -> TestServer {
        try start(workers: workers, configure: configure, tls: tls) { _ in makeHandler() }
    }

    /// As above; `makeHandler` also gets every worker's handle (for hand-off tests).
    static func start(workers: Int = 2, configure: (inout IOConfiguration) -> Void = { _ in },
                      tls: TLSContextBox? = nil,
                      makeHandler: @escaping @Sendable ([EventLoopHandle]) -> any ConnectionHandler) throws -> TestServer {
        var config = IOConfiguration()
        config.workers = workers
        configure(&config)
        let group = try EventLoopGroup(configuration: config)
        let (listenFDs, address) = try Socket.listen(on: SocketAddress(host: "127.0.0.1", port: 0)!, count: workers)
        let handles = group.handles
        try group.start { loop in
            loop.startAccepting(listenFD: listenFDs[loop.index], tls: tls) { _ in makeHandler(handles) }
        }
        return TestServer(group: group, address: address)
    }
}

/// A plain blocking client socket connected to `address` (IPv4 loopback in these tests).
func connectBlocking(to address: SocketAddress) -> Int32 {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    var sa = sockaddr_in()
    sa.sin_family = sa_family_t(AF_INET)
    sa.sin_port = address.port.bigEndian
    inet_pton(AF_INET, address.host, &sa.sin_addr)
    let rc = withUnsafePointer(to: &sa) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    if rc != 0 { close(fd); return -1 }
    return fd
}
