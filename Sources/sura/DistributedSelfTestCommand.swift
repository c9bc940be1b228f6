import ArgumentParser
import Collective
import Coordinator
import Foundation
import Worker

/// `mpirun -np N sura selftest training --dp D --pp P`: data- and pipeline-parallel training of a
/// small MLP over this deployment's MPI must match one process training on the whole batch.
struct TrainingSelfTestCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "training",
        abstract: "Check dp × pp training against one process (losses, parameters, bitwise replicas and features).")

    @Option(help: "Data-parallel replicas (default: ranks / pp).")
    var dp: Int?

    @Option(help: "Pipeline stages per replica (at most 5, the probe model's layers).")
    var pp: Int = 1

    @Option(name: .customLong("micro-batches"), help: "Micro-batches per step.")
    var microBatches: Int = 4

    @Option(help: "Training steps compared with one process.")
    var steps: Int = 4

    @Option(help: "Gradient allreduce: native (MPI_Iallreduce) or ring.")
    var algorithm: String = "native"

    @Option(name: .customLong("soak-steps"), help: "Extra training steps after the checks (prints progress on rank 0).")
    var soakSteps: Int = 0

    @Flag(name: .customLong("report-pids"), help: "Every rank prints its process id first.")
    var reportPIDs = false

    @Option(help: "Write the training runs' Chrome trace (all ranks merged) to this file.")
    var timeline: String?

    func validate() throws {
        if let dp, dp < 1 { throw ValidationError("--dp must be at least 1, got \(dp)") }
        guard pp >= 1 else { throw ValidationError("--pp must be at least 1, got \(pp)") }
        guard microBatches >= 1 else { throw ValidationError("--micro-batches must be at least 1") }
        guard steps >= 1 else { throw ValidationError("--steps must be at least 1") }
        guard soakSteps >= 0 else { throw ValidationError("--soak-steps must not be negative") }
        guard AllreduceAlgorithm(rawValue: algorithm) != nil else {
            throw ValidationError("--algorithm must be one of "
                + AllreduceAlgorithm.allCases.map(\.rawValue).joined(separator: ", ") + ", got '\(algorithm)'")
        }
    }

    func run() throws {
        try runOnWorld { world in
            if reportPIDs {
                print("rank \(world.rank) pid \(getpid())")
                fflush(stdout)
            }
            let trace = timeline.map { _ in Timeline(rank: world.rank) }
            try trace?.synchronizeOrigin(over: world)
            var options = DistributedTrainingSelfTest.Options(
                dataParallel: dp, pipelineStages: pp, microBatches: microBatches, steps: steps,
                algorithm: AllreduceAlgorithm(rawValue: algorithm)!, soakSteps: soakSteps)
            options.timeline = trace
            let rank = world.rank
            options.progress = { step in
                guard rank == 0 else { return }
                print("soak step \(step)")
                fflush(stdout)
            }
            let summary = try DistributedTrainingSelfTest.run(world: world, options: options)
            if let trace, let path = timeline {
                try trace.writeMerged(to: URL(fileURLWithPath: path), over: world)
            }
            return summary
        }
    }
}

/// `sura bench train` (run alone, or under `mpirun -np 2`): data-parallel samples/s for 1 rank and
/// for N ranks (scaling efficiency), the share of gradient allreduce hidden behind backward, and
/// the measured pipeline bubble next to (p−1)/(m+p−1). One compute thread per rank.
struct TrainingBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "train",
        abstract: "Data-parallel scaling, hidden communication and pipeline bubble; alone or under mpirun.")

    @Option(help: "Measured steps per configuration (default 6 for the probe, 30 with --config).")
    var steps: Int?

    @Option(name: .customLong("batch-per-rank"), help: "Samples per rank per step.")
    var batchPerRank: Int = 64

    @Option(help: "Gradient allreduce: native (MPI_Iallreduce) or ring.")
    var algorithm: String = "ring"

    @Option(name: .customLong("bucket-mb"), help: "Gradient bucket cap in MB (the first bucket is capped at 1 MB).")
    var bucketMB: Double = 25

    @Option(help: "Alternating rounds of the 1-rank and N-rank measurement (medians reported).")
    var rounds: Int = 3

    @Option(help: "Write the last N-rank round's per-rank compute and communication spans as a Chrome trace (the pipeline's beside it, as NAME.pipeline.json).")
    var timeline: String?

    @Option(help: ArgumentHelp("Measure this training config (pp = 1) instead of the probe MLP: 1 rank, then all ranks, at its per-rank batch.",
                               valueName: "yaml"))
    var config: String?

    @Option(name: .customLong("pipeline-steps"), help: "Measured steps per pipeline schedule and micro-batch count (the median step is reported).")
    var pipelineSteps: Int = 15

    @Option(name: .customLong("warmup-steps"), help: "With --config: steps run before the measured ones.")
    var warmupSteps: Int = 5

    func validate() throws {
        if let steps, steps < 1 { throw ValidationError("--steps must be at least 1, got \(steps)") }
        guard rounds >= 1 else { throw ValidationError("--rounds must be at least 1, got \(rounds)") }
        guard bucketMB >= 1 else { throw ValidationError("--bucket-mb must be at least 1, got \(bucketMB)") }
        guard batchPerRank >= 1 else { throw ValidationError("--batch-per-rank must be at least 1") }
        guard pipelineSteps >= 1 else { throw ValidationError("--pipeline-steps must be at least 1, got \(pipelineSteps)") }
        guard warmupSteps >= 0 else { throw ValidationError("--warmup-steps must be at least 0, got \(warmupSteps)") }
        guard AllreduceAlgorithm(rawValue: algorithm) != nil else {
            throw ValidationError("--algorithm must be one of "
                + AllreduceAlgorithm.allCases.map(\.rawValue).joined(separator: ", ") + ", got '\(algorithm)'")
        }
    }

    func run() throws {
        try runOnWorld { world in
            if let config {
                var options = ConfigScalingBenchmark.Options(configFile: config)
                options.steps = steps ?? options.steps
                options.warmupSteps = warmupSteps
                options.rounds = rounds
                return ConfigScalingBenchmark.format(try ConfigScalingBenchmark.run(world: world, options: options))
            }
            let options = TrainingBenchmark.Options(batchPerRank: batchPerRank, steps: steps ?? 6, pipelineSteps: pipelineSteps,
                                                    algorithm: AllreduceAlgorithm(rawValue: algorithm)!,
                                                    bucketCapBytes: Int(bucketMB * 1_048_576), rounds: rounds,
                                                    timeline: timeline.map { URL(fileURLWithPath: $0) })
            return TrainingBenchmark.format(try TrainingBenchmark.run(world: world, options: options))
        }
    }
}
