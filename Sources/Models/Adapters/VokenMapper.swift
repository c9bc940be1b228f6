import Foundation
import Tensor

// MiniGPT-5's voken mapper ("MiniGPT-5: Interleaved Vision-and-Language Generation via Generative
// Vokens", eric-ai-lab/MiniGPT-5, model.py). The LLM learns to emit 8 generative tokens
// [IMG0..IMG7]; their last-layer hidden states are mapped to the diffusion model's conditioning.
//
// Parameter names are those of the reference's LightningModule, so a checkpoint of these three
// attributes opens in Python:
//   fc.0.{weight,bias}, fc.2.{weight,bias}             Linear(h, fc_hidden) · GELU · Linear(fc_hidden, d)
//   llm_to_t2i_mapping.encoder.layers.N.{self_attn.in_proj_weight, …, linear1, linear2, norm1, norm2}
//   llm_to_t2i_mapping.encoder.norm.{weight,bias}
//   llm_to_t2i_mapping.decoder.layers.N.{self_attn, multihead_attn, linear1, linear2, norm1, norm2, norm3}
//   llm_to_t2i_mapping.decoder.norm.{weight,bias}
//   t2i_decoder_prompt                                  [1, num_queries, d]
//
// Deviations from the reference, and why:
// - The fc hidden width is a config key (`fc_hidden_dim`, default 1024, as the design specifies);
//   the reference hard-codes it to d. Set `fc_hidden_dim: d` to load a MiniGPT-5 checkpoint.
// - The query count (`num_queries`) and head count are config keys; the reference fixes 77 (CLIP's
//   context length) and nn.Transformer's default of 8 heads.
// - `t2i_decoder_prompt` keeps the reference's leading 1 ([1, Q, d]) so checkpoints interchange.
// - The reference selects the voken positions inside its forward; here the caller does (see
//   `conditioning(_:)`), since the LLM runs in another pipeline stage.

/// The config of a `VokenMapper` (snake_case keys in YAML/JSON; a missing key keeps its default).
public struct VokenMapperConfig: Codable, Equatable, Sendable {
    /// `input_dim`: h, the LLM's hidden width (576 for SmolLM2-135M).
    public var inputDim = 576
    /// `fc_hidden_dim`: the hidden width of the fc MLP (the reference uses d).
    public var fcHiddenDim = 1024
    /// `output_dim`: d, the UNet's `cross_attention_dim`.
    public var outputDim = 384
    /// `num_vokens`: how many voken states the LLM provides per image ([IMG0..IMG7]).
    public var numVokens = 8
    /// `num_queries`: length of the learnable decoder query sequence, i.e. of the conditioning.
    public var numQueries = 77
    /// `num_encoder_layers` of the nn.Transformer.
    public var numEncoderLayers = 4
    /// `num_decoder_layers` of the nn.Transformer.
    public var numDecoderLayers = 4
    /// `heads`: attention heads in every transformer layer (must divide `output_dim`).
    public var heads = 8
    /// `dim_feedforward`: hidden width of the transformer FFNs; nil (the default) means 4·d, as
    /// in the reference.
    public var dimFeedforward: Int? = nil
    /// `cfg_drop_probability`: the chance that a training sample's vokens are replaced by zeros
    /// (MiniGPT-5 uses 0.1), read by `dropVokens(_:using:)`.
    public var cfgDropProbability: Float = 0.1

    enum CodingKeys: String, CodingKey {
        case inputDim = "input_dim", fcHiddenDim = "fc_hidden_dim", outputDim = "output_dim", numVokens = "num_vokens"
        case numQueries = "num_queries", numEncoderLayers = "num_encoder_layers", numDecoderLayers = "num_decoder_layers"
        case heads, dimFeedforward = "dim_feedforward", cfgDropProbability = "cfg_drop_probability"
    }

    /// The paper's configuration for SmolLM2 (h = 576) and a 384-wide UNet; set fields as needed.
    public init() {}

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        inputDim = try c.decodeIfPresent(Int.self, forKey: .inputDim) ?? inputDim
        fcHiddenDim = try c.decodeIfPresent(Int.self, forKey: .fcHiddenDim) ?? fcHiddenDim
        outputDim = try c.decodeIfPresent(Int.self, forKey: .outputDim) ?? outputDim
        numVokens = try c.decodeIfPresent(Int.self, forKey: .numVokens) ?? numVokens
        numQueries = try c.decodeIfPresent(Int.self, forKey: .numQueries) ?? numQueries
        numEncoderLayers = try c.decodeIfPresent(Int.self, forKey: .numEncoderLayers) ?? numEncoderLayers
        numDecoderLayers = try c.decodeIfPresent(Int.self, forKey: .numDecoderLayers) ?? numDecoderLayers
        heads = try c.decodeIfPresent(Int.self, forKey: .heads) ?? heads
        dimFeedforward = try c.decodeIfPresent(Int.self, forKey: .dimFeedforward)
        cfgDropProbability = try c.decodeIfPresent(Float.self, forKey: .cfgDropProbability) ?? cfgDropProbability
    }

    /// Writes every key, `dim_feedforward` as null when it is 4·d by default, so that the encoded
    /// config lists every key it accepts.
    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(inputDim, forKey: .inputDim)
        try c.encode(fcHiddenDim, forKey: .fcHiddenDim)
        try c.encode(outputDim, forKey: .outputDim)
        try c.encode(numVokens, forKey: .numVokens)
        try c.encode(numQueries, forKey: .numQueries)
        try c.encode(numEncoderLayers, forKey: .numEncoderLayers)
        try c.encode(numDecoderLayers, forKey: .numDecoderLayers)
        try c.encode(heads, forKey: .heads)
        if let dimFeedforward { try c.encode(dimFeedforward, forKey: .dimFeedforward) } else { try c.encodeNil(forKey: .dimFeedforward) }
        try c.encode(cfgDropProbability, forKey: .cfgDropProbability)
    }

    /// The FFN width actually used: `dim_feedforward`, or 4·`output_dim`.
    public var feedforwardWidth: Int { dimFeedforward ?? 4 * outputDim }

    /// Checks every key; throws `AdapterError.invalidConfig` naming the first bad one.
    public func validate() throws {
        for (key, value) in [("input_dim", inputDim), ("fc_hidden_dim", fcHiddenDim), ("output_dim", outputDim),
                             ("num_vokens", numVokens), ("num_queries", numQueries),
                             ("num_encoder_layers", numEncoderLayers), ("num_decoder_layers", numDecoderLayers),
                             ("heads", heads)] where value < 1 {
            throw AdapterError.invalidConfig(key: key, value: String(value), allowed: "an integer ≥ 1")
        }
        if outputDim % heads != 0 {
            throw AdapterError.invalidConfig(key: "heads", value: String(heads),
                                             allowed: "a divisor of output_dim (\(outputDim))")
        }
        if let f = dimFeedforward, f < 1 {
            throw AdapterError.invalidConfig(key: "dim_feedforward", value: String(f), allowed: "an integer ≥ 1, or null for 4·output_dim")
        }
        if !(cfgDropProbability >= 0 && cfgDropProbability <= 1) {
            throw AdapterError.invalidConfig(key: "cfg_drop_probability", value: String(cfgDropProbability),
                                             allowed: "a number in [0, 1]")
        }
    }
}

/// MiniGPT-5's voken-to-conditioning mapper:
///
///     memory = Encoder(fc(v)),   fc(v) = W₂·GELU(W₁·v + b₁) + b₂
///     out    = Decoder(queries, memory)
///
/// where v [B, num_vokens, h] are the LLM's hidden states at the voken positions, Encoder/Decoder
/// are PyTorch's `nn.Transformer(batch_first=True, norm_first=True, dropout=0)` (ReLU FFNs, final
/// LayerNorms on both stacks, no masks) and `queries` = `t2i_decoder_prompt` [1, Q, d] repeated
/// over the batch. Output: [B, Q, d].
///
/// Classifier-free guidance as in MiniGPT-5: in training, `dropVokens(_:using:)` replaces each
/// sample's vokens by zeros with probability `cfg_drop_probability`; at sampling time the negative
/// conditioning is `negativeConditioning(batchSize:)` = mapper(zeros).
public final class VokenMapper: Module, ConditioningAdapter {
    public static let typeName = "voken_mapper"

    public let config: VokenMapperConfig
    /// The learnable decoder queries, [1, num_queries, d].
    @ParameterKey("t2i_decoder_prompt") public var t2iDecoderPrompt: Tensor
    /// PyTorch's `nn.Transformer`, pre-norm.
    @ModuleKey("llm_to_t2i_mapping") public var llmToT2IMapping: Transformer
    /// Linear(h, fc_hidden) · GELU · Linear(fc_hidden, d).
    public let fc: Sequential

    /// A randomly initialised mapper, as the reference initialises it: queries ~ N(0, 1), every
    /// transformer matrix xavier-uniform (nn.Transformer's reset), fc as PyTorch's Linear.
    /// - Throws: `AdapterError.invalidConfig` naming the bad key.
    public init(config: VokenMapperConfig = VokenMapperConfig(), rng: inout SeededGenerator) throws {
        try config.validate()
        self.config = config
        let d = config.outputDim
        _t2iDecoderPrompt.wrappedValue = ParameterInit.normal([1, config.numQueries, d], using: &rng)
        let transformer = Transformer(width: d, heads: config.heads, feedforward: config.feedforwardWidth,
                                      encoderLayers: config.numEncoderLayers, decoderLayers: config.numDecoderLayers,
                                      rng: &rng)
        for (_, p) in transformer.namedParameters() where p.rank > 1 {
            p.assign(ParameterInit.xavierUniform(p.shape, fanIn: p.shape[1], fanOut: p.shape[0], using: &rng))
        }
        _llmToT2IMapping.wrappedValue = transformer
        fc = Sequential(Linear(config.inputDim, config.fcHiddenDim, rng: &rng), Activation.gelu(),
                        Linear(config.fcHiddenDim, d, rng: &rng))
        super.init()
    }

    public var requirements: AdapterRequirements { [.llmHidden] }
    public var outputWidth: Int { config.outputDim }
    public var llmInputWidth: Int? { config.inputDim }

    /// The conditioning [B, num_queries, d] from `inputs.llmHidden`.
    ///
    /// The caller passes only the voken positions' hidden states — [B, num_vokens, h], the states
    /// at [IMG0..IMG7] (MiniGPT-5 takes the state that *predicts* each voken: the one before IMG0
    /// and those of IMG0..IMG6 when generating) — not the whole prompt. `llmMask` is ignored: all
    /// voken states are real tokens.
    /// - Throws: `AdapterError.missingInput` without `llmHidden`; `.inputShape` when it is not
    ///   [B ≥ 1, num_vokens, input_dim].
    public func conditioning(_ inputs: AdapterInputs) throws -> Tensor {
        guard let vokens = inputs.llmHidden else {
            throw AdapterError.missingInput(adapter: Self.typeName, input: "llmHidden")
        }
        return try callAsFunction(vokens)
    }

    /// vokens [B, num_vokens, h] → [B, num_queries, d].
    /// - Throws: `AdapterError.inputShape` naming `llmHidden` when the shape is wrong.
    public func callAsFunction(_ vokens: Tensor) throws -> Tensor {
        try checkVokens(vokens)
        let b = vokens.shape[0]
        let queries = t2iDecoderPrompt.expanded(to: [b, config.numQueries, config.outputDim])
        return llmToT2IMapping(source: fc(vokens), target: queries)
    }

    /// MiniGPT-5's CFG dropout: each sample's vokens become zeros with probability
    /// `probability` (default `cfg_drop_probability`), drawn from `rng` in batch order.
    /// Dropped samples pass no gradient to the LLM; the caller uses `dropped` to pick the
    /// empty-caption target for the caption loss.
    /// - Returns: the vokens with dropped samples zeroed ([B, num_vokens, h]) and the drop flags.
    /// - Throws: `AdapterError.inputShape` for a mis-shaped `vokens`; `.invalidConfig` for a
    ///   probability outside [0, 1].
    public func dropVokens(_ vokens: Tensor, probability: Float? = nil,
                           using rng: inout SeededGenerator) throws -> (vokens: Tensor, dropped: [Bool]) {
        try checkVokens(vokens)
        let p = probability ?? config.cfgDropProbability
        guard p >= 0 && p <= 1 else {
            throw AdapterError.invalidConfig(key: "cfg_drop_probability", value: String(p), allowed: "a number in [0, 1]")
        }
        let b = vokens.shape[0]
        var dropped: [Bool] = []
        for _ in 0..<b { dropped.append(rng.nextUniform() < p) }
        guard dropped.contains(true) else { return (vokens, dropped) }
        let keep = Tensor(shape: [b, 1, 1], data: dropped.map { $0 ? 0 : 1 })
        return (vokens * keep, dropped)
    }

    /// The negative (unconditional) conditioning: mapper(zeros [1, num_vokens, h]) repeated to
    /// [batchSize, num_queries, d].
    /// - Throws: `AdapterError.inputShape` naming `batchSize` when it is < 1.
    public func negativeConditioning(batchSize: Int) throws -> Tensor {
        guard batchSize >= 1 else {
            throw AdapterError.inputShape(adapter: Self.typeName, input: "batchSize", expected: "≥ 1", got: [batchSize])
        }
        let one = try callAsFunction(Tensor(zeros: [1, config.numVokens, config.inputDim]))
        return one.expanded(to: [batchSize, config.numQueries, config.outputDim]).contiguous()
    }

    private func checkVokens(_ vokens: Tensor) throws {
        let expected = [config.numVokens, config.inputDim]
        guard vokens.rank == 3, vokens.shape[0] >= 1, Array(vokens.shape.dropFirst()) == expected else {
            throw AdapterError.inputShape(adapter: Self.typeName, input: "llmHidden",
                                          expected: "[B, \(config.numVokens), \(config.inputDim)] (the voken positions' states)",
                                          got: vokens.shape)
        }
    }
}

// MARK: - PyTorch's nn.Transformer, pre-norm

extension VokenMapper {
    /// PyTorch's `nn.Transformer(batch_first=True, norm_first=True)` without dropout or masks:
    /// `encoder` (layers + final `norm`) and `decoder` (layers + final `norm`); ReLU FFNs,
    /// LayerNorm eps 1e-5. Names: `encoder.layers.N.…`, `encoder.norm`, `decoder.layers.N.…`,
    /// `decoder.norm`.
    public final class Transformer: Module {
        public let encoder: Encoder
        public let decoder: Decoder

        public init(width: Int, heads: Int, feedforward: Int, encoderLayers: Int, decoderLayers: Int,
                    rng: inout SeededGenerator) {
            encoder = Encoder(width: width, heads: heads, feedforward: feedforward, layers: encoderLayers, rng: &rng)
            decoder = Decoder(width: width, heads: heads, feedforward: feedforward, layers: decoderLayers, rng: &rng)
            super.init()
        }

        /// source [B, S, E], target [B, T, E] → [B, T, E]: decoder(target, encoder(source)).
        public func callAsFunction(source: Tensor, target: Tensor) -> Tensor {
            decoder(target, memory: encoder(source))
        }
    }

    /// `nn.TransformerEncoder`: the layers, then the final LayerNorm `norm`.
    public final class Encoder: Module {
        public let layers: [EncoderLayer]
        public let norm: LayerNorm

        init(width: Int, heads: Int, feedforward: Int, layers count: Int, rng: inout SeededGenerator) {
            var layers: [EncoderLayer] = []
            for _ in 0..<count { layers.append(EncoderLayer(width: width, heads: heads, feedforward: feedforward, rng: &rng)) }
            self.layers = layers
            norm = LayerNorm(width)
            super.init()
        }

        /// [B, S, E] → [B, S, E].
        public func callAsFunction(_ x: Tensor) -> Tensor {
            norm(layers.reduce(x) { $1($0) })
        }
    }

    /// Pre-norm `nn.TransformerEncoderLayer`: x += SelfAttn(norm1 x); x += FFN(norm2 x),
    /// FFN(y) = linear2(ReLU(linear1 y)).
    public final class EncoderLayer: Module {
        @ModuleKey("self_attn") public var selfAttention: MultiHeadAttention
        public let linear1: Linear
        public let linear2: Linear
        public let norm1: LayerNorm
        public let norm2: LayerNorm

        init(width: Int, heads: Int, feedforward: Int, rng: inout SeededGenerator) {
            _selfAttention.wrappedValue = MultiHeadAttention(embedDim: width, numHeads: heads, batchFirst: true, rng: &rng)
            linear1 = Linear(width, feedforward, rng: &rng)
            linear2 = Linear(feedforward, width, rng: &rng)
            norm1 = LayerNorm(width)
            norm2 = LayerNorm(width)
            super.init()
        }

        public func callAsFunction(_ x: Tensor) -> Tensor {
            let h = norm1(x)
            let y = x + selfAttention(h, h, h)
            return y + linear2(linear1(norm2(y)).relu())
        }
    }

    /// `nn.TransformerDecoder`: the layers, then the final LayerNorm `norm`.
    public final class Decoder: Module {
        public let layers: [DecoderLayer]
        public let norm: LayerNorm

        init(width: Int, heads: Int, feedforward: Int, layers count: Int, rng: inout SeededGenerator) {
            var layers: [DecoderLayer] = []
            for _ in 0..<count { layers.append(DecoderLayer(width: width, heads: heads, feedforward: feedforward, rng: &rng)) }
            self.layers = layers
            norm = LayerNorm(width)
            super.init()
        }

        /// target [B, T, E], memory [B, S, E] → [B, T, E].
        public func callAsFunction(_ x: Tensor, memory: Tensor) -> Tensor {
            norm(layers.reduce(x) { $1($0, memory: memory) })
        }
    }

    /// Pre-norm `nn.TransformerDecoderLayer`: x += SelfAttn(norm1 x); x += CrossAttn(norm2 x,
    /// memory) (the memory is used as it is, already normalised by the encoder); x += FFN(norm3 x).
    public final class DecoderLayer: Module {
        @ModuleKey("self_attn") public var selfAttention: MultiHeadAttention
        @ModuleKey("multihead_attn") public var crossAttention: MultiHeadAttention
        public let linear1: Linear
        public let linear2: Linear
        public let norm1: LayerNorm
        public let norm2: LayerNorm
        public let norm3: LayerNorm

        init(width: Int, heads: Int, feedforward: Int, rng: inout SeededGenerator) {
            _selfAttention.wrappedValue = MultiHeadAttention(embedDim: width, numHeads: heads, batchFirst: true, rng: &rng)
            _crossAttention.wrappedValue = MultiHeadAttention(embedDim: width, numHeads: heads, batchFirst: true, rng: &rng)
            linear1 = Linear(width, feedforward, rng: &rng)
            linear2 = Linear(feedforward, width, rng: &rng)
            norm1 = LayerNorm(width)
            norm2 = LayerNorm(width)
            norm3 = LayerNorm(width)
            super.init()
        }

        public func callAsFunction(_ x: Tensor, memory: Tensor) -> Tensor {
            let h1 = norm1(x)
            let y = x + selfAttention(h1, h1, h1)
            let z = y + crossAttention(norm2(y), memory, memory)
            return z + linear2(linear1(norm3(z)).relu())
        }
    }
}
