import Foundation
import Logging
import Synchronization
import Testing
import TetherRelay

/// Lines written by a handler, for inspection.
final class Lines: Sendable {
    private let lines = Mutex<[String]>([])
    func append(_ line: String) { lines.withLock { $0.append(line) } }
    var all: [String] { lines.withLock { $0 } }
}

@Suite struct LogLineTests {
    @Test func jsonLinesAreValidJSONWhateverTheyCarry() throws {
        let hostile = "quote \" backslash \\ newline \n tab \t nul \u{0} bell \u{7} del \u{7F} sep \u{2028} emoji 🦙 é"
        let metadata: Logger.Metadata = [
            "plain": "v", hostile: .string(hostile), "ts": "shadow", "list": [.string(hostile), "b"],
            "nested": ["k\"": .string(hostile), "n": ["x": "y"]], "number": .stringConvertible(42),
        ]
        let line = LogLine.json(time: "2025-06-01T12:34:56.789Z", level: .warning, label: "tether.\"relay\"",
                                metadata: metadata, message: hostile)
        #expect(line.hasSuffix("}\n"))
        #expect(line.dropLast().contains("\n") == false, "one record, one line")
        let object = try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
        #expect(object["ts"] as? String == "2025-06-01T12:34:56.789Z")
        #expect(object["level"] as? String == "warning")
        #expect(object["logger"] as? String == "tether.\"relay\"")
        #expect(object["msg"] as? String == hostile)
        #expect(object[hostile] as? String == hostile)
        #expect(object["meta_ts"] as? String == "shadow")
        #expect(object["number"] as? String == "42")
        #expect((object["list"] as? [String]) == [hostile, "b"])
        let nested = try #require(object["nested"] as? [String: Any])
        #expect(nested["k\""] as? String == hostile)
        #expect((nested["n"] as? [String: String]) == ["x": "y"])
    }

    @Test func textLinesKeepTheStreamLogHandlerLayoutOnOneLine() {
        let line = LogLine.text(time: "2025-06-01T12:34:56.789Z", level: .info, label: "tether.relay",
                                metadata: ["b": "2", "a": "x\ny"], source: "TetherRelay", message: "line one\nforged line")
        #expect(line == "2025-06-01T12:34:56.789Z info tether.relay : a=x\\ny b=2 [TetherRelay] line one\\nforged line\n")
    }

    @Test func timestamps() {
        #expect(LogTimestamp.format(seconds: 0, milliseconds: 5) == "1970-01-01T00:00:00.005Z")
        #expect(LogTimestamp.format(seconds: 1_748_781_296, milliseconds: 789) == "2025-06-01T12:34:56.789Z")
        #expect(LogTimestamp.now().wholeMatch(of: /\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z/) != nil)
    }
}

/// RelayLogging's settings are process-wide: these tests run one at a time.
@Suite(.serialized) struct RelayLoggingTests {
    @Test func levelsAndFormatChangeLiveForExistingLoggers() throws {
        defer { RelayLogging.update(LogConfiguration()) }
        let lines = Lines()
        var tunnel = Logger(label: "tether.tunnel") { label in RelayLogHandler(label: label) { lines.append($0) } }
        let relay = Logger(label: "tether.relay") { label in RelayLogHandler(label: label) { lines.append($0) } }

        var c = LogConfiguration()
        c.level = .info
        RelayLogging.update(c)
        tunnel.debug("hidden")
        relay.info("shown", metadata: ["k": "v"])
        #expect(tunnel.logLevel == .info)
        #expect(lines.all.count == 1 && lines.all[0].contains(" info tether.relay : k=v ["))

        c.moduleLevels = ["tether.tunnel": .debug]
        c.format = .json
        RelayLogging.update(c)
        #expect(tunnel.logLevel == .debug && relay.logLevel == .info)
        tunnel.debug("now shown")
        relay.debug("still hidden")
        #expect(lines.all.count == 2)
        let record = try #require(try JSONSerialization.jsonObject(with: Data(lines.all[1].utf8)) as? [String: Any])
        #expect(record["logger"] as? String == "tether.tunnel" && record["msg"] as? String == "now shown")

        // A level set on the logger itself wins over the configuration.
        tunnel.logLevel = .error
        tunnel.warning("pinned away")
        #expect(lines.all.count == 2)
    }

    @Test func manyThreadsLoggingAcrossAnUpdate() async {
        defer { RelayLogging.update(LogConfiguration()) }
        let lines = Lines()
        let logger = Logger(label: "tether.quota") { label in RelayLogHandler(label: label) { lines.append($0) } }
        var c = LogConfiguration()
        c.format = .json
        RelayLogging.update(c)
        await withTaskGroup(of: Void.self) { group in
            for t in 0..<4 {
                group.addTask {
                    for i in 0..<500 { logger.info("record", metadata: ["t": "\(t)", "i": "\(i)"]) }
                }
            }
            group.addTask {
                var flip = LogConfiguration()
                flip.format = .json
                for i in 0..<200 {
                    flip.moduleLevels = ["tether.quota": i % 2 == 0 ? .info : .trace]
                    RelayLogging.update(flip)
                }
            }
        }
        // Either level admits info: every record is written, each a JSON line.
        #expect(lines.all.count == 2000)
        for line in lines.all {
            #expect((try? JSONSerialization.jsonObject(with: Data(line.utf8))) != nil)
        }
    }
}
