import TetherHTTP

/// Feeds the input to a request decoder in pieces (sizes taken from the input itself) and
/// checks the event grammar: head, body*, end, repeated; an error ends everything.
/// A crash, a trap or a grammar violation is a finding.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let input = UnsafeBufferPointer(start: data, count: size)
    guard let first = input.first else { return 0 }
    var limits = HTTPLimits()
    limits.maxBodySize = 4096
    limits.maxRequestLineLength = 512
    limits.maxHeaderBytes = 1024
    var decoder = HTTPRequestDecoder(limits: limits)
    let piece = Int(first % 17) + 1
    var offset = 1
    var inMessage = false
    while offset < input.count {
        let end = min(input.count, offset + piece)
        decoder.feed(UnsafeRawBufferPointer(UnsafeBufferPointer(rebasing: input[offset..<end])))
        offset = end
        while true {
            let event: HTTPRequestEvent?
            do { event = try decoder.next() } catch { return 0 }
            guard let event else { break }
            switch event {
            case .head(let head):
                precondition(!inMessage, "head inside a message")
                inMessage = true
                // A decoded head re-encodes to something that decodes to the same head.
                var bytes: [UInt8] = []
                head.encode(into: &bytes)
                var again = HTTPRequestDecoder()
                again.feed(bytes)
                if case .head(let reparsed)? = try? again.next() {
                    precondition(reparsed.method == head.method && reparsed.target == head.target, "re-encoded head differs")
                }
            case .body(let bytes):
                precondition(inMessage && !bytes.isEmpty, "body outside a message or empty")
            case .end:
                precondition(inMessage, "end without head")
                inMessage = false
            }
        }
    }
    _ = decoder.finish()
    return 0
}

// SwiftPM links executables with main defined as <module>_main; hand control to libFuzzer's
// driver from there.
@_silgen_name("LLVMFuzzerRunDriver")
func LLVMFuzzerRunDriver(_ argc: UnsafeMutablePointer<Int32>,
                         _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
                         _ callback: @convention(c) (UnsafePointer<UInt8>, Int) -> Int32) -> Int32

@_cdecl("fuzz_http_request_main")
public func fuzzerMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    var argc = argc
    var argv = argv
    return LLVMFuzzerRunDriver(&argc, &argv, fuzz)
}
