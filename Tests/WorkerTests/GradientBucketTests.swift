import Collective
import Foundation
import SuraTestSupport
import Tensor
import Worker
import XCTest

/// Bucket layout, the post-accumulate hook that launches buckets, their order and overlap with
/// backward, unused parameters, and stall detection.
final class GradientBucketTests: SingleThreadedTestCase {
    // MARK: The autograd hook

    func testObserverSeesEachLeafOnceAfterAllPathsAreSummed() {
        let a = Tensor(shape: [2], data: [1, 2]).asParameter()
        let b = Tensor(shape: [2], data: [3, 4]).asParameter()
        // a is used twice; its gradient must be reported once, complete.
        let loss = (a * b + a * a).sum()
        var seen: [(String, [Float])] = []
        Tensor.observingGradientAccumulation({ t in
            seen.append((t === a ? "a" : t === b ? "b" : "?", t.grad!.scalars))
        }) {
            loss.backward()
        }
        XCTAssertEqual(seen.map(\.0).sorted(), ["a", "b"])
        XCTAssertEqual(seen.first { $0.0 == "a" }?.1, [3 + 2, 4 + 4])    // b + 2a
        XCTAssertEqual(seen.first { $0.0 == "b" }?.1, [1, 2])
    }

    func testObserversNestAndStayOnTheirThread() {
        let p = Tensor(shape: [1], data: [2]).asParameter()
        var outer = 0, inner = 0, otherThread = 0
        Tensor.observingGradientAccumulation({ _ in outer += 1 }) {
            Tensor.observingGradientAccumulation({ _ in inner += 1 }) { (p * p).sum().backward() }
            (p * p).sum().backward()
            let done = DispatchSemaphore(value: 0)
            Thread {
                let q = Tensor(shape: [1], data: [1]).asParameter()
                (q * q).sum().backward()    // not observed: another thread
                done.signal()
            }.start()
            done.wait()
            _ = otherThread
        }
        (p * p).sum().backward()    // outside: not observed
        XCTAssertEqual(inner, 1)
        XCTAssertEqual(outer, 1)
    }

    // MARK: Layout

    func testBucketsHoldParametersInReverseOrderWithASmallFirstBucket() {
        // 10 parameters of 100 floats (400 bytes each); first cap 400 B, then 1200 B.
        let layout = GradientBucketLayout(elementCounts: Array(repeating: 100, count: 10),
                                          options: GradientBucketOptions(capBytes: 1200, firstCapBytes: 400))
        // The last bucket, whose allreduce backward cannot hide, is cut down to the first cap.
        XCTAssertEqual(layout.buckets.map(\.parameters), [[9], [8, 7, 6], [5, 4, 3], [2, 1], [0]])
        XCTAssertEqual(layout.buckets[1].offsets, [0, 100, 200])
        XCTAssertEqual(layout.buckets[3].offsets, [0, 100])
        XCTAssertEqual(layout.buckets[4].offsets, [0])
        XCTAssertEqual(layout.buckets.map(\.elementCount), [100, 300, 300, 200, 100])
    }

    func testAParameterLargerThanTheCapGetsItsOwnBucket() {
        let layout = GradientBucketLayout(elementCounts: [10, 5000, 10, 10],
                                          options: GradientBucketOptions(capBytes: 100, firstCapBytes: 100))
        // 80 bytes already hold half the 100-byte cap, so the 20 kB parameter starts a bucket.
        XCTAssertEqual(layout.buckets.map(\.parameters), [[3, 2], [1], [0]])
        let sliver = GradientBucketLayout(elementCounts: [10, 5000, 10],
                                          options: GradientBucketOptions(capBytes: 100, firstCapBytes: 100))
        // 40 bytes are less than half the cap: the large parameter joins rather than leave a sliver.
        XCTAssertEqual(sliver.buckets.map(\.parameters), [[2, 1], [0]])
        let defaults = GradientBucketLayout(elementCounts: [1 << 20, 8 << 20, 1 << 20])
        // 1 M floats = 4 MB ≥ 1 MB closes the first bucket; then 32 MB ≥ 25 MB closes the second.
        XCTAssertEqual(defaults.buckets.map(\.parameters), [[2], [1], [0]])
    }

    func testAParameterThatWouldOverflowAHalfFullBucketStartsTheNext() {
        // Two 16 MB layers under a 25 MB cap: each gets its own bucket, so the later one can
        // launch while the earlier one is still in backward; each bias stays with its weight.
        let counts = [4 << 20, 2048, 4 << 20, 2048, 1 << 20, 512]
        let layout = GradientBucketLayout(elementCounts: counts)
        XCTAssertEqual(layout.buckets.map(\.parameters), [[5, 4], [3, 2], [1, 0]])
        for bucket in layout.buckets { XCTAssertLessThanOrEqual(bucket.elementCount * 4, 25 << 20) }
    }

    func testTheLastBucketIsCutDownToTheFirstCapWithoutLeavingASliver() {
        // The probe MLP's layers (weight, bias): 4 MB, 16 MB, 16 MB, 4 MB. The last bucket would
        // hold the second layer's 16 MB and the first layer's 4 MB; the first layer goes alone.
        let probe = [1 << 20, 2048, 4 << 20, 2048, 4 << 20, 2048, 1 << 20, 512]
        let layout = GradientBucketLayout(elementCounts: probe)
        XCTAssertEqual(layout.buckets.map(\.parameters), [[7, 6], [5, 4], [3, 2], [1, 0]])
        XCTAssertEqual(layout.buckets.map(\.elementCount), [(1 << 20) + 512, (4 << 20) + 2048, (4 << 20) + 2048, (1 << 20) + 2048])
        // A remainder under the first cap (512 kB before 4 MB) would be a sliver: the bucket stays whole.
        let sliver = GradientBucketLayout(elementCounts: [1 << 20, 128 << 10, 8 << 20])
        XCTAssertEqual(sliver.buckets.map(\.parameters), [[2], [1, 0]])
        // One parameter larger than the first cap is left as it is.
        XCTAssertEqual(GradientBucketLayout(elementCounts: [8 << 20, 8 << 20]).buckets.map(\.parameters), [[1], [0]])
    }

    // MARK: Order and overlap

    func testBucketsFireInReverseOrderWhileBackwardRuns() {
        let reports = PerRank<GradientSyncReport>(size: 2)
        let timelines = [Timeline(rank: 0), Timeline(rank: 1)]
        runRanksExpectingSuccess(2) { comm in
            // A small MLP on top of a first layer whose backward takes 100 ms: once the MLP's
            // gradients are done, the buckets can reduce while backward is still busy below.
            let bottom = SleepyLayer(forward: 0, backward: 100)
            let blocks = ProbeModel.blocks(widths: [16, 64, 64, 64, 8], seed: 1)
            let parameters = [(name: "bottom.w", tensor: bottom.w)] + ProbeModel.namedParameters(blocks, firstIndex: 1)
            let replica = try DataParallelReplica(
                parameters: parameters, communicator: comm,
                options: DataParallelOptions(buckets: GradientBucketOptions(capBytes: 16 << 10, firstCapBytes: 2 << 10)),
                timeline: timelines[comm.rank])
            XCTAssertEqual(replica.buckets.layout.buckets.map(\.parameters), [[8, 7], [6, 5], [4, 3], [2, 1, 0]])
            let data = ProbeModel.data(samples: 8, inputs: 16, outputs: 8, seed: UInt64(comm.rank))
            try replica.backward(Loss.mse(ProbeModel.forward(blocks, bottom(data.x)), data.y))
            reports[comm.rank] = replica.buckets.lastReport
        }
        for rank in 0 ..< 2 {
            guard let report = reports[rank] else { return XCTFail("rank \(rank) has no report") }
            XCTAssertEqual(report.launchOrder, [0, 1, 2, 3], "rank \(rank)")
            // Every bucket is complete once backward has passed its layers: all launch during backward.
            XCTAssertEqual(report.launchedDuringBackward, 4, "rank \(rank)")
            let spans = timelines[rank].spans
            let backward = spans.first { $0.category == .backward }!
            let reduces = spans.filter { $0.category == .allreduce }.sorted { $0.start < $1.start }
            XCTAssertEqual(reduces.map { $0.name.components(separatedBy: " (").first! },
                           (0 ..< 4).map { "allreduce bucket \($0)" })
            XCTAssertTrue(reduces.allSatisfy { $0.lane == .communication })
            // The timeline shows the top buckets reduced entirely inside backward.
            XCTAssertLessThan(reduces[0].end, backward.end, "rank \(rank): bucket 0 was not hidden behind backward")
            XCTAssertLessThan(reduces[2].end, backward.end, "rank \(rank): bucket 2 was not hidden behind backward")
            XCTAssertLessThan(report.exposedWaitSeconds, report.backwardSeconds)
        }
    }

    func testGradientsAreAveragedAndUnusedParametersStayWithoutGradient() {
        let grads = PerRank<[Float?]>(size: 2)
        runRanksExpectingSuccess(2) { comm in
            let used = Tensor(shape: [3], data: [1, 1, 1]).asParameter()
            let onlyRank1 = Tensor(shape: [2], data: [1, 1]).asParameter()
            let never = Tensor(shape: [2], data: [1, 1]).asParameter()
            let parameters = [(name: "used", tensor: used), (name: "only1", tensor: onlyRank1), (name: "never", tensor: never)]
            let replica = try DataParallelReplica(parameters: parameters, communicator: comm)
            var loss = (used * Float(comm.rank + 1)).sum()
            if comm.rank == 1 { loss = loss + (onlyRank1 * 4).sum() }
            try replica.backward(loss)
            grads[comm.rank] = [used.grad?.scalars[0], onlyRank1.grad?.scalars[0], never.grad?.scalars[0]]
        }
        for rank in 0 ..< 2 {
            XCTAssertEqual(grads[rank]?[0], 1.5)      // (1 + 2) / 2
            XCTAssertEqual(grads[rank]?[1], 2)        // (0 + 4) / 2: rank 0 had none
            XCTAssertEqual(grads[rank]?[2] ?? nil, nil)    // no rank had one: stays nil, as in PyTorch
        }
    }

    func testGradientsAreWindowsOfTheBucketsAndStayCorrectOverSteps() {
        let results = PerRank<[[Float]]>(size: 2)
        runRanksExpectingSuccess(2) { comm in
            let w = Tensor(shape: [2, 3], data: [1, 2, 3, 4, 5, 6]).asParameter()
            let b = Tensor(shape: [3], data: [0, 0, 0]).asParameter()
            let early = Tensor(shape: [3], data: [7, 7, 7])
            let parameters = [(name: "w", tensor: w), (name: "b", tensor: b)]
            let replica = try DataParallelReplica(parameters: parameters, communicator: comm)
            // A gradient from before the replica existed is not in a bucket: it is copied in and out.
            b.grad = early
            let x = Tensor(shape: [1, 2], data: [1, Float(comm.rank + 1)])
            var seen: [[Float]] = []
            for step in 0 ..< 3 {
                let scale = Float(step + 1)
                try replica.backward((x.matmul(w) + b).sum() * scale)
                // The average lands in the window itself (no copy), w's and b's both after step 0.
                XCTAssertTrue(w.grad === w.gradientBuffer, "rank \(comm.rank) step \(step): w's grad is not its window")
                if step > 0 { XCTAssertTrue(b.grad === b.gradientBuffer, "step \(step): b's grad is not its window") }
                seen.append(w.grad!.scalars + b.grad!.scalars)
                w.zeroGrad(); b.zeroGrad()
            }
            results[comm.rank] = seen
        }
        // dL/dw[i][j] = scale·x[i], averaged over x = [1, 1] and [1, 2]; dL/db = scale (plus 7 at step 0).
        for rank in 0 ..< 2 {
            XCTAssertEqual(results[rank]?[0], [1, 1, 1, 1.5, 1.5, 1.5, 8, 8, 8])
            XCTAssertEqual(results[rank]?[1], [2, 2, 2, 3, 3, 3, 2, 2, 2])
            XCTAssertEqual(results[rank]?[2], [3, 3, 3, 4.5, 4.5, 4.5, 3, 3, 3])
        }
    }

    // MARK: Stalls

    func testStallNamesTheRankThatNeverArrives() {
        for algorithm in AllreduceAlgorithm.allCases {
            let errors = PerRank<Error>(size: 3)
            let elapsed = PerRank<Double>(size: 3)
            runRanks(3, timeout: 10) { comm in
                let p = Tensor(shape: [4], data: [1, 2, 3, 4]).asParameter()
                let replica = try DataParallelReplica(
                    parameters: [(name: "p", tensor: p)], communicator: comm,
                    options: DataParallelOptions(buckets: GradientBucketOptions(algorithm: algorithm), stallTimeout: 0.3))
                guard comm.rank != 2 else { return }    // rank 2 goes silent
                let start = Date()
                do {
                    try replica.backward((p * p).sum())
                } catch {
                    errors[comm.rank] = error
                }
                elapsed[comm.rank] = Date().timeIntervalSince(start)
            }
            for rank in 0 ..< 2 {
                guard case let .stalled(operation, peers, seconds)? = errors[rank] as? DataParallelError else {
                    XCTFail("\(algorithm) rank \(rank): expected a stall, got \(String(describing: errors[rank]))")
                    continue
                }
                XCTAssertTrue(operation.contains("bucket 0"), operation)
                XCTAssertEqual(seconds, 0.3)
                XCTAssertLessThan(elapsed[rank] ?? 99, 5)
                // The in-process group names every missing rank; the ring names the neighbour
                // it waited on, which is rank 2 for both rank 0 (receives from 2) and rank 1
                // (sends to 2).
                XCTAssertEqual(peers, [2], "\(algorithm) rank \(rank)")
            }
            let message = "\(errors[0]!)"
            XCTAssertTrue(message.contains("rank 2"), message)
        }
    }

    func testDifferentParameterListsAreReportedWithTheRank() {
        let errors = PerRank<Error>(size: 2)
        runRanks(2) { comm in
            let shape = comm.rank == 1 ? [3, 2] : [2, 3]
            let p = Tensor(zeros: shape).asParameter()
            do {
                _ = try DataParallelReplica(parameters: [(name: "w", tensor: p)], communicator: comm)
            } catch {
                errors[comm.rank] = error
            }
        }
        for rank in 0 ..< 2 {
            guard case let .parameterMismatch(peer, detail)? = errors[rank] as? DataParallelError else {
                return XCTFail("rank \(rank): \(String(describing: errors[rank]))")
            }
            XCTAssertEqual(peer, 1)
            XCTAssertTrue(detail.contains("names or shapes"), detail)
        }
    }

    func testTheSameTensorTwiceIsRejected() {
        let p = Tensor(zeros: [2]).asParameter()
        XCTAssertThrowsError(try GradientBuckets(parameters: [(name: "a", tensor: p), (name: "b", tensor: p)],
                                                 communicator: InProcessCommunicator.singleProcess())) { error in
            XCTAssertTrue("\(error)".contains("'b' is the same tensor as 'a'"), "\(error)")
        }
    }
}
