// The idiomatic SwiftNIO echo server: swift-nio's own NIOEchoServer example (Sources/NIOEchoServer)
// with the benchmark's command line. One ServerBootstrap on a MultiThreadedEventLoopGroup of N
// threads: the server channel accepts on one loop and hands children out round-robin over the N
// loops. Each child has BackPressureHandler + EchoHandler: every read is written back and the
// writes are flushed once per read burst, in channelReadComplete.
//
// Usage: echo-server-nio [--host H] [--port P] [--threads N]
// Prints "listening on HOST:PORT" once bound; runs until SIGINT/SIGTERM.

import NIOCore
import NIOPosix

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

private final class EchoHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        // No promise: we don't care about the write's result, and it saves an allocation.
        context.write(data, promise: nil)
    }

    // One flush per read burst, so pending writes can go out as one gathering write.
    func channelReadComplete(context: ChannelHandlerContext) {
        context.flush()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        context.close(promise: nil)
    }
}

private func usage() -> Never {
    print("usage: echo-server-nio [--host H] [--port P] [--threads N]")
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
var threads = 1
var arguments = CommandLine.arguments.dropFirst()
while let flag = arguments.popFirst() {
    switch flag {
    case "--host": host = stringArgument(arguments.popFirst())
    case "--port": port = intArgument(arguments.popFirst())
    case "--threads": threads = intArgument(arguments.popFirst())
    case "-h", "--help": usage()
    default: usage()
    }
}
guard threads >= 1, (0...65535).contains(port) else { usage() }

signal(SIGPIPE, SIG_IGN)  // a peer that resets must not kill the server

// Block SIGINT/SIGTERM before any event loop thread exists (threads inherit the mask), so that
// only the main thread's sigwait() below receives them.
var signals = sigset_t()
sigemptyset(&signals)
sigaddset(&signals, SIGINT)
sigaddset(&signals, SIGTERM)
pthread_sigmask(SIG_BLOCK, &signals, nil)

let group = MultiThreadedEventLoopGroup(numberOfThreads: threads)
let bootstrap = ServerBootstrap(group: group)
    // Backlog as deep as Tether's listeners (the example's 256 drops SYNs when 1000 clients connect
    // at once), SO_REUSEADDR on the listener.
    .serverChannelOption(.backlog, value: 4096)
    .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
    .childChannelInitializer { channel in
        // Don't read faster than we can write: BackPressureHandler stops reading while the
        // channel is not writable (Tether's echo does the same with pauseReading()).
        channel.eventLoop.makeCompletedFuture {
            try channel.pipeline.syncOperations.addHandler(BackPressureHandler())
            try channel.pipeline.syncOperations.addHandler(EchoHandler())
        }
    }
    .childChannelOption(.socketOption(.so_reuseaddr), value: 1)
    // ServerBootstrap already sets TCP_NODELAY on the listener (accepted sockets inherit it on
    // Linux); set it on the children explicitly as well.
    .childChannelOption(.tcpOption(.tcp_nodelay), value: 1)
    .childChannelOption(.maxMessagesPerRead, value: 16)
    // The receive allocator is left at NIO's default, AdaptiveRecvByteBufferAllocator.

let channel = try bootstrap.bind(host: host, port: port).wait()
print("listening on \(host):\(channel.localAddress?.port ?? port) (threads: \(threads))")
fflush(nil)  // flush stdout even when it is a file or a pipe

// Block on the main thread until SIGINT or SIGTERM, then exit straight away (the mask was set
// before the event loop threads were created, so only this sigwait() receives them).
var received: Int32 = 0
sigwait(&signals, &received)
exit(0)
