import TetherHTTP

/// The client-side decoder with a queue of request methods (HEAD changes framing).
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let input = UnsafeBufferPointer(start: data, count: size)
    guard input.count >= 2 else { return 0 }
    var limits = HTTPLimits()
    limits.maxBodySize = 4096
    var decoder = HTTPResponseDecoder(limits: limits)
    for i in 0..<4 { decoder.expectResponse(toMethod: input[0] & (1 << i) != 0 ? "HEAD" : "GET") }
    let piece = Int(input[1] % 23) + 1
    var offset = 2
    var heads = 0
    while offset < input.count {
        let end = min(input.count, offset + piece)
        decoder.feed(UnsafeRawBufferPointer(UnsafeBufferPointer(rebasing: input[offset..<end])))
        offset = end
        while true {
            let event: HTTPResponseEvent?
            do { event = try decoder.next() } catch { return 0 }
            guard let event else { break }
            if case .head = event { heads += 1 }
            precondition(heads < 1000)
        }
    }
    _ = decoder.finish()
    while let _ = try? decoder.next() {}
    return 0
}

// SwiftPM links executables with main defined as <module>_main; hand control to libFuzzer's
// driver from there.
@_silgen_name("LLVMFuzzerRunDriver")
func LLVMFuzzerRunDriver(_ argc: UnsafeMutablePointer<Int32>,
                         _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
                         _ callback: @convention(c) (UnsafePointer<UInt8>, Int) -> Int32) -> Int32

@_cdecl("fuzz_http_response_main")
public func fuzzerMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    var argc = argc
    var argv = argv
    return LLVMFuzzerRunDriver(&argc, &argv, fuzz)
}
