import Crypto
import JWTKit

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// HS256 built directly on swift-crypto rather than jwt-kit's HMAC signer: that one is only
/// reachable through the async key collection and asserts (traps in debug builds) on secrets
/// shorter than 32 bytes, which deployments may still use. Comparison is constant-time.
struct HS256Algorithm: JWTAlgorithm {
    let key: SymmetricKey
    var name: String { "HS256" }

    init(secret: String) {
        key = SymmetricKey(data: Array(secret.utf8))
    }

    func sign(_ plaintext: some DataProtocol) throws -> [UInt8] {
        Array(HMAC<SHA256>.authenticationCode(for: plaintext, using: key))
    }

    func verify(_ signature: some DataProtocol, signs plaintext: some DataProtocol) throws -> Bool {
        HMAC<SHA256>.isValidAuthenticationCode(Array(signature), authenticating: plaintext, using: key)
    }
}

enum Base64URL {
    /// Unpadded base64url (RFC 7515 §2), as JWS compact serialization requires.
    static func encode(_ bytes: some DataProtocol) -> String {
        var out: [UInt8] = []
        for c in Data(bytes).base64EncodedString().utf8 {
            switch c {
            case UInt8(ascii: "+"): out.append(UInt8(ascii: "-"))
            case UInt8(ascii: "/"): out.append(UInt8(ascii: "_"))
            case UInt8(ascii: "="): break
            default: out.append(c)
            }
        }
        return String(decoding: out, as: UTF8.self)
    }
}
