import COpenSSL

// A custom BIO instead of a BIO_s_mem pair: memory BIOs keep their grown (16+ KiB) buffers
// for the life of the connection, which 10,000 idle connections cannot afford.
//
// Read side: OpenSSL reads straight from the ciphertext the caller is feeding (zero-copy
// through `withCiphertext`); only an unconsumed tail is copied into `inbound`, whose storage is
// released as soon as it is consumed. The BIO hands OpenSSL whole TLS records only, so OpenSSL
// never parks a partial record in its own ~17 KiB read buffer, and SSL_MODE_RELEASE_BUFFERS
// can always free it.
//
// Write side: every byte OpenSSL writes is appended to `outbound`, which the caller drains.
// The BIO never refuses a write, so OpenSSL's write buffer is always empty after a call and
// RELEASE_BUFFERS frees it too.

/// Largest record body we wait for before handing a header to OpenSSL. Above this, OpenSSL
/// rejects the record anyway (record_overflow), so the header passes straight through instead
/// of making us buffer up to 64 KiB of garbage.
private let maximumRecordBody = 16_384 + 2_048

struct TetherBIOMethod: @unchecked Sendable {  // BIO_METHOD is immutable once built
    let method: OpaquePointer?

    /// Created once per process (Swift globals initialise lazily and thread-safely).
    static let shared = TetherBIOMethod()

    private init() {
        let index = BIO_get_new_index()
        guard index > 0, let method = BIO_meth_new(index | BIO_TYPE_SOURCE_SINK, "tether-ciphertext") else {
            self.method = nil
            return
        }
        // All callbacks are capture-free: the connection is reached through BIO_get_data.
        _ = BIO_meth_set_write_ex(method) { bio, data, length, written in
            guard let bio, let connection = TLSConnection.from(bio) else { return 0 }
            if let data, length > 0 {
                connection.outbound.append(contentsOf: UnsafeRawBufferPointer(start: data, count: length))
            }
            written?.pointee = length
            return 1
        }
        _ = BIO_meth_set_read_ex(method) { bio, buffer, length, readBytes in
            guard let bio else { return 0 }
            tether_BIO_clear_retry_flags(bio)
            readBytes?.pointee = 0
            guard let connection = TLSConnection.from(bio), let buffer, let readBytes else { return 0 }
            let n = connection.bioRead(into: UnsafeMutableRawBufferPointer(start: buffer, count: length))
            if n > 0 {
                readBytes.pointee = n
                return 1
            }
            // No data yet: "retry" (-> SSL_ERROR_WANT_READ). After feedEOF: a real EOF.
            if !connection.inputEOF { tether_BIO_set_retry_read(bio) }
            return 0
        }
        _ = BIO_meth_set_ctrl(method) { bio, command, _, _ in
            switch command {
            case BIO_CTRL_FLUSH:
                return 1  // nothing is ever buffered inside the BIO
            case BIO_CTRL_EOF:
                guard let bio, let connection = TLSConnection.from(bio) else { return 1 }
                return connection.inputEOF && connection.bufferedCiphertextCount == 0 ? 1 : 0
            case BIO_CTRL_PENDING:
                guard let bio, let connection = TLSConnection.from(bio) else { return 0 }
                return connection.bufferedCiphertextCount
            default:
                return 0  // includes BIO_CTRL_GET_KTLS_*: no kernel TLS here
            }
        }
        _ = BIO_meth_set_create(method) { bio in
            BIO_set_init(bio, 1)
            return 1
        }
        _ = BIO_meth_set_destroy(method) { bio in
            BIO_set_data(bio, nil)
            BIO_set_init(bio, 0)
            return 1
        }
        self.method = method
    }
}

extension TLSConnection {
    static func from(_ bio: OpaquePointer) -> TLSConnection? {
        guard let raw = BIO_get_data(bio) else { return nil }
        // Unretained: the connection owns the SSL that owns this BIO and detaches it in deinit.
        return Unmanaged<TLSConnection>.fromOpaque(raw).takeUnretainedValue()
    }

    /// Ciphertext received but not yet consumed by OpenSSL.
    public var bufferedCiphertextCount: Int {
        (inbound.count - inboundOffset) + (borrowed.count - borrowedOffset)
    }

    /// Byte `index` of the unconsumed input (`inbound` tail, then `borrowed` tail).
    private func inputByte(_ index: Int) -> UInt8 {
        let held = inbound.count - inboundOffset
        return index < held ? inbound[inboundOffset + index] : borrowed[borrowedOffset + index - held]
    }

    /// BIO read: copies up to `destination.count` bytes, never more than the rest of the current
    /// record, and starts a record only once it is complete. Returns 0 for "no data yet".
    func bioRead(into destination: UnsafeMutableRawBufferPointer) -> Int {
        let available = bufferedCiphertextCount
        guard available > 0, destination.count > 0 else { return 0 }
        if framing && recordRemaining == 0 {
            guard available >= 5 else { return 0 }
            let type = inputByte(0)
            let length = Int(inputByte(3)) << 8 | Int(inputByte(4))
            if (20...24).contains(type) && inputByte(1) == 3 && length <= maximumRecordBody {
                guard available >= 5 + length else { return 0 }
                recordRemaining = 5 + length
            } else {
                // Not a TLS record (garbage, SSLv2 hello): pass bytes through raw from now on
                // and let OpenSSL reject them.
                framing = false
            }
        }
        var wanted = destination.count
        if framing { wanted = min(wanted, recordRemaining) }
        var copied = 0

        let held = inbound.count - inboundOffset
        if held > 0 {
            let n = min(held, wanted)
            inbound.withUnsafeBytes { source in
                UnsafeMutableRawBufferPointer(rebasing: destination[0..<n])
                    .copyMemory(from: UnsafeRawBufferPointer(rebasing: source[inboundOffset..<(inboundOffset + n)]))
            }
            inboundOffset += n
            copied = n
            if inboundOffset == inbound.count {
                inbound = []  // release the storage, not just the contents
                inboundOffset = 0
            }
        }
        let lent = borrowed.count - borrowedOffset
        if copied < wanted && lent > 0 {
            let n = min(lent, wanted - copied)
            UnsafeMutableRawBufferPointer(rebasing: destination[copied..<(copied + n)])
                .copyMemory(from: UnsafeRawBufferPointer(rebasing: borrowed[borrowedOffset..<(borrowedOffset + n)]))
            borrowedOffset += n
            copied += n
        }
        if framing { recordRemaining -= copied }
        return copied
    }

    /// Moves whatever is left of the borrowed ciphertext into `inbound` before the caller's
    /// buffer goes away. Usually nothing, or the head of one partial record.
    func spillBorrowed() {
        let lent = borrowed.count - borrowedOffset
        if lent > 0 {
            if inboundOffset > 0 {
                inbound.removeFirst(inboundOffset)
                inboundOffset = 0
            }
            inbound.append(contentsOf: UnsafeRawBufferPointer(rebasing: borrowed[borrowedOffset...]))
        }
        borrowed = UnsafeRawBufferPointer(start: nil, count: 0)
        borrowedOffset = 0
    }
}
