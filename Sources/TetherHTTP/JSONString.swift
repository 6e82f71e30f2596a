/// JSON string literals for the small documents the relay, the bridge and the load driver
/// write themselves (error bodies, status files, logs, reports): no Foundation on the data path.
public enum JSONString {
    public static func quote(_ s: String) -> String {
        var out = ""
        out.reserveCapacity(s.utf8.count + 2)
        append(s, to: &out)
        return out
    }

    private static let hex: [Character] = Array("0123456789abcdef")

    /// RFC 8259 string: quotes, backslashes and every control character escaped (DEL and the
    /// JavaScript line separators too, for log readers that eval). Swift strings are valid
    /// Unicode, so the output is valid UTF-8.
    public static func append(_ s: String, to out: inout String) {
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
}
