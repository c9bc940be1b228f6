import Foundation
import Tensor

// LLM4GEN's Cross-Adapter Module ("LLM4GEN: Leveraging Semantic Representation of LLMs for
// Text-to-Image Generation", YUHANG-Ma/LLM4GEN, infer_llm4gen_sd15.py: `LLMFusionModule` holding
// one `CrossFusion`). The LLM's token features are projected to the text encoder's width and
// enriched by attending to the text encoder's tokens; the UNet then sees both sequences, the text
// encoder's tokens followed by the enhanced LLM tokens.
//
// Parameter names are those of the reference's `LLMFusionModule`:
//   CrossFusionModule.0.llm_proj                          Linear(llm_dim, d)
//   CrossFusionModule.0.{q_proj, k_proj, v_proj, out_proj} Linear(d, d)
//   CrossFusionModule.0.{q_norm, kv_norm, norm}           LayerNorm(d)
//   CrossFusionModule.0.FFN.0, CrossFusionModule.0.FFN.2  Linear(d, 4d) · QuickGELU · Linear(4d, d)
// The reference's names are kept even where they mislead: `q_norm` normalises the text tokens
// (the keys and values) and `kv_norm` the LLM tokens (the queries).
//
// Deviations from the reference, and why:
// - `llmMask`, when given, zeroes the enhanced LLM tokens at padded positions, so whatever the
//   LLM left in its padding never reaches the UNet, and `conditioningMask(_:)` gives the matching
//   [B, Lt + Ll] mask for the UNet's `encoderAttentionMask`. The reference has no mask (its
//   padded T5 positions are attended to); without a mask the result is the reference's.
// - The reference's ModuleList always holds one CrossFusion; Sura fixes it at one.

/// The config of a `CrossAdapterModule` (snake_case keys; a missing key keeps its default).
public struct CrossAdapterModuleConfig: Codable, Equatable, Sendable {
    /// `output_dim`: d, the text encoder's width, which is also the conditioning width (the UNet's
    /// `cross_attention_dim`); 384 for MiniLM. The reference's `clip_dim`.
    public var outputDim = 384
    /// `llm_dim`: the LLM's hidden width (576 for SmolLM2-135M).
    public var llmDim = 576
    /// `heads`: cross-attention heads (must divide `output_dim`); LLM4GEN uses 8.
    public var heads = 8

    enum CodingKeys: String, CodingKey {
        case outputDim = "output_dim", llmDim = "llm_dim", heads
    }

    /// LLM4GEN's module for MiniLM features (d = 384) and SmolLM2; set fields as needed.
    public init() {}

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        outputDim = try c.decodeIfPresent(Int.self, forKey: .outputDim) ?? outputDim
        llmDim = try c.decodeIfPresent(Int.self, forKey: .llmDim) ?? llmDim
        heads = try c.decodeIfPresent(Int.self, forKey: .heads) ?? heads
    }

    /// Checks every key; throws `AdapterError.invalidConfig` naming the first bad one.
    public func validate() throws {
        for (key, value) in [("output_dim", outputDim), ("llm_dim", llmDim), ("heads", heads)] where value < 1 {
            throw AdapterError.invalidConfig(key: key, value: String(value), allowed: "an integer ≥ 1")
        }
        if outputDim % heads != 0 {
            throw AdapterError.invalidConfig(key: "heads", value: String(heads), allowed: "a divisor of output_dim (\(outputDim))")
        }
    }
}

/// LLM4GEN's Cross-Adapter Module. With t = `textTokens` [B, Lt, d] and h = `llmHidden`
/// [B, Ll, llm_dim]:
///
///     l   = llm_proj(h)                                               [B, Ll, d]
///     a   = MHA(query = kv_norm(l), key = value = q_norm(t))          8 heads, scale 1/√(d/heads)
///     l₁  = out_proj(a) + l
///     l₂  = FFN(norm(l₁)) + l₁,  FFN = Linear(d, 4d) · QuickGELU · Linear(4d, d)
///     out = [t ; l₂ ⊙ m]                                              [B, Lt + Ll, d]
///
/// where MHA projects with q_proj, k_proj, v_proj (no packed weight) and m is `llmMask` (all ones
/// without one). Note that the text tokens pass through unchanged.
public final class CrossAdapterModule: Module, ConditioningAdapter {
    public static let typeName = "cross_adapter"

    public let config: CrossAdapterModuleConfig
    /// The reference's ModuleList, always one block.
    @ModuleKey("CrossFusionModule") public var crossFusionModule: [CrossFusion]

    /// A randomly initialised module, as the reference initialises it: q/k/v/out projection
    /// weights ~ N(0, 0.02²) (PyTorch truncates at ±2, 100σ, which
    /// never binds), the rest PyTorch's defaults.
    /// - Throws: `AdapterError.invalidConfig` naming the bad key.
    public init(config: CrossAdapterModuleConfig = CrossAdapterModuleConfig(), rng: inout SeededGenerator) throws {
        try config.validate()
        self.config = config
        _crossFusionModule.wrappedValue = [CrossFusion(config: config, rng: &rng)]
        super.init()
    }

    public var requirements: AdapterRequirements { [.textTokens, .llmHidden] }
    public var outputWidth: Int { config.outputDim }
    public var llmInputWidth: Int? { config.llmDim }

    /// The conditioning [B, Lt + Ll, d] from `textTokens`, `llmHidden` and, when given, `llmMask`.
    /// - Throws: `AdapterError.missingInput` naming the absent input; `.inputShape` naming the
    ///   mis-shaped one.
    public func conditioning(_ inputs: AdapterInputs) throws -> Tensor {
        let (text, llm) = try requiredInputs(inputs)
        return try callAsFunction(text: text, llm: llm, mask: inputs.llmMask)
    }

    /// text [B, Lt, d], llm [B, Ll, llm_dim], mask [B, Ll]? → [B, Lt + Ll, d].
    /// - Throws: `AdapterError.inputShape` naming `textTokens`, `llmHidden` or `llmMask`.
    public func callAsFunction(text: Tensor, llm: Tensor, mask: Tensor? = nil) throws -> Tensor {
        try checkShapes(text: text, llm: llm, mask: mask)
        var enhanced = crossFusionModule[0].enhance(text: text, llm: llm)
        if let mask { enhanced = enhanced * mask.reshaped([llm.shape[0], llm.shape[1], 1]) }
        return Tensor.concat([text, enhanced], axis: 1)
    }

    /// The UNet's `encoderAttentionMask` for `conditioning(inputs)`: [B, Lt + Ll], ones for the
    /// text tokens followed by `llmMask`; nil without an `llmMask` (every token is real).
    /// - Throws: as `conditioning(_:)`.
    public func conditioningMask(_ inputs: AdapterInputs) throws -> Tensor? {
        let (text, llm) = try requiredInputs(inputs)
        guard let mask = inputs.llmMask else { return nil }
        try checkShapes(text: text, llm: llm, mask: mask)
        let b = text.shape[0]
        return Tensor.concat([Tensor.ones([b, text.shape[1]]), mask.contiguous()], axis: 1)
    }

    private func requiredInputs(_ inputs: AdapterInputs) throws -> (Tensor, Tensor) {
        guard let text = inputs.textTokens else {
            throw AdapterError.missingInput(adapter: Self.typeName, input: "textTokens")
        }
        guard let llm = inputs.llmHidden else {
            throw AdapterError.missingInput(adapter: Self.typeName, input: "llmHidden")
        }
        return (text, llm)
    }

    private func checkShapes(text: Tensor, llm: Tensor, mask: Tensor?) throws {
        guard text.rank == 3, text.shape[0] >= 1, text.shape[1] >= 1, text.shape[2] == config.outputDim else {
            throw AdapterError.inputShape(adapter: Self.typeName, input: "textTokens",
                                          expected: "[B, Lt, \(config.outputDim)]", got: text.shape)
        }
        let b = text.shape[0]
        guard llm.rank == 3, llm.shape[0] == b, llm.shape[1] >= 1, llm.shape[2] == config.llmDim else {
            throw AdapterError.inputShape(adapter: Self.typeName, input: "llmHidden",
                                          expected: "[\(b), Ll, \(config.llmDim)] (the batch of textTokens)", got: llm.shape)
        }
        if let mask, mask.shape != [b, llm.shape[1]] {
            throw AdapterError.inputShape(adapter: Self.typeName, input: "llmMask", expected: "[\(b), \(llm.shape[1])]", got: mask.shape)
        }
    }
}

extension CrossAdapterModule {
    /// The reference's `CrossFusion` block (see `CrossAdapterModule` for the formula).
    public final class CrossFusion: Module {
        public let heads: Int
        @ModuleKey("llm_proj") public var llmProj: Linear
        @ModuleKey("q_proj") public var qProj: Linear
        @ModuleKey("k_proj") public var kProj: Linear
        @ModuleKey("v_proj") public var vProj: Linear
        @ModuleKey("out_proj") public var outProj: Linear
        /// Normalises the text tokens (keys and values), despite its name.
        @ModuleKey("q_norm") public var qNorm: LayerNorm
        /// Normalises the projected LLM tokens (queries), despite its name.
        @ModuleKey("kv_norm") public var kvNorm: LayerNorm
        public let norm: LayerNorm
        @ModuleKey("FFN") public var ffn: Sequential

        init(config: CrossAdapterModuleConfig, rng: inout SeededGenerator) {
            let d = config.outputDim
            heads = config.heads
            _llmProj.wrappedValue = Linear(config.llmDim, d, rng: &rng)
            func projection() -> Linear {
                let layer = Linear(d, d, rng: &rng)
                layer.weight.assign((Tensor.randn([d, d], using: &rng) * 0.02).clamp(min: -2, max: 2))
                return layer
            }
            _qProj.wrappedValue = projection()
            _kProj.wrappedValue = projection()
            _vProj.wrappedValue = projection()
            _outProj.wrappedValue = projection()
            _qNorm.wrappedValue = LayerNorm(d)
            _kvNorm.wrappedValue = LayerNorm(d)
            norm = LayerNorm(d)
            _ffn.wrappedValue = Sequential(Linear(d, 4 * d, rng: &rng), Activation.quickGelu(), Linear(4 * d, d, rng: &rng))
            super.init()
        }

        /// The enhanced LLM tokens l₂: text [B, Lt, d], llm [B, Ll, llm_dim] → [B, Ll, d].
        public func enhance(text: Tensor, llm: Tensor) -> Tensor {
            let b = llm.shape[0], ll = llm.shape[1], lt = text.shape[1]
            let d = qProj.outFeatures, headDim = d / heads
            let projected = llmProj(llm)
            let keyValue = qNorm(text)
            // [B, L, d] → [B, heads, L, d/heads]
            func split(_ x: Tensor, _ length: Int) -> Tensor {
                x.reshaped([b, length, heads, headDim]).permuted([0, 2, 1, 3])
            }
            let attended = Tensor.scaledDotProductAttention(query: split(qProj(kvNorm(projected)), ll),
                                                            key: split(kProj(keyValue), lt),
                                                            value: split(vProj(keyValue), lt))
            let merged = attended.permuted([0, 2, 1, 3]).reshaped([b, ll, d])
            let residual = outProj(merged) + projected
            return ffn(norm(residual)) + residual
        }
    }
}
