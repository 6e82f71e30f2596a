import Testing
import TetherAuth

@Suite struct SessionIDTests {
    @Test func knownAnswer() {
        // Computed independently (PROTOCOL.md §9):
        // python3 -c "import hashlib,struct; f=lambda s:struct.pack('>I',len(s.encode()))+s.encode(); \
        //   print(hashlib.sha256(b'tether-session-v1\x00'+f('https://auth.example.com/')+f('user-42')).hexdigest())"
        let id = SessionID.derive(issuer: "https://auth.example.com/", subject: "user-42")
        #expect(id.hex == "a201d39e5981b89d4051a60251224ef6138daba907a68662664e5dec11f84eac")
        #expect(id.description == id.hex)
        #expect(id.shard == 0xa201_d39e_5981_b89d)

        // Empty issuer and a non-ASCII subject (lengths are UTF-8 bytes): same command with
        // f('') + f('ünïcode').
        let unicode = SessionID.derive(issuer: "", subject: "ünïcode")
        #expect(unicode.hex == "6e61ec094bbe5201e3a1a767cd36a5ae4b6a5dcb765d49fbcf04f099eda4537d")
    }

    @Test func domainSeparation() {
        #expect(SessionID.derive(issuer: "a", subject: "bc") != SessionID.derive(issuer: "ab", subject: "c"))
        #expect(SessionID.derive(issuer: "", subject: "ab") != SessionID.derive(issuer: "ab", subject: ""))
        #expect(SessionID.derive(issuer: "x", subject: "y") == SessionID.derive(issuer: "x", subject: "y"))
    }

    @Test func parsing() throws {
        let id = SessionID.derive(issuer: "i", subject: "s")
        let parsed = try #require(SessionID(hex: id.hex))
        #expect(parsed == id)
        #expect(parsed.shard == id.shard)
        #expect(SessionID(hex: id.hex.uppercased()) == nil)
        #expect(SessionID(hex: String(id.hex.dropLast())) == nil)
        #expect(SessionID(hex: id.hex + "0") == nil)
        #expect(SessionID(hex: String(id.hex.dropLast()) + "g") == nil)
        #expect(SessionID(hex: "") == nil)
        #expect(SessionID(hex: String(repeating: "é", count: 32)) == nil)
        #expect(SessionID(hex: String(repeating: "0", count: 64))?.shard == 0)
        #expect(SessionID(hex: String(repeating: "f", count: 64))?.shard == UInt64.max)
    }
}
