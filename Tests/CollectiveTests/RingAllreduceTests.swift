import Collective
import Foundation
import SuraTestSupport
import XCTest

final class RingAllreduceTests: XCTestCase {
    func testRingGivesExactResultsForEveryGroupSizeAndCount() {
        // Counts below, at and above n cover empty chunks, one-element chunks and uneven chunks.
        for n in 1 ... 5 {
            for count in [0, 1, 2, 3, 4, 5, 7, 1000, 1_000_003] {
                for op in [ReduceOperation.sum, .average] {
                    let results = PerRank<([Float], [Float])>(size: n)
                    runRanksExpectingSuccess(n) { comm in
                        var ring = contribution(rank: comm.rank, count: count)
                        var direct = ring
                        try RingAllreduce.allreduce(&ring, op: op, on: comm)
                        try comm.allreduce(&direct, op: op)
                        results[comm.rank] = (ring, direct)
                    }
                    let expected = bits((0 ..< count).map { expectedReduction(index: $0, size: n, op: op) })
                    for rank in 0 ..< n {
                        XCTAssertEqual(results[rank].map { bits($0.0) }, expected, "ring n=\(n) count=\(count) \(op)")
                        XCTAssertEqual(results[rank].map { bits($0.1) }, expected, "direct n=\(n) count=\(count) \(op)")
                    }
                }
            }
        }
    }

    func testRingMinAndMax() {
        let results = PerRank<([Float], [Float])>(size: 3)
        runRanksExpectingSuccess(3) { comm in
            var low = noise(rank: comm.rank, count: 10)
            var high = low
            try RingAllreduce.allreduce(&low, op: .min, on: comm)
            try RingAllreduce.allreduce(&high, op: .max, on: comm)
            results[comm.rank] = (low, high)
        }
        let inputs = (0 ..< 3).map { noise(rank: $0, count: 10) }
        let lows = (0 ..< 10).map { i in inputs.map { $0[i] }.min()! }
        let highs = (0 ..< 10).map { i in inputs.map { $0[i] }.max()! }
        for rank in 0 ..< 3 {
            XCTAssertEqual(results[rank]?.0, lows)
            XCTAssertEqual(results[rank]?.1, highs)
        }
    }

    /// Random inputs, where summation order changes the bits: every rank must hold the same bits,
    /// and those bits must be the documented chunk path x[c−1] + (… + (x[c+1] + x[c])).
    func testRingBitsAreIdenticalOnEveryRankAndFollowTheChunkPath() {
        for n in 2 ... 5 {
            for count in [23, 4099] {
                for op in [ReduceOperation.sum, .average] {
                    let results = PerRank<[Float]>(size: n)
                    runRanksExpectingSuccess(n) { comm in
                        var values = noise(rank: comm.rank, count: count, salt: UInt64(count))
                        try RingAllreduce.allreduce(&values, op: op, on: comm)
                        results[comm.rank] = values
                    }
                    let inputs = (0 ..< n).map { noise(rank: $0, count: count, salt: UInt64(count)) }
                    var reference = [Float](repeating: 0, count: count)
                    for chunk in 0 ..< n {
                        for i in ChunkLayout.range(of: chunk, count: count, parts: n) {
                            var accumulated = inputs[chunk][i]
                            for hop in 1 ..< n { accumulated = inputs[(chunk + hop) % n][i] + accumulated }
                            reference[i] = op == .average ? accumulated / Float(n) : accumulated
                        }
                    }
                    for rank in 0 ..< n {
                        XCTAssertEqual(results[rank].map(bits), bits(reference), "n=\(n) count=\(count) \(op) rank \(rank)")
                    }
                }
            }
        }
    }

    /// The reduce-scatter sends a chunk in pieces of `segmentFloats`; uneven chunks give the two
    /// neighbours different piece counts. Any piece size must give the same bits and bytes.
    func testSegmentedReduceScatterGivesTheSameBitsAndBytes() {
        for n in 2 ... 4 {
            for count in [5, 23, 1001] {
                for segment in [1, 3, 64] {
                    let results = PerRank<([Float], [Float], Int)>(size: n)
                    runRanksExpectingSuccess(n) { comm in
                        var whole = noise(rank: comm.rank, count: count, salt: 9)
                        var pieces = whole
                        try RingAllreduce.allreduce(&whole, op: .average, on: comm)
                        let before = comm.bytesSent
                        try pieces.withUnsafeMutableBufferPointer {
                            try RingAllreduce.allreduce($0, op: .average, on: comm, segmentFloats: segment)
                        }
                        results[comm.rank] = (whole, pieces, comm.bytesSent - before)
                    }
                    for rank in 0 ..< n {
                        let label = "n=\(n) count=\(count) segment=\(segment) rank \(rank)"
                        XCTAssertEqual(results[rank].map { bits($0.1) }, results[rank].map { bits($0.0) }, label)
                        XCTAssertEqual(results[rank]?.2, RingAllreduce.bytesSent(count: count, size: n, rank: rank), label)
                    }
                }
            }
        }
    }

    func testRingSendsTwoNMinusOneOverNOfTheBuffer() {
        for n in 1 ... 5 {
            for count in [0, 1, 7, n * 1000, 1_000_003] {
                let sent = PerRank<Int>(size: n)
                runRanksExpectingSuccess(n) { comm in
                    var values = contribution(rank: comm.rank, count: count)
                    let before = comm.bytesSent
                    try RingAllreduce.allreduce(&values, on: comm)
                    sent[comm.rank] = comm.bytesSent - before
                }
                let bytes = count * 4
                let perRank = (0 ..< n).map { sent[$0] ?? -1 }
                XCTAssertEqual(perRank.reduce(0, +), 2 * (n - 1) * bytes, "n=\(n) count=\(count): together 2(n−1)·S")
                for rank in 0 ..< n {
                    XCTAssertEqual(perRank[rank], RingAllreduce.bytesSent(count: count, size: n, rank: rank))
                    if count % n == 0 {
                        XCTAssertEqual(perRank[rank] * n, 2 * (n - 1) * bytes, "n=\(n) count=\(count): 2(n−1)/n·S")
                    } else {
                        // Uneven chunks: within two elements of 2(n−1)/n·S.
                        XCTAssertLessThan(abs(perRank[rank] * n - 2 * (n - 1) * bytes), 2 * 4 * n)
                    }
                }
            }
        }
    }

    func testChunkLayoutCoversTheBufferWithSizesDifferingByAtMostOne() {
        for parts in 1 ... 6 {
            for count in [0, 1, 5, 6, 7, 1_000_003] {
                let ranges = (0 ..< parts).map { ChunkLayout.range(of: $0, count: count, parts: parts) }
                XCTAssertEqual(ranges.first?.lowerBound, 0)
                XCTAssertEqual(ranges.last?.upperBound, count)
                for k in 1 ..< parts { XCTAssertEqual(ranges[k - 1].upperBound, ranges[k].lowerBound) }
                let sizes = ranges.map(\.count)
                XCTAssertLessThanOrEqual(sizes.max()! - sizes.min()!, 1)
            }
        }
    }

    func testRingWithMismatchedCountsNamesTheNeighbour() {
        let errors = PerRank<CollectiveError>(size: 2)
        runRanksExpectingSuccess(2, timeout: 0.5) { comm in
            var values = [Float](repeating: 1, count: comm.rank == 0 ? 8 : 7)
            do {
                try RingAllreduce.allreduce(&values, on: comm)
            } catch let error as CollectiveError {
                errors[comm.rank] = error
            }
        }
        XCTAssertEqual(errors[0], .sizeMismatch(operation: "sendReceive to rank 1 from rank 1",
                                                peer: 1, expected: 4, received: 3))
        guard case let .timeout(_, peers, _)? = errors[1] else {
            return XCTFail("rank 1 should time out waiting for rank 0, got \(String(describing: errors[1]))")
        }
        XCTAssertEqual(peers, [0])
    }
}
