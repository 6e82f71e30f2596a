import Glibc
import Synchronization
import TetherIO

/// A scenario's per-loop object: everything it does runs on its loop.
protocol LoopWorker: AnyObject, SendableMetatype {
    /// Called on every iteration of its loop, and at least every `--tick-us`: paces open-loop
    /// arrivals, token streams and churn, finer than the loop's 10 ms timer wheel.
    func tick(now: UInt64)
}

/// The driver threads: one io_uring loop each, a worker object on each, counters and results
/// per loop. The main thread only starts phases and prints the progress line.
final class Harness<W: LoopWorker>: @unchecked Sendable {
    let group: EventLoopGroup
    let counters: [WorkerCounters]
    let results: [WorkerResults]
    private let slots: [LoopLocal<W?>]
    let workerCount: Int

    init(workers: Int, tickNanoseconds: UInt64, receiveBuffers: Int = 512,
         make: @escaping @Sendable (EventLoop, Int, WorkerCounters, WorkerResults) -> W) throws {
        var io = IOConfiguration()
        io.workers = workers
        io.receiveBufferCount = receiveBuffers
        workerCount = workers
        group = try EventLoopGroup(configuration: io)
        counters = (0..<workers).map { _ in WorkerCounters() }
        results = (0..<workers).map { _ in WorkerResults() }
        slots = (0..<workers).map { _ in LoopLocal<W?>(nil) }
        let counters = self.counters, results = self.results, slots = self.slots
        try group.start { loop in
            let slot = slots[loop.index]
            slot.value = make(loop, loop.index, counters[loop.index], results[loop.index])
            loop.maximumWaitNanoseconds = tickNanoseconds
            let result = results[loop.index]
            loop.iterationHook = {
                let now = nowNanoseconds()
                if result.lastIteration != 0 { result.loopGap.record(nanoseconds: now &- result.lastIteration) }
                result.lastIteration = now
                slot.value?.tick(now: now)
            }
        }
    }

    /// Runs `body` on every worker's loop.
    func each(_ body: @escaping @Sendable (W) -> Void) {
        for (i, handle) in group.handles.enumerated() {
            let slot = slots[i]
            handle.execute { _ in
                if let w = slot.value { body(w) }
            }
        }
    }

    /// Runs `body` on every worker's loop and waits until all have run it.
    func eachAndWait(_ body: @escaping @Sendable (W) -> Void) {
        let done = Done()
        for (i, handle) in group.handles.enumerated() {
            let slot = slots[i]
            let posted = handle.execute { _ in
                if let w = slot.value { body(w) }
                done.count.add(1, ordering: .releasing)
            }
            if !posted { done.count.add(1, ordering: .releasing) }
        }
        while done.count.load(ordering: .acquiring) < workerCount { usleep(200) }
    }

    private final class Done: Sendable {
        let count = Atomic<Int>(0)
        let sum = Atomic<Int>(0)
    }

    /// Sum of `body` over every worker, each evaluated on its loop.
    func eachAndWaitValue(_ body: @escaping @Sendable (W) -> Int) -> Int {
        let done = Done()
        for (i, handle) in group.handles.enumerated() {
            let slot = slots[i]
            let posted = handle.execute { _ in
                if let w = slot.value { done.sum.add(body(w), ordering: .relaxed) }
                done.count.add(1, ordering: .releasing)
            }
            if !posted { done.count.add(1, ordering: .releasing) }
        }
        while done.count.load(ordering: .acquiring) < workerCount { usleep(200) }
        return done.sum.load(ordering: .relaxed)
    }

    var totals: Totals { Totals(counters) }

    /// Prints `progress()` once a second (stderr) until `done()` or `seconds` have passed.
    /// Returns true if `done()` ended it.
    @discardableResult
    func run(seconds: Double, label: String, progress: (Double) -> String, done: () -> Bool = { false }) -> Bool {
        let start = nowNanoseconds()
        let end = start &+ UInt64(max(0, seconds) * 1e9)
        var nextProgress = start &+ 1_000_000_000
        while true {
            let now = nowNanoseconds()
            if now >= nextProgress {
                log("[\(label)] " + progress(Double(now &- start) / 1e9))
                nextProgress &+= 1_000_000_000
                if nextProgress <= now { nextProgress = now &+ 1_000_000_000 }
            }
            if done() { return true }
            if now >= end { return false }
            sleepUntil(nanoseconds: min(now &+ 10_000_000, end, nextProgress))
        }
    }

    /// Stops the loops (closing whatever is still open) and joins the threads; after this the
    /// workers' results may be read from this thread.
    func shutdown() {
        group.shutdown()
    }

    /// Times a loop ran out of provided receive buffers (a starved connection waits for one).
    var bufferExhaustions: UInt64 {
        group.handles.reduce(0) { $0 + $1.stats.bufferExhaustions.load(ordering: .relaxed) }
    }

    /// Merged results of every worker (call after `shutdown`).
    func mergedResults() -> WorkerResults {
        let all = WorkerResults()
        for r in results { all.merge(r) }
        return all
    }
}
