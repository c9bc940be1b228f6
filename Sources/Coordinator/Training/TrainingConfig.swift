import Foundation
import Tensor
import Models
import Worker
import Yams

/// What `train --config FILE` trains, read from YAML and validated key by key.
///
/// ```yaml
/// task: base                 # base | sur_adapter | cross_adapter | voken_mapper | ella
/// seed: 0
/// output_dir: runs/base      # checkpoints/, metrics.jsonl, loss.png, samples.png, train.log
/// feature_cache: runs/base/feature-cache   # the default; `none` encodes the prompts every run
/// feature_cache_max_gb: 10                 # the default; least recently used tables go beyond it
/// data: {path: data/scenes, split: train, limit: 0}
/// diffusion: {num_train_timesteps: 1000, beta_schedule: linear, beta_start: 0.0001, beta_end: 0.02,
///             prediction_type: v_prediction, snr_gamma: 5, noise_offset: 0}
/// optim: {learning_rate: 3e-4, weight_decay: 0.01, schedule: constant_with_warmup, warmup_steps: 200,
///         steps: 4000, batch_size: 32, gradient_accumulation: 1, max_grad_norm: 1.0, ema_decay: 0.999}
/// checkpoint: {every: 250, sample_every: 1000}
/// topology: {dp: 1, pp: 1}
/// base: {unet: configs/base-unet.json, text_encoder: cache/models/minilm, max_length: 18,
///        condition_dropout: 0.1, export: models/base}
/// ```
/// Relative paths are resolved against the working directory. Unknown keys are errors that name
/// the key and its line.
public struct TrainingConfig: Sendable {
    public enum Task: String, CaseIterable, Sendable {
        case base
        case surAdapter = "sur_adapter"
        case crossAdapter = "cross_adapter"
        case vokenMapper = "voken_mapper"
        case ella

        /// The adapter this task trains; nil for the base model.
        public var adapterType: AdapterType? { AdapterType(rawValue: rawValue) }
    }

    public struct DataSection: Sendable {
        public var path: String
        public var split: String?
        public var limit: Int?
    }

    public struct DiffusionSection: Sendable {
        public var scheduler: SchedulerConfig
        public var snrGamma: Float?
        public var noiseOffset: Float = 0
    }

    public struct OptimSection: Sendable {
        public var learningRate = 3e-4
        public var weightDecay = 0.01
        public var schedule: String = "constant_with_warmup"
        public var warmupSteps = 0
        public var steps = 1000
        public var batchSize = 16
        public var gradientAccumulation = 1
        public var maxGradNorm: Float? = 1.0
        public var emaDecay: Double?

        public var learningRateSchedule: LearningRateSchedule {
            switch schedule {
            case "constant": return .constant
            case "cosine": return .cosineWithWarmup(warmupSteps: warmupSteps, totalSteps: steps)
            case "linear": return .linearWithWarmup(warmupSteps: warmupSteps, totalSteps: steps)
            default: return .constantWithWarmup(warmupSteps: warmupSteps)
            }
        }
    }

    public struct CheckpointSection: Sendable {
        public var every = 250
        public var sampleEvery: Int?
    }

    public struct TopologySection: Sendable {
        public var dp = 1
        public var pp = 1
        /// The micro-batch order through the stages when the LLM trains (LoRA) with pp > 1.
        public var schedule = PipelineSchedule.Kind.oneForwardOneBackward
        /// How gradient buckets are averaged over the dp replicas (`topology.allreduce`).
        public var allreduce = AllreduceAlgorithm.ring
        /// Gradient bucket cap in MB (`topology.bucket_mb`); the first bucket is capped at 1 MB.
        public var bucketMB = 25.0
        /// How the LLM's decoder layers are cut into the pp stages (`topology.partition`).
        public var partition = Partition.balanced

        public enum Partition: Sendable, Equatable {
            /// By parameter count, minimising the largest stage (optimal min-max).
            case balanced
            /// Equal layer counts.
            case uniform
            /// These layer counts, stage by stage.
            case layers([Int])
        }

        /// The cut of the LLM's decoder layers with these costs (parameter counts, up to
        /// `adapter.llm_layer`) into the `pp` stages.
        /// - Throws: `TrainingError.config` naming `topology.pp` (more stages than layers) or
        ///   `topology.partition` (counts that do not fit).
        func partition(costs: [Int], file: String) throws -> PipelinePartition {
            guard costs.count >= pp else {
                throw TrainingError.config(file: file, key: "topology.pp",
                                           message: "\(pp) pipeline stages but the LLM runs only \(costs.count) decoder layer(s) up to adapter.llm_layer; use pp ≤ \(max(costs.count, 1))")
            }
            do {
                switch partition {
                case .balanced: return try PipelinePartition.balanced(costs: costs, stages: pp)
                case .uniform: return try PipelinePartition.uniform(costs: costs, stages: pp)
                case let .layers(counts): return try PipelinePartition.counts(counts, costs: costs)
                }
            } catch let error as Worker.PipelineError {
                let key = { if case .layers = partition { return "topology.partition" } else { return "topology.pp" } }()
                throw TrainingError.config(file: file, key: key, message: "\(error)")
            }
        }
    }

    public struct BaseSection: Sendable {
        public var unet: String
        public var textEncoder: String
        public var maxLength: Int = 18
        public var conditionDropout = 0.1
        public var export: String?
    }

    public var file: String
    public var task: Task
    public var seed: UInt64 = 0
    public var outputDir: String
    /// Where finished prompt feature tables are kept between runs (`feature_cache`, default
    /// OUTPUT_DIR/feature-cache; `none`: always encode). See `FeatureTableCache`.
    public var featureCache: String?
    /// The feature cache's budget in GB (`feature_cache_max_gb`, default 10): storing a table set
    /// removes the least recently used others beyond it.
    public var featureCacheMaxGB = 10.0
    public var data: DataSection
    public var diffusion: DiffusionSection
    public var optim = OptimSection()
    public var checkpoint = CheckpointSection()
    public var topology = TopologySection()
    public var base: BaseSection?
    public var adapter: AdapterSection?

    /// The cache `featureCache` names, nil when it is off.
    public var featureTableCache: FeatureTableCache? {
        featureCache.map { FeatureTableCache(directory: URL(fileURLWithPath: $0), maxBytes: Int64(featureCacheMaxGB * 1e9)) }
    }

    /// `feature_cache` when the config does not set it: OUTPUT_DIR/feature-cache.
    public static func defaultFeatureCache(outputDir: String) -> String {
        (outputDir as NSString).appendingPathComponent("feature-cache")
    }

    /// Reads and validates `url`.
    /// - Throws: `JobSpecError` naming the file, line and dotted key.
    public init(contentsOf url: URL) throws {
        let text: String
        do {
            text = try String(contentsOf: url, encoding: .utf8)
        } catch {
            throw JobSpecError(file: url.path, line: nil, key: "", message: "cannot read the config: \(error.localizedDescription)")
        }
        try self.init(yaml: text, file: url.path)
    }

    public init(yaml: String, file: String) throws {
        let root = try JobYAMLReader.document(yaml, file: file)
        self.file = file
        try root.rejectUnknownKeys(allowed: ["task", "seed", "output_dir", "feature_cache", "feature_cache_max_gb", "data", "diffusion", "optim", "checkpoint", "topology", "base", "adapter"])
        guard let task = try root.choice("task", Task.self) else {
            throw root.error("task", "is required; allowed values: \(Task.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        self.task = task
        if let seed = try root.string("seed") {
            guard let value = UInt64(seed) else { throw root.error("seed", "expected a whole number ≥ 0, got '\(seed)'") }
            self.seed = value
        }
        guard let output = try root.string("output_dir") else { throw root.error("output_dir", "is required (where checkpoints and metrics go)") }
        outputDir = output
        let cache = try root.string("feature_cache")
        featureCache = cache == "none" ? nil : cache ?? Self.defaultFeatureCache(outputDir: output)
        if featureCache?.isEmpty == true { throw root.error("feature_cache", "expected a folder, or none") }
        featureCacheMaxGB = try root.double("feature_cache_max_gb", in: 0.001...1e6) ?? featureCacheMaxGB

        guard let dataNode = try root.mapping("data") else { throw root.error("data", "is required: {path: DATASET_FOLDER}") }
        try dataNode.rejectUnknownKeys(allowed: ["path", "split", "limit"])
        guard let path = try dataNode.string("path") else { throw dataNode.error("path", "is required (a folder with metadata.jsonl)") }
        data = DataSection(path: path, split: try dataNode.string("split"), limit: try dataNode.int("limit", in: 0...Int.max).flatMap { $0 == 0 ? nil : $0 })

        diffusion = DiffusionSection(scheduler: try TrainingConfig.readScheduler(root.mapping("diffusion"), root: root))
        if let node = try root.mapping("diffusion") {
            diffusion.snrGamma = try node.double("snr_gamma", in: 0...1e6).flatMap { $0 == 0 ? nil : Float($0) }
            diffusion.noiseOffset = Float(try node.double("noise_offset", in: 0...1) ?? 0)
        }
        if let node = try root.mapping("optim") {
            try node.rejectUnknownKeys(allowed: ["learning_rate", "weight_decay", "schedule", "warmup_steps", "steps", "batch_size",
                                                 "gradient_accumulation", "max_grad_norm", "ema_decay"])
            optim.learningRate = try node.double("learning_rate", in: 0...1) ?? optim.learningRate
            optim.weightDecay = try node.double("weight_decay", in: 0...10) ?? optim.weightDecay
            if let schedule = try node.string("schedule") {
                let allowed = ["constant", "constant_with_warmup", "cosine", "linear"]
                guard allowed.contains(schedule) else {
                    throw node.error("schedule", "'\(schedule)' is not allowed; allowed values: \(allowed.joined(separator: ", "))")
                }
                optim.schedule = schedule
            }
            optim.warmupSteps = try node.int("warmup_steps", in: 0...10_000_000) ?? optim.warmupSteps
            optim.steps = try node.int("steps", in: 1...100_000_000) ?? optim.steps
            optim.batchSize = try node.int("batch_size", in: 1...65_536) ?? optim.batchSize
            optim.gradientAccumulation = try node.int("gradient_accumulation", in: 1...4096) ?? optim.gradientAccumulation
            if let norm = try node.double("max_grad_norm", in: 0...1e6) { optim.maxGradNorm = norm == 0 ? nil : Float(norm) }
            optim.emaDecay = try node.double("ema_decay", in: 0...0.999999).flatMap { $0 == 0 ? nil : $0 }
        }
        if let node = try root.mapping("checkpoint") {
            try node.rejectUnknownKeys(allowed: ["every", "sample_every"])
            checkpoint.every = try node.int("every", in: 1...100_000_000) ?? checkpoint.every
            checkpoint.sampleEvery = try node.int("sample_every", in: 0...100_000_000).flatMap { $0 == 0 ? nil : $0 }
        }
        if let node = try root.mapping("topology") {
            try node.rejectUnknownKeys(allowed: ["dp", "pp", "schedule", "partition", "allreduce", "bucket_mb"])
            topology.allreduce = try node.choice("allreduce", AllreduceAlgorithm.self) ?? topology.allreduce
            topology.bucketMB = try node.double("bucket_mb", in: 1...4096) ?? topology.bucketMB
            topology.dp = try node.int("dp", in: 1...4096) ?? 1
            topology.pp = try node.int("pp", in: 1...4096) ?? 1
            topology.schedule = try node.choice("schedule", PipelineSchedule.Kind.self) ?? topology.schedule
            topology.partition = try TrainingConfig.readPartition(node, pp: topology.pp)
        }
        if let type = task.adapterType {
            guard let node = try root.mapping("adapter") else {
                throw root.error("adapter", "is required for task '\(task.rawValue)': {base_model: FOLDER, llm: GGUF, config: {…}}")
            }
            if root.has("base") { throw root.error("base", "belongs to task 'base'; an adapter task reads its frozen model from adapter.base_model") }
            adapter = try AdapterSection(node, type: type)
        } else if root.has("adapter") {
            throw root.error("adapter", "belongs to the adapter tasks (\(Task.allCases.compactMap(\.adapterType).map(\.rawValue).joined(separator: ", "))), not 'base'")
        }
        switch task {
        case .surAdapter, .crossAdapter, .vokenMapper, .ella:
            break
        case .base:
            guard let node = try root.mapping("base") else {
                throw root.error("base", "is required for task 'base': {unet: CONFIG_JSON, text_encoder: FOLDER}")
            }
            try node.rejectUnknownKeys(allowed: ["unet", "text_encoder", "max_length", "condition_dropout", "export"])
            guard let unet = try node.string("unet") else { throw node.error("unet", "is required (a diffusers UNet config.json)") }
            guard let encoder = try node.string("text_encoder") else { throw node.error("text_encoder", "is required (a BERT or CLIP text folder)") }
            var section = BaseSection(unet: unet, textEncoder: encoder)
            section.maxLength = try node.int("max_length", in: 2...512) ?? section.maxLength
            section.conditionDropout = try node.double("condition_dropout", in: 0...1) ?? section.conditionDropout
            section.export = try node.string("export")
            base = section
        }
        if topology.pp > 1 && task == .base {
            throw root.error("topology", "pp = \(topology.pp), but task 'base' has no LLM to split; use pp: 1")
        }
        if topology.pp > 1 && task == .vokenMapper {
            throw root.error("topology", "pp = \(topology.pp): the voken mapper's LLM pass (prompt + vokens) runs on one rank in this version; use pp: 1 and dp for the ranks")
        }
        if topology.pp > 1, let adapter, adapter.llm == nil {
            throw root.error("topology", "pp = \(topology.pp), but there is no adapter.llm to split over pipeline stages; use pp: 1")
        }
    }

    /// `topology.partition`: `balanced`, `uniform`, or a list of `pp` layer counts ([18, 12]).
    /// Whether the counts add up to the LLM's layers is checked when the LLM is loaded.
    static func readPartition(_ node: JobYAMLReader, pp: Int) throws -> TopologySection.Partition {
        guard node.has("partition") else { return .balanced }
        if let items = try? node.strings("partition") {
            let counts = try items.enumerated().map { index, text in
                guard let count = Int(text), count >= 1 else {
                    throw node.error("partition", "item \(index + 1) is '\(text)'; expected a layer count ≥ 1 per stage")
                }
                return count
            }
            guard counts.count == pp else {
                throw node.error("partition", "lists \(counts.count) stage(s) but topology.pp is \(pp); give one layer count per stage")
            }
            return .layers(counts)
        }
        switch try node.string("partition") {
        case "balanced": return .balanced
        case "uniform": return .uniform
        case let other:
            throw node.error("partition", "'\(other ?? "")' is not allowed; use balanced, uniform or a list of layer counts per stage such as [18, 12]")
        }
    }

    /// The noise schedule keys of `diffusion` as a diffusers scheduler config (DDIM, trailing
    /// spacing and no clipping for sampling, per DESIGN.md §6).
    static func readScheduler(_ node: JobYAMLReader?, root: JobYAMLReader) throws -> SchedulerConfig {
        var config = SchedulerConfig(className: DDIMScheduler.className)
        config.betaSchedule = .linear
        config.betaStart = 0.0001
        config.betaEnd = 0.02
        config.predictionType = .vPrediction
        config.timestepSpacing = .trailing
        config.clipSample = false
        guard let node else { return config }
        try node.rejectUnknownKeys(allowed: ["num_train_timesteps", "beta_schedule", "beta_start", "beta_end", "prediction_type",
                                             "snr_gamma", "noise_offset"])
        config.numTrainTimesteps = try node.int("num_train_timesteps", in: 2...NoiseSchedule.maxTrainTimesteps) ?? config.numTrainTimesteps
        if let schedule = try node.choice("beta_schedule", BetaSchedule.self) { config.betaSchedule = schedule }
        config.betaStart = try node.double("beta_start", in: 0...1) ?? config.betaStart
        config.betaEnd = try node.double("beta_end", in: 0...1) ?? config.betaEnd
        if let prediction = try node.choice("prediction_type", PredictionType.self) { config.predictionType = prediction }
        return config
    }
}

extension JobYAMLReader {
    /// A number within `range` (written as `3e-4`, `0.1` or `5`).
    func double(_ key: String, in range: ClosedRange<Double>) throws -> Double? {
        guard let text = try string(key) else { return nil }
        guard let value = Double(text.replacingOccurrences(of: "_", with: "")), value.isFinite else {
            throw error(key, "expected a number, got '\(text)'")
        }
        guard range.contains(value) else { throw error(key, "must be between \(range.lowerBound) and \(range.upperBound), got \(value)") }
        return value
    }
}
