import TetherWebSocket

/// Both roles decode the same bytes in pieces; events must respect the state machine, and
/// once closed nothing more may come out. A text event must be valid UTF-8 (String checks).
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let input = UnsafeBufferPointer(start: data, count: size)
    guard let first = input.first else { return 0 }
    for role in [WebSocketRole.server, .client] {
        var socket = WebSocketConnection(role: role, maxMessageSize: 8192)
        let piece = Int(first % 13) + 1
        var offset = 1
        var closedEvents = 0
        while offset < input.count {
            let end = min(input.count, offset + piece)
            socket.receive(UnsafeRawBufferPointer(UnsafeBufferPointer(rebasing: input[offset..<end])))
            offset = end
            while let event = socket.nextEvent() {
                switch event {
                case .text(let s):
                    precondition(s.utf8.count <= 8192, "message over the limit")
                case .binary(let b):
                    precondition(b.count <= 8192, "message over the limit")
                case .ping(let p), .pong(let p):
                    precondition(p.count <= 125, "control frame over 125 bytes")
                case .close, .protocolError:
                    closedEvents += 1
                    precondition(closedEvents == 1, "events after the connection closed")
                }
            }
            _ = socket.takeOutbound()
        }
    }
    return 0
}

// SwiftPM links executables with main defined as <module>_main; hand control to libFuzzer's
// driver from there.
@_silgen_name("LLVMFuzzerRunDriver")
func LLVMFuzzerRunDriver(_ argc: UnsafeMutablePointer<Int32>,
                         _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
                         _ callback: @convention(c) (UnsafePointer<UInt8>, Int) -> Int32) -> Int32

@_cdecl("fuzz_websocket_main")
public func fuzzerMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    var argc = argc
    var argv = argv
    return LLVMFuzzerRunDriver(&argc, &argv, fuzz)
}
