import Dispatch
import Synchronization
import Testing
@testable import TetherQuota

private func v4(_ a: UInt8, _ b: UInt8, _ c: UInt8, _ d: UInt8) -> AddressKey { AddressKey([a, b, c, d]) }

/// A distinct IPv6 address per index (2001:db8::/32 + i).
private func v6(_ i: Int) -> AddressKey {
    var bytes: [UInt8] = [0x20, 0x01, 0x0d, 0xb8] + Array(repeating: 0, count: 12)
    withUnsafeBytes(of: UInt64(i).bigEndian) { bytes.replaceSubrange(8..<16, with: $0) }
    return AddressKey(bytes)
}

@Suite struct AddressKeyTests {
    @Test func equalityAndFamilies() {
        #expect(v4(10, 0, 0, 1) == v4(10, 0, 0, 1))
        #expect(v4(10, 0, 0, 1) != v4(10, 0, 0, 2))
        #expect(v4(10, 0, 0, 1).isIPv4)
        // The same bits as IPv4 and as IPv6 are different addresses…
        #expect(AddressKey([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 10, 0, 0, 1]) != v4(10, 0, 0, 1))
        // …but an IPv4-mapped IPv6 address is the IPv4 client itself.
        let mapped = AddressKey([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 10, 0, 0, 1])
        #expect(mapped == v4(10, 0, 0, 1))
        #expect(mapped.isIPv4)
        #expect(v6(1) != v6(2))
        #expect(!v6(1).isIPv4)
        #expect(AddressKey([]) != AddressKey([0]))
    }

    @Test func descriptions() {
        #expect(v4(192, 168, 1, 254).description == "192.168.1.254")
        #expect(v6(0x1234).description == "2001:db8:0:0:0:0:0:1234")
        #expect(AddressKey([1, 2, 3]).description == "address(3 bytes)")
    }

    @Test func ipv6Prefix() {
        let a = AddressKey([0x20, 0x01, 0x0d, 0xb8, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12])
        let b = AddressKey([0x20, 0x01, 0x0d, 0xb8, 1, 2, 3, 4, 0xFF, 6, 7, 8, 9, 10, 11, 13])
        #expect(a != b)
        #expect(a.masked(ipv6PrefixLength: 64) == b.masked(ipv6PrefixLength: 64))
        #expect(a.masked(ipv6PrefixLength: 64).description == "2001:db8:102:304:0:0:0:0")
        #expect(a.masked(ipv6PrefixLength: 72) != b.masked(ipv6PrefixLength: 72))
        #expect(a.masked(ipv6PrefixLength: 128) == a)
        #expect(a.masked(ipv6PrefixLength: 200) == a)
        #expect(a.masked(ipv6PrefixLength: 0) == b.masked(ipv6PrefixLength: -5))
        #expect(a.masked(ipv6PrefixLength: 48).description == "2001:db8:102:0:0:0:0:0")
        #expect(v4(1, 2, 3, 4).masked(ipv6PrefixLength: 8) == v4(1, 2, 3, 4))
    }

    @Test func networks() throws {
        let ten = try #require(AddressPrefix(bytes: [10, 9, 8, 7], bits: 8))
        #expect(ten.description == "10.0.0.0/8")
        #expect(ten.contains(v4(10, 255, 0, 1)) && !ten.contains(v4(11, 0, 0, 1)))
        let one = try #require(AddressPrefix(bytes: [192, 0, 2, 7], bits: nil))
        #expect(one.bits == 32 && one.contains(v4(192, 0, 2, 7)) && !one.contains(v4(192, 0, 2, 8)))
        #expect(try #require(AddressPrefix(bytes: [1, 2, 3, 4], bits: 0)).contains(v4(200, 1, 1, 1)))
        let docs = try #require(AddressPrefix(bytes: [0x20, 0x01, 0x0d, 0xb8] + Array(repeating: 0, count: 12), bits: 32))
        #expect(docs.contains(v6(77)) && !docs.contains(v4(32, 1, 13, 184)))
        // IPv4 networks never match IPv6 clients, and the other way round.
        #expect(!ten.contains(AddressKey([10] + Array(repeating: 0, count: 15))))
        // An IPv4-mapped network is the IPv4 one; it matches mapped clients (folded to IPv4).
        let mapped = try #require(AddressPrefix(bytes: Array(repeating: 0, count: 10) + [0xFF, 0xFF, 10, 0, 0, 0], bits: 104))
        #expect(mapped == ten)
        #expect(AddressPrefix(bytes: [10, 0, 0, 0], bits: 33) == nil)
        #expect(AddressPrefix(bytes: [10, 0, 0, 0], bits: -1) == nil)
        #expect(AddressPrefix(bytes: Array(repeating: 0, count: 16), bits: 129) == nil)
        #expect(AddressPrefix(bytes: Array(repeating: 0, count: 10) + [0xFF, 0xFF, 10, 0, 0, 0], bits: 64) == nil)
        #expect(AddressPrefix(bytes: [1, 2, 3], bits: nil) == nil)
    }
}

@Suite struct AddressLimiterTests {
    @Test func limitHoldsExactlyPerAddress() {
        let limiter = AddressLimiter(ratePerSecond: 1, burst: 5)
        let a = v4(203, 0, 113, 7)
        for _ in 0..<5 { #expect(limiter.allow(a, now: 1_000)) }
        #expect(!limiter.allow(a, now: 1_000))
        #expect(!limiter.allow(a, now: 1_999))
        #expect(limiter.allow(a, now: 2_000))
        #expect(!limiter.allow(a, now: 2_000))
        // Refused attempts do not cost tokens: one second later, exactly one more.
        #expect(limiter.allow(a, now: 3_000))
        #expect(!limiter.allow(a, now: 3_000))
        #expect(limiter.entryCount == 1)
    }

    @Test func addressesAreIndependent() {
        let limiter = AddressLimiter(ratePerSecond: 1, burst: 3)
        let a = v4(10, 0, 0, 1), b = v4(10, 0, 0, 2), c = v6(1)
        for _ in 0..<3 { #expect(limiter.allow(a, now: 0)) }
        #expect(!limiter.allow(a, now: 0))
        for _ in 0..<3 { #expect(limiter.allow(b, now: 0)) }
        #expect(!limiter.allow(b, now: 0))
        for _ in 0..<3 { #expect(limiter.allow(c, now: 0)) }
        #expect(!limiter.allow(c, now: 0))
        #expect(limiter.entryCount == 3)
    }

    @Test func wouldAllowDoesNotTake() {
        let limiter = AddressLimiter(ratePerSecond: 1, burst: 2)
        let a = v4(10, 0, 0, 1)
        for _ in 0..<10 { #expect(limiter.wouldAllow(a, now: 0)) }
        #expect(limiter.entryCount == 0)
        #expect(limiter.allow(a, now: 0))
        #expect(limiter.wouldAllow(a, now: 0))
        #expect(limiter.allow(a, now: 0))
        #expect(!limiter.wouldAllow(a, now: 0))
        #expect(!limiter.wouldAllow(a, now: 999))
        #expect(limiter.wouldAllow(a, now: 1_000))
    }

    @Test func retryAfter() {
        let slow = AddressLimiter(ratePerSecond: 0.1, burst: 1)  // one per 10 s
        let a = v4(10, 0, 0, 1)
        #expect(slow.allow(a, now: 0))
        #expect(!slow.allow(a, now: 0))
        #expect(slow.retryAfterSeconds(a, now: 0) == 10)
        #expect(slow.retryAfterSeconds(a, now: 2_500) == 8)  // 7.5 s, rounded up
        #expect(slow.retryAfterSeconds(a, now: 9_999) == 1)
        #expect(slow.retryAfterSeconds(a, now: 10_000) == 1)  // never 0
        #expect(slow.retryAfterSeconds(v4(10, 0, 0, 9), now: 0) == 1)  // unknown address

        let fast = AddressLimiter(ratePerSecond: 100, burst: 1)
        #expect(fast.allow(a, now: 0))
        #expect(fast.retryAfterSeconds(a, now: 0) == 1)
    }

    @Test func disabled() {
        for rate in [0, -1, .nan, .infinity] as [Double] {
            let limiter = AddressLimiter(ratePerSecond: rate, burst: 5)
            #expect(!limiter.isEnabled)
            for _ in 0..<100 { #expect(limiter.allow(v4(1, 1, 1, 1), now: 0)) }
            #expect(limiter.wouldAllow(v4(1, 1, 1, 1), now: 0))
            #expect(limiter.retryAfterSeconds(v4(1, 1, 1, 1), now: 0) == 1)
            #expect(limiter.entryCount == 0)
        }
        #expect(AddressLimiter(ratePerSecond: 1, burst: 1).isEnabled)
    }

    @Test func burstBelowOneStillAdmitsOne() {
        let limiter = AddressLimiter(ratePerSecond: 1, burst: 0)
        #expect(limiter.burst == 1)
        #expect(limiter.allow(v4(1, 2, 3, 4), now: 0))
        #expect(!limiter.allow(v4(1, 2, 3, 4), now: 0))
    }

    @Test(arguments: [1, 5, 16, 100, 1_000])
    func entriesStayBounded(maxEntries: Int) {
        let limiter = AddressLimiter(ratePerSecond: 1, burst: 10, maxEntries: maxEntries)
        for i in 0..<5_000 {
            // Same millisecond: no bucket is full again, so only arbitrary drops make room.
            #expect(limiter.allow(v6(i), now: 0))
            if i % 97 == 0 { #expect(limiter.entryCount <= maxEntries) }
        }
        #expect(limiter.entryCount <= maxEntries)
        #expect(limiter.entryCount >= maxEntries / 2)  // shards are filled, not emptied
        // And again over time, when buckets do become full again.
        for i in 0..<5_000 {
            _ = limiter.allow(v6(i % 300), now: UInt64(i))
        }
        #expect(limiter.entryCount <= maxEntries)
    }

    @Test func fullBucketsAreDroppedFirst() {
        // One shard of 4 entries, so the test knows which shard each address lands in.
        let limiter = AddressLimiter(ratePerSecond: 1, burst: 2, maxEntries: 4, shardCount: 1)
        let a = v4(10, 0, 0, 1), b = v4(10, 0, 0, 2), c = v4(10, 0, 0, 3), d = v4(10, 0, 0, 4)
        for key in [a, b, c, d] { #expect(limiter.allow(key, now: 0)) }
        #expect(limiter.allow(d, now: 500))  // d: 1.5 - 1 = 0.5 left
        #expect(limiter.entryCount == 4)
        // At 1 s a, b and c are full again (1 + 1), d is not (0.5 + 0.5).
        #expect(limiter.allow(v4(10, 0, 0, 5), now: 1_000))
        #expect(limiter.entryCount == 2)
        // d kept its state: one token, not a fresh two.
        #expect(limiter.allow(d, now: 1_000))
        #expect(!limiter.allow(d, now: 1_000))
    }

    @Test func arbitraryDropWhenNoneIsFull() {
        let limiter = AddressLimiter(ratePerSecond: 1, burst: 2, maxEntries: 4, shardCount: 1)
        for i in 0..<4 { #expect(limiter.allow(v6(i), now: 0)) }
        #expect(limiter.allow(v6(4), now: 10))
        #expect(limiter.entryCount == 4)
        // Inserting many more within the second before any is full never grows the shard.
        for i in 5..<50 { _ = limiter.allow(v6(i), now: 10 + UInt64(i)) }
        #expect(limiter.entryCount == 4)
    }

    /// Several threads hammering the same addresses at one instant: exactly `burst` successes
    /// per address in total, whatever the interleaving.
    @Test func concurrentAllowsAreExact() {
        let limiter = AddressLimiter(ratePerSecond: 1, burst: 50)
        let addresses = (0..<64).map { v4(10, 1, UInt8($0 / 256), UInt8($0 % 256)) }
        let granted = Atomic<Int>(0)
        DispatchQueue.concurrentPerform(iterations: 8) { thread in
            var mine = 0
            for round in 0..<100 {
                for (i, key) in addresses.enumerated() where (i + round + thread) % 2 == 0 {
                    if limiter.allow(key, now: 5_000) { mine += 1 }
                    _ = limiter.wouldAllow(key, now: 5_000)
                }
            }
            granted.add(mine, ordering: .relaxed)
        }
        #expect(granted.load(ordering: .relaxed) == addresses.count * 50)
        #expect(limiter.entryCount == addresses.count)
    }

    /// Many threads inserting distinct addresses into a small table: the bound holds and nothing
    /// crashes (run under TSan: `swift test --sanitize=thread --filter TetherQuotaTests`).
    @Test func concurrentInsertionsStayBounded() {
        let limiter = AddressLimiter(ratePerSecond: 10, burst: 3, maxEntries: 256)
        DispatchQueue.concurrentPerform(iterations: 8) { thread in
            for i in 0..<5_000 {
                let key = v6(thread * 1_000_000 + i)
                _ = limiter.allow(key, now: UInt64(i))
                if i % 10 == 0 { _ = limiter.retryAfterSeconds(key, now: UInt64(i)) }
            }
        }
        #expect(limiter.entryCount <= 256)
    }
}
