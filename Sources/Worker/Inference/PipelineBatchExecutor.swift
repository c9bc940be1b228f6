import Foundation
import Models
import Tensor

/// Why a pipeline executor could not be built from a model folder.
public enum PipelineExecutorError: Error, CustomStringConvertible, Equatable, Sendable {
    /// The folder is missing, incomplete or broken; `reason` is the loader's message.
    case cannotLoad(path: String, reason: String)
    /// The folder loads but has no text encoder, so prompts cannot become conditioning.
    case noTextEncoder(path: String)

    public var description: String {
        switch self {
        case let .cannotLoad(path, reason):
            return "cannot load the model folder \(path): \(reason)"
        case let .noTextEncoder(path):
            return "the model folder \(path) has no text encoder to turn prompts into conditioning; add text_encoder/ and "
                + "tokenizer/, or a sura.json naming one ({\"text_encoder\": \"path/to/minilm\"})"
        }
    }
}

/// Runs generation requests through Sura's text-to-image pipeline: the model folder is loaded
/// once, and each batch is sampled with classifier-free guidance and returned as PNG files.
///
/// Every image has its own seeded generator for its initial noise and any sampler noise, so a
/// request's image is determined by its prompt, negative prompt, seed, steps and guidance:
///
///     image_i = pipeline([(prompt_i, negative_i, seed_i)], steps, guidance)
///
/// How a batch maps onto pipeline calls is the `Batching` mode. Batched matrix products do not
/// sum in the same order for every batch size (BLAS blocking and threading), which moves a value
/// by ~1e-6 and, now and then, one 8-bit pixel by 1; so only `.exact` — one call per request —
/// gives bit-identical PNGs whatever else shares the batch. On a CPU the UNet's work grows with
/// the batch almost linearly, so `.exact` costs little (8 images of the 32×32 base UNet, 10 steps,
/// 2 cores: 4.8 s either way).
///
/// Only the model's own size is served: a UNet trained at one resolution gives no useful image
/// at another, so a request of any other width or height is refused, naming the field.
public final class PipelineBatchExecutor: InferenceBatchExecutor, @unchecked Sendable {
    /// How the requests of a batch become pipeline calls.
    public enum Batching: String, CaseIterable, Sendable {
        /// One pipeline call per request: a request's PNG is bit-identical whatever shares its
        /// batch (for a given thread count).
        case exact
        /// One pipeline call per group of equal (width, height, steps, guidance): larger matrix
        /// products, faster on many cores; an image may differ from its `.exact` PNG by 1 in a
        /// few 8-bit values, depending on its batch.
        case grouped
    }

    /// The folder the model was loaded from.
    public let folderURL: URL
    public let pipeline: TextToImagePipeline
    /// The only image size served, in pixels: the UNet's `sample_size` times the VAE's factor.
    public let width: Int
    public let height: Int
    /// Model names a request may carry: the scheduler's default name and the folder's name.
    public let modelNames: Set<String>
    /// Most denoising steps the noise schedule allows (num_train_timesteps).
    public let maxSteps: Int
    public let batching: Batching
    /// The pipeline's scheduler is stateful: one batch at a time.
    private let lock = NSLock()

    /// Loads the model folder at `url` (see `PipelineFolder`: unet/, scheduler/, optional vae/,
    /// a text encoder in text_encoder/ + tokenizer/ or named by sura.json).
    ///
    /// - Parameters:
    ///   - sampler: a `SchedulerChoice` (ddim, ddpm, euler, dpm++2m, a class name, a config
    ///     path); nil keeps the folder's own scheduler class.
    ///   - conditioning: a provider to use instead of the folder's text encoder (an adapter);
    ///     nil uses the text encoder.
    ///   - modelNames: names a request's `model` may have; nil means "default" and the folder's name.
    ///   - batching: how a batch becomes pipeline calls (see `Batching`).
    /// - Throws: `PipelineExecutorError` naming the folder and what is wrong with it.
    public init(modelFolder url: URL, sampler: String? = nil, conditioning: (any ConditioningProvider)? = nil,
                modelNames: Set<String>? = nil, batching: Batching = .exact) throws {
        let folder: PipelineFolder
        let pipeline: TextToImagePipeline
        do {
            folder = try PipelineFolder.load(url)
            if conditioning == nil && folder.textConditioning == nil { throw PipelineExecutorError.noTextEncoder(path: url.path) }
            pipeline = try folder.makePipeline(scheduler: sampler, conditioning: conditioning)
        } catch let error as PipelineExecutorError {
            throw error
        } catch {
            throw PipelineExecutorError.cannotLoad(path: url.path, reason: "\(error)")
        }
        self.folderURL = url
        self.pipeline = pipeline
        (height, width) = pipeline.defaultSize
        self.modelNames = modelNames ?? ["default", url.standardizedFileURL.lastPathComponent]
        self.maxSteps = folder.schedulerConfig.numTrainTimesteps
        self.batching = batching
    }

    /// One PNG per request, in the order of `batch`.
    /// - Throws: `InferenceExecutionError.unsupportedRequest` naming the field of the first
    ///   request the model cannot serve (checked before any sampling); the pipeline's errors.
    public func run(batch: [GenerationRequest]) throws -> [GeneratedImage] {
        for request in batch { try check(request) }
        lock.lock()
        defer { lock.unlock() }
        var images = [GeneratedImage?](repeating: nil, count: batch.count)
        let calls = batching == .grouped ? Self.groups(batch) : batch.indices.map { [$0] }
        for group in calls {
            let members = group.map { batch[$0] }
            let first = members[0]
            let options = TextToImageOptions(steps: first.steps, guidanceScale: Float(first.guidanceScale),
                                             height: first.height, width: first.width)
            let items = members.map { ImagePrompt($0.prompt, negativePrompt: $0.negativePrompt, seed: $0.seed) }
            let result = try pipeline.generate(items, options: options)
            for (k, index) in group.enumerated() {
                let request = batch[index]
                let png = try result.pngImage(at: k).pngData(name: "image for request \(request.id)")
                images[index] = GeneratedImage(requestID: request.id, png: png, width: request.width, height: request.height)
            }
        }
        let produced = images.compactMap { $0 }
        guard produced.count == batch.count else {
            throw InferenceExecutionError.resultCountMismatch(expected: batch.count, got: produced.count)
        }
        return produced
    }

    /// Refuses what this model cannot serve, naming the field.
    public func check(_ request: GenerationRequest) throws {
        func refuse(_ field: String, _ reason: String) -> InferenceExecutionError {
            .unsupportedRequest(id: request.id, field: field, reason: reason)
        }
        guard modelNames.contains(request.model) else {
            throw refuse("model", "this worker serves \(modelNames.sorted().map { "'\($0)'" }.joined(separator: " or ")), got '\(request.model)'")
        }
        for (field, value, served) in [("width", request.width, width), ("height", request.height, height)] where value != served {
            throw refuse(field, "the model \(folderURL.lastPathComponent) generates \(width)x\(height) images only, got \(value)")
        }
        guard (1...maxSteps).contains(request.steps) else {
            throw refuse("steps", "must be 1…\(maxSteps) (the noise schedule's num_train_timesteps), got \(request.steps)")
        }
        guard request.guidanceScale.isFinite, abs(request.guidanceScale) <= Double(Float.greatestFiniteMagnitude) else {
            throw refuse("guidance_scale", "must be a finite number, got \(request.guidanceScale)")
        }
    }

    /// Indices of `batch` grouped by (width, height, steps, guidance scale), groups in order of
    /// their first member and members in batch order, so the grouping is deterministic.
    static func groups(_ batch: [GenerationRequest]) -> [[Int]] {
        struct Key: Hashable { let width: Int, height: Int, steps: Int, guidance: Double }
        var order: [Key] = []
        var members: [Key: [Int]] = [:]
        for (index, request) in batch.enumerated() {
            let key = Key(width: request.width, height: request.height, steps: request.steps, guidance: request.guidanceScale)
            if members[key] == nil { order.append(key) }
            members[key, default: []].append(index)
        }
        return order.map { members[$0]! }
    }
}
