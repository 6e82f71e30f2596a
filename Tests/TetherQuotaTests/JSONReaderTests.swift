import Testing
@testable import TetherQuota

private func read(_ text: String) throws(JSONSyntaxError) -> JSONValue {
    try JSONReader.parse(Array(text.utf8))
}

@Suite struct JSONReaderTests {
    @Test func values() throws {
        #expect(try read(#"{"a": [1, -2.5e3, true, false, null, "x"], "b": {}}"#) == .object([
            ("a", .array([.number("1"), .number("-2.5e3"), .bool(true), .bool(false), .null, .string("x")])),
            ("b", .object([])),
        ]))
        #expect(try read("[]") == .array([]))
        #expect(try read(" 0 ") == .number("0"))
        // Members keep document order, duplicates included (the tier table rejects them).
        #expect(try read(#"{"k": 1, "k": 2}"#) == .object([("k", .number("1")), ("k", .number("2"))]))
    }

    @Test func strings() throws {
        #expect(try read(#""\"\\\/\b\f\n\r\t""#) == .string("\"\\/\u{08}\u{0C}\n\r\t"))
        #expect(try read(#""\u00e9\u20AC""#) == .string("é€"))
        #expect(try read(#""\ud83d\ude00""#) == .string("😀"))
        #expect(try read("\"ünï 😀\"") == .string("ünï 😀"))
        #expect(try read(#""\u0000""#) == .string("\u{0}"))
    }

    @Test func byteOrderMarkIsSkipped() throws {
        #expect(try JSONReader.parse([0xEF, 0xBB, 0xBF] + Array("{}".utf8)) == .object([]))
    }

    @Test(arguments: [
        "", " ", "{", "}", "[1,]", "[1 2]", "{\"a\":1,}", "{\"a\"}", "{a:1}", "{1:1}",
        "01", "1.", ".5", "-", "+1", "1e", "1e+", "0x10", "NaN", "Infinity", "tru", "nulls",
        "\"abc", "\"\\x\"", "\"\\u12\"", "\"\\u12G4\"", "\"\\ud83d\"", "\"\\ud83dx\"", "\"\\ude00\"",
        "\"\\ud83d\\u0041\"", "\"a\tb\"", "{} x", "[] []",
    ])
    func rejects(text: String) {
        #expect(throws: JSONSyntaxError.self) { try read(text) }
    }

    @Test func rejectsInvalidUTF8() {
        #expect(throws: JSONSyntaxError.self) { try JSONReader.parse([0x22, 0xC3, 0x22]) }
        #expect(throws: JSONSyntaxError.self) { try JSONReader.parse([0x22, 0xFF, 0x22]) }
    }

    @Test func nestingIsBounded() throws {
        let ok = String(repeating: "[", count: JSONReader.maxDepth) + String(repeating: "]", count: JSONReader.maxDepth)
        _ = try read(ok)
        let deep = String(repeating: "[", count: 100_000)
        #expect(throws: JSONSyntaxError(offset: JSONReader.maxDepth, message: "nested too deeply")) { try read(deep) }
    }

    @Test func errorsCarryTheOffset() {
        #expect(throws: JSONSyntaxError(offset: 6, message: "unexpected character")) { try read(#"{"a": x}"#) }
    }
}
