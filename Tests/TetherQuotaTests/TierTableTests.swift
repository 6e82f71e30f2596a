import Foundation
import Testing
import TetherQuota

private func parse(_ json: String) throws(QuotaConfigurationError) -> TierTable {
    try TierTable.parse(json: Array(json.utf8))
}

/// The error `json` produces (nil if it parses).
private func failure(_ json: String) -> QuotaConfigurationError? {
    do {
        _ = try parse(json)
        return nil
    } catch {
        return error
    }
}

@Suite struct TierTableTests {
    @Test func emptyDocumentGivesDefaults() throws {
        let table = try parse("{}")
        #expect(table == TierTable())
        #expect(table.claim == "tier")
        #expect(table.tiers.isEmpty)
        let p = table.defaultProfile
        #expect(p.maxBridges == 3 && p.maxStreams == 64)
        #expect(p.requestsPerSecond == 10 && p.requestBurst == 20)
        #expect(p.bandwidthBytesPerSecond == 52_428_800 && p.bandwidthBurstBytes == 0)
        #expect(p.effectiveBandwidthBurst == 52_428_800)
        #expect(p.maxBodyBytes == 10_485_760 && p.maxHeaderBytes == 65_536 && p.memoryBytes == 8_388_608)
        #expect(try parse(" \n\t{ } \r\n") == TierTable())
        #expect(try parse("{\"default\": {}, \"tiers\": {}}") == TierTable())
    }

    @Test func documentedExample() throws {
        let table = try parse("""
            { "tier_claim": "plan",
              "default": { "max_bridges": 3, "max_streams": 64, "requests_per_second": 10, "request_burst": 20,
                           "bandwidth_bytes_per_second": 52428800, "bandwidth_burst_bytes": 0,
                           "max_body_bytes": 10485760, "max_header_bytes": 65536, "memory_bytes": 8388608 },
              "tiers": { "free": { "requests_per_second": 2 }, "pro": { "max_streams": 256 } } }
            """)
        #expect(table.claim == "plan")
        #expect(table.defaultProfile == QuotaProfile())
        var free = QuotaProfile()
        free.requestsPerSecond = 2
        var pro = QuotaProfile()
        pro.maxStreams = 256
        #expect(table.tiers == ["free": free, "pro": pro])
    }

    @Test func tiersInheritTheOverriddenDefault() throws {
        // "tiers" before "default" on purpose: inheritance must not depend on key order.
        let table = try parse("""
            { "tiers": { "free": { "requests_per_second": 2.5, "max_bridges": 1 }, "pro": {} },
              "default": { "max_bridges": 5, "memory_bytes": 1048576, "bandwidth_burst_bytes": 4096 } }
            """)
        #expect(table.defaultProfile.maxBridges == 5)
        #expect(table.defaultProfile.memoryBytes == 1_048_576)
        let free = try #require(table.tiers["free"])
        #expect(free.requestsPerSecond == 2.5)
        #expect(free.maxBridges == 1)
        #expect(free.memoryBytes == 1_048_576)
        #expect(free.effectiveBandwidthBurst == 4096)
        #expect(free.maxStreams == 64)
        #expect(table.tiers["pro"] == table.defaultProfile)
    }

    @Test func profileForTier() throws {
        let table = try parse(#"{ "tiers": { "free": { "max_streams": 8 }, "pro": { "max_streams": 256 } } }"#)
        #expect(table.profile(for: "pro").name == "pro")
        #expect(table.profile(for: "pro").profile.maxStreams == 256)
        #expect(table.profile(for: "free").profile.maxStreams == 8)
        for missing in [nil, "", "enterprise", "PRO", "default"] as [String?] {
            let (name, profile) = table.profile(for: missing)
            #expect(name == "default")
            #expect(profile == table.defaultProfile)
        }
    }

    @Test func integersAndNumbers() throws {
        // Whole numbers written as floats are still integers; rates may be fractional.
        let table = try parse(#"{ "default": { "max_streams": 1e2, "max_bridges": 2.0, "requests_per_second": 0.25 } }"#)
        #expect(table.defaultProfile.maxStreams == 100)
        #expect(table.defaultProfile.maxBridges == 2)
        #expect(table.defaultProfile.requestsPerSecond == 0.25)
        // 0 = unlimited for rates.
        let unlimited = try parse(#"{ "default": { "requests_per_second": 0, "bandwidth_bytes_per_second": 0 } }"#)
        #expect(unlimited.defaultProfile.makeRequestBucket(now: 0).isUnlimited)
        #expect(unlimited.defaultProfile.makeBandwidthBucket(now: 0).isUnlimited)
    }

    // MARK: errors name their key

    @Test(arguments: [
        (#"{ "tier": "x" }"#, "tier"),
        (#"{ "default": { "max_stream": 1 } }"#, "default.max_stream"),
        (#"{ "tiers": { "pro": { "maxStreams": 1 } } }"#, "tiers.pro.maxStreams"),
        (#"{ "tiers": { "pro": {} }, "Default": {} }"#, "Default"),
    ])
    func unknownKeys(json: String, key: String) {
        #expect(failure(json) == QuotaConfigurationError(key: key, problem: "unknown key"))
    }

    @Test(arguments: [
        (#"{ "tier_claim": 5 }"#, "tier_claim", "expected a string, found a number"),
        (#"{ "default": [] }"#, "default", "expected an object, found an array"),
        (#"{ "tiers": "pro" }"#, "tiers", "expected an object, found a string"),
        (#"{ "tiers": { "pro": 1 } }"#, "tiers.pro", "expected an object, found a number"),
        (#"{ "default": { "max_streams": "64" } }"#, "default.max_streams", "expected an integer, found a string"),
        (#"{ "default": { "max_streams": null } }"#, "default.max_streams", "expected an integer, found null"),
        (#"{ "default": { "memory_bytes": 1.5 } }"#, "default.memory_bytes", "expected an integer, found 1.5"),
        (#"{ "tiers": { "free": { "requests_per_second": true } } }"#, "tiers.free.requests_per_second",
         "expected a number, found a boolean"),
        (#"{ "tiers": { "free": { "request_burst": {} } } }"#, "tiers.free.request_burst",
         "expected an integer, found an object"),
    ])
    func wrongTypes(json: String, key: String, problem: String) {
        #expect(failure(json) == QuotaConfigurationError(key: key, problem: problem))
    }

    static let outOfRange: [(key: String, bad: [String], good: [String])] = [
        ("max_bridges", ["0", "-1", "1001"], ["1", "1000"]),
        ("max_streams", ["0", "65536"], ["1", "65535"]),
        ("requests_per_second", ["-1", "-0.5"], ["0", "0.001", "1e6"]),
        ("request_burst", ["0", "-3"], ["1"]),
        ("bandwidth_bytes_per_second", ["-1"], ["0", "1"]),
        ("bandwidth_burst_bytes", ["-1"], ["0", "1"]),
        ("max_body_bytes", ["-1"], ["0", "1"]),
        ("max_header_bytes", ["1023", "1048577", "0"], ["1024", "1048576"]),
        ("memory_bytes", ["262143", "0"], ["262144"]),
    ]

    @Test(arguments: outOfRange)
    func ranges(key: String, bad: [String], good: [String]) throws {
        for value in bad {
            let inDefault = failure(#"{ "default": { "\#(key)": \#(value) } }"#)
            #expect(inDefault?.key == "default.\(key)", "\(key) = \(value)")
            let inTier = failure(#"{ "tiers": { "pro": { "\#(key)": \#(value) } } }"#)
            #expect(inTier?.key == "tiers.pro.\(key)", "\(key) = \(value)")
        }
        for value in good {
            #expect(failure(#"{ "tiers": { "pro": { "\#(key)": \#(value) } } }"#) == nil, "\(key) = \(value)")
        }
    }

    @Test func numbersBeyondIntAreOutOfRange() {
        for value in ["99999999999999999999", "-99999999999999999999", "1e30", "9.3e18"] {
            #expect(failure(#"{ "default": { "max_streams": \#(value) } }"#)
                == QuotaConfigurationError(key: "default.max_streams", problem: "out of range"))
        }
        #expect(failure(#"{ "default": { "requests_per_second": 1e400 } }"#)
            == QuotaConfigurationError(key: "default.requests_per_second", problem: "out of range"))
    }

    @Test func inheritedValuesAreValidatedPerTier() {
        // A bad default is reported on the default, where it is written.
        #expect(failure(#"{ "default": { "max_streams": 0 }, "tiers": { "a": {} } }"#)?.key == "default.max_streams")
    }

    @Test func tierNames() throws {
        let longest = String(repeating: "n", count: 64)
        #expect(try parse(#"{ "tiers": { "\#(longest)": {} } }"#).tiers[longest] != nil)
        let tooLong = longest + "n"
        #expect(failure(#"{ "tiers": { "\#(tooLong)": {} } }"#)?.key == "tiers.\(tooLong)")
        // 22 × "é" is 44 bytes; 33 is 66: the limit is in bytes.
        #expect(failure(#"{ "tiers": { "\#(String(repeating: "é", count: 33))": {} } }"#) != nil)
        #expect(failure(#"{ "tiers": { "\#(String(repeating: "é", count: 32))": {} } }"#) == nil)
        #expect(failure(#"{ "tiers": { "": {} } }"#)?.key == "tiers.")
        #expect(failure(#"{ "tiers": { "default": {} } }"#)?.key == "tiers.default")
    }

    @Test func duplicateKeys() {
        #expect(failure(#"{ "tier_claim": "a", "tier_claim": "b" }"#)
            == QuotaConfigurationError(key: "tier_claim", problem: "duplicate key"))
        #expect(failure(#"{ "default": { "max_streams": 1, "max_streams": 2 } }"#)
            == QuotaConfigurationError(key: "default.max_streams", problem: "duplicate key"))
        #expect(failure(#"{ "tiers": { "pro": {}, "pro": {} } }"#)
            == QuotaConfigurationError(key: "tiers.pro", problem: "duplicate key"))
        #expect(failure(#"{ "tiers": { "pro": { "max_bridges": 1, "max_bridges": 1 } } }"#)
            == QuotaConfigurationError(key: "tiers.pro.max_bridges", problem: "duplicate key"))
    }

    @Test func notJSON() {
        for bad in ["", "{", "{\"tiers\": }", "{} {}", "{'a': 1}", "{\"a\" 1}", "nul"] {
            #expect(failure(bad)?.key == "json", "\(bad)")
        }
        #expect(failure("[]") == QuotaConfigurationError(key: "json", problem: "expected an object, found an array"))
        #expect(failure("\"tiers\"") == QuotaConfigurationError(key: "json", problem: "expected an object, found a string"))
    }

    @Test func emptyClaim() {
        #expect(failure(#"{ "tier_claim": "" }"#)?.key == "tier_claim")
    }

    @Test func validateNamesTheKey() {
        var table = TierTable()
        #expect(throws: Never.self) { try table.validate() }
        var broken = QuotaProfile()
        broken.maxHeaderBytes = 512
        table.tiers["gold"] = broken
        #expect(throws: QuotaConfigurationError(key: "tiers.gold.max_header_bytes",
                                                problem: "must be between 1024 and 1048576 (1 KiB to 1 MiB)")) {
            try table.validate()
        }
        table.tiers["gold"] = QuotaProfile()
        table.defaultProfile.requestsPerSecond = .infinity
        #expect(throws: QuotaConfigurationError.self) { try table.validate() }
        do {
            try table.validate()
        } catch {
            #expect(error.key == "default.requests_per_second")
            #expect(error.description == "default.requests_per_second: must be a finite number >= 0 (0 = unlimited)")
        }
        table.defaultProfile.requestsPerSecond = .nan
        #expect(throws: QuotaConfigurationError.self) { try table.validate() }
    }

    @Test func loadFile() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("tether-quota-\(UInt64.random(in: 0...UInt64.max))")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }

        let good = dir.appendingPathComponent("tiers.json")
        try Data(#"{ "tiers": { "free": { "max_bridges": 1 } } }"#.utf8).write(to: good)
        #expect(try TierTable.load(file: good.path).tiers["free"]?.maxBridges == 1)

        let bad = dir.appendingPathComponent("bad.json")
        try Data(#"{ "tiers": { "free": { "max_bridges": 0 } } }"#.utf8).write(to: bad)
        #expect(throws: QuotaConfigurationError(key: "tiers.free.max_bridges", problem: "must be between 1 and 1000")) {
            try TierTable.load(file: bad.path)
        }

        let missing = dir.appendingPathComponent("missing.json").path
        #expect(throws: QuotaConfigurationError(key: "file", problem: "\(missing): No such file or directory")) {
            try TierTable.load(file: missing)
        }
        // A directory is not readable as a file.
        #expect(throws: QuotaConfigurationError.self) { try TierTable.load(file: dir.path) }
        do { _ = try TierTable.load(file: dir.path) } catch { #expect(error.key == "file") }

        let huge = dir.appendingPathComponent("huge.json")
        try Data(repeating: 0x20, count: TierTable.maxFileBytes + 1).write(to: huge)
        #expect(throws: QuotaConfigurationError(key: "file", problem: "\(huge.path): larger than 1048576 bytes")) {
            try TierTable.load(file: huge.path)
        }
    }
}
