import Collective
import Foundation
import SuraTestSupport
import Tensor
import Worker
import XCTest

/// GPipe and 1F1B over in-process stages against the unpartitioned model.
///
/// Bitwise: a stage runs exactly the operations the whole model runs on the same micro-batch,
/// and the boundary gradient it receives is the one the whole model's graph passes across that
/// point, so each micro-batch's parameter gradients are the same bits. Accumulated over
/// micro-batches they are the same bits too when the reference adds them in the schedule's
/// backward order (GPipe: last micro-batch first; 1F1B: first first) — float addition is not
/// associative, so that order is part of the comparison. Against one backward over the whole
/// batch the results agree to rounding (1e-5 relative).
final class PipelineStageTests: SingleThreadedTestCase {
    static let widths = [8, 16, 16, 16, 16, 16, 4]
    static let batch = 12

    struct Outcome {
        var gradients: [String: [Float]] = [:]
        var losses: [Float] = []
    }

    /// Runs `stages` in-process stages (uniform partition) and returns each rank's outcome.
    private func runPipeline(stages p: Int, kind: PipelineSchedule.Kind, microBatches m: Int,
                             frozenStages: Int = 0) -> [Outcome] {
        let data = ProbeModel.data(samples: Self.batch, inputs: Self.widths.first!, outputs: Self.widths.last!, seed: 9)
        let outcomes = PerRank<Outcome>(size: p)
        runRanksExpectingSuccess(p) { comm in
            let partition = try PipelinePartition.uniform(layers: Self.widths.count - 1, stages: p)
            let range = partition.stages[comm.rank]
            let blocks = Array(ProbeModel.blocks(widths: Self.widths, seed: 5)[range])
            if comm.rank < frozenStages { blocks.forEach { $0.freeze() } }
            let parameters = ProbeModel.namedParameters(blocks, firstIndex: range.lowerBound)
            let stage = try PipelineStage(communicator: comm, parameters: parameters) { x, _ in
                ProbeModel.forward(blocks, x)
            }
            XCTAssertEqual(stage.firstTrainableStage, frozenStages)
            let size = Self.batch / m
            let result = try stage.run(kind, microBatches: m,
                                       input: { ProbeModel.rows(data.x, ($0 * size) ..< (($0 + 1) * size)) },
                                       loss: { out, k in
                                           Loss.mse(out, ProbeModel.rows(data.y, (k * size) ..< ((k + 1) * size))) * (1 / Float(m))
                                       })
            var outcome = Outcome(losses: result.losses)
            for (name, tensor) in parameters where tensor.grad != nil { outcome.gradients[name] = tensor.grad!.scalars }
            outcomes[comm.rank] = outcome
        }
        return (0 ..< p).map { outcomes[$0] ?? Outcome() }
    }

    /// The whole model on this thread: micro-batch losses, backward in `order`.
    private func reference(microBatches m: Int, order: [Int], frozenBlocks: Int = 0) -> Outcome {
        let data = ProbeModel.data(samples: Self.batch, inputs: Self.widths.first!, outputs: Self.widths.last!, seed: 9)
        let blocks = ProbeModel.blocks(widths: Self.widths, seed: 5)
        blocks.prefix(frozenBlocks).forEach { $0.freeze() }
        let size = Self.batch / m
        let losses = (0 ..< m).map { k in
            Loss.mse(ProbeModel.forward(blocks, ProbeModel.rows(data.x, (k * size) ..< ((k + 1) * size))),
                     ProbeModel.rows(data.y, (k * size) ..< ((k + 1) * size))) * (1 / Float(m))
        }
        for k in order { losses[k].backward() }
        var outcome = Outcome(losses: losses.map(\.item))
        for (name, tensor) in ProbeModel.namedParameters(blocks) where tensor.grad != nil {
            outcome.gradients[name] = tensor.grad!.scalars
        }
        return outcome
    }

    func testSchedulesGiveTheUnpartitionedGradientsBitForBit() {
        for p in [2, 3] {
            for kind in PipelineSchedule.Kind.allCases {
                for m in [1, 3, 4] {
                    let stages = runPipeline(stages: p, kind: kind, microBatches: m)
                    let order = kind == .gpipe ? Array((0 ..< m).reversed()) : Array(0 ..< m)
                    let expected = reference(microBatches: m, order: order)
                    let whole = reference(microBatches: 1, order: [0])
                    let label = "\(kind.rawValue) p=\(p) m=\(m)"
                    var merged: [String: [Float]] = [:]
                    for stage in stages { merged.merge(stage.gradients) { a, _ in a } }
                    XCTAssertEqual(Set(merged.keys), Set(expected.gradients.keys), label)
                    for (name, values) in expected.gradients {
                        XCTAssertEqual(merged[name]?.map(\.bitPattern), values.map(\.bitPattern), "\(label) \(name)")
                        let worst = zip(merged[name] ?? [], whole.gradients[name]!).map { abs($0 - $1) / max(1, abs($1)) }.max()
                        XCTAssertLessThanOrEqual(worst ?? 1, 1e-5, "\(label) \(name) vs the whole batch")
                    }
                    XCTAssertEqual(stages.last!.losses.map(\.bitPattern), expected.losses.map(\.bitPattern), label)
                    XCTAssertTrue(stages.dropLast().allSatisfy { $0.losses.isEmpty })
                }
            }
        }
    }

    func testFrozenPrefixRunsBackwardOnlyWhereNeeded() {
        // Stage 0 (blocks 0–1) is frozen: like a frozen LLM bottom under LoRA'd upper layers.
        for kind in PipelineSchedule.Kind.allCases {
            let stages = runPipeline(stages: 3, kind: kind, microBatches: 4, frozenStages: 1)
            XCTAssertTrue(stages[0].gradients.isEmpty)
            let order = kind == .gpipe ? Array((0 ..< 4).reversed()) : Array(0 ..< 4)
            let expected = reference(microBatches: 4, order: order, frozenBlocks: 2)
            var merged: [String: [Float]] = [:]
            for stage in stages { merged.merge(stage.gradients) { a, _ in a } }
            XCTAssertEqual(merged.mapValues { $0.map(\.bitPattern) }, expected.gradients.mapValues { $0.map(\.bitPattern) })
        }
    }

    func testTwoStagesGiveBitwiseTheFeaturesOfOne() {
        let data = ProbeModel.data(samples: Self.batch, inputs: Self.widths.first!, outputs: Self.widths.last!, seed: 2)
        var features: [Int: [[UInt32]]] = [:]
        for p in [1, 2, 3] {
            let collected = PerRank<[[UInt32]]>(size: p)
            runRanksExpectingSuccess(p) { comm in
                let range = try PipelinePartition.uniform(layers: Self.widths.count - 1, stages: p).stages[comm.rank]
                let blocks = Array(ProbeModel.blocks(widths: Self.widths, seed: 8)[range])
                let stage = try PipelineStage(communicator: comm, layers: blocks, firstLayerIndex: range.lowerBound)
                let outputs = try stage.forward(microBatches: 3) { ProbeModel.rows(data.x, ($0 * 4) ..< (($0 + 1) * 4)) }
                if stage.isLast {
                    XCTAssertFalse(outputs.contains { $0.requiresGrad }, "forward-only records no graph")
                    collected[comm.rank] = outputs.map(bitPatterns)
                } else {
                    XCTAssertTrue(outputs.isEmpty)
                }
            }
            features[p] = collected[p - 1]
        }
        XCTAssertNotNil(features[1])
        XCTAssertEqual(features[2], features[1])
        XCTAssertEqual(features[3], features[1])
    }

    // MARK: Measured bubble

    func testMeasuredIdleFractionFollowsTheTheory() {
        for (p, m) in [(2, 4), (3, 6)] {
            for kind in PipelineSchedule.Kind.allCases {
                let results = PerRank<PipelineStepResult>(size: p)
                runRanksExpectingSuccess(p) { comm in
                    let layer = SleepyLayer(forward: 15, backward: 30)
                    let stage = try PipelineStage(communicator: comm, layers: [layer])
                    let result = try stage.run(kind, microBatches: m, input: { _ in Tensor(zeros: [2, 3]) },
                                               loss: { out, _ in out.sum() })
                    results[comm.rank] = result
                }
                let theory = PipelineSchedule.theoreticalIdleFraction(stages: p, microBatches: m)
                let all = (0 ..< p).compactMap { results[$0] }
                // The stages start together (their set-up ends in a collective); the step lasts
                // as long as the slowest stage.
                let makespan = all.map(\.seconds).max() ?? 0
                let measured = all.map { $0.idleFraction(makespan: makespan) }.reduce(0, +) / Double(p)
                // Sleeps are exact-ish, so the only extra idle is thread wake-up and copying.
                XCTAssertEqual(measured, theory, accuracy: 0.08, "\(kind) p=\(p) m=\(m): measured \(measured)")
                XCTAssertGreaterThan(measured, theory - 0.03, "\(kind) p=\(p) m=\(m)")
            }
        }
    }

    func testTheNextMessageIsReceivedWhileTheStageComputes() {
        let timelines = PerRank<[Timeline.Span]>(size: 2)
        runRanksExpectingSuccess(2) { comm in
            let stage = try PipelineStage(communicator: comm, layers: [SleepyLayer(forward: 15, backward: 30)])
            let timeline = Timeline(rank: comm.rank)
            stage.timeline = timeline
            _ = try stage.run(.gpipe, microBatches: 4, input: { _ in Tensor(zeros: [2, 3]) }, loss: { out, _ in out.sum() })
            timelines[comm.rank] = timeline.spans
        }
        func span(_ rank: Int, _ name: String) -> Timeline.Span? {
            timelines[rank]?.first { $0.name == name }
        }
        // Stage 1 starts receiving activation k+1 once it has taken activation k, so that receive
        // is under way while forward k computes; stage 0 likewise for gradient k−1 during backward k.
        for k in 0 ..< 3 {
            guard let receive = span(1, "receive of activation \(k + 1) from stage 0"), let forward = span(1, "forward \(k)") else {
                return XCTFail("stage 1 spans: \(timelines[1]?.map(\.name) ?? [])")
            }
            XCTAssertLessThan(receive.start, forward.end, "activation \(k + 1)")
        }
        for k in (1 ..< 4).reversed() {
            guard let receive = span(0, "receive of gradient \(k - 1) from stage 1"), let backward = span(0, "backward \(k)") else {
                return XCTFail("stage 0 spans: \(timelines[0]?.map(\.name) ?? [])")
            }
            XCTAssertLessThan(receive.start, backward.end, "gradient \(k - 1)")
        }
    }

    // MARK: Failures

    func testAMessageTheScheduleDidNotExpectIsAnError() {
        let errors = PerRank<Error>(size: 2)
        runRanks(2, timeout: 5) { comm in
            let layer = Linear(weight: Tensor(zeros: [3, 3]).asParameter())
            let stage = try PipelineStage(communicator: comm, layers: [layer])
            if comm.rank == 0 {
                // A header for micro-batch 5 where stage 1 waits for micro-batch 0 (stages talk
                // over the background channel).
                try comm.runInBackground { channel in
                    try channel.send([1, 5, 2, 2, 3, 0, 0, 0, 0, 0], to: 1, tag: PipelineStage.messageTag)
                }.wait()
                return
            }
            do {
                _ = try stage.forward(microBatches: 1) { _ in Tensor(zeros: [2, 3]) }
            } catch {
                errors[1] = error
            }
        }
        XCTAssertEqual(errors[1] as? PipelineError,
                       .unexpectedMessage(stage: 1, expected: "activation of micro-batch 0 from stage 0",
                                          received: "activation of micro-batch 5"))
    }

    func testASilentStageIsNamed() {
        let errors = PerRank<Error>(size: 3)
        runRanks(3, timeout: 0.3) { comm in
            let stage = try PipelineStage(communicator: comm, layers: [Activation.tanh()])
            guard comm.rank != 1 else { return }    // stage 1 never runs
            do {
                _ = try stage.forward(microBatches: 2) { _ in Tensor(zeros: [2, 3]) }
            } catch {
                errors[comm.rank] = error
            }
        }
        guard case let .stalled(stage, operation, peers, _)? = errors[2] as? PipelineError else {
            return XCTFail("\(String(describing: errors[2]))")
        }
        XCTAssertEqual(stage, 2)
        XCTAssertEqual(peers, [1])
        XCTAssertTrue(operation.contains("receive of activation 0 from stage 1"), operation)
        XCTAssertTrue("\(errors[0]!)".contains("rank 1"), "\(errors[0]!)")    // stage 0's send to 1 times out
    }

    func testAStageRefusesToRunAgainAfterAFailedStep() {
        runRanksExpectingSuccess(1) { comm in
            let stage = try PipelineStage(communicator: comm, layers: [Linear(weight: Tensor(zeros: [3, 3]).asParameter())])
            let input = { (_: Int) in Tensor(zeros: [2, 3]) }
            XCTAssertThrowsError(try stage.run(.gpipe, microBatches: 1, input: input, loss: { out, _ in out })) { error in
                XCTAssertTrue("\(error)".contains("not a scalar"), "\(error)")
            }
            XCTAssertThrowsError(try stage.run(.gpipe, microBatches: 1, input: input, loss: { out, _ in out.sum() })) { error in
                XCTAssertTrue("\(error)".contains("cannot run another step after a failed one"), "\(error)")
            }
        }
    }

    func testATensorThatCannotBeSentIsNamed() {
        let errors = PerRank<Error>(size: 2)
        runRanks(2, timeout: 0.3) { comm in
            let stage = try PipelineStage(communicator: comm, parameters: []) { x, _ in
                x.reshaped([1, 1, 1, 1, 1, 1, 1, 6])
            }
            do {
                _ = try stage.forward(microBatches: 1) { _ in Tensor(zeros: [2, 3]) }
            } catch {
                errors[comm.rank] = error
            }
        }
        XCTAssertEqual(errors[0] as? PipelineError, .unsendable(stage: 0, detail: "tensor of rank 8 (at most 7)"))
        XCTAssertNotNil(errors[1])
    }
}
