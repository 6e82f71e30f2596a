/// Minimal JSON string escaping for the relay's own small documents (error bodies, health);
/// no Foundation on the data path.
enum JSON {
    static func quote(_ s: String) -> String {
        var out = "\""
        out.reserveCapacity(s.utf8.count + 2)
        for scalar in s.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            default:
                if scalar.value < 0x20 {
                    let hex = String(scalar.value, radix: 16)
                    out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
                } else {
                    out.unicodeScalars.append(scalar)
                }
            }
        }
        out += "\""
        return out
    }

    /// `{"error":{"code":...,"message":...}}`: every error the relay sends has this shape.
    static func error(code: String, message: String) -> String {
        "{\"error\":{\"code\":\(quote(code)),\"message\":\(quote(message))}}"
    }
}
