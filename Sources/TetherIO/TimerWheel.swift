/// A hashed timer wheel: O(1) schedule and cancel, and each tick only visits one bucket, so
/// tens of thousands of per-connection deadlines cost nearly nothing while they don't fire.
public struct TimerID: Hashable, Sendable {
    let index: Int32
    let generation: UInt32
}

public enum TimerTarget: Equatable, Sendable {
    case none
    case closure(Int32)
    case connection(slot: Int32, generation: UInt32)
    case listenerRearm(Int32)
}

public struct TimerWheel {
    public static let bucketCount = 4096
    public static let tickMilliseconds: UInt64 = 10
    private static let mask = UInt64(bucketCount - 1)

    private struct Node {
        var deadlineTick: UInt64 = 0
        var prev: Int32 = -1
        var next: Int32 = -1
        var bucket: Int32 = -1
        var generation: UInt32 = 0
        var target: TimerTarget = .none
    }

    private var heads = [Int32](repeating: -1, count: TimerWheel.bucketCount)
    private var nodes: [Node] = []
    private var freeNodes: [Int32] = []
    private var closures: [(() -> Void)?] = []
    private var freeClosures: [Int32] = []
    public private(set) var currentTick: UInt64
    public private(set) var count = 0

    public init(nowMilliseconds: UInt64) {
        currentTick = nowMilliseconds / TimerWheel.tickMilliseconds
    }

    static func tick(forMilliseconds ms: UInt64) -> UInt64 {
        (ms + tickMilliseconds - 1) / tickMilliseconds
    }

    public mutating func schedule(atMilliseconds ms: UInt64, target: TimerTarget) -> TimerID {
        let index: Int32
        if let free = freeNodes.popLast() {
            index = free
        } else {
            index = Int32(nodes.count)
            nodes.append(Node())
        }
        let tick = Swift.max(TimerWheel.tick(forMilliseconds: ms), currentTick + 1)
        let bucket = Int32(truncatingIfNeeded: tick & TimerWheel.mask)
        let i = Int(index)
        nodes[i].deadlineTick = tick
        nodes[i].target = target
        nodes[i].bucket = bucket
        nodes[i].prev = -1
        nodes[i].next = heads[Int(bucket)]
        if nodes[i].next >= 0 { nodes[Int(nodes[i].next)].prev = index }
        heads[Int(bucket)] = index
        count += 1
        return TimerID(index: index, generation: nodes[i].generation)
    }

    public mutating func schedule(atMilliseconds ms: UInt64, _ body: @escaping () -> Void) -> TimerID {
        let c: Int32
        if let free = freeClosures.popLast() {
            c = free
            closures[Int(c)] = body
        } else {
            c = Int32(closures.count)
            closures.append(body)
        }
        return schedule(atMilliseconds: ms, target: .closure(c))
    }

    @discardableResult
    public mutating func cancel(_ id: TimerID) -> Bool {
        let i = Int(id.index)
        guard i < nodes.count, nodes[i].generation == id.generation, nodes[i].bucket >= 0 else { return false }
        if case .closure(let c) = nodes[i].target { dropClosure(c) }
        unlinkAndFree(i)
        return true
    }

    private mutating func dropClosure(_ c: Int32) {
        closures[Int(c)] = nil
        freeClosures.append(c)
    }

    private mutating func unlinkAndFree(_ i: Int) {
        let n = nodes[i]
        if n.prev >= 0 { nodes[Int(n.prev)].next = n.next } else { heads[Int(n.bucket)] = n.next }
        if n.next >= 0 { nodes[Int(n.next)].prev = n.prev }
        nodes[i].bucket = -1
        nodes[i].prev = -1
        nodes[i].next = -1
        nodes[i].target = .none
        nodes[i].generation &+= 1
        freeNodes.append(Int32(i))
        count -= 1
    }

    /// Milliseconds until the next bucket that holds a timer (an upper bound on how long the
    /// loop may sleep), or nil when no timer is scheduled.
    public func millisecondsUntilNextTimer(nowMilliseconds: UInt64) -> UInt64? {
        guard count > 0 else { return nil }
        var tick = currentTick + 1
        let last = currentTick + UInt64(TimerWheel.bucketCount)
        while tick <= last {
            if heads[Int(tick & TimerWheel.mask)] >= 0 { break }
            tick += 1
        }
        let at = tick * TimerWheel.tickMilliseconds
        return at > nowMilliseconds ? at - nowMilliseconds : 0
    }

    /// Removes every timer due at `nowMilliseconds` and returns what they target; closures are
    /// returned rather than run so that callbacks can freely schedule and cancel.
    public mutating func expire(nowMilliseconds: UInt64, into due: inout [TimerTarget], closuresDue: inout [() -> Void]) {
        let nowTick = nowMilliseconds / TimerWheel.tickMilliseconds
        guard nowTick > currentTick else { return }
        let steps = Swift.min(nowTick - currentTick, UInt64(TimerWheel.bucketCount))
        var tick = currentTick + 1
        for _ in 0..<steps {
            var i = heads[Int(tick & TimerWheel.mask)]
            while i >= 0 {
                let next = nodes[Int(i)].next
                if nodes[Int(i)].deadlineTick <= nowTick {
                    let target = nodes[Int(i)].target
                    if case .closure(let c) = target {
                        if let body = closures[Int(c)] { closuresDue.append(body) }
                        dropClosure(c)
                    } else {
                        due.append(target)
                    }
                    unlinkAndFree(Int(i))
                }
                i = next
            }
            tick += 1
        }
        currentTick = nowTick
    }
}
