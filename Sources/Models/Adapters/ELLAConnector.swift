import Foundation
import Tensor

// ELLA's timestep-aware semantic connector ("ELLA: Equip Diffusion Models with LLM for Enhanced
// Semantic Alignment", TencentQQGYLab/ELLA, model.py). A Perceiver resampler turns the LLM's token
// states into a fixed number of conditioning tokens, and every LayerNorm inside it is modulated by
// the diffusion timestep, so the connector can hand the UNet different semantics early (layout)
// and late (detail) in sampling. It is re-run at every denoising step.
//
// Parameter names are those of the reference's `ELLA` module:
//   time_embedding.linear_1, time_embedding.linear_2          diffusers' TimestepEmbedding
//   connector.latents                                         [num_latents, width]
//   connector.time_aware_linear, connector.proj_in
//   connector.perceiver_blocks.N.attn.{in_proj_weight, in_proj_bias, out_proj.weight, out_proj.bias}
//   connector.perceiver_blocks.N.mlp.{c_fc, c_proj}
//   connector.perceiver_blocks.N.{ln_1, ln_2, ln_ff}.linear   AdaLayerNorm modulation (zero at init)
//   connector.proj_out.0, connector.proj_out.1                Linear + LayerNorm, when output_dim is set
//
// Deviations from the reference, and why:
// - `output_dim` is passed to the resampler (the released ELLA leaves it out and relies on
//   width == the UNet's width); the reference PerceiverResampler supports it, and it lets a
//   narrow connector feed a wider UNet. `output_dim: null` gives exactly the released structure.
// - `llmMask`, when given, blocks padded LLM positions as attention keys. The released ELLA
//   attends to T5's padding; masking makes a prompt's conditioning independent of how far it was
//   padded. Without a mask the result is the reference's.

/// The config of an `ELLAConnector` (snake_case keys; a missing key keeps its default).
public struct ELLAConnectorConfig: Codable, Equatable, Sendable {
    /// `width`: the resampler's internal width (latents, attention, MLP).
    public var width = 384
    /// `layers`: number of Perceiver attention blocks (ELLA: 6).
    public var layers = 6
    /// `heads`: attention heads per block (must divide `width`).
    public var heads = 8
    /// `num_latents`: learnable latent queries, i.e. the conditioning length (ELLA: 64).
    public var numLatents = 64
    /// `input_dim`: the LLM's hidden width (576 for SmolLM2-135M).
    public var inputDim = 576
    /// `output_dim`: the conditioning width (the UNet's `cross_attention_dim`); null means no
    /// `proj_out` and an output of `width`, as in the released ELLA.
    public var outputDim: Int? = 384
    /// `time_channel`: width of the sinusoidal timestep features (ELLA: 320).
    public var timeChannel = 320
    /// `time_embedding_dim`: width of the timestep embedding that modulates the norms.
    public var timeEmbeddingDim = 384
    /// `act_fn`: the timestep MLP's activation (`silu`, `swish`, `gelu`, `relu`).
    public var actFn = "silu"

    enum CodingKeys: String, CodingKey {
        case width, layers, heads, numLatents = "num_latents", inputDim = "input_dim", outputDim = "output_dim"
        case timeChannel = "time_channel", timeEmbeddingDim = "time_embedding_dim", actFn = "act_fn"
    }

    /// ELLA's structure sized for SmolLM2 (h = 576) and a 384-wide UNet; set fields as needed.
    public init() {}

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        width = try c.decodeIfPresent(Int.self, forKey: .width) ?? width
        layers = try c.decodeIfPresent(Int.self, forKey: .layers) ?? layers
        heads = try c.decodeIfPresent(Int.self, forKey: .heads) ?? heads
        numLatents = try c.decodeIfPresent(Int.self, forKey: .numLatents) ?? numLatents
        inputDim = try c.decodeIfPresent(Int.self, forKey: .inputDim) ?? inputDim
        // An explicit null means "no proj_out"; an absent key keeps the default.
        if c.contains(.outputDim) {
            outputDim = try c.decodeNil(forKey: .outputDim) ? nil : try c.decode(Int.self, forKey: .outputDim)
        }
        timeChannel = try c.decodeIfPresent(Int.self, forKey: .timeChannel) ?? timeChannel
        timeEmbeddingDim = try c.decodeIfPresent(Int.self, forKey: .timeEmbeddingDim) ?? timeEmbeddingDim
        actFn = try c.decodeIfPresent(String.self, forKey: .actFn) ?? actFn
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(width, forKey: .width)
        try c.encode(layers, forKey: .layers)
        try c.encode(heads, forKey: .heads)
        try c.encode(numLatents, forKey: .numLatents)
        try c.encode(inputDim, forKey: .inputDim)
        if let outputDim { try c.encode(outputDim, forKey: .outputDim) } else { try c.encodeNil(forKey: .outputDim) }
        try c.encode(timeChannel, forKey: .timeChannel)
        try c.encode(timeEmbeddingDim, forKey: .timeEmbeddingDim)
        try c.encode(actFn, forKey: .actFn)
    }

    /// The width of the conditioning tokens: `output_dim`, or `width` without `proj_out`.
    public var outputWidth: Int { outputDim ?? width }

    /// Checks every key; throws `AdapterError.invalidConfig` naming the first bad one.
    public func validate() throws {
        for (key, value) in [("width", width), ("layers", layers), ("heads", heads), ("num_latents", numLatents),
                             ("input_dim", inputDim), ("time_channel", timeChannel),
                             ("time_embedding_dim", timeEmbeddingDim)] where value < 1 {
            throw AdapterError.invalidConfig(key: key, value: String(value), allowed: "an integer ≥ 1")
        }
        if width % heads != 0 {
            throw AdapterError.invalidConfig(key: "heads", value: String(heads), allowed: "a divisor of width (\(width))")
        }
        if let outputDim, outputDim < 1 {
            throw AdapterError.invalidConfig(key: "output_dim", value: String(outputDim),
                                             allowed: "an integer ≥ 1, or null for no proj_out")
        }
        if DiffusionActivation(rawValue: actFn) == nil {
            throw AdapterError.invalidConfig(key: "act_fn", value: actFn,
                                             allowed: DiffusionActivation.allCases.map(\.rawValue).joined(separator: ", "))
        }
    }
}

/// ELLA's timestep-aware semantic connector:
///
///     e      = TimestepEmbedding(sinusoid(t))                      [B, 1, time_embedding_dim]
///     z₀     = latents + time_aware_linear(SiLU(e))                 [B, num_latents, width]
///     x      = proj_in(h)                                           [B, L, width]
///     per block:  q = AdaLN₁(z, e)
///                 z = z + MHA(q, [q; AdaLN₂(x, e)], [q; AdaLN₂(x, e)])
///                 z = z + c_proj(ReLU(c_fc(AdaLN_ff(z, e)))²)
///     out    = LayerNorm(Linear(z))        (proj_out; z itself when output_dim is null)
///
/// with AdaLN(y, e) = LN(y)·(1 + scale) + shift, [shift | scale] = linear(SiLU(e)) (LayerNorm
/// without affine parameters, eps 1e-6; `linear` zero-initialised so every block starts as a
/// plain LayerNorm). The sinusoid is diffusers' `Timesteps(time_channel, flip_sin_to_cos=True,
/// downscale_freq_shift=0)`. h = `llmHidden` [B, L, input_dim]; output [B, num_latents, outputWidth].
public final class ELLAConnector: Module, ConditioningAdapter {
    public static let typeName = "ella"

    public let config: ELLAConnectorConfig
    /// diffusers' `TimestepEmbedding(time_channel → time_embedding_dim)`.
    @ModuleKey("time_embedding") public var timeEmbedding: TimestepEmbedding
    /// The Perceiver resampler.
    public let connector: PerceiverResampler

    /// A randomly initialised connector, as the reference initialises it: latents ~ N(0, 1/width),
    /// AdaLayerNorm modulations zero, attention as `nn.MultiheadAttention`, the rest as PyTorch's
    /// `Linear`.
    /// - Throws: `AdapterError.invalidConfig` naming the bad key.
    public init(config: ELLAConnectorConfig = ELLAConnectorConfig(), rng: inout SeededGenerator) throws {
        try config.validate()
        self.config = config
        _timeEmbedding.wrappedValue = TimestepEmbedding(inChannels: config.timeChannel, timeEmbedDim: config.timeEmbeddingDim,
                                                        activation: DiffusionActivation(rawValue: config.actFn)!, rng: &rng)
        connector = PerceiverResampler(config: config, rng: &rng)
        super.init()
    }

    public var requirements: AdapterRequirements { [.llmHidden, .timesteps] }
    public var outputWidth: Int { config.outputWidth }
    public var llmInputWidth: Int? { config.inputDim }

    /// The conditioning [B, num_latents, outputWidth] from `llmHidden`, `timesteps` and, when
    /// given, `llmMask`.
    /// - Throws: `AdapterError.missingInput` without `llmHidden` or `timesteps`; `.inputShape`
    ///   naming the mis-shaped input.
    public func conditioning(_ inputs: AdapterInputs) throws -> Tensor {
        guard let hidden = inputs.llmHidden else {
            throw AdapterError.missingInput(adapter: Self.typeName, input: "llmHidden")
        }
        guard let timesteps = inputs.timesteps else {
            throw AdapterError.missingInput(adapter: Self.typeName, input: "timesteps")
        }
        return try callAsFunction(hidden, timesteps: timesteps, mask: inputs.llmMask)
    }

    /// hidden [B, L, input_dim], B timesteps (or one shared by the batch), mask [B, L]? →
    /// [B, num_latents, outputWidth].
    /// - Throws: `AdapterError.inputShape` naming `llmHidden`, `timesteps` or `llmMask`.
    public func callAsFunction(_ hidden: Tensor, timesteps: [Float], mask: Tensor? = nil) throws -> Tensor {
        guard hidden.rank == 3, hidden.shape[0] >= 1, hidden.shape[1] >= 1, hidden.shape[2] == config.inputDim else {
            throw AdapterError.inputShape(adapter: Self.typeName, input: "llmHidden",
                                          expected: "[B, L, \(config.inputDim)]", got: hidden.shape)
        }
        let b = hidden.shape[0], l = hidden.shape[1]
        guard timesteps.count == b || timesteps.count == 1 else {
            throw AdapterError.inputShape(adapter: Self.typeName, input: "timesteps",
                                          expected: "\(b) values (one per sample) or 1 shared", got: [timesteps.count])
        }
        var blocked: AttentionMask? = nil
        if let mask {
            guard mask.shape == [b, l] else {
                throw AdapterError.inputShape(adapter: Self.typeName, input: "llmMask", expected: "[\(b), \(l)]", got: mask.shape)
            }
            // Keys are [latents; tokens]: latents are never blocked, so no query row is empty.
            let flags = mask.scalars
            var data = [Float](repeating: 0, count: b * (config.numLatents + l))
            for row in 0..<b {
                for j in 0..<l where flags[row * l + j] == 0 { data[row * (config.numLatents + l) + config.numLatents + j] = 1 }
            }
            blocked = .blocked(Tensor(shape: [b, config.numLatents + l], data: data))
        }
        let embedding = timestepEmbedding(timesteps, batch: b)
        return connector(hidden, timestepEmbedding: embedding, keyPaddingMask: blocked)
    }

    /// e = TimestepEmbedding(sinusoid(t)) as [B, 1, time_embedding_dim]; one timestep is
    /// broadcast over the batch, as the reference expands it.
    public func timestepEmbedding(_ timesteps: [Float], batch: Int) -> Tensor {
        let sinusoid = sinusoidalTimestepEmbedding(timesteps: timesteps, dim: config.timeChannel, flipSinToCos: true,
                                                   downscaleFreqShift: 0)
        let e = timeEmbedding(sinusoid).reshaped([timesteps.count, 1, config.timeEmbeddingDim])
        return e.expanded(to: [batch, 1, config.timeEmbeddingDim])
    }
}

// MARK: - The Perceiver resampler and its parts

extension ELLAConnector {
    /// ELLA's `PerceiverResampler` (module `connector`): `latents`, `time_aware_linear`, `proj_in`,
    /// `perceiver_blocks.N`, and `proj_out` (Linear + LayerNorm) when `output_dim` is set.
    public final class PerceiverResampler: Module {
        /// [num_latents, width].
        public var latents: Tensor
        @ModuleKey("time_aware_linear") public var timeAwareLinear: Linear
        @ModuleKey("proj_in") public var projIn: Linear
        @ModuleKey("perceiver_blocks") public var perceiverBlocks: [PerceiverAttentionBlock]
        @ModuleKey("proj_out") public var projOut: Sequential?

        init(config: ELLAConnectorConfig, rng: inout SeededGenerator) {
            let w = config.width
            latents = ParameterInit.normal([config.numLatents, w], std: 1 / Float(w).squareRoot(), using: &rng)
            _timeAwareLinear.wrappedValue = Linear(config.timeEmbeddingDim, w, rng: &rng)
            _projIn.wrappedValue = Linear(config.inputDim, w, rng: &rng)
            var blocks: [PerceiverAttentionBlock] = []
            for _ in 0..<config.layers {
                blocks.append(PerceiverAttentionBlock(width: w, heads: config.heads,
                                                      timeEmbeddingDim: config.timeEmbeddingDim, rng: &rng))
            }
            _perceiverBlocks.wrappedValue = blocks
            _projOut.wrappedValue = config.outputDim.map { Sequential(Linear(w, $0, rng: &rng), LayerNorm($0)) }
            super.init()
        }

        /// x [B, L, input_dim], e [B, 1, time_embedding_dim] → [B, num_latents, out].
        /// `keyPaddingMask` [B, num_latents + L] blocks padded tokens (never latents).
        public func callAsFunction(_ x: Tensor, timestepEmbedding e: Tensor, keyPaddingMask: AttentionMask? = nil) -> Tensor {
            // [1, N, W] + [B, 1, W] → [B, N, W]
            var z = latents.unsqueezed(0) + timeAwareLinear(e.silu())
            let tokens = projIn(x)
            for block in perceiverBlocks { z = block(tokens, latents: z, timestepEmbedding: e, keyPaddingMask: keyPaddingMask) }
            return projOut.map { $0(z) } ?? z
        }
    }

    /// One `PerceiverAttentionBlock`: `attn` (batch-first `nn.MultiheadAttention`), `mlp.c_fc`,
    /// `mlp.c_proj` (squared-ReLU MLP, 4× wide), and the AdaLayerNorms `ln_1`, `ln_2`, `ln_ff`.
    public final class PerceiverAttentionBlock: Module {
        public let attn: MultiHeadAttention
        public let mlp: SquaredReLUMLP
        @ModuleKey("ln_1") public var ln1: AdaLayerNorm
        @ModuleKey("ln_2") public var ln2: AdaLayerNorm
        @ModuleKey("ln_ff") public var lnFF: AdaLayerNorm

        init(width: Int, heads: Int, timeEmbeddingDim: Int, rng: inout SeededGenerator) {
            attn = MultiHeadAttention(embedDim: width, numHeads: heads, batchFirst: true, rng: &rng)
            mlp = SquaredReLUMLP(width: width, rng: &rng)
            _ln1.wrappedValue = AdaLayerNorm(width: width, timeEmbeddingDim: timeEmbeddingDim, rng: &rng)
            _ln2.wrappedValue = AdaLayerNorm(width: width, timeEmbeddingDim: timeEmbeddingDim, rng: &rng)
            _lnFF.wrappedValue = AdaLayerNorm(width: width, timeEmbeddingDim: timeEmbeddingDim, rng: &rng)
            super.init()
        }

        /// x [B, L, W] (projected tokens), latents [B, N, W], e [B, 1, T] → latents [B, N, W].
        public func callAsFunction(_ x: Tensor, latents: Tensor, timestepEmbedding e: Tensor,
                                   keyPaddingMask: AttentionMask? = nil) -> Tensor {
            let q = ln1(latents, e)
            // The latents attend to themselves and to the tokens in one softmax.
            let kv = Tensor.concat([q, ln2(x, e)], axis: 1)
            let attended = latents + attn(q, kv, kv, keyPaddingMask: keyPaddingMask)
            return attended + mlp(lnFF(attended, e))
        }
    }

    /// `mlp`: c_proj(ReLU(c_fc(x))²), hidden width 4·W.
    public final class SquaredReLUMLP: Module, UnaryLayer {
        @ModuleKey("c_fc") public var cFC: Linear
        @ModuleKey("c_proj") public var cProj: Linear

        init(width: Int, rng: inout SeededGenerator) {
            _cFC.wrappedValue = Linear(width, 4 * width, rng: &rng)
            _cProj.wrappedValue = Linear(4 * width, width, rng: &rng)
            super.init()
        }

        public func callAsFunction(_ x: Tensor) -> Tensor {
            cProj(cFC(x).relu().square())
        }
    }

    /// ELLA's `AdaLayerNorm`: LN(x)·(1 + scale) + shift with [shift | scale] = linear(SiLU(e)),
    /// per sample; the LayerNorm has no affine parameters (eps 1e-6). `linear` starts at zero.
    public final class AdaLayerNorm: Module {
        public let linear: Linear
        public let width: Int

        init(width: Int, timeEmbeddingDim: Int, rng: inout SeededGenerator) {
            linear = Linear(timeEmbeddingDim, 2 * width, rng: &rng)
            linear.weight.fill(0)
            linear.bias?.fill(0)
            self.width = width
            super.init()
        }

        /// x [B, L, W], e [B, 1, T] → [B, L, W].
        public func callAsFunction(_ x: Tensor, _ e: Tensor) -> Tensor {
            let modulation = linear(e.silu()).chunked(2, axis: -1)   // shift, scale: [B, 1, W]
            let normalized = x.layerNorm(normalizedShape: [width], weight: nil, bias: nil, eps: 1e-6)
            return normalized * (modulation[1] + 1) + modulation[0]
        }
    }
}
