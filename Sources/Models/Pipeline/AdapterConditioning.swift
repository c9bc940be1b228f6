import Foundation
import Tensor

/// Prompts → a trained adapter's conditioning, for `sura generate --adapter`, the evaluation and
/// the workers: reads the text encoder and/or the LLM as the adapter requires, then runs it.
///
/// Negative conditioning is each paper's own: SUR-adapter applies the adapter to the empty
/// prompt; the Cross-Adapter Module gives CAM(text(""), LLM("")); ELLA gives connector(LLM(""), t);
/// the voken mapper gives mapper(0).
public final class AdapterConditioning: TimestepConditioningProvider {
    public let type: AdapterType
    public let adapter: any ConditioningAdapter
    public let textEncoder: TextEncoderConditioning?
    public let llm: LLMPromptEncoder?
    /// The voken mapper's voken embeddings [V, D_llm], appended to every prompt.
    public let vokens: Tensor?
    /// The last few prompt lists' inputs: a timestep-aware adapter asks for the prompts and for
    /// the empty prompt at every step.
    private var cached: [[String]: AdapterInputs] = [:]
    private let lock = NSLock()

    /// - Throws: `AdapterError.missingInput` when the adapter needs a text encoder or an LLM that
    ///   was not given.
    public init(type: AdapterType, adapter: any ConditioningAdapter, textEncoder: TextEncoderConditioning?,
                llm: LLMPromptEncoder?, vokens: Tensor? = nil) throws {
        if adapter.requirements.contains(.textTokens) && textEncoder == nil {
            throw AdapterError.missingInput(adapter: type.rawValue, input: "a text encoder (the base model's sura.json names it)")
        }
        if adapter.requirements.contains(.llmHidden) && llm == nil {
            throw AdapterError.missingInput(adapter: type.rawValue, input: "an LLM (--llm or the checkpoint's llm metadata)")
        }
        if type == .vokenMapper && vokens == nil {
            throw AdapterError.missingInput(adapter: type.rawValue, input: "the voken embeddings")
        }
        self.type = type
        self.adapter = adapter
        self.textEncoder = textEncoder
        self.llm = llm
        self.vokens = vokens
        adapter.eval()
    }

    /// The adapter's inputs for `prompts`.
    public func inputs(for prompts: [String]) throws -> AdapterInputs {
        lock.lock()
        defer { lock.unlock() }
        if let hit = cached[prompts] { return hit }
        var inputs = AdapterInputs()
        try withoutGrad {
            if adapter.requirements.contains(.textTokens), let textEncoder {
                inputs.textTokens = try textEncoder.conditioning(for: prompts)
            }
            if adapter.requirements.contains(.llmHidden), let llm {
                if type == .vokenMapper, let vokens {
                    inputs.llmHidden = try llm.vokenStates(prompts, vokens: vokens)
                } else {
                    let (hidden, mask) = try llm.encode(prompts)
                    inputs.llmHidden = hidden
                    inputs.llmMask = mask
                }
            }
        }
        if cached.count >= 4 { cached.removeAll() }
        cached[prompts] = inputs
        return inputs
    }

    public func conditioning(for prompts: [String]) throws -> Tensor {
        try conditioning(for: prompts, timestep: 999)
    }

    public func conditioning(for prompts: [String], timestep: Float) throws -> Tensor {
        var inputs = try inputs(for: prompts)
        if adapter.requirements.contains(.timesteps) { inputs.timesteps = [Float](repeating: timestep, count: prompts.count) }
        return try withoutGrad { try adapter.conditioning(inputs) }
    }

    public func negativeConditioning() throws -> Tensor {
        try negativeConditioning(timestep: 999)
    }

    public func negativeConditioning(timestep: Float) throws -> Tensor {
        if let mapper = adapter as? VokenMapper {
            return try withoutGrad { try mapper.negativeConditioning(batchSize: 1) }
        }
        return try conditioning(for: [""], timestep: timestep)
    }
}

extension AdapterConditioning {
    /// An adapter checkpoint ready to condition `folder`'s UNet: the LLM is the checkpoint's own
    /// (`llm`, `llm_layer`, `llm_max_length` metadata) unless `llm` overrides its path; relative
    /// paths are resolved against the working directory.
    /// - Throws: `AdapterError` naming the checkpoint and key; `PipelineError.conditioningShape`
    ///   when the adapter's width is not the UNet's `cross_attention_dim`.
    public static func load(checkpoint url: URL, folder: PipelineFolder, llm override: String? = nil) throws -> AdapterConditioning {
        try load(AdapterCheckpoint(contentsOf: url), from: url, folder: folder, llm: override)
    }

    /// `load(checkpoint:folder:llm:)` for a checkpoint already read from `url` (named in errors).
    public static func load(_ checkpoint: AdapterCheckpoint, from url: URL, folder: PipelineFolder,
                            llm override: String? = nil) throws -> AdapterConditioning {
        let width = folder.unet.config.crossAttentionDim.value(at: 0)
        guard checkpoint.adapter.outputWidth == width else {
            throw PipelineError.conditioningShape(what: "\(url.path): the adapter's output", expected: "\(width)-wide tokens (the UNet's cross_attention_dim)",
                                                  got: [checkpoint.adapter.outputWidth])
        }
        var encoder: LLMPromptEncoder? = nil
        if checkpoint.adapter.requirements.contains(.llmHidden) {
            guard let path = override ?? checkpoint.metadata["llm"] else {
                throw AdapterError.missingInput(adapter: checkpoint.type.rawValue, input: "an LLM: the checkpoint \(url.path) names none; pass --llm")
            }
            let layer = Int(checkpoint.metadata["llm_layer"] ?? "") ?? -1
            let length = Int(checkpoint.metadata["llm_max_length"] ?? "") ?? 32
            let llm = try LLMPromptEncoder(model: URL(fileURLWithPath: path), layer: layer, maxLength: length)
            try applyLoRA(of: checkpoint, from: url, to: llm)
            encoder = llm
        }
        return try AdapterConditioning(type: checkpoint.type, adapter: checkpoint.adapter, textEncoder: folder.textConditioning,
                                       llm: encoder, vokens: checkpoint.extraTensors["vokens"])
    }
}

extension AdapterConditioning {
    /// The prefix of the LLM's LoRA tensors among a checkpoint's extra tensors.
    public static let loraPrefix = "llm_lora."

    /// Puts the checkpoint's LLM LoRA (metadata `llm_lora`, tensors `llm_lora.model.layers.N.…`)
    /// on `llm`, when the adapter was trained with one.
    /// - Throws: `LlamaError.invalidInput` naming the metadata key or tensor at fault.
    static func applyLoRA(of checkpoint: AdapterCheckpoint, from url: URL, to llm: LLMPromptEncoder) throws {
        let tensors = checkpoint.extraTensors.filter { $0.key.hasPrefix(loraPrefix) }
        guard let json = checkpoint.metadata["llm_lora"] else {
            if let stray = tensors.keys.sorted().first {
                throw LlamaError.invalidInput(name: stray, message: "\(url.path) has LoRA tensors but no llm_lora metadata to say how they apply")
            }
            return
        }
        let config = try LlamaLoRAConfig(json: json)
        try LlamaLoRA.apply(config, to: llm.llm, layers: 0 ..< llm.decoderLayersRun, seed: 0)
        let named = Dictionary(uniqueKeysWithValues: tensors.map { (String($0.key.dropFirst(loraPrefix.count)), $0.value) })
        try LlamaLoRA.load(named, into: llm.llm, source: url.path)
    }
}

