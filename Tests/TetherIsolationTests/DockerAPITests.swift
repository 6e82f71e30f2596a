import Foundation
import Glibc
import TetherHTTP
import TetherIO
@testable import TetherIsolation
import XCTest

final class DockerAPITests: XCTestCase {
    func testCreateRequestCarriesTheLockedDownSpec() throws {
        var settings = IsolationSettings()
        settings.runDirectory = "/run/t"
        settings.memoryBytes = 256 << 20
        settings.cpus = 0.25
        settings.pidsLimit = 32
        let manager = ContainerManager(settings: settings, instance: "relay-a", counters: IsolationCounters(),
                                       seccompProfile: "{\"defaultAction\":\"SCMP_ACT_ERRNO\"}")
        let session = String(repeating: "0f", count: 32)
        let request = DockerAPI.create(manager.containerSpec(session), api: "1.41")
        let wire = String(decoding: request.encoded(), as: UTF8.self)
        XCTAssertTrue(wire.hasPrefix("POST /v1.41/containers/create?name=tether-session-\(session) HTTP/1.1\r\n"), wire)
        XCTAssertTrue(wire.contains("\r\nContent-Type: application/json\r\nContent-Length: \(request.body?.count ?? -1)\r\n\r\n{"))
        let json = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(request.body ?? [])) as? [String: Any])
        XCTAssertEqual(json["Image"] as? String, "tether-session:latest")
        XCTAssertEqual(json["User"] as? String, "1001:1001")
        XCTAssertEqual(json["Cmd"] as? [String], ["/tether-relay", "session-worker", "--socket", "/run/tether/worker.sock",
                                                  "--session", session, "--log-level", "notice"])
        XCTAssertEqual(json["Labels"] as? [String: String], ["tether.session": session, "tether.relay": "relay-a"])
        XCTAssertEqual(json["NetworkDisabled"] as? Bool, true)
        let host = try XCTUnwrap(json["HostConfig"] as? [String: Any])
        XCTAssertEqual(host["NetworkMode"] as? String, "none")
        XCTAssertEqual(host["ReadonlyRootfs"] as? Bool, true)
        XCTAssertEqual(host["CapDrop"] as? [String], ["ALL"])
        XCTAssertEqual(host["SecurityOpt"] as? [String], ["no-new-privileges", "seccomp={\"defaultAction\":\"SCMP_ACT_ERRNO\"}"])
        XCTAssertEqual(host["Memory"] as? Int, 256 << 20)
        XCTAssertEqual(host["MemorySwap"] as? Int, 256 << 20)
        XCTAssertEqual(host["NanoCpus"] as? Int, 250_000_000)
        XCTAssertEqual(host["PidsLimit"] as? Int, 32)
        XCTAssertEqual(host["Binds"] as? [String], ["/run/t/\(session):/run/tether"])
        XCTAssertEqual(host["IpcMode"] as? String, "private")
    }

    func testOtherCallsAndQueryEscaping() {
        XCTAssertEqual(String(decoding: DockerAPI.start("abc", api: "1.41").encoded(), as: UTF8.self),
                       "POST /v1.41/containers/abc/start HTTP/1.1\r\nHost: docker\r\nUser-Agent: tether-relay\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
        XCTAssertEqual(DockerAPI.remove("abc", api: "1.40").target, "/v1.40/containers/abc?force=true&v=true")
        XCTAssertEqual(DockerAPI.list(labels: ["tether.relay": "a b"], api: "1.41").target,
                       "/v1.41/containers/json?all=true&filters=%7B%22label%22%3A%5B%22tether.relay%3Da%20b%22%5D%7D")
        XCTAssertEqual(DockerAPI.inspect("../x", api: "1.41").path, "/v1.41/containers/..%2Fx/json")
        XCTAssertEqual(DockerAPI.version().path, "/version")
    }

    func testVersionNegotiation() {
        XCTAssertEqual(try DockerAPI.negotiate(server: "1.41", minimum: "1.12").get(), "1.41")
        XCTAssertEqual(try DockerAPI.negotiate(server: "1.47", minimum: "1.24").get(), "1.41", "newer engines speak 1.41")
        XCTAssertEqual(try DockerAPI.negotiate(server: "1.40", minimum: "1.12").get(), "1.40", "negotiated down")
        XCTAssertThrowsError(try DockerAPI.negotiate(server: "1.24", minimum: "1.12").get())
        XCTAssertThrowsError(try DockerAPI.negotiate(server: "1.50", minimum: "1.44").get(), "engine refuses 1.41")
        XCTAssertThrowsError(try DockerAPI.negotiate(server: "banana", minimum: nil).get())
    }

    func testResponseParsing() throws {
        func r(_ status: Int, _ body: String) -> DockerResponse { DockerResponse(status: status, body: Array(body.utf8)) }
        XCTAssertEqual(try DockerAPI.decodeCreate(r(201, #"{"Id":"c0ffee","Warnings":[]}"#)), "c0ffee")
        XCTAssertThrowsError(try DockerAPI.decodeCreate(r(404, #"{"message":"No such image: tether-session:latest"}"#))) {
            XCTAssertEqual($0 as? DockerError, .status(404, "No such image: tether-session:latest"))
        }
        XCTAssertThrowsError(try DockerAPI.decodeCreate(r(201, "not json")))
        XCTAssertThrowsError(try DockerAPI.decodeCreate(r(500, "")), "") {
            XCTAssertEqual($0 as? DockerError, .status(500, "HTTP 500"))
        }
        let inspect = try DockerAPI.decodeInspect(r(200, """
            {"Id":"abc","Name":"/tether-session-x","State":{"Status":"exited","Running":false,"OOMKilled":true,
             "ExitCode":137,"Error":""},"Config":{"Labels":{"tether.relay":"r"}},"HostConfig":{"Memory":1}}
            """))
        XCTAssertEqual(inspect, ContainerInfo(id: "abc", name: "/tether-session-x", running: false, status: "exited", exitCode: 137,
                                              oomKilled: true, error: "", labels: ["tether.relay": "r"]))
        let list = try DockerAPI.decodeList(r(200, #"[{"Id":"a","Names":["/n"],"Labels":{"k":"v"},"State":"running"},{"Id":"b"}]"#))
        XCTAssertEqual(list.map(\.id), ["a", "b"])
        XCTAssertEqual(list[0].labels, ["k": "v"])
        XCTAssertEqual(try DockerAPI.decodeVersion(r(200, #"{"ApiVersion":"1.41","MinAPIVersion":"1.12","Os":"linux"}"#)).api, "1.41")
        XCTAssertNoThrow(try DockerAPI.expectNoContent(r(204, "")))
        XCTAssertNoThrow(try DockerAPI.expectNoContent(r(304, "")))
        XCTAssertThrowsError(try DockerAPI.expectNoContent(r(409, #"{"message":"conflict"}"#)))
    }

    /// The blocking client over a real unix socket, against canned answers: chunked bodies,
    /// close-delimited bodies, an early close, and an absent engine.
    func testBlockingClientReadsWhatEnginesSend() throws {
        let dir = "/tmp/tether-docker-\(getpid())"
        mkdir(dir, 0o700)
        defer { rmdir(dir) }
        let path = dir + "/docker.sock"
        let fd = try Socket.listenUnix(path: path)
        defer { close(fd); unlink(path) }
        let version = "{\"ApiVersion\":\"1.40\",\"MinAPIVersion\":\"1.12\"}"
        var chunked = ""
        var rest = Substring(version)
        while !rest.isEmpty {
            let piece = rest.prefix(11)
            rest = rest.dropFirst(11)
            chunked += String(piece.utf8.count, radix: 16) + "\r\n" + piece + "\r\n"
        }
        let answers = [
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked + "0\r\n\r\n",
            "HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: 13\r\n\r\n{\"Id\":\"abc\"}\n",
            "HTTP/1.0 200 OK\r\n\r\n[{\"Id\":\"x\"}]",
            "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"truncated",
        ]
        let requests = Box<[String]>([])
        let server = Thread {
            for answer in answers {
                let c = accept(fd, nil, nil)
                var buffer = [UInt8](repeating: 0, count: 65_536)
                var got: [UInt8] = []
                while !String(decoding: got, as: UTF8.self).contains("\r\n\r\n") {
                    let n = recv(c, &buffer, buffer.count, 0)
                    if n <= 0 { break }
                    got += buffer[0..<n]
                }
                requests.with { $0.append(String(decoding: got, as: UTF8.self)) }
                _ = answer.withCString { Glibc.send(c, $0, strlen($0), Int32(MSG_NOSIGNAL)) }
                close(c)
            }
        }
        server.start()
        let client = DockerClient(socketPath: path, timeoutSeconds: 5)
        XCTAssertEqual(try client.apiVersion(), "1.40")
        XCTAssertEqual(try DockerAPI.decodeCreate(try client.send(DockerAPI.create(
            ContainerSpec(name: "n", image: "i", command: [], user: "1:1", labels: [:], memoryBytes: 1, nanoCPUs: 1, pidsLimit: 1, binds: []),
            api: try client.apiVersion()))), "abc")
        XCTAssertEqual(try DockerAPI.decodeList(try client.send(DockerAPI.list(labels: [:], api: "1.40"))).map(\.id), ["x"])
        XCTAssertThrowsError(try client.send(DockerAPI.ping())) {
            guard case .protocolError = $0 as? DockerError else { return XCTFail("\($0)") }
        }
        XCTAssertTrue(requests.get.first?.hasPrefix("GET /version HTTP/1.1\r\n") ?? false)
        XCTAssertTrue(requests.get[1].hasPrefix("POST /v1.40/containers/create?name=n HTTP/1.1\r\n"))
        let absent = DockerClient(socketPath: dir + "/nothing.sock", timeoutSeconds: 1)
        XCTAssertThrowsError(try absent.apiVersion()) {
            guard case .unreachable = $0 as? DockerError else { return XCTFail("\($0)") }
        }
    }
}

final class Box<T: Sendable>: @unchecked Sendable {
    private var value: T
    private let lock = NSLock()
    init(_ value: T) { self.value = value }
    func with(_ body: (inout T) -> Void) { lock.lock(); body(&value); lock.unlock() }
    var get: T { lock.lock(); defer { lock.unlock() }; return value }
}
