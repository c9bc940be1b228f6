import Collective
import Foundation
import SuraTestSupport
import Tensor
import Worker
import XCTest

/// dp = 2 (threads) against one process on the same global batch.
///
/// Tolerance: the two runs compute the same mathematical gradient, but the global batch's sums
/// are formed in a different order (each replica sums its half inside sgemm, then the halves
/// are averaged, instead of one sgemm over all rows; the loss mean is likewise split), so float32
/// results differ by rounding — a few units in the last place per step. After 4–5 steps the
/// measured worst difference is ~2e-8 for SGD and ~1e-7 for AdamW (whose update m/(√v+ε) has
/// unit scale whatever the gradient's size, so it passes rounding on at full size); the tests
/// allow 1e-5 (relative to max(1, |x|)), still three orders of magnitude below one step's
/// parameter change (lr = 1e-2) — a wrong average (a sum, a missing rank) fails by far more.
final class DataParallelTests: SingleThreadedTestCase {
    static let widths = [10, 32, 32, 4]
    static let tolerance: Float = 1e-5

    /// Trains alone on `x, y` (the whole batch), in `microBatches` accumulated micro-batches.
    static func trainAlone(_ x: Tensor, _ y: Tensor, steps: Int, adam: Bool, microBatches: Int = 1)
        throws -> (losses: [Float], parameters: [[Float]]) {
        let blocks = ProbeModel.blocks(widths: widths, seed: 11)
        let parameters = ProbeModel.namedParameters(blocks)
        let optimizer: Optimizer = adam ? try AdamW(parameters: parameters, learningRate: 1e-2)
            : try SGD(parameters: parameters, learningRate: 1e-1)
        var losses: [Float] = []
        let size = x.shape[0] / microBatches
        for _ in 0 ..< steps {
            var total: Float = 0
            for k in 0 ..< microBatches {
                let rows = (k * size) ..< ((k + 1) * size)
                let loss = Loss.mse(ProbeModel.forward(blocks, ProbeModel.rows(x, rows)), ProbeModel.rows(y, rows))
                total += loss.item / Float(microBatches)
                (microBatches > 1 ? loss * (1 / Float(microBatches)) : loss).backward()
            }
            losses.append(total)
            try optimizer.step()
            optimizer.zeroGrad()
        }
        return (losses, parameters.map { $0.tensor.scalars })
    }

    /// dp replicas, each on its contiguous share of the batch; rank 1 starts from other weights.
    static func trainReplicated(_ x: Tensor, _ y: Tensor, ranks: Int, steps: Int, adam: Bool,
                                microBatches: Int = 1) -> (losses: PerRank<[Float]>, parameters: PerRank<[[Float]]>) {
        let losses = PerRank<[Float]>(size: ranks)
        let finals = PerRank<[[Float]]>(size: ranks)
        runRanksExpectingSuccess(ranks) { comm in
            let blocks = ProbeModel.blocks(widths: widths, seed: comm.rank == 0 ? 11 : 99)
            let parameters = ProbeModel.namedParameters(blocks)
            let replica = try DataParallelReplica(
                parameters: parameters, communicator: comm,
                options: DataParallelOptions(buckets: GradientBucketOptions(capBytes: 2048, firstCapBytes: 512)))
            try replica.broadcastParameters()
            let optimizer: Optimizer = adam ? try AdamW(parameters: parameters, learningRate: 1e-2)
                : try SGD(parameters: parameters, learningRate: 1e-1)
            let share = x.shape[0] / comm.size
            let size = share / microBatches
            var history: [Float] = []
            for _ in 0 ..< steps {
                let report = try replica.step(microBatches: microBatches, optimizer: optimizer) { k in
                    let rows = (comm.rank * share + k * size) ..< (comm.rank * share + (k + 1) * size)
                    return Loss.mse(ProbeModel.forward(blocks, ProbeModel.rows(x, rows)), ProbeModel.rows(y, rows))
                }
                history.append(Float(report.loss))
            }
            try replica.verifyInSync()
            losses[comm.rank] = history
            finals[comm.rank] = parameters.map { $0.tensor.scalars }
        }
        return (losses, finals)
    }

    private func assertClose(_ got: [[Float]]?, _ expected: [[Float]], _ what: String,
                             file: StaticString = #filePath, line: UInt = #line) {
        guard let got, got.count == expected.count else { return XCTFail("\(what): missing", file: file, line: line) }
        for (a, b) in zip(got, expected) {
            let worst = zip(a, b).map { abs($0 - $1) / max(1, abs($1)) }.max() ?? 0
            XCTAssertLessThanOrEqual(worst, Self.tolerance, what, file: file, line: line)
        }
    }

    func testTwoReplicasMatchOneProcessWithTheSameGlobalBatch() throws {
        let data = ProbeModel.data(samples: 16, inputs: 10, outputs: 4, seed: 3)
        for adam in [false, true] {
            let alone = try Self.trainAlone(data.x, data.y, steps: 5, adam: adam)
            let together = Self.trainReplicated(data.x, data.y, ranks: 2, steps: 5, adam: adam)
            for rank in 0 ..< 2 {
                let losses = together.losses[rank] ?? []
                XCTAssertLessThanOrEqual(maxDifference(losses, alone.losses), Self.tolerance, "adam \(adam) rank \(rank)")
                assertClose(together.parameters[rank], alone.parameters, "adam \(adam) rank \(rank) parameters")
            }
            // Replicas are not merely close to each other: they are the same bits.
            XCTAssertEqual(together.parameters[0]?.map { $0.map(\.bitPattern) },
                           together.parameters[1]?.map { $0.map(\.bitPattern) })
            XCTAssertLessThan(alone.losses.last!, alone.losses.first!, "the probe problem should be learnt")
        }
    }

    func testAccumulatingMicroBatchesEqualsOneLargerBatch() throws {
        let data = ProbeModel.data(samples: 16, inputs: 10, outputs: 4, seed: 4)
        let whole = try Self.trainAlone(data.x, data.y, steps: 4, adam: true)
        // Alone, 4 accumulated micro-batches of 4.
        let accumulated = try Self.trainAlone(data.x, data.y, steps: 4, adam: true, microBatches: 4)
        XCTAssertLessThanOrEqual(maxDifference(accumulated.losses, whole.losses), Self.tolerance)
        assertClose(accumulated.parameters, whole.parameters, "accumulated alone")
        // Two replicas × 2 micro-batches each (noSync on the first) = the same global batch of 16.
        let replicated = Self.trainReplicated(data.x, data.y, ranks: 2, steps: 4, adam: true, microBatches: 2)
        XCTAssertLessThanOrEqual(maxDifference(replicated.losses[0] ?? [], whole.losses), Self.tolerance)
        assertClose(replicated.parameters[0], whole.parameters, "replicated accumulation")
    }

    func testNoSyncOnlyAccumulatesLocally() {
        let grads = PerRank<[Float]>(size: 2)
        runRanksExpectingSuccess(2) { comm in
            let p = Tensor(shape: [2], data: [1, 1]).asParameter()
            let replica = try DataParallelReplica(parameters: [(name: "p", tensor: p)], communicator: comm)
            let scale = Float(comm.rank + 1)
            try replica.withoutGradientSync { try replica.backward((p * scale).sum()) }
            let local = p.grad!.scalars[0]
            try replica.backward((p * (10 * scale)).sum())
            grads[comm.rank] = [local, p.grad!.scalars[0]]
        }
        XCTAssertEqual(grads[0], [1, 16.5])     // local 1; then mean over ranks of (1 + 10) and (2 + 20)
        XCTAssertEqual(grads[1], [2, 16.5])
    }

    func testBroadcastMakesReplicasIdenticalAndDivergenceIsNamed() {
        let errors = PerRank<Error>(size: 3)
        runRanksExpectingSuccess(3) { comm in
            let blocks = ProbeModel.blocks(widths: [4, 8, 2], seed: UInt64(comm.rank + 1))
            let parameters = ProbeModel.namedParameters(blocks)
            let replica = try DataParallelReplica(parameters: parameters, communicator: comm)
            try replica.broadcastParameters()
            try replica.verifyInSync()
            if comm.rank == 2 { parameters[2].tensor.pointer[0] += 1e-6 }    // 1.linear.weight
            do {
                try replica.verifyInSync()
            } catch {
                errors[comm.rank] = error
            }
        }
        for rank in 0 ..< 3 {
            XCTAssertEqual(errors[rank] as? DataParallelError, .replicasDiverged(rank: 2, parameter: "1.linear.weight"))
        }
    }

    func testBadLossAndSettingsAreErrors() throws {
        let p = Tensor(shape: [2], data: [1, 2]).asParameter()
        let replica = try DataParallelReplica(parameters: [(name: "p", tensor: p)],
                                              communicator: InProcessCommunicator.singleProcess())
        XCTAssertThrowsError(try replica.backward(p * 2)) { error in
            XCTAssertTrue("\(error)".contains("shape [2]"), "\(error)")
        }
        XCTAssertThrowsError(try replica.backward(Tensor(scalar: 1))) { error in
            XCTAssertTrue("\(error)".contains("does not require grad"), "\(error)")
        }
        let sgd = try SGD(parameters: [(name: "p", tensor: p)], learningRate: 0.1)
        XCTAssertThrowsError(try replica.step(microBatches: 0, optimizer: sgd) { _ in p.sum() })
        XCTAssertThrowsError(try DataParallelReplica(parameters: [], communicator: InProcessCommunicator.singleProcess(),
                                                     options: DataParallelOptions(stallTimeout: 0)))
        // One process: the step is an ordinary optimizer step.
        let report = try replica.step(optimizer: sgd) { _ in (p * p).sum() }
        XCTAssertEqual(report.loss, 5)
        XCTAssertLessThanOrEqual(maxDifference(p.scalars, [0.8, 1.6]), 1e-6)
    }
}
