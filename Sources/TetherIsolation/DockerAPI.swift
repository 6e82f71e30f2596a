import FoundationEssentials

/// One Docker Engine API call, sans I/O: the HTTP/1.1 request bytes for the engine's unix
/// socket. One request per connection (`Connection: close`), as the engine's own CLI does for
/// short calls.
public struct DockerRequest: Sendable, Equatable {
    public var method: String
    /// Absolute path, already prefixed with the API version where the call is versioned.
    public var path: String
    public var query: [QueryItem]
    public var body: [UInt8]?

    public struct QueryItem: Sendable, Equatable {
        public var name: String
        public var value: String
        public init(_ name: String, _ value: String) {
            self.name = name
            self.value = value
        }
    }

    public init(method: String, path: String, query: [QueryItem] = [], body: [UInt8]? = nil) {
        self.method = method
        self.path = path
        self.query = query
        self.body = body
    }

    public var target: String {
        guard !query.isEmpty else { return path }
        return path + "?" + query.map { "\(DockerRequest.escape($0.name))=\(DockerRequest.escape($0.value))" }
            .joined(separator: "&")
    }

    public func encoded() -> [UInt8] {
        var head = "\(method) \(target) HTTP/1.1\r\nHost: docker\r\nUser-Agent: tether-relay\r\nConnection: close\r\n"
        if let body {
            head += "Content-Type: application/json\r\nContent-Length: \(body.count)\r\n"
        } else if method == "POST" {
            head += "Content-Length: 0\r\n"
        }
        head += "\r\n"
        return Array(head.utf8) + (body ?? [])
    }

    /// RFC 3986 unreserved characters stay, everything else is percent-encoded.
    static func escape(_ s: String) -> String {
        var out = ""
        for b in s.utf8 {
            switch b {
            case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"),
                 UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "_"),
                 UInt8(ascii: "~"):
                out.unicodeScalars.append(UnicodeScalar(b))
            default:
                let hex = Array("0123456789ABCDEF".unicodeScalars)
                out += "%"
                out.unicodeScalars.append(hex[Int(b >> 4)])
                out.unicodeScalars.append(hex[Int(b & 0xF)])
            }
        }
        return out
    }
}

/// A status and body as the engine sent them.
public struct DockerResponse: Sendable, Equatable {
    public var status: Int
    public var body: [UInt8]

    public init(status: Int, body: [UInt8]) {
        self.status = status
        self.body = body
    }

    /// The engine's `{"message": "..."}`, or the body as text.
    public var message: String {
        struct ErrorBody: Decodable { var message: String }
        if let decoded = try? JSONDecoder().decode(ErrorBody.self, from: Data(body)) { return decoded.message }
        var text = Substring(String(decoding: body.prefix(300), as: UTF8.self))
        while let last = text.last, last.isWhitespace { text = text.dropLast() }
        while let first = text.first, first.isWhitespace { text = text.dropFirst() }
        return text.isEmpty ? "HTTP \(status)" : String(text)
    }
}

public enum DockerError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The engine's socket cannot be reached (engine stopped, wrong path, no permission).
    case unreachable(String)
    case timeout(String)
    /// The engine answered something that is not the API (bad HTTP or JSON).
    case protocolError(String)
    /// An API error: status and the engine's message.
    case status(Int, String)

    public var description: String {
        switch self {
        case .unreachable(let why): return "Docker engine unreachable: \(why)"
        case .timeout(let what): return "Docker engine timed out: \(what)"
        case .protocolError(let why): return "Docker engine protocol error: \(why)"
        case .status(let status, let message): return "Docker engine answered \(status): \(message)"
        }
    }
}

/// The container a session runs in: locked down by default (docs/ISOLATION.md).
public struct ContainerSpec: Sendable, Equatable {
    public var name: String
    public var image: String
    public var command: [String]
    /// uid:gid.
    public var user: String
    public var labels: [String: String]
    public var networkMode = "none"
    public var readOnlyRootFilesystem = true
    public var capDrop: [String] = ["ALL"]
    public var noNewPrivileges = true
    /// A seccomp profile's JSON text (the engine's default profile when nil).
    public var seccompProfile: String?
    public var memoryBytes: Int
    public var nanoCPUs: Int
    public var pidsLimit: Int
    /// host:container[:options] bind mounts.
    public var binds: [String]
    /// RLIMIT_NOFILE inside the container (nil: the engine's default).
    public var fileLimit: Int?

    public init(name: String, image: String, command: [String], user: String, labels: [String: String],
                memoryBytes: Int, nanoCPUs: Int, pidsLimit: Int, binds: [String]) {
        self.name = name
        self.image = image
        self.command = command
        self.user = user
        self.labels = labels
        self.memoryBytes = memoryBytes
        self.nanoCPUs = nanoCPUs
        self.pidsLimit = pidsLimit
        self.binds = binds
    }

    struct Body: Codable, Equatable {
        var Image: String
        var Cmd: [String]
        var User: String
        var Labels: [String: String]
        var NetworkDisabled: Bool
        var HostConfig: Host
    }

    struct Host: Codable, Equatable {
        var NetworkMode: String
        var ReadonlyRootfs: Bool
        var CapDrop: [String]
        var SecurityOpt: [String]
        var Memory: Int
        /// Equal to Memory: no swap on top of it.
        var MemorySwap: Int
        var NanoCpus: Int
        var PidsLimit: Int
        var Binds: [String]
        var Ulimits: [Ulimit]?
        var RestartPolicy: Restart
        var IpcMode: String
    }

    struct Ulimit: Codable, Equatable {
        var Name: String
        var Soft: Int
        var Hard: Int
    }

    struct Restart: Codable, Equatable {
        var Name: String
    }

    var body: Body {
        var security: [String] = []
        if noNewPrivileges { security.append("no-new-privileges") }
        if let seccompProfile { security.append("seccomp=\(seccompProfile)") }
        return Body(Image: image, Cmd: command, User: user, Labels: labels, NetworkDisabled: networkMode == "none",
                    HostConfig: Host(NetworkMode: networkMode, ReadonlyRootfs: readOnlyRootFilesystem, CapDrop: capDrop,
                                     SecurityOpt: security, Memory: memoryBytes, MemorySwap: memoryBytes,
                                     NanoCpus: nanoCPUs, PidsLimit: pidsLimit, Binds: binds,
                                     Ulimits: fileLimit.map { [Ulimit(Name: "nofile", Soft: $0, Hard: $0)] },
                                     RestartPolicy: Restart(Name: "no"), IpcMode: "private"))
    }

    public func jsonBody() -> [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return (try? Array(encoder.encode(body))) ?? []
    }
}

/// What `inspect` tells about a container.
public struct ContainerInfo: Sendable, Equatable {
    public var id: String
    public var name: String
    public var running: Bool
    /// created, running, exited, dead, ...
    public var status: String
    public var exitCode: Int
    public var oomKilled: Bool
    public var error: String
    public var labels: [String: String]
}

/// One entry of a container list.
public struct ContainerSummary: Sendable, Equatable {
    public var id: String
    public var names: [String]
    public var labels: [String: String]
    public var state: String
}

/// Requests and response parsing for the calls the relay makes. Versioned calls use the
/// version negotiated with `GET /version` (1.41, or the engine's own if older).
public enum DockerAPI {
    /// What this client speaks (Docker 20.10) and the oldest it accepts (NanoCpus, PidsLimit).
    public static let preferredVersion = "1.41"
    public static let oldestVersion = "1.25"

    public static func version() -> DockerRequest { DockerRequest(method: "GET", path: "/version") }
    public static func ping() -> DockerRequest { DockerRequest(method: "GET", path: "/_ping") }

    public static func create(_ spec: ContainerSpec, api: String) -> DockerRequest {
        DockerRequest(method: "POST", path: "/v\(api)/containers/create", query: [.init("name", spec.name)],
                      body: spec.jsonBody())
    }

    public static func start(_ id: String, api: String) -> DockerRequest {
        DockerRequest(method: "POST", path: "/v\(api)/containers/\(DockerRequest.escape(id))/start")
    }

    public static func inspect(_ id: String, api: String) -> DockerRequest {
        DockerRequest(method: "GET", path: "/v\(api)/containers/\(DockerRequest.escape(id))/json")
    }

    /// Kill (if running) and remove, with its anonymous volumes.
    public static func remove(_ id: String, api: String) -> DockerRequest {
        DockerRequest(method: "DELETE", path: "/v\(api)/containers/\(DockerRequest.escape(id))",
                      query: [.init("force", "true"), .init("v", "true")])
    }

    /// Every container (running or not) carrying all of these labels.
    public static func list(labels: [String: String], api: String) -> DockerRequest {
        let filters = labels.keys.sorted().map { "\($0)=\(labels[$0] ?? "")" }
        struct Filters: Encodable { var label: [String] }
        let json = (try? JSONEncoder().encode(Filters(label: filters))).map { String(decoding: $0, as: UTF8.self) } ?? "{}"
        return DockerRequest(method: "GET", path: "/v\(api)/containers/json",
                             query: [.init("all", "true"), .init("filters", json)])
    }

    public static func inspectImage(_ name: String, api: String) -> DockerRequest {
        DockerRequest(method: "GET", path: "/v\(api)/images/\(DockerRequest.escape(name))/json")
    }

    // MARK: responses

    /// The version to use with an engine that reports `server` (ApiVersion) and `minimum`
    /// (MinAPIVersion): ours, or the engine's if it is older, as long as both can talk.
    public static func negotiate(server: String, minimum: String?) -> Result<String, DockerError> {
        guard let serverParts = parse(server) else { return .failure(.protocolError("bad ApiVersion \(server)")) }
        let ours = parse(preferredVersion) ?? (1, 41)
        if let minimum, let min = parse(minimum), min > ours {
            return .failure(.status(400, "the engine needs API \(minimum) or newer; this relay speaks \(preferredVersion)"))
        }
        if serverParts >= ours { return .success(preferredVersion) }
        guard let oldest = parse(oldestVersion), serverParts >= oldest else {
            return .failure(.status(400, "the engine's API \(server) is older than \(oldestVersion)"))
        }
        return .success("\(serverParts.0).\(serverParts.1)")
    }

    static func parse(_ version: String) -> (Int, Int)? {
        let parts = version.split(separator: ".")
        guard parts.count == 2, let major = Int(parts[0]), let minor = Int(parts[1]) else { return nil }
        return (major, minor)
    }

    public static func decodeVersion(_ response: DockerResponse) throws(DockerError) -> (api: String, minimum: String?) {
        struct Version: Decodable {
            var ApiVersion: String
            var MinAPIVersion: String?
        }
        let v: Version = try decode(response, expecting: 200)
        return (v.ApiVersion, v.MinAPIVersion)
    }

    public static func decodeCreate(_ response: DockerResponse) throws(DockerError) -> String {
        struct Created: Decodable { var Id: String }
        let created: Created = try decode(response, expecting: 201)
        guard !created.Id.isEmpty else { throw .protocolError("create returned no id") }
        return created.Id
    }

    public static func decodeInspect(_ response: DockerResponse) throws(DockerError) -> ContainerInfo {
        struct Inspect: Decodable {
            struct State: Decodable {
                var Status: String?
                var Running: Bool?
                var OOMKilled: Bool?
                var ExitCode: Int?
                var Error: String?
            }
            struct Config: Decodable { var Labels: [String: String]? }
            var Id: String
            var Name: String?
            var State: State?
            var Config: Config?
        }
        let i: Inspect = try decode(response, expecting: 200)
        return ContainerInfo(id: i.Id, name: i.Name ?? "", running: i.State?.Running ?? false,
                             status: i.State?.Status ?? "", exitCode: i.State?.ExitCode ?? 0,
                             oomKilled: i.State?.OOMKilled ?? false, error: i.State?.Error ?? "",
                             labels: i.Config?.Labels ?? [:])
    }

    public static func decodeList(_ response: DockerResponse) throws(DockerError) -> [ContainerSummary] {
        struct Entry: Decodable {
            var Id: String
            var Names: [String]?
            var Labels: [String: String]?
            var State: String?
        }
        let entries: [Entry] = try decode(response, expecting: 200)
        return entries.map { ContainerSummary(id: $0.Id, names: $0.Names ?? [], labels: $0.Labels ?? [:], state: $0.State ?? "") }
    }

    /// 2xx other than `expecting` are accepted too (the engine is not always precise); other
    /// statuses become `.status` with the engine's message.
    static func decode<T: Decodable>(_ response: DockerResponse, expecting: Int) throws(DockerError) -> T {
        guard (200..<300).contains(response.status) else { throw .status(response.status, response.message) }
        do {
            return try JSONDecoder().decode(T.self, from: Data(response.body))
        } catch {
            throw .protocolError("unexpected \(T.self) JSON: \(String(decoding: response.body.prefix(200), as: UTF8.self))")
        }
    }

    /// Start, stop and remove answer 204 (or 304: already in that state) with no body.
    public static func expectNoContent(_ response: DockerResponse, allowing extra: Set<Int> = [304]) throws(DockerError) {
        guard (200..<300).contains(response.status) || extra.contains(response.status) else {
            throw .status(response.status, response.message)
        }
    }
}
