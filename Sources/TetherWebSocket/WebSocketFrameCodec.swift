/// Low-level frame encoding/decoding (RFC 6455 §5.2). `WebSocketConnection` builds on it; the
/// load driver and tests use it directly to produce arbitrary (even invalid) frame sequences.
///
/// Mask keys are `UInt32` in wire order: key `0x37FA213D` is sent as bytes `37 FA 21 3D`.
public enum WebSocketFrameCodec {
    /// Largest possible frame header: 2 + 8 (64-bit length) + 4 (mask key).
    public static let maxHeaderSize = 14

    /// Header size for a frame with this payload size.
    @inlinable
    public static func headerSize(payloadCount: Int, masked: Bool) -> Int {
        (payloadCount < 126 ? 2 : payloadCount <= 0xFFFF ? 4 : 10) + (masked ? 4 : 0)
    }

    /// Appends one frame to `out`. The payload is copied once and masked in place when
    /// `maskKey` is given.
    public static func encode(opcode: WebSocketOpcode, payload: UnsafeRawBufferPointer, fin: Bool = true,
                              maskKey: UInt32? = nil, into out: inout [UInt8]) {
        encode(firstByte: (fin ? 0x80 : 0) | opcode.rawValue, payload: payload, maskKey: maskKey, into: &out)
    }

    public static func encode(opcode: WebSocketOpcode, payload: [UInt8], fin: Bool = true,
                              maskKey: UInt32? = nil, into out: inout [UInt8]) {
        payload.withUnsafeBytes { encode(opcode: opcode, payload: $0, fin: fin, maskKey: maskKey, into: &out) }
    }

    /// Encodes a frame including its RSV bits (only meaningful for tests of invalid input).
    public static func encode(_ frame: WebSocketFrame, maskKey: UInt32? = nil, into out: inout [UInt8]) {
        var b0 = frame.opcode.rawValue
        if frame.fin { b0 |= 0x80 }
        if frame.rsv1 { b0 |= 0x40 }
        if frame.rsv2 { b0 |= 0x20 }
        if frame.rsv3 { b0 |= 0x10 }
        frame.payload.withUnsafeBytes { encode(firstByte: b0, payload: $0, maskKey: maskKey, into: &out) }
    }

    @usableFromInline
    static func encode(firstByte: UInt8, payload: UnsafeRawBufferPointer, maskKey: UInt32?, into out: inout [UInt8]) {
        let n = payload.count
        let headerCount = headerSize(payloadCount: n, masked: maskKey != nil)
        // Header assembled on the stack and appended in one go (no per-byte appends).
        var header: (UInt64, UInt64) = (0, 0)
        withUnsafeMutableBytes(of: &header) { h in
            h[0] = firstByte
            let maskBit: UInt8 = maskKey != nil ? 0x80 : 0
            var at = 2
            if n < 126 {
                h[1] = maskBit | UInt8(truncatingIfNeeded: n)
            } else if n <= 0xFFFF {
                h[1] = maskBit | 126
                h.storeBytes(of: UInt16(truncatingIfNeeded: n).bigEndian, toByteOffset: 2, as: UInt16.self)
                at = 4
            } else {
                h[1] = maskBit | 127
                h.storeBytes(of: UInt64(truncatingIfNeeded: n).bigEndian, toByteOffset: 2, as: UInt64.self)
                at = 10
            }
            if let key = maskKey {
                h.storeBytes(of: key.bigEndian, toByteOffset: at, as: UInt32.self)
            }
        }
        let total = headerCount + n
        if out.isEmpty {
            // Common case (fresh outbound): build the frame in a single exact allocation and
            // mask while copying, one pass over the payload.
            out = [UInt8](unsafeUninitializedCapacity: total) { buf, initialized in
                guard let dst = UnsafeMutableRawPointer(buf.baseAddress) else { return }
                withUnsafeBytes(of: &header) { dst.copyMemory(from: $0.baseAddress.unsafelyUnwrapped, byteCount: headerCount) }
                if let src = payload.baseAddress, n > 0 {
                    if let key = maskKey {
                        xorMask(from: src, to: dst + headerCount, count: n, key: key, offset: 0)
                    } else {
                        (dst + headerCount).copyMemory(from: src, byteCount: n)
                    }
                }
                initialized = total
            }
            return
        }
        // Geometric growth: never quadratic when appending many frames.
        if out.capacity - out.count < total {
            out.reserveCapacity(max(out.count + total, out.capacity * 2))
        }
        withUnsafeBytes(of: &header) { out.append(contentsOf: UnsafeRawBufferPointer(rebasing: $0[0 ..< headerCount])) }
        guard n > 0 else { return }
        let start = out.count
        out.append(contentsOf: payload)
        if let key = maskKey {
            out.withUnsafeMutableBytes { applyMask(UnsafeMutableRawBufferPointer(rebasing: $0[start ..< start + n]), key: key) }
        }
    }

    /// XORs `buffer` with the mask `key`, where `buffer[0]` is payload byte number `offset`
    /// (masking is its own inverse). Works a machine word at a time; the hot loop of the data path.
    public static func applyMask(_ buffer: UnsafeMutableRawBufferPointer, key: UInt32, offset: Int = 0) {
        guard let base = buffer.baseAddress else { return }
        xorMask(from: base, to: base, count: buffer.count, key: key, offset: offset)
    }

    /// Masks `count` bytes from `src` into `dst` (which may be the same memory).
    @usableFromInline
    static func xorMask(from src: UnsafeRawPointer, to dst: UnsafeMutableRawPointer, count n: Int, key: UInt32, offset: Int) {
        let phase = offset & 3
        // Rotate so that wire byte 0 of `rotated` is the key byte for payload byte `offset`.
        let rotated = phase == 0 ? key : (key << UInt32(8 * phase)) | (key >> UInt32(32 - 8 * phase))
        // `.bigEndian` gives a value whose in-memory bytes are the wire bytes, on any host.
        let k32 = UInt64(rotated.bigEndian)
        let k64 = k32 | (k32 << 32)
        var i = 0
        while i + 32 <= n {
            let s = src + i, d = dst + i
            let a = s.loadUnaligned(as: UInt64.self), b = s.loadUnaligned(fromByteOffset: 8, as: UInt64.self)
            let c = s.loadUnaligned(fromByteOffset: 16, as: UInt64.self), e = s.loadUnaligned(fromByteOffset: 24, as: UInt64.self)
            d.storeBytes(of: a ^ k64, as: UInt64.self)
            d.storeBytes(of: b ^ k64, toByteOffset: 8, as: UInt64.self)
            d.storeBytes(of: c ^ k64, toByteOffset: 16, as: UInt64.self)
            d.storeBytes(of: e ^ k64, toByteOffset: 24, as: UInt64.self)
            i += 32
        }
        while i + 8 <= n {
            (dst + i).storeBytes(of: (src + i).loadUnaligned(as: UInt64.self) ^ k64, as: UInt64.self)
            i += 8
        }
        // Tail: i is a multiple of 8, so the key bytes continue from memory byte 0 of k64.
        var tail = UInt64(littleEndian: k64)
        while i < n {
            (dst + i).storeBytes(of: (src + i).load(as: UInt8.self) ^ UInt8(truncatingIfNeeded: tail), as: UInt8.self)
            tail >>= 8
            i += 1
        }
    }

    public enum DecodeResult: Equatable, Sendable {
        /// A complete frame (payload unmasked), the mask key it carried, and the bytes consumed.
        case frame(WebSocketFrame, maskKey: UInt32?, consumed: Int)
        /// More bytes are needed.
        case incomplete
        /// Unknown opcode or a 64-bit length with the high bit set.
        case invalid
    }

    /// Decodes one frame from the start of `bytes`. Structural checks only (no role, size,
    /// fragmentation or UTF-8 rules): meant for tools and tests, not for untrusted peers.
    public static func decode(_ bytes: UnsafeRawBufferPointer) -> DecodeResult {
        guard bytes.count >= 2 else { return .incomplete }
        let b0 = bytes[0], b1 = bytes[1]
        guard let opcode = WebSocketOpcode(rawValue: b0 & 0x0F) else { return .invalid }
        let masked = b1 & 0x80 != 0
        var length = UInt64(b1 & 0x7F)
        var at = 2
        if length == 126 {
            guard bytes.count >= 4 else { return .incomplete }
            length = UInt64(UInt16(bigEndian: bytes.loadUnaligned(fromByteOffset: 2, as: UInt16.self)))
            at = 4
        } else if length == 127 {
            guard bytes.count >= 10 else { return .incomplete }
            length = UInt64(bigEndian: bytes.loadUnaligned(fromByteOffset: 2, as: UInt64.self))
            guard length >> 63 == 0 else { return .invalid }
            at = 10
        }
        var key: UInt32?
        if masked {
            guard bytes.count >= at + 4 else { return .incomplete }
            key = UInt32(bigEndian: bytes.loadUnaligned(fromByteOffset: at, as: UInt32.self))
            at += 4
        }
        guard UInt64(bytes.count - at) >= length else { return .incomplete }
        let n = Int(length)
        var payload = Array(UnsafeRawBufferPointer(rebasing: bytes[at ..< at + n]))
        if let key { payload.withUnsafeMutableBytes { applyMask($0, key: key) } }
        let frame = WebSocketFrame(fin: b0 & 0x80 != 0, rsv1: b0 & 0x40 != 0, rsv2: b0 & 0x20 != 0,
                                   rsv3: b0 & 0x10 != 0, opcode: opcode, payload: payload)
        return .frame(frame, maskKey: key, consumed: at + n)
    }

    public static func decode(_ bytes: [UInt8]) -> DecodeResult {
        bytes.withUnsafeBytes { decode($0) }
    }
}
