// What quotas add to each request on the relay's hot path (target: < 1 µs per request in all).
// Run from Benchmarks/:
//   swift package --disable-sandbox benchmark --target QuotaBenchmarks
// Every benchmark does 1,000 operations per measured iteration (scalingFactor .kilo), so the
// reported wall clock is per operation. Results: Benchmarks/results/quota.md.

import Benchmark
import Synchronization
import TetherAuth
import TetherQuota

/// A stand-in for the relay's per-session object (a class, as `Session` is).
final class SessionStub: Sendable {
    let id: SessionID
    let openStreams: Int
    init(id: SessionID, openStreams: Int) {
        self.id = id
        self.openStreams = openStreams
    }
}

/// The same key, hashed by its 8-byte `shard` only (the digest's first bytes, already uniformly
/// distributed) while equality still compares the whole id: what a custom `SessionID.hash(into:)`
/// would cost, for comparison with the synthesized one (which hashes the 64-character hex).
struct ShardHashedKey: Hashable, Sendable {
    let id: SessionID
    func hash(into hasher: inout Hasher) { hasher.combine(id.shard) }
    static func == (a: Self, b: Self) -> Bool { a.id == b.id }
}

/// Built on first use (global `let`s are lazy), so only the benchmarks that need it pay for it.
final class Fixture: Sendable {
    static let sessionCount = 20_000

    let sessions: [SessionID: SessionStub]
    let sessionsByShardHash: [ShardHashedKey: SessionStub]
    let shardHashedLookups: [ShardHashedKey]
    /// Equal to the table's keys but derived separately (their own String storage), as a
    /// request's identity would be: equality must compare bytes, not just pointers.
    let lookups: [SessionID]
    let tiers: TierTable
    let tierNames: [String]
    let addresses: [AddressKey]
    let limiter: AddressLimiter
    /// Monotonic fake milliseconds shared by every run, so buckets never see time go backwards.
    let clock = Atomic<UInt64>(1)

    init() {
        var sessions: [SessionID: SessionStub] = [:]
        sessions.reserveCapacity(Self.sessionCount)
        var lookups: [SessionID] = []
        for i in 0..<Self.sessionCount {
            let id = SessionID.derive(issuer: "https://auth.example.com/", subject: "user-\(i)")
            sessions[id] = SessionStub(id: id, openStreams: i % 64)
            lookups.append(SessionID.derive(issuer: "https://auth.example.com/", subject: "user-\((i &* 7919) % Self.sessionCount)"))
        }
        self.sessions = sessions
        self.sessionsByShardHash = Dictionary(uniqueKeysWithValues: sessions.map { (ShardHashedKey(id: $0.key), $0.value) })
        self.shardHashedLookups = lookups.map(ShardHashedKey.init(id:))
        self.lookups = lookups

        var tiers = TierTable()
        for (name, streams) in [("free", 8), ("pro", 256), ("team", 1024)] {
            var profile = tiers.defaultProfile
            profile.maxStreams = streams
            tiers.tiers[name] = profile
        }
        self.tiers = tiers
        // Tier names as a token's claim would give them: separate strings, one unknown.
        self.tierNames = ["free", "pro", "team", "enterprise"].map { String(decoding: Array($0.utf8), as: UTF8.self) }

        self.addresses = (0..<16_384).map { i in
            AddressKey([10, UInt8(truncatingIfNeeded: i >> 16), UInt8(truncatingIfNeeded: i >> 8), UInt8(truncatingIfNeeded: i)])
        }
        self.limiter = AddressLimiter(ratePerSecond: 10, burst: 20)
    }

    /// A start time for one measured iteration, 1 ms per operation after the previous one.
    func startTime(operations: Int) -> UInt64 {
        clock.add(UInt64(operations), ordering: .relaxed).newValue
    }
}

let fixture = Fixture()

let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .init(
        metrics: [.wallClock, .throughput, .mallocCountTotal],
        timeUnits: .nanoseconds,
        scalingFactor: .kilo,
        maxDuration: .seconds(2)
    )

    // One request's quota check: a request-rate token plus the concurrent-streams limit.
    Benchmark("Request quota check (take + streams compare)") { benchmark in
        let profile = fixture.tiers.defaultProfile
        var bucket = TokenBucket(ratePerSecond: 1_000_000, burst: 1_000, now: 0)
        var now: UInt64 = 0
        for i in benchmark.scaledIterations {
            now += 1
            let openStreams = i & 127
            blackHole(bucket.take(1, now: now) && openStreams < profile.maxStreams)
        }
    }

    // Byte shaping: one 16 KiB receive buffer against a 50 MiB/s bucket, 1 ms apart.
    Benchmark("Byte shaping takeUpTo (16 KiB)") { benchmark in
        let profile = fixture.tiers.defaultProfile
        var bucket = profile.makeBandwidthBucket(now: 0)
        var now: UInt64 = 0
        for _ in benchmark.scaledIterations {
            now += 1
            blackHole(bucket.takeUpTo(16_384, now: now))
        }
    }

    Benchmark("TierTable.profile(for:) (3 tiers)") { benchmark in
        let tiers = fixture.tiers
        let names = fixture.tierNames
        for i in benchmark.scaledIterations {
            blackHole(tiers.profile(for: names[i & 3]).profile.maxStreams)
        }
    }

    // Handshake path, one thread (no lock contention): 16,384 addresses in turn.
    Benchmark("AddressLimiter.allow (16k addresses)") { benchmark in
        let limiter = fixture.limiter
        let addresses = fixture.addresses
        var now = fixture.startTime(operations: benchmark.scaledIterations.count)
        var index = Int(truncatingIfNeeded: now) & (addresses.count - 1)
        for _ in benchmark.scaledIterations {
            now += 1
            index = (index + 1) & (addresses.count - 1)
            blackHole(limiter.allow(addresses[index], now: now))
        }
    }

    Benchmark("Session lookup ([SessionID: Session], 20k)") { benchmark in
        let sessions = fixture.sessions
        let lookups = fixture.lookups
        var index = 0
        for _ in benchmark.scaledIterations {
            index = index == lookups.count - 1 ? 0 : index + 1
            blackHole(sessions[lookups[index]])
        }
    }

    Benchmark("Session lookup, key hashed by shard only (comparison)") { benchmark in
        let sessions = fixture.sessionsByShardHash
        let lookups = fixture.shardHashedLookups
        var index = 0
        for _ in benchmark.scaledIterations {
            index = index == lookups.count - 1 ? 0 : index + 1
            blackHole(sessions[lookups[index]])
        }
    }

    // Everything quotas add to a request, together: session lookup, tier profile, request
    // token, streams compare.
    Benchmark("Request path total (lookup + profile + take + compare)") { benchmark in
        let sessions = fixture.sessions
        let lookups = fixture.lookups
        let tiers = fixture.tiers
        let names = fixture.tierNames
        var bucket = TokenBucket(ratePerSecond: 1_000_000, burst: 1_000, now: 0)
        var now: UInt64 = 0
        var index = 0
        for i in benchmark.scaledIterations {
            now += 1
            index = index == lookups.count - 1 ? 0 : index + 1
            let streams = sessions[lookups[index]]?.openStreams ?? 0
            let profile = tiers.profile(for: names[i & 3]).profile
            blackHole(bucket.take(1, now: now) && streams < profile.maxStreams)
        }
    }
}
