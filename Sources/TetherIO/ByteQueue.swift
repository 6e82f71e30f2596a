#if os(Linux)
import Glibc

/// A malloc-backed byte queue with explicit ownership. The bytes being sent live in one of
/// these, frozen while the kernel reads them; Swift arrays cannot promise a stable address.
struct ByteQueue: ~Copyable {
    private(set) var base: UnsafeMutableRawPointer?
    private(set) var capacity = 0
    private(set) var readIndex = 0
    private(set) var writeIndex = 0

    init() {}

    deinit { free(base) }

    var count: Int { writeIndex - readIndex }
    var isEmpty: Bool { writeIndex == readIndex }

    var readableBytes: UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(start: base.map { UnsafeRawPointer($0 + readIndex) }, count: count)
    }

    mutating func append(_ bytes: UnsafeRawBufferPointer) {
        guard bytes.count > 0, let src = bytes.baseAddress else { return }
        reserve(bytes.count)
        guard let base else { return }
        (base + writeIndex).copyMemory(from: src, byteCount: bytes.count)
        writeIndex += bytes.count
    }

    mutating func append(_ bytes: [UInt8]) {
        bytes.withUnsafeBytes { append($0) }
    }

    private mutating func reserve(_ extra: Int) {
        if writeIndex + extra <= capacity { return }
        if readIndex > 0 && count + extra <= capacity, let base {
            base.copyMemory(from: base + readIndex, byteCount: count)
            writeIndex -= readIndex
            readIndex = 0
            return
        }
        var newCapacity = Swift.max(capacity, 512)
        while newCapacity < count + extra { newCapacity *= 2 }
        let live = count
        guard let fresh = malloc(newCapacity) else { fatalError("out of memory growing an outbound buffer") }
        if let base, live > 0 { fresh.copyMemory(from: base + readIndex, byteCount: live) }
        free(base)
        base = fresh
        capacity = newCapacity
        readIndex = 0
        writeIndex = live
    }

    mutating func consume(_ n: Int) {
        readIndex += n
        if readIndex >= writeIndex { release() }
    }

    /// Frees the storage: an idle connection should hold no outbound memory.
    mutating func release() {
        free(base)
        base = nil
        capacity = 0
        readIndex = 0
        writeIndex = 0
    }

    mutating func exchange(with other: inout ByteQueue) {
        Swift.swap(&base, &other.base)
        Swift.swap(&capacity, &other.capacity)
        Swift.swap(&readIndex, &other.readIndex)
        Swift.swap(&writeIndex, &other.writeIndex)
    }
}
#endif
