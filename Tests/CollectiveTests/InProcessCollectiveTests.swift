import Collective
import Foundation
import SuraTestSupport
import XCTest

final class InProcessCollectiveTests: XCTestCase {
    /// (RingAllreduceTests runs the direct allreduce on 1 000 003 floats too.)
    func testAllreduceSumAndAverageForEveryGroupSizeAndCount() {
        for n in 1 ... 5 {
            for count in [0, 1, 7, 100_003] {
                for op in [ReduceOperation.sum, .average] {
                    let results = PerRank<[Float]>(size: n)
                    runRanksExpectingSuccess(n) { comm in
                        var values = contribution(rank: comm.rank, count: count)
                        try comm.allreduce(&values, op: op)
                        results[comm.rank] = values
                    }
                    let expected = (0 ..< count).map { expectedReduction(index: $0, size: n, op: op) }
                    for rank in 0 ..< n {
                        XCTAssertEqual(results[rank].map(bits), bits(expected),
                                       "n=\(n) count=\(count) \(op) rank \(rank)")
                    }
                }
            }
        }
    }

    func testAllreduceMinMaxAndDoubles() {
        let results = PerRank<([Float], [Float], Double)>(size: 4)
        runRanksExpectingSuccess(4) { comm in
            var low = [Float(comm.rank), Float(-comm.rank)]
            var high = low
            try comm.allreduce(&low, op: .min)
            try comm.allreduce(&high, op: .max)
            let total = try comm.allreduce(0.1 * Double(comm.rank + 1))
            results[comm.rank] = (low, high, total)
        }
        for rank in 0 ..< 4 {
            XCTAssertEqual(results[rank]?.0, [0, -3])
            XCTAssertEqual(results[rank]?.1, [3, 0])
            XCTAssertEqual(results[rank]?.2 ?? 0, 1.0, accuracy: 1e-12)
        }
    }

    func testDirectAllreduceGivesIdenticalBitsOnEveryRank() {
        for n in 2 ... 5 {
            let results = PerRank<[Float]>(size: n)
            runRanksExpectingSuccess(n) { comm in
                var values = noise(rank: comm.rank, count: 2001)
                try comm.allreduce(&values, op: .average)
                results[comm.rank] = values
            }
            for rank in 1 ..< n {
                XCTAssertEqual(results[rank].map(bits), results[0].map(bits), "n=\(n) rank \(rank)")
            }
        }
    }

    func testBroadcastFromEveryRoot() {
        for n in 1 ... 5 {
            for root in 0 ..< n {
                let results = PerRank<[Float]>(size: n)
                runRanksExpectingSuccess(n) { comm in
                    var values = comm.rank == root ? (0 ..< 7).map { Float(root * 10 + $0) }
                        : [Float](repeating: -1, count: 7)
                    try comm.broadcast(&values, root: root)
                    results[comm.rank] = values
                }
                for rank in 0 ..< n {
                    XCTAssertEqual(results[rank], (0 ..< 7).map { Float(root * 10 + $0) }, "n=\(n) root=\(root)")
                }
            }
        }
    }

    func testAllgatherPlacesEachRankInOrder() {
        for n in 1 ... 5 {
            for count in [0, 1, 7] {
                let results = PerRank<[Float]>(size: n)
                runRanksExpectingSuccess(n) { comm in
                    results[comm.rank] = try comm.allgather((0 ..< count).map { Float(comm.rank * 100 + $0) })
                }
                let expected = (0 ..< n).flatMap { peer in (0 ..< count).map { Float(peer * 100 + $0) } }
                for rank in 0 ..< n { XCTAssertEqual(results[rank], expected, "n=\(n) count=\(count)") }
            }
        }
    }

    func testReduceScatterSumAndAverage() {
        for n in 1 ... 5 {
            let m = 7
            let results = PerRank<([Float], [Float])>(size: n)
            runRanksExpectingSuccess(n) { comm in
                let input = (0 ..< n * m).map { Float(comm.rank + $0) }
                results[comm.rank] = (try comm.reduceScatter(input, op: .sum),
                                      try comm.reduceScatter(input, op: .average))
            }
            for rank in 0 ..< n {
                let sums = (0 ..< m).map { Float(n * (n - 1) / 2 + n * (rank * m + $0)) }
                XCTAssertEqual(results[rank]?.0, sums, "n=\(n) rank \(rank)")
                XCTAssertEqual(results[rank]?.1, sums.map { $0 / Float(n) }, "n=\(n) rank \(rank)")
            }
        }
    }

    func testSplitFormsGroupsOrderedByKey() {
        let n = 5
        let results = PerRank<(rank: Int, size: Int, sum: Float, echoed: Float)>(size: n)
        runRanksExpectingSuccess(n) { comm in
            // Odd and even world ranks, each group ordered by descending world rank.
            let sub = try comm.split(color: comm.rank % 2, key: -comm.rank)
            var sum = [Float(comm.rank)]
            try sub.allreduce(&sum)
            var ring = [Float(comm.rank)]
            try RingAllreduce.allreduce(&ring, on: sub)
            if ring != sum { throw Mismatch("ring \(ring) != direct \(sum) in the subgroup") }
            // Point to point inside the subgroup uses subgroup ranks.
            var echoed: Float = -1
            if sub.size > 1 {
                let right = (sub.rank + 1) % sub.size, left = (sub.rank + sub.size - 1) % sub.size
                var incoming: [Float] = [0]
                try [Float(comm.rank)].withUnsafeBufferPointer { out in
                    try incoming.withUnsafeMutableBufferPointer {
                        try sub.sendReceive(out, to: right, into: $0, from: left, tag: 1)
                    }
                }
                echoed = incoming[0]
            }
            results[comm.rank] = (sub.rank, sub.size, sum[0], echoed)
        }
        let evens = [4, 2, 0], odds = [3, 1]
        for world in 0 ..< n {
            let members = world % 2 == 0 ? evens : odds
            let position = members.firstIndex(of: world)!
            XCTAssertEqual(results[world]?.rank, position)
            XCTAssertEqual(results[world]?.size, members.count)
            XCTAssertEqual(results[world]?.sum, Float(members.reduce(0, +)))
            XCTAssertEqual(results[world]?.echoed, Float(members[(position + members.count - 1) % members.count]))
        }
    }

    func testNestedSplitAndWholeGroupSplit() {
        let results = PerRank<[Float]>(size: 4)
        runRanksExpectingSuccess(4) { comm in
            let whole = try comm.split(color: 0, key: comm.rank)
            let pairs = try whole.split(color: whole.rank / 2, key: 0)
            var values = [Float(comm.rank)]
            try pairs.allreduce(&values)
            results[comm.rank] = [Float(whole.rank), Float(pairs.rank), Float(pairs.size), values[0]]
        }
        XCTAssertEqual(results[0], [0, 0, 2, 1])
        XCTAssertEqual(results[1], [1, 1, 2, 1])
        XCTAssertEqual(results[2], [2, 0, 2, 5])
        XCTAssertEqual(results[3], [3, 1, 2, 5])
    }

    func testSendReceiveAndControlBytes() {
        let n = 4
        let results = PerRank<([Float], [Float], String, [Float])>(size: n)
        runRanksExpectingSuccess(n) { comm in
            let r = comm.rank
            let right = (r + 1) % n, left = (r + n - 1) % n
            var shifted = [Float](repeating: 0, count: 5)
            try (0 ..< 5).map { Float(r * 10 + $0) }.withUnsafeBufferPointer { out in
                try shifted.withUnsafeMutableBufferPointer {
                    try comm.sendReceive(out, to: right, into: $0, from: left, tag: 2)
                }
            }
            // Pairs 0↔1 and 2↔3 exchange a float message, a byte message and an empty message.
            let partner = r ^ 1
            var fromPartner: [Float] = []
            var text = ""
            var empty: [Float] = [-1]
            if r % 2 == 0 {
                try comm.send([Float(r), 0.5], to: partner, tag: 9)
                try comm.sendBytes(Array("hello \(partner)".utf8), to: partner, tag: 10)
                fromPartner = try comm.receive(count: 2, from: partner, tag: 9)
                text = String(decoding: try comm.receiveBytes(from: partner, tag: 10), as: UTF8.self)
                try comm.send([], to: partner, tag: 11)
            } else {
                fromPartner = try comm.receive(count: 2, from: partner, tag: 9)
                text = String(decoding: try comm.receiveBytes(from: partner, tag: 10), as: UTF8.self)
                try comm.send([Float(r), 0.5], to: partner, tag: 9)
                try comm.sendBytes(Array("hello \(partner)".utf8), to: partner, tag: 10)
                empty = try comm.receive(count: 0, from: partner, tag: 11)
            }
            results[r] = (shifted, fromPartner, text, empty)
        }
        for r in 0 ..< n {
            let left = (r + n - 1) % n
            XCTAssertEqual(results[r]?.0, (0 ..< 5).map { Float(left * 10 + $0) })
            XCTAssertEqual(results[r]?.1, [Float(r ^ 1), 0.5])
            XCTAssertEqual(results[r]?.2, "hello \(r)")
            XCTAssertEqual(results[r]?.3, r % 2 == 0 ? [-1] : [])
        }
    }

    func testMessagesWithTheSameTagArriveInOrder() {
        let results = PerRank<[Float]>(size: 2)
        runRanksExpectingSuccess(2) { comm in
            if comm.rank == 0 {
                let background = comm.runInBackground { channel in
                    for k in 0 ..< 5 { try channel.send([Float(k)], to: 1, tag: 4) }
                }
                try background.wait()
            } else {
                let background = comm.runInBackground { channel in
                    var seen: [Float] = []
                    for _ in 0 ..< 5 { seen += try channel.receive(count: 1, from: 0, tag: 4) }
                    results[1] = seen
                }
                try background.wait()
            }
        }
        XCTAssertEqual(results[1], [0, 1, 2, 3, 4])
    }

    func testBarrierWaitsForTheLastRank() {
        let lastArrived = PerRank<Bool>(size: 1)
        let sawLastArrival = PerRank<Bool>(size: 3)
        runRanksExpectingSuccess(3) { comm in
            if comm.rank == 2 {
                Thread.sleep(forTimeInterval: 0.1)
                lastArrived[0] = true
            }
            try comm.barrier()
            sawLastArrival[comm.rank] = lastArrived[0] ?? false
        }
        XCTAssertEqual(sawLastArrival.all, [true, true, true])
    }

    func testSingleProcessWorldNeedsNoMPI() throws {
        try XCTSkipIf(MPIRuntime.isUnderMPIRun, "this test is about running without mpirun")
        let world = try MPIRuntime.worldCommunicator()
        XCTAssertEqual(world.size, 1)
        XCTAssertEqual(world.rank, 0)
        XCTAssertEqual(world.kind, "single process")
        XCTAssertFalse(MPIRuntime.isInitialized)
        var values: [Float] = [1, 2, 3]
        try world.allreduce(&values, op: .average)
        try RingAllreduce.allreduce(&values, on: world)
        try world.barrier()
        XCTAssertEqual(values, [1, 2, 3])
        XCTAssertEqual(try world.allgather([4, 5]), [4, 5])
        let sub = try world.split(color: 3, key: 0)
        XCTAssertEqual(sub.size, 1)
    }

    func testSelfTestPassesOnEveryGroupSize() {
        for n in 1 ... 5 {
            let lines = PerRank<String>(size: n)
            runRanksExpectingSuccess(n) { comm in
                lines[comm.rank] = try CollectiveSelfTest.run(communicator: comm)
            }
            for rank in 0 ..< n {
                XCTAssertTrue(lines[rank]?.hasPrefix("collective selftest passed: \(n) rank") ?? false,
                              lines[rank] ?? "rank \(rank) returned nothing")
            }
        }
    }

    func testBenchmarkMeasuresBothAlgorithmsAndFormatsATable() {
        let rows = PerRank<[CollectiveBenchmark.Row]>(size: 2)
        runRanksExpectingSuccess(2) { comm in
            rows[comm.rank] = try CollectiveBenchmark.run(communicator: comm, sizesInBytes: [4096, 65536],
                                                          iterations: 2, rounds: 3)
        }
        let measured = rows[0] ?? []
        XCTAssertEqual(measured.map(\.bytes), [4096, 65536])
        XCTAssertEqual(rows[1]?.map(\.ringRounds), measured.map(\.ringRounds), "t is the slowest rank's, on all")
        for row in measured {
            XCTAssertEqual(row.ringRounds.count, 3)
            XCTAssertEqual(row.nativeRounds.count, 3)
            XCTAssertEqual(row.ringSeconds, row.ringRounds.sorted()[1], "the median round")
            XCTAssertEqual(row.nativeSeconds, row.nativeRounds.sorted()[1])
            XCTAssertGreaterThan(row.ringSeconds, 0)
            XCTAssertGreaterThan(row.nativeSeconds, 0)
            XCTAssertEqual(row.ringBusBandwidth, Double(row.bytes) / row.ringSeconds * 2 * 1 / 2 / 1e9, accuracy: 1e-9)
            XCTAssertEqual(row.ratio, row.ringBusBandwidth / row.nativeBusBandwidth, accuracy: 1e-9)
        }
        let table = CollectiveBenchmark.format(measured)
        XCTAssertTrue(table.contains("ring/native allreduce"), table)
        XCTAssertTrue(table.contains("64 KB"), table)
        XCTAssertTrue(table.contains("median of 3 alternating rounds"), table)
        XCTAssertEqual(table.split(separator: "\n").count, 4, table)
        XCTAssertEqual(CollectiveBenchmark.defaultSizes.first, 4096)
        XCTAssertEqual(CollectiveBenchmark.defaultSizes.last, 64 << 20)
    }
}
