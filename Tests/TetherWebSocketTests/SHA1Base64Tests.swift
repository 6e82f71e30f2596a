import TetherWebSocket
import XCTest

final class SHA1Base64Tests: XCTestCase {
    private func hex(_ bytes: [UInt8]) -> String {
        let digits = Array("0123456789ABCDEF".utf8)
        var out: [UInt8] = []
        for b in bytes { out += [digits[Int(b >> 4)], digits[Int(b & 15)]] }
        return String(decoding: out, as: UTF8.self)
    }

    /// RFC 3174 §7.3 test vectors, plus the empty message.
    func testSHA1RFC3174Vectors() {
        XCTAssertEqual(hex(SHA1.hash(Array("abc".utf8))), "A9993E364706816ABA3E25717850C26C9CD0D89D")
        XCTAssertEqual(hex(SHA1.hash("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq".utf8)),
                       "84983E441C3BD26EBAAE4AA1F95129E5E54670F1")
        XCTAssertEqual(hex(SHA1.hash([UInt8](repeating: UInt8(ascii: "a"), count: 1_000_000))),
                       "34AA973CD4C4DAA4F61EEB2BDBAD27316534016F")
        let s4 = String(repeating: "0123456701234567012345670123456701234567012345670123456701234567", count: 10)
        XCTAssertEqual(hex(SHA1.hash(s4.utf8)), "DEA356A2CDDD90C7A7ECEDC5EBB563934F460452")
        XCTAssertEqual(hex(SHA1.hash([UInt8]())), "DA39A3EE5E6B4B0D3255BFEF95601890AFD80709")
    }

    /// Padding edge cases (55/56/63/64/65 bytes) and incremental updates of every split size
    /// must agree with the one-shot result.
    func testSHA1IncrementalAndPaddingBoundaries() {
        XCTAssertEqual(hex(SHA1.hash([UInt8](repeating: 0x61, count: 55))), "C1C8BBDC22796E28C0E15163D20899B65621D65A")
        XCTAssertEqual(hex(SHA1.hash([UInt8](repeating: 0x61, count: 56))), "C2DB330F6083854C99D4B5BFB6E8F29F201BE699")
        XCTAssertEqual(hex(SHA1.hash([UInt8](repeating: 0x61, count: 64))), "0098BA824B5C16427BD7A1122A5A442A25EC644D")
        var rng = SplitMix64(seed: 7)
        let data = rng.bytes(300)
        let oneShot = SHA1.hash(data)
        for split in [0, 1, 55, 56, 63, 64, 65, 127, 128, 129, 299, 300] {
            var h = SHA1()
            h.update(data[..<split])
            h.update(data[split...])
            XCTAssertEqual(h.finalize(), oneShot, "split \(split)")
        }
        var h = SHA1()
        for b in data { h.update([b]) }
        XCTAssertEqual(h.finalize(), oneShot)
    }

    /// RFC 4648 §10 test vectors.
    func testBase64RFC4648Vectors() {
        let vectors = [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foob", "Zm9vYg=="),
                       ("fooba", "Zm9vYmE="), ("foobar", "Zm9vYmFy")]
        for (plain, encoded) in vectors {
            XCTAssertEqual(Base64.encode(Array(plain.utf8)), encoded)
            XCTAssertEqual(Base64.decode(encoded), Array(plain.utf8))
        }
    }

    func testBase64AllByteValuesAndURLVariant() {
        let all = (0 ... 255).map { UInt8($0) }
        for n in 0 ... 20 {
            let bytes = Array(all.suffix(n))
            XCTAssertEqual(Base64.decode(Base64.encode(bytes)), bytes)
            let url = Base64.encode(bytes, urlSafe: true)
            XCTAssertFalse(url.contains("=") || url.contains("+") || url.contains("/"))
            XCTAssertEqual(Base64.decode(url, urlSafe: true), bytes)
        }
        XCTAssertEqual(Base64.encode([0xFB, 0xFF]), "+/8=")
        XCTAssertEqual(Base64.encode([0xFB, 0xFF], urlSafe: true), "-_8")
        XCTAssertEqual(Base64.decode("-_8=", urlSafe: true), [0xFB, 0xFF])
    }

    func testBase64RejectsMalformedInput() {
        for bad in ["Zg", "Zg=", "Zg===", "Z===", "====", "Zm9v=", "Zm 9v", "Zm9v\n", "Zh==", "Zm9=", "Zm-v", "Zm_v", "é===",
                    "A", "AB=C"] {
            XCTAssertNil(Base64.decode(bad), bad)
        }
        XCTAssertNil(Base64.decode("+/8=", urlSafe: true))
        XCTAssertNil(Base64.decode("A", urlSafe: true))
        XCTAssertEqual(Base64.decode(""), [])
    }
}
