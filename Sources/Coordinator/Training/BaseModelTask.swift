import Foundation
import Tensor
import Models
import Data

/// Trains Sura's base model: a text-conditioned UNet from scratch on (image, complex prompt)
/// pairs, conditioned on a frozen text encoder's token features, with condition dropout so that
/// classifier-free guidance works (the empty prompt's features replace a sample's conditioning
/// with probability `condition_dropout`, as in Ho & Salimans 2022, §3.2).
public final class BaseModelTask: TrainingTask {
    public let unet: UNet2DConditionModel
    public let dataset: ImageTextDataset
    public let features: PromptFeatureTable
    public let emptyFeatures: Tensor
    public let lossFunction: DiffusionLoss
    public let schedulerConfig: SchedulerConfig
    public let section: TrainingConfig.BaseSection
    public let evaluationRecords: [DatasetRecord]

    public var module: Module { unet }

    /// Builds the UNet from its config (random weights from `seed`), loads the text encoder and
    /// encodes every complex prompt of the dataset once.
    /// - Throws: errors naming the config key, file or folder at fault.
    /// - Parameter agreement: the job's ranks, which share the encoding of the prompts
    ///   (`PromptTableEncoder`); nil: this process encodes them all.
    public init(config: TrainingConfig, dataset: ImageTextDataset, agreement: RankAgreement? = nil, log: (String) -> Void) throws {
        guard let section = config.base else { throw TrainingError.config(file: config.file, key: "base", message: "is required") }
        self.section = section
        self.dataset = dataset
        var unetConfig: UNet2DConditionConfig
        do {
            unetConfig = try UNet2DConditionConfig(contentsOf: URL(fileURLWithPath: section.unet))
        } catch {
            throw TrainingError.config(file: config.file, key: "base.unet", message: "cannot load \(section.unet): \(error)")
        }
        var rng = SeededGenerator(seed: config.seed)
        unet = try UNet2DConditionModel(config: unetConfig, rng: &rng)
        guard unetConfig.inChannels == 3 && unetConfig.outChannels == 3 else {
            throw TrainingError.config(file: config.file, key: "base.unet",
                                       message: "a pixel-space base model needs in_channels = out_channels = 3, got \(unetConfig.inChannels)/\(unetConfig.outChannels)")
        }
        let encoder: TextEncoderConditioning
        do {
            let url = URL(fileURLWithPath: section.textEncoder)
            encoder = try PipelineFolder.loadTextEncoder(url, tokenizer: url, maxLength: section.maxLength)
        } catch {
            throw TrainingError.config(file: config.file, key: "base.text_encoder", message: "cannot load \(section.textEncoder): \(error)")
        }
        let width = unetConfig.crossAttentionDim.value(at: 0)
        guard encoder.width == width else {
            throw TrainingError.config(file: config.file, key: "base.text_encoder",
                                       message: "gives \(encoder.width)-wide tokens but the UNet's cross_attention_dim is \(width)")
        }
        let prompts = dataset.records.map(\.prompt)
        features = try PromptTableEncoder(agreement: agreement, chunk: 64, cache: config.featureTableCache)
            .table("text encoder", prompts + [""],
                   identity: FeatureTableCache.fingerprint(of: section.textEncoder) + ["max_length \(section.maxLength)"],
                   log: log) { try encoder.conditioning(for: $0) }
        emptyFeatures = try features.features([""])
        schedulerConfig = config.diffusion.scheduler
        lossFunction = DiffusionLoss(schedule: try NoiseSchedule(config: schedulerConfig),
                                     predictionType: schedulerConfig.predictionType,
                                     snrGamma: config.diffusion.snrGamma, noiseOffset: config.diffusion.noiseOffset)
        // Fixed evaluation scenes: the first 32 records (seeded, so the same every run).
        evaluationRecords = Array(dataset.records.prefix(32))
    }

    public func loss(indices: [Int], generators: inout [SeededGenerator]) throws -> (total: Tensor, parts: [String: Double]) {
        // [B, 3, H, W]
        let images = dataset.images(indices)
        var prompts: [String] = []
        for (b, index) in indices.enumerated() {
            let drop = Double(generators[b].nextUniform()) < section.conditionDropout
            prompts.append(drop ? "" : dataset.records[index].prompt)
        }
        // [B, L, D]
        let conditioning = try features.features(prompts)
        let loss = try lossFunction(unet: unet, original: images, conditioning: conditioning, generators: &generators)
        return (loss, [:])
    }

    public func sampleImages(step: Int, range: Range<Int>) throws -> Tensor {
        let pipeline = try TextToImagePipeline(unet: unet, vae: nil, scheduler: SchedulerRegistry.makeScheduler(config: schedulerConfig),
                                               conditioningProvider: nil)
        let conditioning = try features.features(range.map { evaluationRecords[$0].prompt })
        return try pipeline.generate(conditioning: conditioning, negativeConditioning: emptyFeatures, seeds: range.map { UInt64($0) },
                                     options: TextToImageOptions(steps: 25, guidanceScale: 4, height: dataset.height,
                                                                 width: dataset.width)).images
    }

    /// Writes a model folder `sura generate` loads: unet/, scheduler/ and sura.json naming the
    /// text encoder (relative to the folder when possible).
    public func export(to path: String) throws -> [String] {
        let folder = URL(fileURLWithPath: path).standardizedFileURL
        try unet.save(to: folder.appendingPathComponent("unet", isDirectory: true))
        let schedulerDir = folder.appendingPathComponent("scheduler", isDirectory: true)
        try FileManager.default.createDirectory(at: schedulerDir, withIntermediateDirectories: true)
        try schedulerConfig.write(to: schedulerDir.appendingPathComponent("scheduler_config.json"))
        let encoder = URL(fileURLWithPath: section.textEncoder).standardizedFileURL
        let sura: [String: Any] = ["text_encoder": RelativePath.from(folder, to: encoder), "max_length": section.maxLength,
                                   "_trained_by": "train --config (see README: the base model)"]
        let data = try JSONSerialization.data(withJSONObject: sura, options: [.prettyPrinted, .sortedKeys])
        try data.write(to: folder.appendingPathComponent(SuraFolderConfig.fileName), options: .atomic)
        return [folder.path]
    }
}

/// Relative paths between folders, so exported folders can name their neighbours portably.
enum RelativePath {
    static func from(_ base: URL, to target: URL) -> String {
        let a = base.standardizedFileURL.pathComponents, b = target.standardizedFileURL.pathComponents
        var common = 0
        while common < min(a.count, b.count) && a[common] == b[common] { common += 1 }
        guard common > 1 else { return target.path }
        return (Array(repeating: "..", count: a.count - common) + b[common...]).joined(separator: "/")
    }
}
