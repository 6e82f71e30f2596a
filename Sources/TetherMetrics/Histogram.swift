import Synchronization

/// A latency histogram with fixed buckets, written by one thread (its worker) and read by a
/// scrape on any other: each observation is a few relaxed loads and stores, no locked
/// read-modify-write, no allocation. Scrapes merge the workers' snapshots.
public final class Histogram: Sendable {
    /// Upper bounds in seconds, ascending (the `le` labels; +Inf is implicit).
    public let upperBounds: [Double]
    private let boundsNanoseconds: [UInt64]
    /// Per bucket, not cumulative; the last slot counts observations above every bound.
    private let counts: [Slot]
    private let sumNanoseconds = Atomic<UInt64>(0)

    private final class Slot: Sendable {
        let value = Atomic<UInt64>(0)
    }

    /// Request latencies: 0.5 ms to 5 minutes (LLM answers stream for minutes).
    public static let latencyBounds: [Double] = [
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300,
    ]

    public init(upperBounds: [Double] = Histogram.latencyBounds) {
        let sorted = upperBounds.filter { $0.isFinite && $0 > 0 }.sorted()
        self.upperBounds = sorted
        self.boundsNanoseconds = sorted.map { UInt64(($0 * 1e9).rounded()) }
        self.counts = (0...sorted.count).map { _ in Slot() }
    }

    /// Records one observation. Only the owning thread may call it.
    @inline(__always)
    public func observe(nanoseconds: UInt64) {
        var index = 0
        while index < boundsNanoseconds.count && nanoseconds > boundsNanoseconds[index] { index += 1 }
        let slot = counts[index]
        slot.value.store(slot.value.load(ordering: .relaxed) &+ 1, ordering: .relaxed)
        sumNanoseconds.store(sumNanoseconds.load(ordering: .relaxed) &+ nanoseconds, ordering: .relaxed)
    }

    public func snapshot() -> HistogramSnapshot {
        var snapshot = HistogramSnapshot(upperBounds: upperBounds)
        snapshot.add(self)
        return snapshot
    }
}

/// Counts of one or more histograms with the same buckets, summed.
public struct HistogramSnapshot: Sendable, Equatable {
    public let upperBounds: [Double]
    /// Per finite bucket, not cumulative.
    public private(set) var counts: [UInt64]
    /// Observations above the last bound.
    public private(set) var overflow: UInt64 = 0
    public private(set) var sum: Double = 0

    public init(upperBounds: [Double]) {
        self.upperBounds = upperBounds
        self.counts = Array(repeating: 0, count: upperBounds.count)
    }

    public var count: UInt64 { counts.reduce(overflow, &+) }

    /// Adds another worker's histogram (same buckets; others are ignored).
    public mutating func add(_ histogram: Histogram) {
        guard histogram.upperBounds == upperBounds else { return }
        let raw = histogram.rawCounts()
        for index in counts.indices { counts[index] &+= raw.counts[index] }
        overflow &+= raw.counts[counts.count]
        sum += Double(raw.sumNanoseconds) / 1e9
    }
}

extension Histogram {
    fileprivate func rawCounts() -> (counts: [UInt64], sumNanoseconds: UInt64) {
        // Relaxed loads: a scrape racing an observation may see it in a count before the sum;
        // the next scrape agrees. Nothing on the data path waits for a reader.
        let sum = sumNanoseconds.load(ordering: .relaxed)
        return (counts.map { $0.value.load(ordering: .relaxed) }, sum)
    }
}
