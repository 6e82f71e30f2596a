#if os(Linux)
import Glibc
internal import CURing

/// A provided-buffer ring (IORING_REGISTER_PBUF_RING): one shared pool of receive buffers per
/// worker, picked by the kernel when data arrives. Sized by messages in flight, not by
/// connection count, so idle connections hold no receive memory at all.
final class BufferRing {
    let group: UInt16
    let count: Int
    let bufferSize: Int
    private let mask: Int32
    private let ringMemory: UnsafeMutableRawPointer
    private let ringMemoryLength: Int
    private let ring: UnsafeMutablePointer<io_uring_buf_ring>
    private let storage: UnsafeMutableRawPointer
    /// Buffers handed back since the last look; decides how many starved receivers to re-arm.
    var recycledSinceCheck = 0

    init(uring: UnsafeMutablePointer<io_uring>, count: Int, bufferSize: Int, group: UInt16) throws(IOError) {
        guard count > 0 && count & (count - 1) == 0 && count <= 32768, bufferSize > 0 else {
            throw IOError(errno: EINVAL, operation: "receive buffers: count must be a power of two up to 32768")
        }
        self.group = group
        self.count = count
        self.bufferSize = bufferSize
        self.mask = Int32(io_uring_buf_ring_mask(UInt32(count)))
        let pageSize = Int(sysconf(Int32(_SC_PAGESIZE)))
        let length = ((count * tether_buf_ring_entry_size() + pageSize - 1) / pageSize) * pageSize
        let mem = mmap(nil, length, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0)
        guard let mem, mem != MAP_FAILED else { throw IOError(errno: tether_errno(), operation: "mmap buffer ring") }
        self.ringMemory = mem
        self.ringMemoryLength = length
        self.ring = mem.bindMemory(to: io_uring_buf_ring.self, capacity: 1)
        guard let storage = aligned_alloc(4096, count * bufferSize) else {
            munmap(mem, length)
            throw IOError(errno: ENOMEM, operation: "allocate receive buffers")
        }
        self.storage = storage
        io_uring_buf_ring_init(ring)
        let rc = tether_register_buf_ring(uring, mem, UInt32(count), group)
        guard rc == 0 else {
            munmap(mem, length)
            free(storage)
            throw IOError(errno: -rc, operation: "io_uring_register_buf_ring")
        }
        for id in 0..<count {
            io_uring_buf_ring_add(ring, storage + id * bufferSize, UInt32(bufferSize), UInt16(id), mask, Int32(id))
        }
        io_uring_buf_ring_advance(ring, Int32(count))
    }

    deinit {
        munmap(ringMemory, ringMemoryLength)
        free(storage)
    }

    @inline(__always)
    func bytes(id: UInt16, length: Int) -> UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(start: storage + Int(id) * bufferSize, count: min(length, bufferSize))
    }

    /// Hands a buffer back to the kernel as soon as its bytes have been consumed.
    @inline(__always)
    func recycle(id: UInt16) {
        io_uring_buf_ring_add(ring, storage + Int(id) * bufferSize, UInt32(bufferSize), id, mask, 0)
        io_uring_buf_ring_advance(ring, 1)
        recycledSinceCheck &+= 1
    }
}
#endif
