// The tier table's JSON form:
//
//   { "tier_claim": "tier",
//     "default": { "max_bridges": 3, "requests_per_second": 10, … },
//     "tiers": { "free": { "requests_per_second": 2 }, "pro": { "max_streams": 256 } } }
//
// Every key is optional. Tiers inherit every key they leave out from the default profile as
// overridden by "default" (wherever "default" appears in the document). Unknown keys, duplicate
// keys and wrong types are errors naming the full dotted key: a typo must not silently leave a
// limit at its default.

extension TierTable {
    /// Parses and validates a JSON document. Throws QuotaConfigurationError naming the key.
    public static func parse(json: [UInt8]) throws(QuotaConfigurationError) -> TierTable {
        let document: JSONValue
        do {
            document = try JSONReader.parse(json)
        } catch {
            throw QuotaConfigurationError(key: "json", problem: "not valid JSON at byte \(error.offset): \(error.message)")
        }
        guard case .object(let members) = document else {
            throw QuotaConfigurationError(key: "json", problem: "expected an object, found \(document.kindDescription)")
        }
        try rejectDuplicates(members, at: nil)

        var table = TierTable()
        var tierMembers: [(key: String, value: JSONValue)] = []
        for (key, value) in members {
            switch key {
            case "tier_claim":
                guard case .string(let claim) = value else { throw typeError(key, "a string", value) }
                table.claim = claim
            case "default":
                guard case .object(let overrides) = value else { throw typeError(key, "an object", value) }
                table.defaultProfile = try applying(overrides, to: QuotaProfile(), at: key)
            case "tiers":
                guard case .object(let tiers) = value else { throw typeError(key, "an object", value) }
                try rejectDuplicates(tiers, at: key)
                tierMembers = tiers
            default:
                throw QuotaConfigurationError(key: key, problem: "unknown key")
            }
        }
        // After the loop: tiers inherit from the default as overridden, whatever the key order.
        for (name, value) in tierMembers {
            try validateTierName(name)
            let path = "tiers.\(name)"
            guard case .object(let overrides) = value else { throw typeError(path, "an object", value) }
            table.tiers[name] = try applying(overrides, to: table.defaultProfile, at: path)
        }
        try table.validate()
        return table
    }

    private static func applying(_ members: [(key: String, value: JSONValue)], to base: QuotaProfile,
                                 at path: String) throws(QuotaConfigurationError) -> QuotaProfile {
        try rejectDuplicates(members, at: path)
        var profile = base
        for (name, value) in members {
            let key = "\(path).\(name)"
            guard let field = ProfileKey(rawValue: name) else {
                throw QuotaConfigurationError(key: key, problem: "unknown key")
            }
            switch field {
            case .maxBridges: profile.maxBridges = try integer(value, key)
            case .maxStreams: profile.maxStreams = try integer(value, key)
            case .requestsPerSecond: profile.requestsPerSecond = try double(value, key)
            case .requestBurst: profile.requestBurst = try integer(value, key)
            case .bandwidthBytesPerSecond: profile.bandwidthBytesPerSecond = try integer(value, key)
            case .bandwidthBurstBytes: profile.bandwidthBurstBytes = try integer(value, key)
            case .maxBodyBytes: profile.maxBodyBytes = try integer(value, key)
            case .maxHeaderBytes: profile.maxHeaderBytes = try integer(value, key)
            case .memoryBytes: profile.memoryBytes = try integer(value, key)
            }
        }
        return profile
    }

    /// JSON objects may repeat a key; the last one would win unnoticed, so refuse instead.
    private static func rejectDuplicates(_ members: [(key: String, value: JSONValue)],
                                         at path: String?) throws(QuotaConfigurationError) {
        var seen = Set<String>()
        for (key, _) in members where !seen.insert(key).inserted {
            throw QuotaConfigurationError(key: path.map { "\($0).\(key)" } ?? key, problem: "duplicate key")
        }
    }

    private static func typeError(_ key: String, _ expected: String, _ found: JSONValue) -> QuotaConfigurationError {
        QuotaConfigurationError(key: key, problem: "expected \(expected), found \(found.kindDescription)")
    }

    /// Whole numbers only; `1e3` and `1000.0` are accepted since they are whole.
    private static func integer(_ value: JSONValue, _ key: String) throws(QuotaConfigurationError) -> Int {
        guard case .number(let text) = value else { throw typeError(key, "an integer", value) }
        if let exact = Int(text) { return exact }
        let isPlainInteger = text.utf8.allSatisfy { $0 == UInt8(ascii: "-") || ($0 >= 48 && $0 <= 57) }
        if isPlainInteger {
            throw QuotaConfigurationError(key: key, problem: "out of range")
        }
        guard let d = Double(text), d == d.rounded(.towardZero) else {
            throw QuotaConfigurationError(key: key, problem: "expected an integer, found \(text)")
        }
        // Double(Int.max) is 2^63, which does not fit: hence the half-open upper bound.
        guard d >= -9.223372036854775808e18, d < 9.223372036854775808e18 else {
            throw QuotaConfigurationError(key: key, problem: "out of range")
        }
        return Int(d)
    }

    private static func double(_ value: JSONValue, _ key: String) throws(QuotaConfigurationError) -> Double {
        guard case .number(let text) = value else { throw typeError(key, "a number", value) }
        guard let d = Double(text), d.isFinite else {
            throw QuotaConfigurationError(key: key, problem: "out of range")
        }
        return d
    }
}
