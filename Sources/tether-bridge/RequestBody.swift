import NIOCore

/// A stream's request body as the HTTP client sees it: DATA payloads in arrival order.
///
/// Flow-control credit is returned (via `onConsumed`) for a chunk only when the client asks for
/// the *next* one (or for the end). AsyncHTTPClient pulls again only once the previous chunk has
/// been written to the local connection (or the connection is writable), so credit tracks what
/// the local service actually took and a slow service holds at most one stream window here.
struct RequestBody: AsyncSequence, Sendable {
    typealias Element = ByteBuffer

    let chunks: AsyncThrowingStream<ByteBuffer, Error>
    let onConsumed: @Sendable (Int) -> Void

    struct AsyncIterator: AsyncIteratorProtocol {
        var inner: AsyncThrowingStream<ByteBuffer, Error>.AsyncIterator
        let onConsumed: @Sendable (Int) -> Void
        var owed = 0

        mutating func next() async throws -> ByteBuffer? {
            if owed > 0 {
                onConsumed(owed)
                owed = 0
            }
            guard let chunk = try await inner.next() else { return nil }
            owed = chunk.readableBytes
            return chunk
        }
    }

    func makeAsyncIterator() -> AsyncIterator {
        AsyncIterator(inner: chunks.makeAsyncIterator(), onConsumed: onConsumed)
    }
}
