/// How sessions are isolated, and the Docker settings of the `docker` mode (docs/ISOLATION.md).
public struct IsolationSettings: Sendable, Equatable {
    public enum Mode: String, Sendable, CaseIterable {
        /// Every session in the relay process (the default).
        case process
        /// Every session's untrusted work in its own locked-down container.
        case docker
    }

    public var mode = Mode.process
    public var dockerSocket = "/var/run/docker.sock"
    public var image = "tether-session:latest"
    /// Host directory holding one directory per running session (bind mounted into its
    /// container at `containerDirectory`). Short: socket paths must fit in 107 bytes.
    public var runDirectory = "/run/tether"
    /// Value of the `tether.relay` label; relays sharing an engine need different ones.
    /// nil: the host name.
    public var instance: String?
    /// uid:gid the worker runs as (numeric).
    public var user = "1001:1001"
    public var memoryBytes = 512 * 1024 * 1024
    public var cpus = 0.5
    public var pidsLimit = 64
    public var fileLimit = 4096
    public var readOnlyRootFilesystem = true
    public var capDrop = ["ALL"]
    public var noNewPrivileges = true
    /// A seccomp profile (JSON file) instead of the engine's default.
    public var seccompProfileFile: String?
    /// Containers at once (running or starting); beyond: 503 ISOLATION_UNAVAILABLE.
    public var maxContainers = 500
    /// Container starts in flight at once; more wait in a queue of `startQueue`.
    public var maxConcurrentStarts = 8
    public var startQueue = 1024
    /// Create + start + the worker's socket answering, at most.
    public var startTimeoutMilliseconds: UInt64 = 30_000
    /// After a failed start, requests get 503 for this long before the next attempt (doubling
    /// per consecutive failure up to `retryMaxMilliseconds`).
    public var retryInitialMilliseconds: UInt64 = 1_000
    public var retryMaxMilliseconds: UInt64 = 60_000
    public var workerLogLevel = "notice"
    /// Each Docker Engine API call, at most.
    public var engineTimeoutSeconds = 30

    public init() {}

    /// Where the session directory appears inside the container, and the worker's socket in it.
    public static let containerDirectory = "/run/tether"
    public static let socketName = "worker.sock"
    /// The image's binary.
    public static let containerBinary = "/tether-relay"

    public var isDocker: Bool { mode == .docker }

    /// run_directory/<64 hex>/worker.sock must fit a unix socket address (107 bytes).
    public static let maxRunDirectoryLength = 107 - 1 - 64 - 1 - socketName.utf8.count

    public func sessionDirectory(_ session: String) -> String { runDirectory + "/" + session }
    public func socketPath(_ session: String) -> String { sessionDirectory(session) + "/" + IsolationSettings.socketName }
    public static func containerName(_ session: String) -> String { "tether-session-" + session }

    /// uid and gid from `user` ("1001:1001"); nil unless both are numbers.
    public var userIDs: (uid: UInt32, gid: UInt32)? {
        let parts = user.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 2, let uid = UInt32(parts[0]), let gid = UInt32(parts[1]) else { return nil }
        return (uid, gid)
    }
}
