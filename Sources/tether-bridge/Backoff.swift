/// Reconnect delays: exponential from `base` (×`factor` per failed attempt), capped, with
/// ±`jitter` so that many bridges dropped by one relay restart don't reconnect in lockstep.
struct Backoff: Sendable {
    let base: Double
    let factor: Double
    let cap: Double
    /// Relative spread: 0.3 draws each delay from [0.7 d, 1.3 d] (then capped).
    let jitter: Double
    private(set) var attempt = 0

    init(base: Double = 1, factor: Double = 2, cap: Double = 60, jitter: Double = 0.3) {
        self.base = base
        self.factor = factor
        self.cap = cap
        self.jitter = jitter
    }

    /// The delay before the next attempt, in seconds; each call counts one more failure.
    mutating func nextDelay<R: RandomNumberGenerator>(using rng: inout R) -> Double {
        var nominal = base
        // Multiply step by step so a long outage can't overflow to infinity.
        for _ in 0..<attempt where nominal < cap { nominal *= factor }
        nominal = min(nominal, cap)
        attempt += 1
        let spread = jitter > 0 ? Double.random(in: (1 - jitter)...(1 + jitter), using: &rng) : 1
        return min(cap, max(0, nominal * spread))
    }

    mutating func nextDelay() -> Double {
        var rng = SystemRandomNumberGenerator()
        return nextDelay(using: &rng)
    }

    /// After a tunnel got as far as the relay's HELLO: the next failure starts from `base`.
    mutating func reset() { attempt = 0 }
}
