#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

extension TierTable {
    /// Far larger than any sensible tier table; stops a wrong path (a log, a device) from being
    /// read into memory whole.
    public static let maxFileBytes = 1024 * 1024

    /// Reads and parses a tier table file (at startup or on reload, never on an event loop).
    /// An unreadable file is reported under the key "file".
    public static func load(file path: String) throws(QuotaConfigurationError) -> TierTable {
        try parse(json: try readFile(path))
    }

    private static func readFile(_ path: String) throws(QuotaConfigurationError) -> [UInt8] {
        func failure(_ problem: String) -> QuotaConfigurationError {
            QuotaConfigurationError(key: "file", problem: "\(path): \(problem)")
        }
        func systemError() -> QuotaConfigurationError {
            failure(String(cString: strerror(errno)))
        }
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw systemError() }
        defer { close(fd) }

        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 16 * 1024)
        while true {
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 {
                if errno == EINTR { continue }
                throw systemError()
            }
            if n == 0 { return bytes }
            guard bytes.count + n <= maxFileBytes else {
                throw failure("larger than \(maxFileBytes) bytes")
            }
            bytes.append(contentsOf: chunk[0..<n])
        }
    }
}
