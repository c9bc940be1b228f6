import Collective
import Foundation
import SuraTestSupport
import XCTest

/// Stalls, bad arguments and asynchronous work: nothing may hang, every error names what went wrong.
final class CollectiveFailureTests: XCTestCase {
    func testReceiveFromASilentRankTimesOutNamingIt() {
        let errors = PerRank<CollectiveError>(size: 3)
        let elapsed = PerRank<Double>(size: 3)
        runRanksExpectingSuccess(3, timeout: 0.2) { comm in
            guard comm.rank == 0 else { return }    // rank 2 never sends
            let start = Date()
            do {
                _ = try comm.receive(count: 4, from: 2, tag: 0)
            } catch let error as CollectiveError {
                errors[0] = error
            }
            elapsed[0] = Date().timeIntervalSince(start)
        }
        guard case let .timeout(operation, peers, seconds)? = errors[0] else {
            return XCTFail("expected a timeout, got \(String(describing: errors[0]))")
        }
        XCTAssertEqual(peers, [2])
        XCTAssertEqual(seconds, 0.2)
        XCTAssertEqual(operation, "receive from rank 2")
        XCTAssertTrue(errors[0]!.description.contains("waiting for rank 2"), errors[0]!.description)
        XCTAssertLessThan(elapsed[0] ?? 99, 5)
    }

    func testSendToARankThatNeverReceivesTimesOut() {
        let errors = PerRank<CollectiveError>(size: 2)
        runRanksExpectingSuccess(2, timeout: 0.2) { comm in
            guard comm.rank == 1 else { return }
            do {
                try comm.send([1, 2, 3], to: 0, tag: 0)
            } catch let error as CollectiveError {
                errors[1] = error
            }
        }
        XCTAssertEqual(errors[1], .timeout(operation: "send to rank 0", peers: [0], seconds: 0.2))
    }

    /// A posted send returns at once; its `finish` is what times out when nobody receives.
    func testPostedSendToARankThatNeverReceivesTimesOutInFinish() {
        let errors = PerRank<CollectiveError>(size: 2)
        let returnedAtOnce = PerRank<Bool>(size: 2)
        runRanksExpectingSuccess(2, timeout: 0.2) { comm in
            guard comm.rank == 1 else { return }
            let values: [Float] = [1, 2, 3]
            try values.withUnsafeBufferPointer { buffer in
                let started = Date()
                let posted = try comm.startSend(buffer, to: 0, tag: 0)
                returnedAtOnce[1] = Date().timeIntervalSince(started) < 0.1
                do {
                    try posted.finish()
                } catch let error as CollectiveError {
                    errors[1] = error
                }
            }
        }
        XCTAssertEqual(returnedAtOnce[1], true)
        XCTAssertEqual(errors[1], .timeout(operation: "send to rank 0", peers: [0], seconds: 0.2))
    }

    func testCollectiveNamesTheRanksThatNeverArrived() {
        let errors = PerRank<CollectiveError>(size: 4)
        runRanksExpectingSuccess(4, timeout: 0.3) { comm in
            guard comm.rank != 1 && comm.rank != 3 else { return }
            var values: [Float] = [1]
            do {
                try comm.allreduce(&values)
            } catch let error as CollectiveError {
                errors[comm.rank] = error
            }
        }
        for rank in [0, 2] {
            guard case let .timeout(operation, peers, _)? = errors[rank] else {
                return XCTFail("rank \(rank): expected a timeout, got \(String(describing: errors[rank]))")
            }
            XCTAssertEqual(operation, "allreduce")
            XCTAssertEqual(peers, [1, 3])
        }
    }

    func testTimeoutInsideASubgroupNamesTheWorldRank() {
        let errors = PerRank<CollectiveError>(size: 4)
        runRanksExpectingSuccess(4, timeout: 5) { comm in
            let sub = try comm.split(color: comm.rank % 2, key: 0)    // {0, 2} and {1, 3}
            sub.timeout = 0.2
            if comm.rank == 1 {
                do {
                    _ = try sub.receive(count: 1, from: 1, tag: 0)    // subgroup rank 1 is world rank 3
                } catch let error as CollectiveError {
                    errors[1] = error
                }
            }
        }
        XCTAssertEqual(errors[1], .timeout(operation: "receive from rank 1", peers: [3], seconds: 0.2))
    }

    func testWrongSizedMessageIsReportedWithBothSizes() {
        let errors = PerRank<CollectiveError>(size: 2)
        runRanksExpectingSuccess(2) { comm in
            if comm.rank == 0 {
                try comm.send([1, 2, 3], to: 1, tag: 5)
                try comm.send([7], to: 1, tag: 5)
            } else {
                do {
                    _ = try comm.receive(count: 4, from: 0, tag: 5)
                } catch let error as CollectiveError {
                    errors[1] = error
                }
                // The bad message was consumed; the next one arrives normally.
                let next = try comm.receive(count: 1, from: 0, tag: 5)
                if next != [7] { throw Mismatch("after a size mismatch got \(next)") }
            }
        }
        XCTAssertEqual(errors[1], .sizeMismatch(operation: "receive from rank 0", peer: 0, expected: 4, received: 3))
        XCTAssertEqual(errors[1]?.description,
                       "receive from rank 0: rank 0 has 3 elements where this rank expects 4")
    }

    func testCollectivesWithDifferentCountsFailOnEveryRank() {
        let errors = PerRank<CollectiveError>(size: 3)
        runRanksExpectingSuccess(3) { comm in
            var values = [Float](repeating: 1, count: comm.rank == 2 ? 5 : 4)
            do {
                try comm.allreduce(&values)
            } catch let error as CollectiveError {
                errors[comm.rank] = error
            }
        }
        XCTAssertEqual(errors[0], .sizeMismatch(operation: "allreduce", peer: 2, expected: 4, received: 5))
        XCTAssertEqual(errors[1], .sizeMismatch(operation: "allreduce", peer: 2, expected: 4, received: 5))
        XCTAssertEqual(errors[2], .sizeMismatch(operation: "allreduce", peer: 0, expected: 5, received: 4))
    }

    func testDifferentCollectivesInTheSameRoundAreReported() {
        let errors = PerRank<CollectiveError>(size: 2)
        runRanksExpectingSuccess(2) { comm in
            do {
                if comm.rank == 0 {
                    try comm.barrier()
                } else {
                    var values: [Float] = [1]
                    try comm.broadcast(&values, root: 0)
                }
            } catch let error as CollectiveError {
                errors[comm.rank] = error
            }
        }
        for rank in 0 ..< 2 {
            guard case let .invalidArgument(_, detail)? = errors[rank] else {
                return XCTFail("rank \(rank): \(String(describing: errors[rank]))")
            }
            XCTAssertTrue(detail.contains("rank 0 barrier") && detail.contains("rank 1 broadcast from rank 0"), detail)
        }
    }

    func testEmptyGroupIsRejected() {
        XCTAssertThrowsError(try InProcessGroup(size: 0)) { error in
            XCTAssertEqual("\(error)", "InProcessGroup: size 0 must be at least 1")
        }
    }

    func testInvalidArgumentsAreThrownNotTrapped() {
        let messages = PerRank<[String]>(size: 2)
        runRanksExpectingSuccess(2) { comm in
            var seen: [String] = []
            func expectFailure(_ body: () throws -> Void) {
                do {
                    try body()
                    seen.append("no error")
                } catch {
                    seen.append("\(error)")
                }
            }
            expectFailure { try comm.send([1], to: 2, tag: 0) }
            expectFailure { try comm.send([1], to: -1, tag: 0) }
            expectFailure { _ = try comm.receiveBytes(from: 0, tag: 40000) }
            expectFailure { _ = try comm.split(color: -1, key: 0) }
            expectFailure { _ = try comm.reduceScatter([1, 2, 3]) }
            var values: [Float] = [1]
            expectFailure { try comm.broadcast(&values, root: 5) }
            // A bad output size on one rank fails the allgather on every rank.
            let output = UnsafeMutableBufferPointer<Float>.allocate(capacity: comm.rank == 0 ? 3 : 4)
            defer { output.deallocate() }
            expectFailure { try [1, 2].withUnsafeBufferPointer { try comm.allgather($0, into: output) } }
            messages[comm.rank] = seen
        }
        XCTAssertEqual(messages[0], [
            "send to rank 2: rank 2 is outside the group of 2 ranks",
            "send to rank -1: rank -1 is outside the group of 2 ranks",
            "receiveBytes from rank 0: tag 40000 is outside 0..<32768",
            "split: color -1 must be in 0 ... 2147483647",
            "reduceScatter: 3 floats do not split into 2 equal blocks",
            "broadcast from rank 5: rank 5 is outside the group of 2 ranks",
            "allgather: on rank 0: output holds 3 floats, needs 2 × 2",
        ])
        XCTAssertEqual(messages[1]?.last, "allgather: on rank 0: output holds 3 floats, needs 2 × 2")
    }

    func testAsyncAllreduceReturnsAtOnceAndOverlapsWithWork() {
        let count = 1_000_003
        let outcome = PerRank<(startedIncomplete: Bool, foreground: [Float], work: Double, result: [Float])>(size: 3)
        let rankZeroLooked = DispatchSemaphore(value: 0)
        runRanksExpectingSuccess(3) { comm in
            let buffer = UnsafeMutableBufferPointer<Float>.allocate(capacity: count)
            defer { buffer.deallocate() }
            _ = buffer.initialize(from: contribution(rank: comm.rank, count: count))
            // Rank 2 joins only after rank 0 has looked at its request, which therefore cannot
            // have finished: the call returned without waiting for the reduction.
            if comm.rank == 2 { _ = rankZeroLooked.wait(timeout: .now() + 10) }
            let request = comm.allreduceAsync(buffer, op: .sum)
            let startedIncomplete = !request.isComplete
            if comm.rank == 0 { rankZeroLooked.signal() }
            // Foreground work and a foreground collective while the allreduce runs.
            var work = 0.0
            for i in 0 ..< 200_000 { work += Double(i % 7) }
            var foreground = [Float(comm.rank)]
            try comm.allreduce(&foreground)
            try request.wait()
            if !request.isComplete { throw Mismatch("wait returned before completion") }
            outcome[comm.rank] = (startedIncomplete, foreground, work, Array(buffer.prefix(5)) + [buffer[count - 1]])
        }
        let expected = [0, 1, 2, 3, 4, count - 1].map { expectedReduction(index: $0, size: 3, op: .sum) }
        XCTAssertEqual(outcome[0]?.startedIncomplete, true)
        for rank in 0 ..< 3 {
            XCTAssertEqual(outcome[rank]?.result, expected)
            XCTAssertEqual(outcome[rank]?.foreground, [3])
        }
    }

    func testAsyncRingAndBackgroundJobsRunInSubmissionOrder() {
        let results = PerRank<[[Float]]>(size: 4)
        runRanksExpectingSuccess(4) { comm in
            let buffers = (0 ..< 3).map { k -> UnsafeMutableBufferPointer<Float> in
                let buffer = UnsafeMutableBufferPointer<Float>.allocate(capacity: 1001)
                _ = buffer.initialize(from: contribution(rank: comm.rank, count: 1001).map { $0 * Float(k + 1) })
                return buffer
            }
            defer { buffers.forEach { $0.deallocate() } }
            var requests = [
                RingAllreduce.allreduceAsync(buffers[0], op: .average, on: comm),
                comm.allreduceAsync(buffers[1], op: .sum),
                RingAllreduce.allreduceAsync(buffers[2], op: .sum, on: comm),
            ]
            // A job queued last runs only after the three before it have finished.
            let earlier = requests
            requests.append(comm.runInBackground { _ in
                if !earlier.allSatisfy(\.isComplete) { throw Mismatch("a background job ran out of order") }
            })
            for request in requests { try request.wait() }
            results[comm.rank] = buffers.map { Array($0) }
        }
        let sums = (0 ..< 1001).map { expectedReduction(index: $0, size: 4, op: .sum) }
        for rank in 0 ..< 4 {
            XCTAssertEqual(results[rank].map { bits($0[0]) }, bits(sums.map { $0 / 4 }))
            XCTAssertEqual(results[rank].map { bits($0[1]) }, bits(sums.map { $0 * 2 }))
            XCTAssertEqual(results[rank].map { bits($0[2]) }, bits(sums.map { $0 * 3 }))
        }
    }

    func testAsyncFailureIsRethrownByWait() {
        let errors = PerRank<CollectiveError>(size: 2)
        runRanksExpectingSuccess(2, timeout: 0.2) { comm in
            guard comm.rank == 0 else { return }    // rank 1 never joins
            let buffer = UnsafeMutableBufferPointer<Float>.allocate(capacity: 10)
            defer { buffer.deallocate() }
            buffer.initialize(repeating: 1)
            let request = RingAllreduce.allreduceAsync(buffer, on: comm)
            do {
                try request.wait()
            } catch let error as CollectiveError {
                errors[0] = error
            }
        }
        guard case let .timeout(_, peers, _)? = errors[0] else {
            return XCTFail("expected a timeout, got \(String(describing: errors[0]))")
        }
        XCTAssertEqual(peers, [1])
    }
}
