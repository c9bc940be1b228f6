import Foundation
import Tensor
import Models

extension TrainingConfig {
    /// The `adapter:` section of an adapter task (`task: sur_adapter | cross_adapter |
    /// voken_mapper | ella`):
    ///
    /// ```yaml
    /// adapter:
    ///   base_model: models/base        # the frozen UNet + text encoder (a folder `train` exported)
    ///   llm: cache/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
    ///   llm_layer: -1                  # hidden state read: 0 embeddings … N after the final norm; <0 from the end
    ///   llm_max_length: 32             # LLM tokens kept per prompt
    ///   llm_lora: {rank: 8, alpha: 16, targets: [q_proj, v_proj]}   # optional: train the LLM too
    ///   llm_features: cache/features   # optional: a `sura features` folder of the same LLM and layer
    ///   prompt_field: text             # which prompt the adapter sees: text (simple) or prompt (complex)
    ///   condition_dropout: 0.1         # chance a sample trains the unconditional branch
    ///   config: {heads: 8}             # the adapter's own keys (docs/config.md lists them)
    ///   loss: {diffusion: 1, kl_llm: 1.0e-5, kl_complex: 1.0e-5, caption: 0.1, lm: 0.01}
    ///   export: models/adapters/cross_adapter.safetensors
    /// ```
    public struct AdapterSection: Sendable {
        public var type: AdapterType
        public var baseModel: String
        public var llm: String?
        public var llmLayer = -1
        public var llmMaxLength = 32
        /// LoRA on the LLM's projections, trained with the adapter (cross_adapter and ella);
        /// nil keeps the LLM frozen (its features are then computed once).
        public var llmLoRA: LlamaLoRAConfig?
        /// A folder written by `sura features` whose rows replace computing the frozen LLM's
        /// features (`LLMFeatureShards`); nil: `train` computes them.
        public var llmFeatures: String?
        public var promptField = "text"
        public var conditionDropout: Double
        /// The adapter's own config keys as a JSON object.
        public var configJSON: Data
        public var loss = LossWeights()
        public var export: String?

        /// Weights of the loss terms (DESIGN.md §1): the LDM term, SUR-adapter's two KL terms,
        /// MiniGPT-5's caption-feature MSE and its LM cross-entropy over the voken rows.
        public struct LossWeights: Sendable, Equatable {
            public var diffusion = 1.0
            public var klLLM = 1e-5
            public var klComplex = 1e-5
            public var caption = 0.1
            public var lm = 0.01
        }

        /// The paper's default chance of a dropped condition: none for SUR-adapter (it applies the
        /// adapter to both branches and never drops), 10% for the others.
        public static func defaultConditionDropout(_ type: AdapterType) -> Double {
            type == .surAdapter ? 0 : 0.1
        }

        init(_ node: JobYAMLReader, type: AdapterType) throws {
            try node.rejectUnknownKeys(allowed: ["base_model", "llm", "llm_layer", "llm_max_length", "llm_lora", "llm_features", "prompt_field",
                                                 "condition_dropout", "config", "loss", "export"])
            self.type = type
            guard let base = try node.string("base_model") else {
                throw node.error("base_model", "is required (the frozen base model folder, e.g. models/base)")
            }
            baseModel = base
            llm = try node.string("llm")
            if llm == nil && type != .surAdapter {
                throw node.error("llm", "is required for \(type.rawValue) (a SmolLM2 .gguf file or transformers folder)")
            }
            llmLayer = try node.int("llm_layer", in: -1000...1000) ?? llmLayer
            llmMaxLength = try node.int("llm_max_length", in: 1...8192) ?? llmMaxLength
            if let lora = try node.mapping("llm_lora") {
                guard type == .crossAdapter || type == .ella else {
                    throw node.error("llm_lora", "LoRA on the LLM trains through the LLM states the adapter reads; \(type.rawValue) does not read them as its input (use cross_adapter or ella)")
                }
                try lora.rejectUnknownKeys(allowed: ["rank", "alpha", "targets"])
                var config = LlamaLoRAConfig()
                config.rank = try lora.int("rank", in: 1...4096) ?? config.rank
                config.alpha = try lora.double("alpha", in: 1e-6...1e6) ?? config.alpha
                config.targets = try lora.strings("targets") ?? config.targets
                do {
                    try config.validate()
                } catch let LlamaError.invalidInput(name, message) {
                    throw lora.error(name, message)
                }
                llmLoRA = config
            }
            llmFeatures = try node.string("llm_features")
            if llmFeatures != nil {
                guard llm != nil else { throw node.error("llm_features", "needs adapter.llm, the model the features came from") }
                guard llmLoRA == nil else {
                    throw node.error("llm_features", "cannot be used with llm_lora: the LLM then trains and runs in every step")
                }
                guard type != .vokenMapper else {
                    throw node.error("llm_features", "voken_mapper reads the voken states of its own prompts, not a stored hidden layer")
                }
            }
            if let field = try node.string("prompt_field") {
                guard ["text", "prompt"].contains(field) else {
                    throw node.error("prompt_field", "'\(field)' is not allowed; allowed values: text (the simple prompt), prompt (the complex prompt)")
                }
                promptField = field
            }
            conditionDropout = try node.double("condition_dropout", in: 0...1) ?? Self.defaultConditionDropout(type)
            if let config = try node.mapping("config") {
                var object: [String: Any] = [:]
                for (key, text) in try config.scalarPairs() { object[key] = Self.jsonValue(text) }
                configJSON = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])
            } else {
                configJSON = Data("{}".utf8)
            }
            if let weights = try node.mapping("loss") {
                try weights.rejectUnknownKeys(allowed: ["diffusion", "kl_llm", "kl_complex", "caption", "lm"])
                loss.diffusion = try weights.double("diffusion", in: 0...1e6) ?? loss.diffusion
                loss.klLLM = try weights.double("kl_llm", in: 0...1e6) ?? loss.klLLM
                loss.klComplex = try weights.double("kl_complex", in: 0...1e6) ?? loss.klComplex
                loss.caption = try weights.double("caption", in: 0...1e6) ?? loss.caption
                loss.lm = try weights.double("lm", in: 0...1e6) ?? loss.lm
            }
            export = try node.string("export")
        }

        /// A YAML scalar as the JSON value it reads as: a whole number, a number, true/false,
        /// null, or else the string.
        static func jsonValue(_ text: String) -> Any {
            if let int = Int(text) { return int }
            if let double = Double(text), double.isFinite { return double }
            switch text {
            case "true", "True": return true
            case "false", "False": return false
            case "null", "~", "": return NSNull()
            default: return text
            }
        }
    }
}
