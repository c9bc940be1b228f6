/// Sura's own allreduce, built only on a communicator's `sendReceive`, so it runs the same way over
/// MPI point-to-point, over TCP later, or between threads.
///
/// The buffer of S bytes is cut into n chunks (`ChunkLayout`). Rank r talks only to its
/// neighbours: it sends to r+1 and receives from r−1 (mod n).
///
/// - Reduce-scatter, steps s = 0 … n−2: send chunk (r−s) mod n, receive chunk (r−1−s) mod n and
///   accumulate it: `local ← local ∘ incoming`. Chunk c therefore starts at rank c and travels
///   c → c+1 → … → c−1, collecting one contribution per hop; after n−1 hops rank c−1 holds the
///   only fully reduced copy, `x[c−1] ∘ (… ∘ (x[c+1] ∘ x[c]))`. That order depends only on the
///   chunk, never on who asks. For `average` that owner divides once by n.
/// - Allgather, steps s = 0 … n−2: send chunk (r+1−s) mod n, receive chunk (r−s) mod n and copy
///   it. Every rank ends with copies of the same reduced bits.
///
/// Each rank sends n−1 chunks per phase, in all 2(n−1)/n·S bytes when n divides the element
/// count (the n ranks together send exactly 2(n−1)·S; with uneven chunks a rank's share differs
/// from 2(n−1)/n·S by less than two elements). Empty chunks (S < n) are skipped on both sides.
public enum RingAllreduce {
    /// Floats per message of the reduce-scatter (1 MiB): the incoming side of a chunk lands in a
    /// scratch buffer of this size, piece by piece, instead of one the size of the chunk, so a
    /// large bucket costs no fresh pages to fault in and zero on every call, and each piece is
    /// accumulated while it is still in cache.
    public static let defaultSegmentFloats = 1 << 18

    /// Reduces `buffer` in place across `communicator`'s ranks. Every rank must pass the same
    /// count; a different count surfaces as `sizeMismatch` naming the neighbour.
    /// - Parameters:
    ///   - tag: message tag; the default is reserved for the ring.
    ///   - segmentFloats: most floats per reduce-scatter message (every rank must pass the same);
    ///     the pieces of a chunk are reduced in order, so the result is bitwise the same for any value.
    public static func allreduce(_ buffer: UnsafeMutableBufferPointer<Float>, op: ReduceOperation = .sum,
                                 on communicator: Communicator, tag: Int = CollectiveTag.ring,
                                 segmentFloats: Int = defaultSegmentFloats) throws {
        let n = communicator.size
        let count = buffer.count
        guard n > 1, count > 0, let base = buffer.baseAddress else { return }
        let r = communicator.rank
        let right = (r + 1) % n
        let left = (r + n - 1) % n
        let segment = max(1, min(segmentFloats, ChunkLayout.range(of: 0, count: count, parts: n).count))
        let scratch = UnsafeMutableBufferPointer<Float>.allocate(capacity: segment)
        defer { scratch.deallocate() }

        for step in 0 ..< n - 1 {
            let outgoing = ChunkLayout.range(of: (r - step + 2 * n) % n, count: count, parts: n)
            let arriving = ChunkLayout.range(of: (r - 1 - step + 2 * n) % n, count: count, parts: n)
            // Piece k of a chunk is the same piece for its sender and its receiver, so both sides
            // agree on the messages; a side with no piece k left sends or receives nothing.
            var offset = 0
            repeat {
                let sending = outgoing.clamped(to: (outgoing.lowerBound + offset) ..< (outgoing.lowerBound + offset + segment))
                let landing = arriving.clamped(to: (arriving.lowerBound + offset) ..< (arriving.lowerBound + offset + segment))
                let target = UnsafeMutableBufferPointer(rebasing: scratch[0 ..< landing.count])
                try communicator.sendReceive(UnsafeBufferPointer(rebasing: buffer[sending]), to: right,
                                             into: target, from: left, tag: tag)
                if !landing.isEmpty {
                    Reduction.accumulateFloats(base + landing.lowerBound, scratch.baseAddress!, count: landing.count, op: op)
                }
                offset += segment
            } while offset < max(outgoing.count, arriving.count)
        }
        // This rank now owns the reduced chunk (r+1) mod n.
        let owned = ChunkLayout.range(of: (r + 1) % n, count: count, parts: n)
        Reduction.finish(base + owned.lowerBound, count: owned.count, op: op, ranks: n)

        for step in 0 ..< n - 1 {
            let outgoing = ChunkLayout.range(of: (r + 1 - step + 2 * n) % n, count: count, parts: n)
            let arriving = ChunkLayout.range(of: (r - step + 2 * n) % n, count: count, parts: n)
            try communicator.sendReceive(UnsafeBufferPointer(rebasing: buffer[outgoing]), to: right,
                                         into: UnsafeMutableBufferPointer(rebasing: buffer[arriving]),
                                         from: left, tag: tag)
        }
    }

    /// `allreduce` on an array.
    public static func allreduce(_ values: inout [Float], op: ReduceOperation = .sum,
                                 on communicator: Communicator) throws {
        try values.withUnsafeMutableBufferPointer { try allreduce($0, op: op, on: communicator) }
    }

    /// Starts the ring on `communicator`'s communication thread (over its private background
    /// channel) and returns at once; `buffer` must stay valid and untouched until `wait()`.
    public static func allreduceAsync(_ buffer: UnsafeMutableBufferPointer<Float>, op: ReduceOperation = .sum,
                                      on communicator: Communicator) -> CollectiveRequest {
        communicator.runInBackground { channel in try allreduce(buffer, op: op, on: channel) }
    }

    /// Bytes rank `rank` sends for one ring allreduce of `count` floats over `size` ranks:
    /// all chunks but one in each phase, 2(n−1)/n·S when n divides `count`.
    public static func bytesSent(count: Int, size: Int, rank: Int) -> Int {
        guard size > 1 else { return 0 }
        var total = 0
        for step in 0 ..< size - 1 {
            total += ChunkLayout.range(of: (rank - step + 2 * size) % size, count: count, parts: size).count
            total += ChunkLayout.range(of: (rank + 1 - step + 2 * size) % size, count: count, parts: size).count
        }
        return total * MemoryLayout<Float>.stride
    }
}
