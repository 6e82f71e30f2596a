import TetherHTTP

/// The relay's error bodies (strings are quoted by TetherHTTP's `JSONString`).
enum JSON {
    /// `{"error":{"code":...,"message":...}}`: every error the relay sends has this shape.
    static func error(code: String, message: String) -> String {
        "{\"error\":{\"code\":\(JSONString.quote(code)),\"message\":\(JSONString.quote(message))}}"
    }
}
