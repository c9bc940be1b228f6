import Foundation
import Tensor

/// `sura.json`: what Sura adds to a diffusers-style folder — chiefly which text encoder the UNet
/// was trained with when it is not in the folder itself (e.g. a MiniLM folder shared by models).
///
/// ```json
/// {"text_encoder": "../minilm", "max_length": 18}
/// ```
/// Paths are relative to the folder holding `sura.json` (or absolute). Keys starting with `_`
/// are comments and ignored; any other unknown key is an error naming it.
public struct SuraFolderConfig: Equatable, Sendable {
    public static let fileName = "sura.json"
    public static let keys = ["text_encoder", "tokenizer", "max_length"]

    /// The text encoder folder (BERT or CLIP text, transformers layout).
    public var textEncoder: String?
    /// The tokenizer folder; nil means the text encoder folder.
    public var tokenizer: String?
    /// Tokens per prompt, special tokens included; nil means `TextEncoderConditioning`'s default.
    public var maxLength: Int?

    public init(textEncoder: String? = nil, tokenizer: String? = nil, maxLength: Int? = nil) {
        self.textEncoder = textEncoder
        self.tokenizer = tokenizer
        self.maxLength = maxLength
    }

    /// Reads and validates a `sura.json`.
    /// - Throws: `PipelineError.invalidFolderConfig` naming the file and the key.
    public init(contentsOf url: URL) throws {
        let object: Any
        do {
            object = try JSONSerialization.jsonObject(with: Data(contentsOf: url))
        } catch {
            throw PipelineError.invalidFolderConfig(file: url.path, key: "(file)", message: "cannot read JSON: \(error.localizedDescription)")
        }
        guard let json = object as? [String: Any] else {
            throw PipelineError.invalidFolderConfig(file: url.path, key: "(top level)", message: "must be a JSON object")
        }
        for key in json.keys.sorted() where !key.hasPrefix("_") && !Self.keys.contains(key) {
            throw PipelineError.invalidFolderConfig(file: url.path, key: key,
                                                    message: "unknown key; allowed keys are \(Self.keys.joined(separator: ", "))")
        }
        func string(_ key: String) throws -> String? {
            guard let value = json[key], !(value is NSNull) else { return nil }
            guard let text = value as? String, !text.isEmpty else {
                throw PipelineError.invalidFolderConfig(file: url.path, key: key, message: "must be a non-empty path string")
            }
            return text
        }
        textEncoder = try string("text_encoder")
        tokenizer = try string("tokenizer")
        if let value = json["max_length"], !(value is NSNull) {
            // JSONDecoder tells a whole number from a boolean or a fraction, on every platform.
            struct Length: Decodable { let max_length: Int }
            let length = try? JSONDecoder().decode(Length.self, from: Data(contentsOf: url)).max_length
            guard let length, length >= 2 else {
                throw PipelineError.invalidFolderConfig(file: url.path, key: "max_length", message: "must be a whole number ≥ 2, got \(value)")
            }
            maxLength = length
        }
    }
}

/// The sampler names `sura generate --scheduler` accepts, and building a scheduler from one.
public enum SchedulerChoice {
    /// Short name → diffusers class.
    public static let names: [(name: String, className: String)] = [
        ("ddim", DDIMScheduler.className), ("ddpm", DDPMScheduler.className),
        ("euler", EulerDiscreteScheduler.className), ("dpm++2m", DPMSolverMultistepScheduler.className),
    ]

    /// Builds a scheduler from `choice`: nil (the folder's own class), a short name, a diffusers
    /// class name, or the path of a `scheduler_config.json` (or of a folder holding one). A name
    /// keeps `config`'s noise schedule and prediction type and changes only the sampler.
    /// - Throws: `PipelineError.invalidOption` naming the choice and the allowed names; the
    ///   scheduler's own config errors.
    public static func makeScheduler(_ choice: String?, config: SchedulerConfig) throws -> any DiffusionScheduler {
        guard let choice else { return try SchedulerRegistry.makeScheduler(config: config) }
        let lowered = choice.lowercased()
        if let entry = names.first(where: { $0.name == lowered }) {
            var adjusted = config
            if entry.name == "dpm++2m" {
                adjusted.solverOrder = 2
                adjusted.algorithmType = .dpmsolverPlusPlus
            }
            return try SchedulerRegistry.makeScheduler(config: adjusted, className: entry.className)
        }
        if SchedulerRegistry.classNames.contains(choice) {
            return try SchedulerRegistry.makeScheduler(config: config, className: choice)
        }
        if choice.hasSuffix(".json") || FileManager.default.fileExists(atPath: choice) {
            return try SchedulerRegistry.load(contentsOf: URL(fileURLWithPath: choice))
        }
        throw PipelineError.invalidOption(
            name: "scheduler", value: choice,
            message: "use one of \(names.map(\.name).joined(separator: ", ")), a diffusers class name, or a scheduler_config.json path")
    }
}

/// A text-to-image model folder in diffusers' layout, optionally with Sura's `sura.json`:
///
///     unet/config.json + diffusion_pytorch_model.safetensors          required
///     scheduler/scheduler_config.json                                 required
///     vae/config.json + diffusion_pytorch_model.safetensors           optional (absent: pixel space)
///     text_encoder/ (BERT or CLIP text) + tokenizer/                  optional
///     sura.json {"text_encoder": PATH, "tokenizer": PATH, "max_length": N}   optional, wins over text_encoder/
///
/// Without a text encoder the folder still loads; generating from prompts then needs a
/// conditioning provider (an adapter) passed to `makePipeline`.
public struct PipelineFolder {
    public let url: URL
    public let unet: UNet2DConditionModel
    public let vae: AutoencoderKL?
    public let schedulerConfig: SchedulerConfig
    /// The text encoder's conditioning, when the folder has or names one.
    public let textConditioning: TextEncoderConditioning?
    /// Where the text encoder was loaded from.
    public let textEncoderURL: URL?

    /// Loads every part of the folder at `url`.
    /// - Throws: `PipelineError.missingComponent` naming the folder, the part and the paths looked
    ///   for; `.invalidFolderConfig` for a bad sura.json; `.unsupportedModel` when the text
    ///   encoder is not BERT or CLIP; the models' own loading errors (which name files and tensors).
    public static func load(_ url: URL) throws -> PipelineFolder {
        let fm = FileManager.default
        var isDirectory: ObjCBool = false
        guard fm.fileExists(atPath: url.path, isDirectory: &isDirectory), isDirectory.boolValue else {
            throw PipelineError.missingComponent(folder: url.path, component: "model folder", tried: [url.path],
                                                 hint: "pass a folder with unet/ and scheduler/ (diffusers' save_pretrained layout)")
        }
        func part(_ name: String) -> URL { url.appendingPathComponent(name, isDirectory: true) }
        func exists(_ u: URL) -> Bool { fm.fileExists(atPath: u.path) }

        let unetConfig = part("unet").appendingPathComponent("config.json")
        guard exists(unetConfig) else {
            throw PipelineError.missingComponent(folder: url.path, component: "UNet", tried: ["unet/config.json"],
                                                 hint: "the folder needs unet/ with config.json and diffusion_pytorch_model.safetensors")
        }
        let schedulerURL = part("scheduler").appendingPathComponent("scheduler_config.json")
        guard exists(schedulerURL) else {
            throw PipelineError.missingComponent(folder: url.path, component: "scheduler config", tried: ["scheduler/scheduler_config.json"],
                                                 hint: "the folder needs the noise schedule the UNet was trained with")
        }
        let unet = try UNet2DConditionModel.load(directory: part("unet"))
        let schedulerConfig = try SchedulerConfig.load(contentsOf: schedulerURL)
        var vae: AutoencoderKL? = nil
        if exists(part("vae")) {
            guard exists(part("vae").appendingPathComponent("config.json")) else {
                throw PipelineError.missingComponent(folder: url.path, component: "VAE config", tried: ["vae/config.json"],
                                                     hint: "vae/ exists but has no config.json; remove vae/ for a pixel-space model")
            }
            vae = try AutoencoderKL.load(directory: part("vae"))
        }

        var encoderURL: URL? = nil, tokenizerURL: URL? = nil, maxLength: Int? = nil
        let suraURL = url.appendingPathComponent(SuraFolderConfig.fileName)
        if exists(suraURL) {
            let sura = try SuraFolderConfig(contentsOf: suraURL)
            func resolve(_ path: String, key: String) throws -> URL {
                let resolved = path.hasPrefix("/") ? URL(fileURLWithPath: path)
                    : url.appendingPathComponent(path).standardizedFileURL
                guard exists(resolved) else {
                    throw PipelineError.invalidFolderConfig(file: suraURL.path, key: key, message: "\(resolved.path) does not exist")
                }
                return resolved
            }
            if let path = sura.textEncoder { encoderURL = try resolve(path, key: "text_encoder") }
            if let path = sura.tokenizer { tokenizerURL = try resolve(path, key: "tokenizer") }
            maxLength = sura.maxLength
        }
        if encoderURL == nil, exists(part("text_encoder")) {
            encoderURL = part("text_encoder")
            if tokenizerURL == nil {
                guard exists(part("tokenizer")) else {
                    throw PipelineError.missingComponent(folder: url.path, component: "tokenizer", tried: ["tokenizer/"],
                                                         hint: "text_encoder/ needs the tokenizer it was trained with in tokenizer/")
                }
                tokenizerURL = part("tokenizer")
            }
        }
        var conditioning: TextEncoderConditioning? = nil
        if let encoderURL {
            conditioning = try loadTextEncoder(encoderURL, tokenizer: tokenizerURL ?? encoderURL, maxLength: maxLength)
            let width = unet.config.crossAttentionDim.value(at: 0)
            guard conditioning!.width == width else {
                throw PipelineError.incompatibleComponents(
                    message: "the text encoder \(encoderURL.path) gives \(conditioning!.width)-wide tokens but the UNet's cross_attention_dim is \(width)")
            }
        }
        return PipelineFolder(url: url, unet: unet, vae: vae, schedulerConfig: schedulerConfig,
                              textConditioning: conditioning, textEncoderURL: encoderURL)
    }

    /// A BERT or CLIP text encoder folder with its tokenizer, as conditioning.
    public static func loadTextEncoder(_ url: URL, tokenizer tokenizerURL: URL, maxLength: Int? = nil) throws -> TextEncoderConditioning {
        let kind = try ModelKind.detect(at: url)
        let tokenizer = try TokenizerFolder.load(directory: tokenizerURL)
        switch kind {
        case .bert:
            return try TextEncoderConditioning(encoder: .bert(BertModel.load(directory: url)), tokenizer: tokenizer, maxLength: maxLength)
        case .clipText, .clipTextWithProjection:
            return try TextEncoderConditioning(encoder: .clip(CLIPTextModel.load(directory: url)), tokenizer: tokenizer, maxLength: maxLength)
        default:
            throw PipelineError.unsupportedModel(path: url.path, found: "a \(kind.rawValue) as text encoder",
                                                 supported: [ModelKind.bert.rawValue, ModelKind.clipText.rawValue])
        }
    }

    /// A pipeline over the folder's models with a fresh scheduler (see `SchedulerChoice`) and the
    /// folder's text encoder, or `conditioning` when given (an adapter).
    public func makePipeline(scheduler choice: String? = nil,
                             conditioning: (any ConditioningProvider)? = nil) throws -> TextToImagePipeline {
        try TextToImagePipeline(unet: unet, vae: vae, scheduler: SchedulerChoice.makeScheduler(choice, config: schedulerConfig),
                                conditioningProvider: conditioning ?? textConditioning)
    }
}
