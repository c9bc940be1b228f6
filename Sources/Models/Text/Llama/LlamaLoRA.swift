import Foundation
import Tensor

/// Which projections of a Llama decoder carry LoRA, and how large: the `llm_lora` section of an
/// adapter config, stored as JSON in the adapter checkpoint's `llm_lora` metadata.
///
///     {"rank": 8, "alpha": 16, "targets": ["q_proj", "v_proj"]}
public struct LlamaLoRAConfig: Codable, Sendable, Equatable {
    /// r, the inner width of each update.
    public var rank = 8
    /// α: the update is scaled by α/r.
    public var alpha = 16.0
    /// Projection names (transformers' names, as in PEFT's `target_modules`).
    public var targets = ["q_proj", "v_proj"]

    /// Every name `targets` may hold.
    public static let allowedTargets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

    public init(rank: Int = 8, alpha: Double = 16, targets: [String] = ["q_proj", "v_proj"]) {
        self.rank = rank
        self.alpha = alpha
        self.targets = targets
    }

    /// - Throws: `LlamaError.invalidInput` naming `rank`, `alpha` or `targets`.
    public func validate() throws {
        guard rank >= 1 && rank <= 4096 else { throw LlamaError.invalidInput(name: "rank", message: "\(rank) must be between 1 and 4096") }
        guard alpha.isFinite && alpha > 0 else { throw LlamaError.invalidInput(name: "alpha", message: "\(alpha) must be a positive number") }
        guard !targets.isEmpty else { throw LlamaError.invalidInput(name: "targets", message: "names no projection; allowed: \(Self.allowedTargets.joined(separator: ", "))") }
        if let bad = targets.first(where: { !Self.allowedTargets.contains($0) }) {
            throw LlamaError.invalidInput(name: "targets", message: "'\(bad)' is not a Llama projection; allowed: \(Self.allowedTargets.joined(separator: ", "))")
        }
    }

    /// The metadata string (sorted-key JSON).
    public func json() throws -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return String(decoding: try encoder.encode(self), as: UTF8.self)
    }

    /// - Throws: `LlamaError.invalidInput` naming `llm_lora` for text that is not such an object.
    public init(json: String) throws {
        do {
            self = try JSONDecoder().decode(LlamaLoRAConfig.self, from: Data(json.utf8))
        } catch {
            throw LlamaError.invalidInput(name: "llm_lora", message: "'\(json)' is not a LoRA config (\(error))")
        }
        try validate()
    }
}

/// LoRA on a Llama decoder: the chosen projections of the first layers become `LoRALinear`
/// (the base weights frozen, A and B trainable), so the LLM itself learns with the adapter.
/// Parameter names extend transformers' with PEFT's: `model.layers.N.self_attn.q_proj.lora_A.weight`.
public enum LlamaLoRA {
    /// Wraps `config.targets` of layers `layers` (0-based) in `LoRALinear`. Each layer draws its A
    /// matrices from its own stream of `seed`, so a pipeline stage that wraps only its layers
    /// would draw what one process wrapping all of them draws.
    /// - Throws: `LlamaError.invalidInput` for a bad config, a layer range beyond the model, or
    ///   a model that already carries LoRA.
    public static func apply(_ config: LlamaLoRAConfig, to model: LlamaForCausalLM, layers: Range<Int>, seed: UInt64) throws {
        try config.validate()
        let n = model.model.layers.count
        guard layers.lowerBound >= 0 && layers.upperBound <= n else {
            throw LlamaError.invalidInput(name: "layers", message: "\(layers) is beyond the model's \(n) layers")
        }
        let alpha = Float(config.alpha)
        for i in layers {
            let layer = model.model.layers[i]
            var rng = SeededGenerator.stream(seed: seed, index: i)
            func wrap(_ base: Linear, _ name: String) throws -> Linear {
                guard !(base is LoRALinear) else {
                    throw LlamaError.invalidInput(name: "llm_lora", message: "layer \(i) \(name) already carries LoRA")
                }
                return LoRALinear(wrapping: base, rank: config.rank, alpha: alpha, rng: &rng)
            }
            // A fixed order, whatever order `targets` lists them in.
            let attention = layer.selfAttention, mlp = layer.mlp
            if config.targets.contains("q_proj") { attention.qProj = try wrap(attention.qProj, "q_proj") }
            if config.targets.contains("k_proj") { attention.kProj = try wrap(attention.kProj, "k_proj") }
            if config.targets.contains("v_proj") { attention.vProj = try wrap(attention.vProj, "v_proj") }
            if config.targets.contains("o_proj") { attention.oProj = try wrap(attention.oProj, "o_proj") }
            if config.targets.contains("gate_proj") { mlp.gateProj = try wrap(mlp.gateProj, "gate_proj") }
            if config.targets.contains("up_proj") { mlp.upProj = try wrap(mlp.upProj, "up_proj") }
            if config.targets.contains("down_proj") { mlp.downProj = try wrap(mlp.downProj, "down_proj") }
        }
    }

    /// The LoRA tensors of `model` by checkpoint name, in registration order.
    public static func tensors(of model: LlamaForCausalLM) -> [(name: String, tensor: Tensor)] {
        model.namedParameters().filter { isLoRAName($0.0) }.map { (name: $0.0, tensor: $0.1) }
    }

    /// Whether `name` is a LoRA tensor's name.
    public static func isLoRAName(_ name: String) -> Bool {
        name.hasSuffix(".lora_A.weight") || name.hasSuffix(".lora_B.weight")
    }

    /// The decoder layer a LoRA tensor name belongs to (`model.layers.N.…` → N).
    public static func layerIndex(of name: String) -> Int? {
        let parts = name.split(separator: ".")
        guard parts.count > 2, parts[0] == "model", parts[1] == "layers" else { return nil }
        return Int(parts[2])
    }

    /// Copies `tensors` (by name) into the model's LoRA tensors; every LoRA tensor must be given,
    /// with its shape, and nothing else.
    /// - Throws: `LlamaError.invalidInput` naming the missing, unexpected or misshapen tensor.
    public static func load(_ tensors: [String: Tensor], into model: LlamaForCausalLM, source: String) throws {
        let own = Self.tensors(of: model)
        let known = Set(own.map(\.name))
        if let extra = tensors.keys.sorted().first(where: { !known.contains($0) }) {
            throw LlamaError.invalidInput(name: extra, message: "\(source) holds a LoRA tensor the LLM config has no place for")
        }
        for (name, tensor) in own {
            guard let value = tensors[name] else {
                throw LlamaError.invalidInput(name: name, message: "\(source) lacks this LoRA tensor")
            }
            guard value.shape == tensor.shape else {
                throw LlamaError.invalidInput(name: name, message: "\(source) has shape \(value.shape), the LoRA config makes \(tensor.shape)")
            }
            tensor.assign(value)
        }
    }
}
