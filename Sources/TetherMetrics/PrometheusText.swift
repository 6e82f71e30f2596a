/// Builds a scrape in the Prometheus text exposition format, version 0.0.4: `# HELP` and
/// `# TYPE` once per family, then its samples. Pure value code (no I/O, no clock), so that the
/// relay renders on whatever thread answers the scrape and tests read the exact bytes.
public struct PrometheusText: Sendable {
    public enum MetricType: String, Sendable {
        case counter, gauge, histogram, untyped
    }

    public static let contentType = "text/plain; version=0.0.4; charset=utf-8"

    public private(set) var text = ""

    public init(reservingCapacity capacity: Int = 16_384) {
        text.reserveCapacity(capacity)
    }

    /// Starts a metric family. Every sample of the family must follow before the next one.
    public mutating func family(_ name: String, help: String, type: MetricType) {
        text += "# HELP "
        text += name
        text += " "
        text += PrometheusText.escapeHelp(help)
        text += "\n# TYPE "
        text += name
        text += " "
        text += type.rawValue
        text += "\n"
    }

    public mutating func sample(_ name: String, _ labels: KeyValuePairs<String, String>, _ value: UInt64) {
        line(name, labels, String(value))
    }

    public mutating func sample(_ name: String, _ labels: KeyValuePairs<String, String>, _ value: Int) {
        line(name, labels, String(value))
    }

    public mutating func sample(_ name: String, _ labels: KeyValuePairs<String, String>, _ value: Double) {
        line(name, labels, PrometheusText.format(value))
    }

    public mutating func sample(_ name: String, _ value: UInt64) {
        line(name, [:], String(value))
    }

    public mutating func sample(_ name: String, _ value: Int) {
        line(name, [:], String(value))
    }

    public mutating func sample(_ name: String, _ value: Double) {
        line(name, [:], PrometheusText.format(value))
    }

    /// Labels known only at run time (a list built by the caller).
    public mutating func sample(_ name: String, dynamicLabels labels: [(String, String)], _ value: UInt64) {
        text += name
        appendLabels(labels)
        text += " "
        text += String(value)
        text += "\n"
    }

    /// A whole histogram family: cumulative buckets (`le`), then `_sum` and `_count`.
    public mutating func histogram(_ name: String, help: String, _ snapshot: HistogramSnapshot) {
        family(name, help: help, type: .histogram)
        var cumulative: UInt64 = 0
        for (index, bound) in snapshot.upperBounds.enumerated() {
            cumulative &+= snapshot.counts[index]
            line(name + "_bucket", ["le": PrometheusText.format(bound)], String(cumulative))
        }
        line(name + "_bucket", ["le": "+Inf"], String(snapshot.count))
        line(name + "_sum", [:], PrometheusText.format(snapshot.sum))
        line(name + "_count", [:], String(snapshot.count))
    }

    private mutating func line(_ name: String, _ labels: KeyValuePairs<String, String>, _ value: String) {
        text += name
        if !labels.isEmpty {
            text += "{"
            var first = true
            for (key, labelValue) in labels {
                if !first { text += "," }
                first = false
                text += key
                text += "=\""
                text += PrometheusText.escapeLabel(labelValue)
                text += "\""
            }
            text += "}"
        }
        text += " "
        text += value
        text += "\n"
    }

    private mutating func appendLabels(_ labels: [(String, String)]) {
        guard !labels.isEmpty else { return }
        text += "{"
        for (index, (key, value)) in labels.enumerated() {
            if index > 0 { text += "," }
            text += key
            text += "=\""
            text += PrometheusText.escapeLabel(value)
            text += "\""
        }
        text += "}"
    }

    /// Go's float syntax as Prometheus parses it: shortest round-trip digits, `+Inf`, `NaN`.
    public static func format(_ value: Double) -> String {
        if value.isNaN { return "NaN" }
        if value.isInfinite { return value > 0 ? "+Inf" : "-Inf" }
        if value == value.rounded(), abs(value) < 1e15 { return String(Int64(value)) }
        return String(value)
    }

    /// Label values escape backslash, double quote and line feed.
    public static func escapeLabel(_ value: String) -> String {
        guard value.utf8.contains(where: { $0 == UInt8(ascii: "\\") || $0 == UInt8(ascii: "\"") || $0 == 10 }) else {
            return value
        }
        var out = ""
        for scalar in value.unicodeScalars {
            switch scalar {
            case "\\": out += "\\\\"
            case "\"": out += "\\\""
            case "\n": out += "\\n"
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out
    }

    /// HELP text escapes backslash and line feed only.
    public static func escapeHelp(_ value: String) -> String {
        guard value.utf8.contains(where: { $0 == UInt8(ascii: "\\") || $0 == 10 }) else { return value }
        var out = ""
        for scalar in value.unicodeScalars {
            switch scalar {
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out
    }
}
