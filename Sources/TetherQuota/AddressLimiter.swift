import Synchronization

/// Per-client-address token buckets shared by all worker threads (handshake path only, not the
/// data path): 16 shards, each a Mutex over a dictionary, so workers rarely wait on each other.
///
/// Memory is bounded at `maxEntries` in total. When a shard is full, entries whose bucket is full
/// again are dropped first: such an entry is indistinguishable from a missing one (a new address
/// starts with a full bucket), so forgetting it loses nothing. Only when none is full is an
/// arbitrary entry dropped, which hands that address a fresh bucket: the price of a bound that a
/// flood of distinct addresses cannot break.
@available(macOS 15.0, *)
public final class AddressLimiter: Sendable {
    /// 0 => disabled: everything allowed.
    public let ratePerSecond: Double
    /// At least 1 when enabled.
    public let burst: Double
    /// The bound on `entryCount`.
    public let maxEntries: Int

    private let shards: [Shard]
    private let capacityPerShard: Int

    private final class Shard: Sendable {
        let state: Mutex<ShardState>
        init() { state = Mutex(ShardState()) }
    }

    private struct ShardState {
        var buckets: [AddressKey: TokenBucket] = [:]
        /// No bucket in this shard can be full before this time (a lower bound), so a shard under
        /// a flood of new addresses does not rescan every entry on every insertion.
        var noneFullBefore: UInt64 = 0
    }

    /// A rate that is 0, negative or not finite disables the limiter. `maxEntries` below 1 is
    /// taken as 1.
    public convenience init(ratePerSecond: Double, burst: Double, maxEntries: Int = 65_536) {
        self.init(ratePerSecond: ratePerSecond, burst: burst, maxEntries: maxEntries, shardCount: 16)
    }

    /// `shardCount` is rounded down to a power of two; tests use 1 to know where keys land.
    init(ratePerSecond: Double, burst: Double, maxEntries: Int, shardCount: Int) {
        let enabled = ratePerSecond.isFinite && ratePerSecond > 0
        self.ratePerSecond = enabled ? ratePerSecond : 0
        // A burst below one token would refuse every address forever.
        self.burst = enabled ? Swift.max(1, burst.isNaN ? 1 : burst) : 0
        self.maxEntries = Swift.max(1, maxEntries)
        // A power of two (hash & mask), and no more shards than entries, so that
        // shards × capacityPerShard <= maxEntries always holds.
        var count = 1
        while count * 2 <= Swift.min(shardCount, self.maxEntries) { count *= 2 }
        self.shards = (0..<count).map { _ in Shard() }
        self.capacityPerShard = self.maxEntries / count
    }

    public var isEnabled: Bool { ratePerSecond > 0 }

    @inline(__always)
    private func shard(for key: AddressKey) -> Shard {
        // hashValue is seeded per process: a client cannot aim all its addresses at one shard.
        shards[key.hashValue & (shards.count - 1)]
    }

    /// Takes one token for the address; false when over the limit.
    public func allow(_ key: AddressKey, now: UInt64) -> Bool {
        guard isEnabled else { return true }
        return shard(for: key).state.withLock { state in
            if let index = state.buckets.index(forKey: key) {
                return state.buckets.values[index].take(1, now: now)
            }
            if state.buckets.count >= capacityPerShard {
                makeRoom(in: &state, now: now)
            }
            var bucket = TokenBucket(ratePerSecond: ratePerSecond, burst: burst, now: now)
            let allowed = bucket.take(1, now: now)
            state.buckets[key] = bucket
            state.noneFullBefore = Swift.min(state.noneFullBefore, fullAgainLowerBound(bucket, now: now))
            return allowed
        }
    }

    /// Would one token be available (without taking)? For "refuse while too many recent failures".
    public func wouldAllow(_ key: AddressKey, now: UInt64) -> Bool {
        guard isEnabled else { return true }
        return shard(for: key).state.withLock { state in
            guard let bucket = state.buckets[key] else { return true }
            return bucket.available(now: now) >= 1
        }
    }

    /// Retry-After in whole seconds (>= 1) for an address that was refused.
    public func retryAfterSeconds(_ key: AddressKey, now: UInt64) -> Int {
        guard isEnabled else { return 1 }
        let milliseconds = shard(for: key).state.withLock { state in
            state.buckets[key]?.millisecondsUntil(1, now: now) ?? 0
        }
        // Rounded up: a client that retries after the advertised time must be let in.
        let seconds = milliseconds / 1000 + (milliseconds % 1000 == 0 ? 0 : 1)
        return Swift.max(1, Int(clamping: seconds))
    }

    public var entryCount: Int {
        shards.reduce(0) { sum, shard in sum + shard.state.withLock { $0.buckets.count } }
    }

    /// Called with the shard full: drops every entry whose bucket is full again, or, if there is
    /// none, one arbitrary entry.
    private func makeRoom(in state: inout ShardState, now: UInt64) {
        if now >= state.noneFullBefore {
            var full: [AddressKey] = []
            var nextFull = UInt64.max
            for (key, bucket) in state.buckets {
                if bucket.isFull(now: now) {
                    full.append(key)
                } else {
                    nextFull = Swift.min(nextFull, fullAgainLowerBound(bucket, now: now))
                }
            }
            for key in full { state.buckets.removeValue(forKey: key) }
            state.noneFullBefore = nextFull
        }
        if state.buckets.count >= capacityPerShard {
            state.buckets.remove(at: state.buckets.startIndex)
        }
    }

    /// A time at or before which the bucket cannot be full again (rounded down, so never late).
    private func fullAgainLowerBound(_ bucket: TokenBucket, now: UInt64) -> UInt64 {
        let missing = burst - bucket.available(now: now)
        guard missing > 0 else { return now }
        let milliseconds = (missing * 1000 / ratePerSecond).rounded(.down)
        guard milliseconds < 1.0e15 else { return .max }
        let (sum, overflow) = now.addingReportingOverflow(UInt64(milliseconds))
        return overflow ? .max : sum
    }
}
