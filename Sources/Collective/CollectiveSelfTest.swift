import Foundation

/// A failed self-test check; the message names the check and the rank that saw the mismatch.
public struct CollectiveSelfTestFailure: Error, CustomStringConvertible {
    public let description: String
}

/// Exercises every operation of a communicator with values whose results are known exactly
/// (rank r contributes r+1+i, small integers whose sums are exact in Float, so every reduction
/// order gives the same bits) and checks them. Run under `mpirun -np N sura selftest collective`
/// it proves the MPI build end to end; in tests it runs on in-process groups.
///
/// After each check the ranks agree (an allreduce of a failure flag) so that all of them fail
/// on the same check instead of the healthy ones timing out later.
public enum CollectiveSelfTest {
    /// Runs all checks; every rank of `communicator` must call this together.
    /// - Returns: one summary line, e.g. "collective selftest passed: 4 ranks (MPI (thread
    ///   multiple)), 13 checks, ring sent 2(n−1)/n·S = 24000 bytes per rank for S = 16000".
    /// - Throws: `CollectiveSelfTestFailure` naming the first failed check, or the communicator's
    ///   own error.
    public static func run(communicator: Communicator) throws -> String {
        let comm = communicator
        let n = comm.size
        let r = comm.rank
        var checks = 0

        func agree(_ check: String, _ problem: String?) throws {
            checks += 1
            let worst = try comm.allreduce(problem == nil ? 0 : Double(r + 1), op: .max)
            if let problem {
                throw CollectiveSelfTestFailure(description: "\(check): rank \(r): \(problem)")
            }
            if worst > 0 {
                throw CollectiveSelfTestFailure(description: "\(check): failed on rank \(Int(worst) - 1)")
            }
        }

        // Allreduce, native and ring, against exact expectations, and against each other bit for bit.
        for count in [0, 1, 7, 1000, 100_003] {
            for op in [ReduceOperation.sum, .average] {
                var native = contribution(rank: r, count: count)
                var ring = native
                try comm.allreduce(&native, op: op)
                try RingAllreduce.allreduce(&ring, op: op, on: comm)
                let expected = (0 ..< count).map { expectedAllreduce(index: $0, size: n, op: op) }
                var problem = firstDifference(native, expected, what: "native \(op) of \(count)")
                    ?? firstDifference(ring, expected, what: "ring \(op) of \(count)")
                if problem == nil && !bitwiseEqual(ring, native) {
                    problem = "ring and native \(op) of \(count) floats differ in their bits"
                }
                try agree("allreduce \(op) count \(count)", problem)
            }
        }
        for op in [ReduceOperation.min, .max] {
            var values = [Float(r), Float(-r)]
            var ring = values
            try comm.allreduce(&values, op: op)
            try RingAllreduce.allreduce(&ring, op: op, on: comm)
            let expected: [Float] = op == .min ? [0, Float(1 - n)] : [Float(n - 1), 0]
            try agree("allreduce \(op)", firstDifference(values, expected, what: "native")
                ?? firstDifference(ring, expected, what: "ring"))
        }

        // Random values: the ring result is the same bits on every rank.
        var generator = SplitMix(seed: UInt64(r) &* 0x9E37_79B9 &+ 17)
        var noisy = (0 ..< 4099).map { _ in generator.nextFloat() }
        try RingAllreduce.allreduce(&noisy, op: .average, on: comm)
        var fromRoot = noisy
        try comm.broadcast(&fromRoot, root: 0)
        try agree("ring bits identical on all ranks",
                  bitwiseEqual(noisy, fromRoot) ? nil : "ring result differs from rank 0's bits")

        // Bytes: each rank sends all chunks but one per phase; together exactly 2(n−1)·S.
        let evenCount = n * 1000
        let bytesS = evenCount * MemoryLayout<Float>.stride
        var sentProblem: String?
        for count in [evenCount, evenCount + 3] {
            var buffer = contribution(rank: r, count: count)
            let before = comm.bytesSent
            try RingAllreduce.allreduce(&buffer, on: comm)
            let sent = comm.bytesSent - before
            let total = try comm.allreduce(Double(sent))
            let expectedTotal = Double(2 * (n - 1) * count * MemoryLayout<Float>.stride)
            if sent != RingAllreduce.bytesSent(count: count, size: n, rank: r) {
                sentProblem = "sent \(sent) bytes for \(count) floats, expected "
                    + "\(RingAllreduce.bytesSent(count: count, size: n, rank: r))"
            } else if total != expectedTotal {
                sentProblem = "ranks sent \(Int(total)) bytes together, expected 2(n−1)·S = \(Int(expectedTotal))"
            } else if count == evenCount && sent * n != 2 * (n - 1) * bytesS {
                sentProblem = "sent \(sent) bytes, expected 2(n−1)/n·S = \(2 * (n - 1) * bytesS / n)"
            }
        }
        try agree("ring bytes sent", sentProblem)

        // Broadcast from every root.
        var broadcastProblem: String?
        for root in 0 ..< n {
            var values = r == root ? (0 ..< 33).map { Float(root * 100 + $0) } : [Float](repeating: -1, count: 33)
            try comm.broadcast(&values, root: root)
            broadcastProblem = broadcastProblem ?? firstDifference(
                values, (0 ..< 33).map { Float(root * 100 + $0) }, what: "broadcast from \(root)")
        }
        try agree("broadcast", broadcastProblem)

        // Allgather and reduce-scatter.
        let gathered = try comm.allgather((0 ..< 5).map { Float(100 * r + $0) })
        let expectedGather = (0 ..< n).flatMap { peer in (0 ..< 5).map { Float(100 * peer + $0) } }
        try agree("allgather", firstDifference(gathered, expectedGather, what: "allgather"))
        let m = 6
        let scatterInput = (0 ..< n * m).map { Float(r + $0) }
        let mine = try comm.reduceScatter(scatterInput, op: .sum)
        let meanBlock = try comm.reduceScatter(scatterInput, op: .average)
        let expectedBlock = (0 ..< m).map { Float(n * (n - 1) / 2 + n * (r * m + $0)) }
        try agree("reduceScatter", firstDifference(mine, expectedBlock, what: "sum")
            ?? firstDifference(meanBlock, expectedBlock.map { $0 / Float(n) }, what: "average"))

        // Point to point.
        if n > 1 {
            let right = (r + 1) % n, left = (r + n - 1) % n
            var shifted = [Float](repeating: 0, count: 9)
            let outgoing = (0 ..< 9).map { Float(r * 10 + $0) }
            try outgoing.withUnsafeBufferPointer { out in
                try shifted.withUnsafeMutableBufferPointer {
                    try comm.sendReceive(out, to: right, into: $0, from: left, tag: 7)
                }
            }
            var problem = firstDifference(shifted, (0 ..< 9).map { Float(left * 10 + $0) }, what: "sendReceive")
            if r == 0 {
                for peer in 1 ..< n {
                    try comm.send((0 ..< 4).map { Float(peer + $0) }, to: peer, tag: 3)
                    let reply = String(decoding: try comm.receiveBytes(from: peer, tag: 4), as: UTF8.self)
                    if reply != "rank \(peer) got it" { problem = problem ?? "reply from \(peer) was \(reply)" }
                }
            } else {
                let values = try comm.receive(count: 4, from: 0, tag: 3)
                problem = problem ?? firstDifference(values, (0 ..< 4).map { Float(r + $0) }, what: "receive")
                try comm.sendBytes(Array("rank \(r) got it".utf8), to: 0, tag: 4)
            }
            try agree("send/receive", problem)

            // Posted sends: several large ones in flight at once arrive in order, and finish.
            problem = nil
            if r == 0 {
                // Allocated buffers: a posted send reads its buffer after startSend returns.
                let messages = (0 ..< 3).map { k -> UnsafeMutableBufferPointer<Float> in
                    let buffer = UnsafeMutableBufferPointer<Float>.allocate(capacity: 100_000)
                    for i in 0 ..< 100_000 { buffer[i] = Float(k * 1_000_000 + i) }
                    return buffer
                }
                defer { for buffer in messages { buffer.deallocate() } }
                var posted: [PostedSend] = []
                for peer in 1 ..< n {
                    for message in messages { posted.append(try comm.startSend(UnsafeBufferPointer(message), to: peer, tag: 6)) }
                }
                for send in posted { try send.finish() }
            } else {
                for k in 0 ..< 3 {
                    let values = try comm.receive(count: 100_000, from: 0, tag: 6)
                    problem = problem ?? firstDifference(values, (0 ..< 100_000).map { Float(k * 1_000_000 + $0) },
                                                         what: "posted send \(k)")
                }
            }
            try agree("posted sends", problem)

            // A wrong-sized message is reported with the sender's rank.
            problem = nil
            if r == 0 {
                try comm.send([1, 2, 3], to: 1, tag: 5)
            } else if r == 1 {
                do {
                    _ = try comm.receive(count: 4, from: 0, tag: 5)
                    problem = "a 3-float message into 4 floats was accepted"
                } catch let CollectiveError.sizeMismatch(_, _, expected, received) {
                    if (expected, received) != (4, 3) { problem = "size mismatch reported \(expected)/\(received)" }
                }
            }
            try agree("size mismatch detected", problem)

            // A silent peer: the receive gives up quickly and names it.
            problem = nil
            if r == 1 {
                let saved = comm.timeout
                comm.timeout = 0.3
                defer { comm.timeout = saved }
                do {
                    _ = try MPIRuntime.expectingTimeouts { try comm.receive(count: 1, from: 0, tag: 6) }
                    problem = "received a message nobody sent"
                } catch let error as CollectiveError {
                    if case let .timeout(_, peers, _) = error, peers.count == 1 {} else {
                        problem = "expected a timeout naming one rank, got: \(error)"
                    }
                }
            }
            try comm.barrier()
            try agree("receive timeout names the peer", problem)
        }

        // Split into parity groups, ordered by descending world rank.
        let sub = try comm.split(color: r % 2, key: n - r)
        let members = (0 ..< n).filter { $0 % 2 == r % 2 }.sorted(by: >)
        var splitProblem: String?
        if sub.size != members.count || sub.rank != members.firstIndex(of: r) {
            splitProblem = "got rank \(sub.rank) of \(sub.size), expected \(members.firstIndex(of: r)!) of \(members.count)"
        } else {
            var ranks = [Float(r)]
            try sub.allreduce(&ranks)
            var ringRanks = [Float(r), 1]
            try RingAllreduce.allreduce(&ringRanks, on: sub)
            let expected = Float(members.reduce(0, +))
            splitProblem = firstDifference(ranks, [expected], what: "subgroup allreduce")
                ?? firstDifference(ringRanks, [expected, Float(members.count)], what: "subgroup ring")
        }
        try agree("split", splitProblem)

        // Asynchronous allreduce overlapping with foreground work and a foreground collective.
        let asyncCount = 50_000
        let nativeBuffer = UnsafeMutableBufferPointer<Float>.allocate(capacity: asyncCount)
        let ringBuffer = UnsafeMutableBufferPointer<Float>.allocate(capacity: asyncCount)
        defer {
            nativeBuffer.deallocate()
            ringBuffer.deallocate()
        }
        _ = nativeBuffer.initialize(from: contribution(rank: r, count: asyncCount))
        _ = ringBuffer.initialize(from: contribution(rank: r, count: asyncCount))
        let nativeRequest = comm.allreduceAsync(nativeBuffer, op: .sum)
        let ringRequest = RingAllreduce.allreduceAsync(ringBuffer, op: .average, on: comm)
        var foreground = [Float(r)]
        try comm.allreduce(&foreground)
        try nativeRequest.wait()
        try ringRequest.wait()
        let sums = (0 ..< asyncCount).map { expectedAllreduce(index: $0, size: n, op: .sum) }
        try agree("async allreduce", firstDifference(Array(nativeBuffer), sums, what: "async native")
            ?? firstDifference(Array(ringBuffer), sums.map { $0 / Float(n) }, what: "async ring")
            ?? firstDifference(foreground, [Float(n * (n - 1) / 2)], what: "foreground during async"))

        try comm.barrier()
        checks += 1
        let perRank = RingAllreduce.bytesSent(count: evenCount, size: n, rank: r)
        return "collective selftest passed: \(n) rank\(n == 1 ? "" : "s") (\(comm.kind)), \(checks) checks, "
            + "ring sent 2(n−1)/n·S = \(perRank) bytes per rank for S = \(bytesS)"
    }

    /// Rank r's element i: r+1+i.
    static func contribution(rank: Int, count: Int) -> [Float] {
        (0 ..< count).map { Float(rank + 1 + $0) }
    }

    /// Σ_r (r+1+i) = n(n+1)/2 + n·i, or that divided by n.
    static func expectedAllreduce(index: Int, size n: Int, op: ReduceOperation) -> Float {
        let sum = Float(n * (n + 1) / 2 + n * index)
        return op == .average ? sum / Float(n) : sum
    }

    static func firstDifference(_ got: [Float], _ expected: [Float], what: String) -> String? {
        guard got.count == expected.count else {
            return "\(what): \(got.count) values, expected \(expected.count)"
        }
        for i in got.indices where got[i].bitPattern != expected[i].bitPattern {
            return "\(what): element \(i) is \(got[i]), expected \(expected[i])"
        }
        return nil
    }

    static func bitwiseEqual(_ a: [Float], _ b: [Float]) -> Bool {
        a.count == b.count && zip(a, b).allSatisfy { $0.bitPattern == $1.bitPattern }
    }
}

/// A tiny deterministic generator (SplitMix64) for test data; reproducible on every platform.
struct SplitMix {
    private var state: UInt64

    init(seed: UInt64) {
        state = seed
    }

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// Uniform in [−1, 1).
    mutating func nextFloat() -> Float {
        Float(next() >> 40) / Float(1 << 24) * 2 - 1
    }
}
