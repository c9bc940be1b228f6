import Collective
import Foundation
import Tensor

/// A failed training self-test check; the message names the check and the rank that saw it.
public struct TrainingSelfTestFailure: Error, CustomStringConvertible {
    public let description: String
}

/// Checks the distributed training machinery end to end on a communicator (under `mpirun`,
/// `sura selftest training --dp 2 --pp 1`; in tests on in-process groups).
///
/// Every rank rebuilds the unpartitioned probe MLP from the same seed and trains it alone on the
/// whole global batch — the single-process reference — then the ranks train it together as
/// dp replicas × pp stages (replicas other than 0 start from different weights, so the initial
/// broadcast is exercised) and compare:
/// 1. the dp × pp rank grid and its sub-communicators;
/// 2. for each schedule (GPipe and 1F1B when pp > 1): per-step losses and every parameter match
///    the reference within `tolerance` (float rounding: the global batch's sums are formed in a
///    different order, so equality is not bitwise);
/// 3. the replicas stay bitwise identical;
/// 4. forward-only pipeline features equal one-stage features bit for bit (the same operations
///    on the same values; the split only moves bytes).
/// After each check the ranks agree, so all fail on the same check instead of timing out.
public enum DistributedTrainingSelfTest {
    public struct Options {
        /// Replicas; nil: world size / pipelineStages.
        public var dataParallel: Int?
        public var pipelineStages: Int
        public var microBatches: Int
        public var steps: Int
        public var algorithm: AllreduceAlgorithm
        /// Training steps run after the checks (to keep a job busy, e.g. to kill a rank in a test).
        public var soakSteps: Int
        /// Called on every rank after each soak step with the step number.
        public var progress: ((Int) -> Void)?
        /// Largest accepted |distributed − reference|, relative to max(1, |reference|).
        public var tolerance: Float
        /// Receives the training runs' compute and communication spans, when set.
        public var timeline: Timeline?

        public init(dataParallel: Int? = nil, pipelineStages: Int = 1, microBatches: Int = 4, steps: Int = 4,
                    algorithm: AllreduceAlgorithm = .native, soakSteps: Int = 0,
                    progress: ((Int) -> Void)? = nil, tolerance: Float = 1e-5) {
            self.dataParallel = dataParallel
            self.pipelineStages = pipelineStages
            self.microBatches = microBatches
            self.steps = steps
            self.algorithm = algorithm
            self.soakSteps = soakSteps
            self.progress = progress
            self.tolerance = tolerance
        }
    }

    static let widths = [12, 24, 24, 24, 24, 6]
    static let seed: UInt64 = 2024
    static let samplesPerMicroBatch = 3

    /// Runs all checks; every rank of `world` calls it together.
    /// - Returns: one summary line beginning "training selftest passed".
    /// - Throws: `TrainingSelfTestFailure` naming the failed check, `TopologyError` for a grid
    ///   that does not fit the world, or a communication error.
    public static func run(world: Communicator, options: Options = Options()) throws -> String {
        guard options.microBatches >= 1, options.steps >= 1 else {
            throw TrainingSelfTestFailure(description: "micro-batches and steps must be at least 1")
        }
        let topology = try TrainingTopology(worldSize: world.size, dataParallel: options.dataParallel,
                                            pipelineStages: options.pipelineStages, layers: widths.count - 1)
        let groups = try TopologyGroups(world: world, topology: topology)
        var checks = 0
        func agree(_ check: String, _ problem: String?) throws {
            checks += 1
            let worst = try world.allreduce(problem == nil ? 0 : Double(world.rank + 1), op: .max)
            if let problem {
                throw TrainingSelfTestFailure(description: "\(check): rank \(world.rank): \(problem)")
            }
            if worst > 0 {
                throw TrainingSelfTestFailure(description: "\(check): failed on rank \(Int(worst) - 1)")
            }
        }

        let (dpRank, ppRank) = topology.coordinates(of: world.rank)
        var gridProblem: String?
        if groups.dpRank != dpRank || groups.ppRank != ppRank || groups.dataParallel.size != topology.dataParallel
            || groups.pipeline.size != topology.pipelineStages {
            gridProblem = "expected (dp \(dpRank), pp \(ppRank)) of \(topology.dataParallel) × \(topology.pipelineStages), "
                + "got (dp \(groups.dpRank) of \(groups.dataParallel.size), pp \(groups.ppRank) of \(groups.pipeline.size))"
        }
        try agree("rank grid", gridProblem)

        let m = options.microBatches
        let globalBatch = topology.dataParallel * m * samplesPerMicroBatch
        let data = ProbeModel.data(samples: globalBatch, inputs: widths.first!, outputs: widths.last!, seed: seed)
        let reference = try trainAlone(data: data, steps: options.steps)
        let partition = try PipelinePartition.balanced(
            costs: ProbeModel.blocks(widths: widths, seed: seed).map(\.parameterCount), stages: topology.pipelineStages)
        let kinds: [PipelineSchedule.Kind] = topology.pipelineStages > 1 ? [.gpipe, .oneForwardOneBackward] : [.gpipe]
        var worstDifference: Float = 0
        var trainer: Trainer?
        for kind in kinds {
            let run = try Trainer(groups: groups, partition: partition, options: options, kind: kind, data: data)
            var problem: String?
            for step in 0 ..< options.steps {
                let loss = try run.step()
                if let loss {
                    let difference = Float(abs(loss - reference.losses[step])) / max(1, Float(abs(reference.losses[step])))
                    worstDifference = max(worstDifference, difference)
                    if difference > options.tolerance && problem == nil {
                        problem = "step \(step) loss \(loss) differs from the single-process \(reference.losses[step])"
                    }
                }
            }
            for (name, tensor) in run.parameters {
                let expected = reference.parameters[name]!.scalars
                for (a, b) in zip(tensor.scalars, expected) {
                    let difference = abs(a - b) / max(1, abs(b))
                    worstDifference = max(worstDifference, difference)
                    if difference > options.tolerance && problem == nil {
                        problem = "parameter \(name) differs from the single-process one by \(abs(a - b))"
                    }
                }
            }
            try agree("\(kind.rawValue) training matches one process", problem)
            do {
                try run.replica.verifyInSync()
                try agree("replicas bitwise identical", nil)
            } catch let error as DataParallelError {
                try agree("replicas bitwise identical", "\(error)")
            }
            trainer = run
        }
        let worst = try world.allreduce(Double(worstDifference), op: .max)

        // Forward-only features: pipeline vs the whole model on one rank, bit for bit.
        let fresh = ProbeModel.blocks(widths: widths, seed: seed &+ 7)
        let mine = Array(fresh[partition.stages[ppRank]])
        let featureStage = try PipelineStage(communicator: groups.pipeline,
                                             parameters: ProbeModel.namedParameters(mine)) { x, _ in
            ProbeModel.forward(mine, x)
        }
        let microBatch = { (k: Int) in ProbeModel.rows(data.x, (k * samplesPerMicroBatch) ..< ((k + 1) * samplesPerMicroBatch)) }
        let features = try featureStage.forward(microBatches: m, input: microBatch)
        var featureProblem: String?
        if featureStage.isLast {
            for k in 0 ..< m {
                let expected = withoutGrad { ProbeModel.forward(fresh, microBatch(k)) }.scalars
                if features[k].scalars.map(\.bitPattern) != expected.map(\.bitPattern) {
                    featureProblem = "features of micro-batch \(k) differ from the one-stage forward"
                    break
                }
            }
        }
        try agree("pipeline features bitwise equal to one stage", featureProblem)

        if let trainer {
            for step in 0 ..< options.soakSteps {
                _ = try trainer.step()
                options.progress?(step + 1)
            }
        }
        try world.barrier()
        return "training selftest passed: dp=\(topology.dataParallel) × pp=\(topology.pipelineStages) on "
            + "\(world.size) rank\(world.size == 1 ? "" : "s") (\(world.kind)), \(checks) checks, "
            + "\(m) micro-batches, schedules \(kinds.map(\.rawValue).joined(separator: ", ")); losses and parameters "
            + "within \(String(format: "%.1e", worst)) of one process; replicas bitwise identical; "
            + "pipeline features bitwise equal"
    }

    /// The single-process reference: the whole model, the whole batch, AdamW.
    static func trainAlone(data: (x: Tensor, y: Tensor), steps: Int) throws
        -> (losses: [Double], parameters: [String: Tensor]) {
        let blocks = ProbeModel.blocks(widths: widths, seed: seed)
        let parameters = ProbeModel.namedParameters(blocks)
        let optimizer = try AdamW(parameters: parameters, learningRate: 1e-2)
        var losses: [Double] = []
        for _ in 0 ..< steps {
            let loss = Loss.mse(ProbeModel.forward(blocks, data.x), data.y)
            losses.append(Double(loss.item))
            loss.backward()
            try optimizer.step()
            optimizer.zeroGrad()
        }
        return (losses, Dictionary(uniqueKeysWithValues: parameters.map { ($0.name, $0.tensor) }))
    }

    /// One rank's part of the distributed run: its stage's blocks, its replica and optimizer.
    final class Trainer {
        let groups: TopologyGroups
        let replica: DataParallelReplica
        let stage: PipelineStage
        let optimizer: AdamW
        let parameters: [(name: String, tensor: Tensor)]
        let blocks: [ProbeBlock]
        let kind: PipelineSchedule.Kind
        let microBatches: Int
        let x: Tensor, y: Tensor

        init(groups: TopologyGroups, partition: PipelinePartition, options: Options,
             kind: PipelineSchedule.Kind, data: (x: Tensor, y: Tensor)) throws {
            self.groups = groups
            self.kind = kind
            microBatches = options.microBatches
            // Replicas other than 0 start elsewhere: the broadcast must fix that.
            let start = groups.dpRank == 0 ? seed : seed &+ 1000 &+ UInt64(groups.dpRank)
            let range = partition.stages[groups.ppRank]
            blocks = Array(ProbeModel.blocks(widths: widths, seed: start)[range])
            parameters = ProbeModel.namedParameters(blocks, firstIndex: range.lowerBound)
            // Small buckets so that several allreduces overlap backward.
            let bucketOptions = GradientBucketOptions(capBytes: 4096, firstCapBytes: 1024, algorithm: options.algorithm)
            replica = try DataParallelReplica(parameters: parameters, communicator: groups.dataParallel,
                                              options: DataParallelOptions(buckets: bucketOptions),
                                              timeline: options.timeline)
            try replica.broadcastParameters()
            let blocks = self.blocks
            stage = try PipelineStage(communicator: groups.pipeline, parameters: parameters) { x, _ in
                ProbeModel.forward(blocks, x)
            }
            stage.timeline = options.timeline
            optimizer = try AdamW(parameters: parameters, learningRate: 1e-2)
            let share = data.x.shape[0] / groups.topology.dataParallel
            let mine = (groups.dpRank * share) ..< ((groups.dpRank + 1) * share)
            x = ProbeModel.rows(data.x, mine)
            y = ProbeModel.rows(data.y, mine)
        }

        private func rows(_ t: Tensor, _ k: Int) -> Tensor {
            let size = t.shape[0] / microBatches
            return ProbeModel.rows(t, (k * size) ..< ((k + 1) * size))
        }

        /// One optimizer step; returns the global mean loss on ranks that know it (the last
        /// stage of every replica), nil elsewhere.
        func step() throws -> Double? {
            if groups.topology.pipelineStages == 1 {
                let report = try replica.step(microBatches: microBatches, optimizer: optimizer) { k in
                    Loss.mse(ProbeModel.forward(blocks, rows(x, k)), rows(y, k))
                }
                return report.loss
            }
            let scale = 1 / Float(microBatches)
            let result = try stage.run(kind, microBatches: microBatches, input: { rows(x, $0) },
                                       loss: { out, k in Loss.mse(out, self.rows(self.y, k)) * scale },
                                       gradientSync: replica)
            try optimizer.step()
            optimizer.zeroGrad()
            guard stage.isLast else { return nil }
            return try groups.dataParallel.allreduce(Double(result.losses.reduce(0, +)), op: .average)
        }
    }
}
