/// An ordered list of header fields. Names keep their original spelling; lookups are
/// ASCII case-insensitive. Repeated names are kept as separate entries, in order.
public struct HTTPHeaders: Sendable, Equatable, Sequence, ExpressibleByDictionaryLiteral, CustomStringConvertible {
    public typealias Element = (name: String, value: String)

    @usableFromInline
    var storage: [(name: String, value: String)]

    public init() {
        storage = []
    }

    public init(_ pairs: [(String, String)]) {
        storage = pairs.map { (name: $0.0, value: $0.1) }
    }

    public init(dictionaryLiteral elements: (String, String)...) {
        storage = elements.map { (name: $0.0, value: $0.1) }
    }

    init(storage: [(name: String, value: String)]) {
        self.storage = storage
    }

    public var count: Int { storage.count }
    public var isEmpty: Bool { storage.isEmpty }

    public func makeIterator() -> IndexingIterator<[(name: String, value: String)]> {
        storage.makeIterator()
    }

    public mutating func reserveCapacity(_ n: Int) {
        storage.reserveCapacity(n)
    }

    public mutating func add(name: String, value: String) {
        storage.append((name: name, value: value))
    }

    /// Sets `name` to the single value `value`: the first existing entry is updated in
    /// place (keeping its position) and any further entries are removed.
    public mutating func replaceOrAdd(name: String, value: String) {
        guard let first = storage.firstIndex(where: { Self.namesEqual($0.name, name) }) else {
            storage.append((name: name, value: value))
            return
        }
        storage[first].value = value
        var i = first + 1
        var w = first + 1
        while i < storage.count {
            if !Self.namesEqual(storage[i].name, name) {
                if w != i { storage.swapAt(w, i) }
                w += 1
            }
            i += 1
        }
        storage.removeSubrange(w...)
    }

    public mutating func remove(name: String) {
        storage.removeAll { Self.namesEqual($0.name, name) }
    }

    /// All values of `name`, case-insensitively, in order.
    public subscript(name: String) -> [String] {
        var out: [String] = []
        for field in storage where Self.namesEqual(field.name, name) {
            out.append(field.value)
        }
        return out
    }

    public func first(name: String) -> String? {
        for field in storage where Self.namesEqual(field.name, name) {
            return field.value
        }
        return nil
    }

    public func contains(name: String) -> Bool {
        storage.contains { Self.namesEqual($0.name, name) }
    }

    /// True if any value of the comma-separated header `name` (e.g. Connection) contains
    /// `token` as a list element, case-insensitively.
    public func containsToken(_ token: String, in name: String) -> Bool {
        withUTF8Bytes(token) { tokenBytes in
            for field in storage where Self.namesEqual(field.name, name) {
                let found = withUTF8Bytes(field.value) { value in
                    anyListElement(value) { bytesEqualIgnoringCase($0, tokenBytes) }
                }
                if found { return true }
            }
            return false
        }
    }

    /// Equal when both hold the same fields in the same order; names compare
    /// case-insensitively, values exactly.
    public static func == (lhs: HTTPHeaders, rhs: HTTPHeaders) -> Bool {
        guard lhs.storage.count == rhs.storage.count else { return false }
        for (l, r) in zip(lhs.storage, rhs.storage) {
            guard l.value == r.value, namesEqual(l.name, r.name) else { return false }
        }
        return true
    }

    public var description: String {
        "[" + storage.map { "\($0.name): \($0.value)" }.joined(separator: ", ") + "]"
    }

    @inline(__always)
    static func namesEqual(_ a: String, _ b: String) -> Bool {
        a.utf8.count == b.utf8.count && a.utf8.elementsEqual(b.utf8) { asciiLower($0) == asciiLower($1) }
    }
}
