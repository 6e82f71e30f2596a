import Testing
@testable import TetherAuth
import TetherHTTP

@Suite struct TokenExtractorTests {
    func head(_ target: String = "/ws/tunnel", _ headers: [(String, String)] = []) -> HTTPRequestHead {
        HTTPRequestHead(method: "GET", target: target, headers: HTTPHeaders(headers))
    }

    func extract(_ head: HTTPRequestHead, subprotocol: Bool = true) -> (String, TokenSource)? {
        TokenExtractor.token(in: head, allowSubprotocol: subprotocol).map { (String($0.token), $0.source) }
    }

    @Test func authorizationHeader() {
        #expect(extract(head("/", [("Authorization", "Bearer abc.def.ghi")]))! == ("abc.def.ghi", .header))
        #expect(extract(head("/", [("authorization", "bearer   abc.def.ghi  ")]))! == ("abc.def.ghi", .header))
        #expect(extract(head("/", [("Authorization", "BEARER\tabc")]))! == ("abc", .header))
        #expect(extract(head("/", [("Authorization", "Basic dXNlcjpwdw==")])) == nil)
        #expect(extract(head("/", [("Authorization", "Bearer")])) == nil)
        #expect(extract(head("/", [("Authorization", "Bearer   ")])) == nil)
        #expect(extract(head("/", [("Authorization", "Bearerabc")])) == nil)
    }

    @Test func queryParameter() {
        #expect(extract(head("/api/ollama/x?token=abc.def.ghi"))! == ("abc.def.ghi", .query))
        #expect(extract(head("/x?a=1&token=abc&b=2"))! == ("abc", .query))
        #expect(extract(head("/x?token=a%2Eb%2ec"))! == ("a.b.c", .query))
        #expect(extract(head("/x?%74oken=abc"))! == ("abc", .query))
        #expect(extract(head("/x?token=&token=second"))! == ("second", .query))
        #expect(extract(head("/x?token=bad%zz"))! == ("bad%zz", .query))  // kept raw: fails as malformed
        #expect(extract(head("/x?tokens=abc&mytoken=x&token")) == nil)
        #expect(extract(head("/x?")) == nil)
        #expect(extract(head("/x")) == nil)
    }

    @Test func subprotocol() {
        let offered = head("/ws/tunnel", [("Sec-WebSocket-Protocol", "tether.v1, token-abc.def.ghi")])
        #expect(extract(offered)! == ("abc.def.ghi", .subprotocol))
        #expect(extract(offered, subprotocol: false) == nil)
        let split = head("/ws/tunnel", [("Sec-WebSocket-Protocol", "tether.v1"), ("sec-websocket-protocol", " token-xyz ")])
        #expect(extract(split)! == ("xyz", .subprotocol))
        #expect(extract(head("/", [("Sec-WebSocket-Protocol", "tether.v1, token-")])) == nil)
        #expect(extract(head("/", [("Sec-WebSocket-Protocol", "tether.v1")])) == nil)
    }

    @Test func precedence() {
        let all = head("/x?token=from-query", [
            ("Sec-WebSocket-Protocol", "tether.v1, token-from-subprotocol"),
            ("Authorization", "Bearer from-header"),
        ])
        #expect(extract(all)! == ("from-header", .header))
        let noHeader = head("/x?token=from-query", [("Sec-WebSocket-Protocol", "token-from-subprotocol")])
        #expect(extract(noHeader)! == ("from-query", .query))
        // A non-bearer Authorization falls through to the query.
        let basic = head("/x?token=from-query", [("Authorization", "Basic Zm9v")])
        #expect(extract(basic)! == ("from-query", .query))
    }

    @Test func removingToken() {
        let cases: [(String, String)] = [
            ("/api/tags?token=abc", "/api/tags"),
            ("/api/tags?a=1&token=abc&b=2", "/api/tags?a=1&b=2"),
            ("/api/tags?token=abc&b=%2F", "/api/tags?b=%2F"),
            ("/api/tags?token=a&token=b", "/api/tags"),
            ("/api/tags?token", "/api/tags"),
            ("/api/tags?%74oken=abc&z=9", "/api/tags?z=9"),
            ("/api/tags?a=1&&token=x&", "/api/tags?a=1"),
            ("/api/tags?a=1&b=2", "/api/tags?a=1&b=2"),
            ("/api/tags?tokens=1&xtoken=2", "/api/tags?tokens=1&xtoken=2"),
            ("/api/tags?", "/api/tags?"),
            ("/api/tags", "/api/tags"),
            ("/", "/"),
        ]
        for (target, expected) in cases {
            #expect(TokenExtractor.removingToken(fromTarget: target) == expected, "\(target)")
        }
    }

    /// The scan works on bytes: multi-byte characters (and combining marks, which make Characters
    /// span several scalars) next to the separators must not shift or merge fields.
    @Test func nonASCIINeighboursOfSeparators() {
        #expect(extract(head("/x?é=1&token=abc&ü\u{301}=2"))! == ("abc", .query))
        #expect(extract(head("/x?a=\u{301}&token=t\u{301}k"))! == ("t\u{301}k", .query))
        #expect(TokenExtractor.removingToken(fromTarget: "/é?x=ü&token=abc&y=\u{301}") == "/é?x=ü&y=\u{301}")
        let offered = head("/ws/tunnel", [("Sec-WebSocket-Protocol", "ë\u{301},\ttoken-abc ")])
        #expect(extract(offered)! == ("abc", .subprotocol))
        #expect(extract(head("/", [("Authorization", " Bearer \u{301}abc ")]))! == ("\u{301}abc", .header))
    }

    @Test func fieldsKeepEmptyPieces() {
        #expect(TokenExtractor.fields("a,,b,", separator: UInt8(ascii: ",")) == ["a", "", "b", ""])
        #expect(TokenExtractor.fields("", separator: UInt8(ascii: ",")) == [""])
    }
}
