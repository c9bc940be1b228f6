import Collective
import Foundation
import Tensor
import Worker

/// `sura bench train --config FILE`: the data-parallel scaling of a real training config, the
/// workload the probe MLP of `TrainingBenchmark` stands in for.
///
/// Weak scaling, one compute thread per rank: each rank keeps the config's per-rank batch
/// b = `optim.batch_size` / `topology.dp`. A round trains the config on rank 0 alone (dp = 1,
/// batch b, the other ranks waiting at a barrier), then on every rank of the world
/// (dp = N, batch N·b). Each run starts afresh in a scratch `output_dir`, so the user's outputs
/// are untouched (the runs share one feature cache there, unless the config names its own); the
/// LLM features and model set-up are outside the measurement, which covers
/// `steps` steps after `warmupSteps` from each step's own time (`step_s` in metrics.jsonl).
public enum ConfigScalingBenchmark {
    public struct Options: Sendable {
        public var configFile: String
        public var warmupSteps = 5
        public var steps = 30
        public var rounds = 1
        /// Holds every run's output_dir and is removed afterwards; by default a folder of the
        /// temporary directory named after rank 0's process id, so two benchmarks never share one.
        public var scratch: URL?

        public init(configFile: String, scratch: URL? = nil) {
            self.configFile = configFile
            self.scratch = scratch
        }
    }

    public struct Report: Sendable {
        public let configFile: String
        public let task: String
        public let ranks: Int
        public let batchPerRank: Int
        public let steps: Int
        public let singleRounds: [Double]
        public let parallelRounds: [Double]
        public var singleSamplesPerSecond: Double { CollectiveBenchmark.median(singleRounds) }
        public var parallelSamplesPerSecond: Double { CollectiveBenchmark.median(parallelRounds) }
        /// parallel / (ranks × single).
        public var scalingEfficiency: Double { parallelSamplesPerSecond / (Double(ranks) * singleSamplesPerSecond) }
    }

    /// Runs every round; all ranks of `world` call it together. Sets `Threads.count` to 1.
    /// - Throws: `TrainingError.config` naming the key when the config cannot be measured.
    public static func run(world: Communicator, options: Options) throws -> Report {
        let config = try TrainingConfig(contentsOf: URL(fileURLWithPath: options.configFile))
        guard config.topology.pp == 1 else {
            throw TrainingError.config(file: config.file, key: "topology.pp",
                                       message: "bench train --config measures data parallelism; use a config with pp = 1")
        }
        let perRank = config.optim.batchSize / max(config.topology.dp, 1)
        guard perRank >= 1 else {
            throw TrainingError.config(file: config.file, key: "optim.batch_size",
                                       message: "\(config.optim.batchSize) leaves no sample per rank for dp = \(config.topology.dp)")
        }
        guard options.steps >= 1, options.warmupSteps >= 0, options.rounds >= 1 else {
            throw TrainingError.config(file: config.file, key: "steps", message: "bench train needs ≥ 1 measured step and round")
        }
        Threads.count = 1
        let token = try world.allreduce(world.rank == 0 ? Double(getpid()) : 0)
        let scratch = options.scratch ?? FileManager.default.temporaryDirectory
            .appendingPathComponent("sura-bench-train-\(Int(token))", isDirectory: true)
        let savedTimeout = world.timeout
        defer {
            world.timeout = savedTimeout
            // Every rank removes its copy: ranks on other hosts keep their own logs there.
            try? FileManager.default.removeItem(at: scratch)
        }
        var singles: [Double] = [], parallels: [Double] = []
        for round in 0 ..< options.rounds {
            world.timeout = max(savedTimeout, 3600)
            var single = 0.0
            if world.rank == 0 {
                single = try measure(variant(of: config, dp: 1, batch: perRank, in: scratch, name: "1-rank-\(round)"),
                                     on: InProcessCommunicator.singleProcess(), options: options)
            }
            try world.barrier()
            world.timeout = savedTimeout
            singles.append(single)
            let parallel = try measure(variant(of: config, dp: world.size, batch: perRank * world.size,
                                               in: scratch, name: "\(world.size)-rank-\(round)"),
                                       on: world, options: options)
            parallels.append(parallel)
        }
        try world.barrier()  // rank 0 has read the last metrics before anyone removes the folder
        return Report(configFile: options.configFile, task: config.task.rawValue, ranks: world.size, batchPerRank: perRank,
                      steps: options.steps, singleRounds: singles, parallelRounds: parallels)
    }

    /// The config with `dp` ranks of `batch` samples in all, writing only under `scratch/name`.
    static func variant(of config: TrainingConfig, dp: Int, batch: Int, in scratch: URL, name: String) -> TrainingConfig {
        var variant = config
        let directory = scratch.appendingPathComponent(name, isDirectory: true)
        variant.outputDir = directory.path
        // The default cache lives in the user's output_dir, which stays untouched: the runs share
        // one in the scratch folder instead, so only the first run encodes the prompts. A cache
        // folder the config names is used as it is.
        if config.featureCache == TrainingConfig.defaultFeatureCache(outputDir: config.outputDir) {
            variant.featureCache = scratch.appendingPathComponent("feature-cache", isDirectory: true).path
        }
        variant.topology.dp = dp
        variant.topology.pp = 1
        variant.optim.batchSize = batch
        variant.checkpoint.every = Int.max
        variant.checkpoint.sampleEvery = nil
        variant.base?.export = directory.appendingPathComponent("export-base").path
        variant.adapter?.export = directory.appendingPathComponent("export.safetensors").path
        return variant
    }

    /// Trains `config` on `communicator` and returns rank 0's samples/s over the measured steps
    /// (0 on the other ranks).
    static func measure(_ config: TrainingConfig, on communicator: Communicator, options: Options) throws -> Double {
        var training = TrainingOptions()
        training.overwrite = true
        training.maxSteps = options.warmupSteps + options.steps
        let run = try TrainingRun(config: config, options: training, communicator: communicator)
        _ = try run.run()
        guard communicator.rank == 0 else { return 0 }
        let times = run.outputs.metricLines.compactMap { row -> Double? in
            guard let step = row["step"] as? Int, step > options.warmupSteps else { return nil }
            return row["step_s"] as? Double
        }
        guard times.count == options.steps, times.allSatisfy({ $0 > 0 }) else {
            throw TrainingError.data("bench train: \(run.outputs.metricsURL.path) has \(times.count) timed steps after the warm-up, expected \(options.steps)")
        }
        return Double(config.optim.batchSize * times.count) / times.reduce(0, +)
    }

    /// The report as a table.
    public static func format(_ report: Report) -> String {
        let rounds = { (values: [Double]) in values.map { String(format: "%.2f", $0) }.joined(separator: ", ") }
        return [
            "config: \(report.configFile) (task \(report.task)), \(report.batchPerRank) samples per rank per step, "
                + "\(report.steps) measured steps, 1 thread per rank",
            "",
            "ranks  samples/s  scaling efficiency  each of \(report.singleRounds.count) alternating rounds (the median is shown)",
            "-----  ---------  ------------------  ------",
            String(format: "%5d  %9.2f  %18.3f  ", 1, report.singleSamplesPerSecond, 1.0) + rounds(report.singleRounds),
            String(format: "%5d  %9.2f  %18.3f  ", report.ranks, report.parallelSamplesPerSecond, report.scalingEfficiency)
                + rounds(report.parallelRounds),
        ].joined(separator: "\n")
    }
}
