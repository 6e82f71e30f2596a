import Testing
import TetherQuota

// `#expect(bucket.take(…))` does not compile (the macro calls the method on an immutable copy),
// hence `== true` / `== false` for the mutating calls.
@Suite struct TokenBucketTests {
    @Test func startsFullAndHoldsBurst() {
        var bucket = TokenBucket(ratePerSecond: 10, burst: 20, now: 1_000)
        #expect(!bucket.isUnlimited)
        #expect(bucket.available(now: 1_000) == 20)
        for _ in 0..<20 { #expect(bucket.take(now: 1_000) == true) }
        #expect(bucket.take(now: 1_000) == false)
        #expect(bucket.available(now: 1_000) == 0)
    }

    @Test func refillsOverTimeExactly() {
        var bucket = TokenBucket(ratePerSecond: 10, burst: 20, now: 0)
        #expect(bucket.take(20, now: 0) == true)
        #expect(bucket.available(now: 99) == 0.99)  // 99 × 10 / 1000
        #expect(bucket.available(now: 100) == 1)
        #expect(bucket.take(now: 99) == false)
        #expect(bucket.take(now: 100) == true)
        #expect(bucket.take(now: 100) == false)
        #expect(bucket.available(now: 350) == 2.5)
        // Capped at burst however long it sat idle.
        #expect(bucket.available(now: 1_000_000) == 20)
        #expect(bucket.take(20, now: 1_000_000) == true)
        #expect(bucket.take(now: 1_000_000) == false)
    }

    @Test func availableDoesNotStore() {
        var bucket = TokenBucket(ratePerSecond: 1, burst: 1, now: 0)
        #expect(bucket.take(now: 0) == true)
        #expect(bucket.available(now: 500) == 0.5)
        #expect(bucket.available(now: 500) == 0.5)
        #expect(bucket.take(now: 1_000) == true)
    }

    @Test func takeIsAllOrNothing() {
        var bucket = TokenBucket(ratePerSecond: 1, burst: 5, now: 0)
        #expect(bucket.take(3, now: 0) == true)
        #expect(bucket.take(3, now: 0) == false)
        #expect(bucket.available(now: 0) == 2)
        #expect(bucket.take(2, now: 0) == true)
        #expect(bucket.take(6, now: 1_000_000) == false)  // more than burst: never
        #expect(bucket.take(0, now: 0) == true)
        #expect(bucket.take(-1, now: 0) == false)
        #expect(bucket.take(.nan, now: 0) == false)
    }

    @Test func takeUpToGrantsPartially() {
        // 1 token per millisecond.
        var bucket = TokenBucket(ratePerSecond: 1000, burst: 1500, now: 0)
        #expect(bucket.takeUpTo(1000, now: 0) == 1000)
        #expect(bucket.takeUpTo(1000, now: 0) == 500)
        #expect(bucket.takeUpTo(10, now: 0) == 0)
        #expect(bucket.takeUpTo(10, now: 7) == 7)
        #expect(bucket.takeUpTo(0, now: 7) == 0)
        #expect(bucket.takeUpTo(-5, now: 7) == 0)
        #expect(bucket.takeUpTo(.max, now: 1_000_000) == 1500)
    }

    @Test func takeUpToKeepsFractions() {
        // 1.5 tokens per millisecond: whole units are granted, the half carries over.
        var bucket = TokenBucket(ratePerSecond: 1500, burst: 10, now: 0)
        #expect(bucket.takeUpTo(10, now: 0) == 10)
        #expect(bucket.takeUpTo(10, now: 1) == 1)
        #expect(bucket.available(now: 1) == 0.5)
        #expect(bucket.takeUpTo(10, now: 2) == 2)
        #expect(bucket.available(now: 2) == 0)
    }

    @Test func millisecondsUntilKnownValues() {
        var bucket = TokenBucket(ratePerSecond: 10, burst: 20, now: 0)
        #expect(bucket.millisecondsUntil(1, now: 0) == 0)
        #expect(bucket.millisecondsUntil(20, now: 0) == 0)
        #expect(bucket.take(20, now: 0) == true)
        #expect(bucket.millisecondsUntil(1, now: 0) == 100)
        #expect(bucket.millisecondsUntil(2.5, now: 0) == 250)
        #expect(bucket.millisecondsUntil(1, now: 50) == 50)
        #expect(bucket.millisecondsUntil(1, now: 99) == 1)
        #expect(bucket.millisecondsUntil(1, now: 100) == 0)
        #expect(bucket.millisecondsUntil(20, now: 0) == 2_000)
        #expect(bucket.millisecondsUntil(21, now: 0) == .max)  // more than burst
        #expect(bucket.millisecondsUntil(0, now: 0) == 0)
        #expect(bucket.millisecondsUntil(-1, now: 0) == 0)
        // 3/s: one token takes 333.3 ms, so 334 (333 would be too early).
        var third = TokenBucket(ratePerSecond: 3, burst: 1, now: 0)
        #expect(third.take(now: 0) == true)
        #expect(third.millisecondsUntil(1, now: 0) == 334)
        #expect(third.take(now: 333) == false)
        #expect(third.take(now: 334) == true)
    }

    /// The answer is exactly the first millisecond at which the tokens are there, for awkward
    /// rates and fractional states too (checked against `available` and `take`).
    @Test(arguments: [0.5, 1, 3, 7, 10, 33.3, 999.9, 1000, 1500, 52_428_800])
    func millisecondsUntilIsTheFirstSufficientMillisecond(rate: Double) {
        var rng = SplitMix64(seed: UInt64(rate * 1000))
        let burst = max(1, rate * 2)
        for _ in 0..<300 {
            var bucket = TokenBucket(ratePerSecond: rate, burst: burst, now: 0)
            var now: UInt64 = 0
            for _ in 0..<Int(rng.next() % 4) {
                now += rng.next() % 700
                _ = bucket.take(burst * Double(rng.next() % 1000) / 1000, now: now)
            }
            let n = max(0.001, burst * Double(rng.next() % 1001) / 1000)
            let wait = bucket.millisecondsUntil(n, now: now)
            if bucket.available(now: now) >= n {
                #expect(wait == 0)
                continue
            }
            #expect(wait >= 1)
            #expect(bucket.available(now: now + wait) >= n)
            #expect(bucket.available(now: now + wait - 1) < n)
            var copy = bucket
            #expect(copy.take(n, now: now + wait) == true)
        }
    }

    @Test func unlimited() {
        var bucket = TokenBucket(ratePerSecond: 0, burst: 0, now: 0)
        #expect(bucket.isUnlimited)
        #expect(bucket.take(1e12, now: 0) == true)
        #expect(bucket.takeUpTo(.max, now: 0) == .max)
        #expect(bucket.millisecondsUntil(1e12, now: 0) == 0)
        #expect(bucket.available(now: 0) == .infinity)
        // Values TierTable rejects are unlimited here rather than a trap.
        for rate in [-1, .nan, .infinity] as [Double] {
            #expect(TokenBucket(ratePerSecond: rate, burst: 1, now: 0).isUnlimited)
        }
    }

    @Test func clockGoingBackwardsGrantsNothing() {
        var bucket = TokenBucket(ratePerSecond: 10, burst: 2, now: 10_000)
        #expect(bucket.take(2, now: 10_000) == true)
        #expect(bucket.take(now: 5_000) == false)
        #expect(bucket.available(now: 0) == 0)
        // And the time it went back to does not become the new reference point.
        #expect(bucket.available(now: 10_100) == 1)
        #expect(bucket.millisecondsUntil(1, now: UInt64.max - 10) == 0)
    }

    @Test func equatable() {
        var a = TokenBucket(ratePerSecond: 5, burst: 5, now: 0)
        var b = TokenBucket(ratePerSecond: 5, burst: 5, now: 0)
        #expect(a == b)
        _ = a.take(now: 0)
        #expect(a != b)
        _ = b.take(now: 0)
        #expect(a == b)
    }

    @Test func profileBuckets() {
        var profile = QuotaProfile()
        #expect(profile.effectiveBandwidthBurst == 50 * 1024 * 1024)
        profile.bandwidthBurstBytes = 1024
        #expect(profile.effectiveBandwidthBurst == 1024)
        let bytes = profile.makeBandwidthBucket(now: 0)
        #expect(bytes.burst == 1024 && bytes.ratePerSecond == 50 * 1024 * 1024)
        let requests = profile.makeRequestBucket(now: 0)
        #expect(requests.burst == 20 && requests.ratePerSecond == 10)
        profile.bandwidthBytesPerSecond = 0
        #expect(profile.makeBandwidthBucket(now: 0).isUnlimited)
    }
}

/// Deterministic pseudo-random numbers for the property checks.
struct SplitMix64 {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
