import Foundation
import Tensor

// SUR-adapter ("SUR-adapter: Enhancing Text-to-Image Pre-trained Diffusion Models with Large
// Language Models", ACM MM'23, Qrange-group/SUR-adapter, SUR_adapter.py and SUR_adapter_train.py).
// The adapter sits on the text encoder's token features and is trained to pull them towards what
// an LLM understands of the prompt (knowledge distillation), so that simple narrative prompts
// condition the UNet the way long keyword prompts do.
//
// Parameter names are those of the reference's `Adapter` module, so its `adapter.pt` state dict
// (converted to safetensors) loads strictly with `llm_dim: null`:
//   encoder_layer.{self_attn, linear1, linear2, norm1, norm2}   nn.TransformerEncoder's template
//   transformer_encoder.layers.N.{self_attn, linear1, linear2, norm1, norm2}
//   attention.{query_layer, key_layer, value_layer, output_layer.0, output_layer.2}
//   fc.{weight, bias}
// plus, with `llm_dim` set, the frozen LLM projection of the distillation loss, `llm_resize.fc`
// (the reference's `LLMResize` module, kept outside its adapter and never saved there).
//
// Two parameter groups of the reference never influence the output and so get no gradient:
// `encoder_layer` (PyTorch's TransformerEncoder deep-copies its template layer, which stays
// registered) and `attention.value_layer` (the reference uses the raw value, V = x). Sura keeps
// them, frozen, so checkpoints interchange strictly.
//
// Deviations from the reference, and why:
// - The reference builds `nn.TransformerEncoderLayer` without `batch_first` and feeds it
//   [B, L, D], so PyTorch reads B as the sequence and L as the batch: the self-attention mixes
//   the prompts of a batch, position by position, and a prompt's conditioning depends on its
//   batch-mates. Sura attends across each prompt's tokens (the paper's intent); set
//   `reference_batch_first_slip: true` to reproduce the reference exactly (e.g. to run its
//   released checkpoints as they were trained).
// - η (`adapter_weight`) defaults to the paper's 0.1; the reference script's default is 1e-4.
// - The LLM feature is pooled in Sura (masked mean over the LLM's tokens, see
//   `projectedLLMFeature`); the reference reads one precomputed vector per prompt.

/// The config of a `SURAdapter` (snake_case keys; a missing key keeps its default).
public struct SURAdapterConfig: Codable, Equatable, Sendable {
    /// `output_dim`: d, the text encoder's width, which is also the conditioning width (the UNet's
    /// `cross_attention_dim`); 384 for MiniLM.
    public var outputDim = 384
    /// `depth`: transformer encoder layers (the reference's `depth`, 2).
    public var depth = 2
    /// `heads`: attention heads of the encoder layers (must divide `output_dim`).
    public var heads = 8
    /// `dim_feedforward`: hidden width of the encoder layers' FFN.
    public var dimFeedforward = 2048
    /// `dropout`: PyTorch's encoder-layer dropout (attention weights, FFN, residual branches),
    /// active in training mode only; the reference uses nn.TransformerEncoderLayer's 0.1.
    public var dropout: Float = 0.1
    /// `adapter_weight`: η in out = η·fc + (1 − η)·x.
    public var adapterWeight: Float = 0.1
    /// `reference_batch_first_slip`: attend across the batch as the reference does (see the
    /// file comment); false attends across each prompt's tokens.
    public var referenceBatchFirstSlip = false
    /// `llm_dim`: the LLM's hidden width for the frozen distillation projection (576 for
    /// SmolLM2-135M); null builds no projection (the reference's adapter state dict).
    public var llmDim: Int? = 576

    enum CodingKeys: String, CodingKey {
        case outputDim = "output_dim", depth, heads, dimFeedforward = "dim_feedforward", dropout
        case adapterWeight = "adapter_weight", referenceBatchFirstSlip = "reference_batch_first_slip", llmDim = "llm_dim"
    }

    /// The paper's adapter for MiniLM features (d = 384) and SmolLM2; set fields as needed.
    public init() {}

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        outputDim = try c.decodeIfPresent(Int.self, forKey: .outputDim) ?? outputDim
        depth = try c.decodeIfPresent(Int.self, forKey: .depth) ?? depth
        heads = try c.decodeIfPresent(Int.self, forKey: .heads) ?? heads
        dimFeedforward = try c.decodeIfPresent(Int.self, forKey: .dimFeedforward) ?? dimFeedforward
        dropout = try c.decodeIfPresent(Float.self, forKey: .dropout) ?? dropout
        adapterWeight = try c.decodeIfPresent(Float.self, forKey: .adapterWeight) ?? adapterWeight
        referenceBatchFirstSlip = try c.decodeIfPresent(Bool.self, forKey: .referenceBatchFirstSlip) ?? referenceBatchFirstSlip
        // An explicit null means "no projection"; an absent key keeps the default.
        if c.contains(.llmDim) {
            llmDim = try c.decodeNil(forKey: .llmDim) ? nil : try c.decode(Int.self, forKey: .llmDim)
        }
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(outputDim, forKey: .outputDim)
        try c.encode(depth, forKey: .depth)
        try c.encode(heads, forKey: .heads)
        try c.encode(dimFeedforward, forKey: .dimFeedforward)
        try c.encode(dropout, forKey: .dropout)
        try c.encode(adapterWeight, forKey: .adapterWeight)
        try c.encode(referenceBatchFirstSlip, forKey: .referenceBatchFirstSlip)
        if let llmDim { try c.encode(llmDim, forKey: .llmDim) } else { try c.encodeNil(forKey: .llmDim) }
    }

    /// Checks every key; throws `AdapterError.invalidConfig` naming the first bad one.
    public func validate() throws {
        for (key, value) in [("output_dim", outputDim), ("depth", depth), ("heads", heads),
                             ("dim_feedforward", dimFeedforward)] where value < 1 {
            throw AdapterError.invalidConfig(key: key, value: String(value), allowed: "an integer ≥ 1")
        }
        if outputDim % heads != 0 {
            throw AdapterError.invalidConfig(key: "heads", value: String(heads), allowed: "a divisor of output_dim (\(outputDim))")
        }
        if !(dropout >= 0 && dropout < 1) {
            throw AdapterError.invalidConfig(key: "dropout", value: String(dropout), allowed: "a number in [0, 1)")
        }
        if !(adapterWeight >= 0 && adapterWeight <= 1) {
            throw AdapterError.invalidConfig(key: "adapter_weight", value: String(adapterWeight), allowed: "a number in [0, 1]")
        }
        if let llmDim, llmDim < 1 {
            throw AdapterError.invalidConfig(key: "llm_dim", value: String(llmDim), allowed: "an integer ≥ 1, or null for no projection")
        }
    }
}

/// The three results of a SUR-adapter pass (the reference returns the same triple).
public struct SURAdapterOutput {
    /// The conditioning η·fc + (1 − η)·x, [B, L, d].
    public let output: Tensor
    /// The transformer encoder's output, [B, L, d]: the LLM-distillation term's student.
    public let encoderOutput: Tensor
    /// fc(attention(…)), [B, L, d] (before the η mix).
    public let fcOutput: Tensor
}

/// SUR-adapter:
///
///     e   = TransformerEncoder(x)                       2 post-norm layers, ReLU FFN
///     a   = softmax(Q·Kᵀ/√d)·x + x,  Q = query_layer(e), K = key_layer(x)     (one head, V = x)
///     r   = output_layer(a) + a,     output_layer = Linear · ReLU · Linear
///     out = η·fc(r) + (1 − η)·x      fc's weight starts at zero (its bias keeps PyTorch's init)
///
/// x = `textTokens` [B, L, d] (the text encoder's features of the simple prompt); out [B, L, d].
/// Training adds two distillation terms (`SURAdapterLoss`): e against the LLM feature through the
/// frozen `llm_resize`, and out against the text encoder's features of the complex prompt.
public final class SURAdapter: Module, ConditioningAdapter {
    public static let typeName = "sur_adapter"

    public let config: SURAdapterConfig
    /// nn.TransformerEncoder's template layer: frozen, never run (see the file comment).
    @ModuleKey("encoder_layer") public var encoderLayer: EncoderLayer
    @ModuleKey("transformer_encoder") public var transformerEncoder: TransformerEncoder
    public let attention: Attention
    /// Linear(d, d), weight zero-initialised.
    public let fc: Linear
    /// The frozen LLM projection Linear(llm_dim, d) of the distillation loss, when `llm_dim` is set.
    @ModuleKey("llm_resize") public var llmResize: LLMResize?

    /// A randomly initialised adapter, as the reference initialises it: every encoder layer a copy
    /// of the template (PyTorch deep-copies it), `fc.weight` zero, the rest PyTorch's defaults.
    /// The parameters that cannot receive a gradient (`encoder_layer`, `attention.value_layer`)
    /// and the LLM projection are frozen.
    /// - Throws: `AdapterError.invalidConfig` naming the bad key.
    public init(config: SURAdapterConfig = SURAdapterConfig(), rng: inout SeededGenerator) throws {
        try config.validate()
        self.config = config
        let d = config.outputDim
        let template = EncoderLayer(config: config, rng: &rng)
        var layers: [EncoderLayer] = []
        for _ in 0..<config.depth {
            let layer = EncoderLayer(config: config, rng: &rng)
            try layer.load(template.stateDict())
            layers.append(layer)
        }
        _encoderLayer.wrappedValue = template
        _transformerEncoder.wrappedValue = TransformerEncoder(layers: layers)
        attention = Attention(width: d, rng: &rng)
        fc = Linear(d, d, rng: &rng)
        fc.weight.fill(0)
        _llmResize.wrappedValue = config.llmDim.map { LLMResize(llmDim: $0, outputDim: d, rng: &rng) }
        super.init()
        freeze(prefix: "encoder_layer")
        freeze(prefix: "attention.value_layer")
        freeze(prefix: "llm_resize")
    }

    public var requirements: AdapterRequirements { [.textTokens] }
    public var outputWidth: Int { config.outputDim }
    /// SUR-adapter reads no LLM states as input; `llm_dim` only sizes its distillation projection.
    public var llmInputWidth: Int? { nil }

    /// The conditioning [B, L, d] from `textTokens`.
    /// - Throws: `AdapterError.missingInput` without `textTokens`; `.inputShape` when it is not
    ///   [B, L, output_dim].
    public func conditioning(_ inputs: AdapterInputs) throws -> Tensor {
        guard let tokens = inputs.textTokens else {
            throw AdapterError.missingInput(adapter: Self.typeName, input: "textTokens")
        }
        return try forward(tokens).output
    }

    /// All three results for text features x [B, L, d].
    /// - Throws: `AdapterError.inputShape` naming `textTokens`.
    public func forward(_ x: Tensor) throws -> SURAdapterOutput {
        guard x.rank == 3, x.shape[0] >= 1, x.shape[1] >= 1, x.shape[2] == config.outputDim else {
            throw AdapterError.inputShape(adapter: Self.typeName, input: "textTokens",
                                          expected: "[B, L, \(config.outputDim)]", got: x.shape)
        }
        let encoded = transformerEncoder(x)
        let fcOutput = fc(attention(query: encoded, keyValue: x))
        let eta = config.adapterWeight
        return SURAdapterOutput(output: fcOutput * eta + x * (1 - eta), encoderOutput: encoded, fcOutput: fcOutput)
    }

    /// The distillation target from the LLM: the masked mean of `hidden` over its tokens,
    /// projected by the frozen `llm_resize`: [B, Ll, llm_dim] (+ mask [B, Ll]) → [B, 1, d].
    /// A [B, 1, llm_dim] input is one precomputed vector per prompt, as in the reference.
    /// - Throws: `AdapterError.invalidConfig` naming `llm_dim` when the adapter has no projection;
    ///   `.inputShape` naming `llmHidden` or `llmMask`.
    public func projectedLLMFeature(_ hidden: Tensor, mask: Tensor? = nil) throws -> Tensor {
        guard let llmResize, let llmDim = config.llmDim else {
            throw AdapterError.invalidConfig(key: "llm_dim", value: "null", allowed: "an integer ≥ 1 to distil from an LLM")
        }
        guard hidden.rank == 3, hidden.shape[0] >= 1, hidden.shape[1] >= 1, hidden.shape[2] == llmDim else {
            throw AdapterError.inputShape(adapter: Self.typeName, input: "llmHidden", expected: "[B, L, \(llmDim)]", got: hidden.shape)
        }
        let b = hidden.shape[0], l = hidden.shape[1]
        var pooled: Tensor
        if let mask {
            guard mask.shape == [b, l] else {
                throw AdapterError.inputShape(adapter: Self.typeName, input: "llmMask", expected: "[\(b), \(l)]", got: mask.shape)
            }
            // Σ_j m_j·h_j / max(Σ_j m_j, 1): a fully masked prompt pools to zeros, not NaN.
            let flags = mask.scalars
            let weights = mask.reshaped([b, l, 1])
            let counts = Tensor(shape: [b, 1, 1], data: (0..<b).map { row in
                Swift.max((0..<l).reduce(Float(0)) { $0 + flags[row * l + $1] }, 1)
            })
            pooled = (hidden * weights).sum(axes: [1], keepDims: true) / counts
        } else {
            pooled = hidden.mean(axes: [1], keepDims: true)
        }
        return llmResize(pooled)
    }
}

// MARK: - Parts

extension SURAdapter {
    /// The reference's `LLMResize`: `fc` = Linear(llm_dim, d), frozen and randomly initialised
    /// (PyTorch's default), so the distillation target is a fixed random projection of the LLM's
    /// understanding of the prompt.
    public final class LLMResize: Module, UnaryLayer {
        public let fc: Linear

        init(llmDim: Int, outputDim: Int, rng: inout SeededGenerator) {
            fc = Linear(llmDim, outputDim, rng: &rng)
            super.init()
        }

        /// [..., llm_dim] → [..., d].
        public func callAsFunction(_ x: Tensor) -> Tensor { fc(x) }
    }

    /// `nn.TransformerEncoder` without a final norm: `layers.N`.
    public final class TransformerEncoder: Module, UnaryLayer {
        public let layers: [EncoderLayer]

        init(layers: [EncoderLayer]) {
            self.layers = layers
            super.init()
        }

        /// [B, L, d] → [B, L, d].
        public func callAsFunction(_ x: Tensor) -> Tensor { layers.reduce(x) { $1($0) } }
    }

    /// PyTorch's post-norm `nn.TransformerEncoderLayer` (ReLU):
    /// x = norm1(x + drop(SelfAttn(x))); x = norm2(x + drop(linear2(drop(ReLU(linear1 x))))).
    /// With `reference_batch_first_slip` its attention reads [B, L, d] as [sequence, batch, d].
    public final class EncoderLayer: Module, UnaryLayer {
        @ModuleKey("self_attn") public var selfAttention: MultiHeadAttention
        public let linear1: Linear
        public let linear2: Linear
        public let norm1: LayerNorm
        public let norm2: LayerNorm
        // Parameter-free, named as in PyTorch.
        public let dropout: Dropout
        public let dropout1: Dropout
        public let dropout2: Dropout

        init(config: SURAdapterConfig, rng: inout SeededGenerator) {
            let d = config.outputDim, p = config.dropout
            _selfAttention.wrappedValue = MultiHeadAttention(embedDim: d, numHeads: config.heads, dropout: p,
                                                             batchFirst: !config.referenceBatchFirstSlip, rng: &rng)
            linear1 = Linear(d, config.dimFeedforward, rng: &rng)
            linear2 = Linear(config.dimFeedforward, d, rng: &rng)
            norm1 = LayerNorm(d)
            norm2 = LayerNorm(d)
            dropout = Dropout(p, seed: rng.next())
            dropout1 = Dropout(p, seed: rng.next())
            dropout2 = Dropout(p, seed: rng.next())
            super.init()
        }

        /// [B, L, d] → [B, L, d].
        public func callAsFunction(_ x: Tensor) -> Tensor {
            let attended = norm1(x + dropout1(selfAttention(x, x, x)))
            return norm2(attended + dropout2(linear2(dropout(linear1(attended).relu()))))
        }
    }

    /// The reference's single-head `Attention`: softmax(query_layer(q)·key_layer(x)ᵀ/√d)·x + x,
    /// then output_layer(a) + a with output_layer = Linear · ReLU · Linear. `value_layer` exists in
    /// the reference but is never applied (V = x); it is kept, frozen, for checkpoint compatibility.
    public final class Attention: Module {
        @ModuleKey("query_layer") public var queryLayer: Linear
        @ModuleKey("key_layer") public var keyLayer: Linear
        @ModuleKey("value_layer") public var valueLayer: Linear
        @ModuleKey("output_layer") public var outputLayer: Sequential

        init(width: Int, rng: inout SeededGenerator) {
            _queryLayer.wrappedValue = Linear(width, width, rng: &rng)
            _keyLayer.wrappedValue = Linear(width, width, rng: &rng)
            _valueLayer.wrappedValue = Linear(width, width, rng: &rng)
            _outputLayer.wrappedValue = Sequential(Linear(width, width, rng: &rng), Activation.relu(),
                                                   Linear(width, width, rng: &rng))
            super.init()
        }

        /// query [B, L, d] (the encoder output), keyValue [B, L, d] (the text features) → [B, L, d].
        public func callAsFunction(query: Tensor, keyValue x: Tensor) -> Tensor {
            let attended = Tensor.scaledDotProductAttention(query: queryLayer(query), key: keyLayer(x), value: x) + x
            return outputLayer(attended) + attended
        }
    }
}
