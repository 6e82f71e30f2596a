// Echo server on Tether's io_uring core (TetherIO): one ring per worker thread, one SO_REUSEPORT
// listening socket per worker (multishot accept), provided receive buffers. Each read is written
// straight back; reading pauses while the connection's write queue is above the high watermark.
//
// Usage: echo-server-tether [--host H] [--port P] [--workers N]
// Prints "listening on HOST:PORT" once every worker is accepting; runs until SIGINT/SIGTERM.

#if os(Linux)
import Glibc
import TetherIO

final class Echo: ConnectionHandler {
    func connection(_ c: Connection, didRead b: UnsafeRawBufferPointer) {
        c.write(b)
        if !c.isWritable { c.pauseReading() }
    }

    func connectionWritable(_ c: Connection) {
        c.resumeReading()
    }
}

private func usage() -> Never {
    print("usage: echo-server-tether [--host H] [--port P] [--workers N]")
    exit(2)
}

private func intArgument(_ text: String?) -> Int {
    guard let text, let value = Int(text) else { usage() }
    return value
}

private func stringArgument(_ text: String?) -> String {
    guard let text else { usage() }
    return text
}

var host = "127.0.0.1"
var port = 9999
var workers = 1
var arguments = CommandLine.arguments.dropFirst()
while let flag = arguments.popFirst() {
    switch flag {
    case "--host": host = stringArgument(arguments.popFirst())
    case "--port": port = intArgument(arguments.popFirst())
    case "--workers": workers = intArgument(arguments.popFirst())
    case "-h", "--help": usage()
    default: usage()
    }
}
guard workers >= 1, (0...65535).contains(port), let requested = SocketAddress(host: host, port: port) else {
    usage()
}

signal(SIGPIPE, SIG_IGN)  // a peer that resets must not kill the server

// Block SIGINT/SIGTERM before any worker thread exists (threads inherit the mask), so that only
// the main thread's sigwait() below receives them.
var signals = sigset_t()
sigemptyset(&signals)
sigaddset(&signals, SIGINT)
sigaddset(&signals, SIGTERM)
pthread_sigmask(SIG_BLOCK, &signals, nil)

do {
    // One listening socket per worker on the same port (0 = any free one).
    let (listenFDs, bound) = try Socket.listen(on: requested, count: workers)
    var configuration = IOConfiguration()
    configuration.workers = workers
    let group = try EventLoopGroup(configuration: configuration)
    try group.start { loop in
        loop.startAccepting(listenFD: listenFDs[loop.index]) { _ in Echo() }
    }
    print("listening on \(host):\(bound.port) (workers: \(workers))")
    fflush(nil)  // flush stdout even when it is a file or a pipe

    var received: Int32 = 0
    sigwait(&signals, &received)
    exit(0)
} catch {
    print("echo-server-tether: \(error)")
    exit(1)
}
#else
print("echo-server-tether needs Linux (io_uring)")
#endif
