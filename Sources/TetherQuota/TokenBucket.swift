/// A token bucket: holds up to `burst` tokens and gains `ratePerSecond` tokens per second.
///
/// Time is monotonic milliseconds (UInt64) supplied by the caller (the event loop's clock), so
/// a bucket costs no clock read and no syscall, and tests control time exactly. Refill is lazy:
/// a bucket only does arithmetic when it is asked, there is no timer per bucket.
///
/// Not synchronized: a bucket lives on one event loop (`AddressLimiter` adds the locking for the
/// one place that shares buckets between threads).
public struct TokenBucket: Sendable, Equatable {
    /// Tokens per second; 0 => unlimited (take always succeeds, takeUpTo grants all).
    public let ratePerSecond: Double
    /// Capacity; the bucket starts full.
    public let burst: Double

    private var tokens: Double
    private var last: UInt64

    /// A negative, NaN or infinite rate is treated as 0 (unlimited), and a negative or NaN burst
    /// as 0, rather than trapping: `TierTable.validate()` rejects such values before they get
    /// here, and a limiter must never take the event loop down.
    public init(ratePerSecond: Double, burst: Double, now: UInt64) {
        self.ratePerSecond = ratePerSecond.isFinite && ratePerSecond > 0 ? ratePerSecond : 0
        self.burst = burst >= 0 ? burst : 0  // NaN fails the comparison too
        self.tokens = self.burst
        self.last = now
    }

    public var isUnlimited: Bool { ratePerSecond == 0 }

    /// Tokens at `now`: stored tokens plus what accrued since the last update, capped at `burst`.
    /// `elapsed × rate / 1000` rather than `elapsed × (rate / 1000)`: for whole rates the product
    /// is exact and only the division rounds, so e.g. 10/s over 100 ms is exactly 1 token.
    @inline(__always)
    private func refilled(at now: UInt64) -> Double {
        // A clock that went backwards (or a caller mixing clocks) grants nothing instead of
        // wrapping around to a huge elapsed time.
        guard now > last else { return tokens }
        let gained = Double(now &- last) * ratePerSecond / 1000
        return Swift.min(burst, tokens + gained)
    }

    @inline(__always)
    private mutating func refill(_ now: UInt64) {
        guard now > last else { return }
        tokens = refilled(at: now)
        last = now
    }

    /// Takes n tokens if available (all or nothing). Taking 0 always succeeds; a negative or
    /// NaN count always fails.
    public mutating func take(_ n: Double = 1, now: UInt64) -> Bool {
        guard n >= 0 else { return false }
        if isUnlimited { return true }
        refill(now)
        guard tokens >= n else { return false }
        tokens -= n
        return true
    }

    /// Takes up to n tokens (whole units), returns how many were granted (0...n). For byte
    /// shaping: write what was granted now, schedule the rest with `millisecondsUntil`.
    public mutating func takeUpTo(_ n: Int, now: UInt64) -> Int {
        guard n > 0 else { return 0 }
        if isUnlimited { return n }
        refill(now)
        let granted: Int
        if tokens >= Double(n) {
            granted = n
        } else {
            // tokens < Double(n) <= 2^63 here, so the conversion cannot trap.
            granted = tokens > 0 ? Int(tokens.rounded(.down)) : 0
        }
        tokens -= Double(granted)
        return granted
    }

    /// Milliseconds until n tokens will be available (0 if available now; for Retry-After and for
    /// scheduling a refill timer). Never more than needed; at least 1 when not available now.
    /// `UInt64.max` if n can never be available (n > burst).
    public func millisecondsUntil(_ n: Double, now: UInt64) -> UInt64 {
        guard !isUnlimited, n > 0 else { return 0 }
        let current = refilled(at: now)
        if current >= n { return 0 }
        guard n <= burst else { return .max }
        // Closed form first, then nudged against the refill formula itself, so that the answer
        // is exactly the first millisecond at which `take(n, now: now + answer)` succeeds despite
        // floating-point rounding on either side.
        let estimate = ((n - current) * 1000 / ratePerSecond).rounded(.up)
        guard estimate < 1.0e15 else { return .max }  // beyond 30,000 years: as good as never
        var wait = Swift.max(1, UInt64(estimate))
        while refilled(at: Self.later(now, by: wait)) < n { wait += 1 }
        while wait > 1 && refilled(at: Self.later(now, by: wait - 1)) >= n { wait -= 1 }
        return wait
    }

    /// `now + wait`, saturating: a wrapped time would look like the past and grant nothing.
    @inline(__always)
    private static func later(_ now: UInt64, by wait: UInt64) -> UInt64 {
        let (sum, overflow) = now.addingReportingOverflow(wait)
        return overflow ? .max : sum
    }

    /// Tokens available at `now` (refill applied, not stored). `.infinity` when unlimited.
    public func available(now: UInt64) -> Double {
        isUnlimited ? .infinity : refilled(at: now)
    }

    /// Whether the bucket would be full at `now`: such a bucket is indistinguishable from a new
    /// one, which is what lets `AddressLimiter` forget it.
    public func isFull(now: UInt64) -> Bool {
        isUnlimited || refilled(at: now) >= burst
    }
}
