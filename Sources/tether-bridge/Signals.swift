import Dispatch
import Foundation

/// SIGINT/SIGTERM become `.shutdown` events for the supervisor (a second one closes at once).
/// Dispatch sources rather than `signal()` handlers: the handler runs as ordinary code, not in
/// signal context, and works the same on Linux and macOS.
final class SignalHandlers {
    private let sources: [any DispatchSourceSignal]

    init(input: AsyncStream<BridgeEvent>.Continuation) {
        // A peer closing a socket mid-write must be an error, not a process kill.
        signal(SIGPIPE, SIG_IGN)
        var sources: [any DispatchSourceSignal] = []
        for (number, name) in [(SIGINT, "SIGINT"), (SIGTERM, "SIGTERM")] {
            signal(number, SIG_IGN)  // else the default action kills us before the source sees it
            let source = DispatchSource.makeSignalSource(signal: number, queue: .global())
            source.setEventHandler { input.yield(.shutdown(reason: name)) }
            source.resume()
            sources.append(source)
        }
        self.sources = sources
    }

    func cancel() {
        for source in sources { source.cancel() }
    }
}
