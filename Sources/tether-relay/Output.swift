import Glibc
import TetherConfig

/// Whole strings to stdout / stderr (Glibc's FILE globals are not concurrency-safe in Swift 6).
enum Output {
    static func standardOutput(_ text: String) { write(text, to: 1) }
    static func standardError(_ text: String) { write(text, to: 2) }

    private static func write(_ text: String, to fd: Int32) {
        var text = text
        text.withUTF8 { buffer in
            var offset = 0
            while offset < buffer.count {
                let n = Glibc.write(fd, buffer.baseAddress.map { $0 + offset }, buffer.count - offset)
                if n > 0 {
                    offset += n
                } else if !(n < 0 && errno == EINTR) {
                    return
                }
            }
        }
    }

    /// "tether-relay: 2 configuration errors:" and one indented line per problem.
    static func report(_ error: ConfigurationError, file: String?) {
        let count = error.issues.count
        let place = file.map { " (configuration file \($0))" } ?? ""
        var text = "tether-relay: \(count) configuration error\(count == 1 ? "" : "s")\(place):\n"
        for line in error.lines { text += "  \(line)\n" }
        standardError(text)
    }

    static func warnings(_ warnings: [ConfigurationIssue]) -> String {
        warnings.map { "  warning: \($0)\n" }.joined()
    }
}
