/// Minimal JSON string escaping for the relay's own small documents (error bodies, health);
/// no Foundation on the data path.
enum JSON {
    static func quote(_ s: String) -> String {
        var out = ""
        out.reserveCapacity(s.utf8.count + 2)
        append(s, to: &out)
        return out
    }

    private static let hex: [Character] = Array("0123456789abcdef")

    /// RFC 8259 string: quotes, backslashes and every control character escaped (DEL and the
    /// JavaScript line separators too, for log readers that eval). Swift strings are valid
    /// Unicode, so the output is valid UTF-8.
    static func append(_ s: String, to out: inout String) {
        out += "\""
        for scalar in s.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case _ where scalar.value < 0x20 || scalar.value == 0x7F || scalar.value == 0x2028 || scalar.value == 0x2029:
                out += "\\u"
                let v = Int(scalar.value)
                for shift in [12, 8, 4, 0] { out.append(hex[(v >> shift) & 0xF]) }
            default:
                out.unicodeScalars.append(scalar)
            }
        }
        out += "\""
    }

    /// `{"error":{"code":...,"message":...}}`: every error the relay sends has this shape.
    static func error(code: String, message: String) -> String {
        "{\"error\":{\"code\":\(quote(code)),\"message\":\(quote(message))}}"
    }
}
