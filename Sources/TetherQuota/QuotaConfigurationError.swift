/// A tier table that cannot be used, naming the offending key so an operator can find it.
public struct QuotaConfigurationError: Error, Sendable, Equatable, CustomStringConvertible {
    /// Dotted path of the offending key, e.g. "tiers.pro.max_streams"; "json" for a document
    /// that is not JSON (or not an object), "file" for one that cannot be read.
    public let key: String
    public let problem: String

    public init(key: String, problem: String) {
        self.key = key
        self.problem = problem
    }

    public var description: String { "\(key): \(problem)" }
}
