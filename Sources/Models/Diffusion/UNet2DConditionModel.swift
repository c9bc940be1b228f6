import Foundation
import Tensor

/// diffusers' `UNet2DConditionModel`: the text-conditioned denoiser of Stable Diffusion, with
/// diffusers' structure and parameter names (`conv_in`, `time_embedding.linear_1`,
/// `down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight`, …), so its
/// `diffusion_pytorch_model.safetensors` loads as is.
///
///     emb = time_embedding(sinusoid(t))
///     h = conv_in(x);  skips = [h]
///     for block in down_blocks:  h, s = block(h, emb, c);  skips += s
///     h = mid_block(h, emb, c)
///     for block in up_blocks:    h = block(h, pop(skips), emb, c)
///     out = conv_out(act(conv_norm_out(h)))
///
/// Conditioning c [N, L, cross_attention_dim] may have any length L. For training through a
/// frozen UNet into the conditioning, call `freeze()`: no parameter gradient is computed or
/// stored, while gradients still reach `encoderHiddenStates` (and the sample) when they require one.
public final class UNet2DConditionModel: Module {
    public let config: UNet2DConditionConfig
    @ModuleKey("conv_in") public var convIn: Conv2d
    @ModuleKey("time_embedding") public var timeEmbedding: TimestepEmbedding
    @ModuleKey("down_blocks") public var downBlocks: [any UNetDownBlock]
    /// `UNetMidBlock2DCrossAttn` or `UNetMidBlock2D`, or nil when `mid_block_type` is null.
    @ModuleKey("mid_block") public var midBlock: Module?
    @ModuleKey("up_blocks") public var upBlocks: [any UNetUpBlock]
    @ModuleKey("conv_norm_out") public var convNormOut: GroupNorm
    @ModuleKey("conv_out") public var convOut: Conv2d

    /// A randomly initialised UNet (PyTorch's default initialisation, drawn from `rng`).
    /// - Throws: `DiffusionConfigError` naming the config key that is inconsistent.
    public init(config: UNet2DConditionConfig, rng: inout SeededGenerator) throws {
        try config.validate()
        self.config = config
        let channels = config.blockOutChannels
        let n = channels.count
        let eps = Float(config.normEps)
        func settings(_ i: Int) -> UNetBlockSettings {
            UNetBlockSettings(timeEmbedChannels: config.timeEmbedDim, groups: config.normNumGroups, eps: eps,
                              dropout: Float(config.dropout), activation: config.actFn,
                              scaleShift: config.resnetTimeScaleShift == "scale_shift", heads: config.heads(block: i),
                              crossAttentionDim: config.crossAttentionDim.value(at: i),
                              transformerLayers: config.transformerLayersPerBlock.value(at: i),
                              useLinearProjection: config.useLinearProjection)
        }

        _convIn.wrappedValue = Conv2d(config.inChannels, channels[0], kernelSize: config.convInKernel,
                                      padding: (config.convInKernel - 1) / 2, rng: &rng)
        _timeEmbedding.wrappedValue = TimestepEmbedding(inChannels: channels[0], timeEmbedDim: config.timeEmbedDim,
                                                        activation: config.actFn, postActivation: config.timestepPostAct,
                                                        rng: &rng)
        var down: [any UNetDownBlock] = []
        var output = channels[0]
        for (i, type) in config.downBlockTypes.enumerated() {
            let input = output
            output = channels[i]
            let layers = config.layersPerBlock.value(at: i)
            let last = i == n - 1
            if type == "CrossAttnDownBlock2D" {
                down.append(CrossAttnDownBlock2D(inChannels: input, outChannels: output, layers: layers, addDownsample: !last,
                                                 downsamplePadding: config.downsamplePadding, settings: settings(i), rng: &rng))
            } else {
                down.append(DownBlock2D(inChannels: input, outChannels: output, layers: layers, addDownsample: !last,
                                        downsamplePadding: config.downsamplePadding, settings: settings(i), rng: &rng))
            }
        }
        _downBlocks.wrappedValue = down

        let midSettings = settings(n - 1)
        let midScale = Float(config.midBlockScaleFactor)
        switch config.midBlockType {
        case "UNetMidBlock2DCrossAttn":
            _midBlock.wrappedValue = UNetMidBlock2DCrossAttn(channels: channels[n - 1], outputScaleFactor: midScale,
                                                             settings: midSettings, rng: &rng)
        case "UNetMidBlock2D":
            _midBlock.wrappedValue = UNetMidBlock2D(channels: channels[n - 1], timeEmbedChannels: config.timeEmbedDim,
                                                    layers: 0, addAttention: false, groups: config.normNumGroups, eps: eps,
                                                    dropout: Float(config.dropout), activation: config.actFn,
                                                    scaleShift: midSettings.scaleShift, outputScaleFactor: midScale, rng: &rng)
        default:
            _midBlock.wrappedValue = nil
        }

        var up: [any UNetUpBlock] = []
        let reversed = Array(channels.reversed())
        output = reversed[0]
        for (i, type) in config.upBlockTypes.enumerated() {
            let previous = output
            output = reversed[i]
            let input = reversed[Swift.min(i + 1, n - 1)]
            let mirrored = n - 1 - i                       // the down block this up block mirrors
            let layers = config.layersPerBlock.value(at: mirrored) + 1
            let last = i == n - 1
            if type == "CrossAttnUpBlock2D" {
                up.append(CrossAttnUpBlock2D(inChannels: input, outChannels: output, prevOutputChannels: previous, layers: layers,
                                             addUpsample: !last, settings: settings(mirrored), rng: &rng))
            } else {
                up.append(UpBlock2D(inChannels: input, outChannels: output, prevOutputChannels: previous, layers: layers,
                                    addUpsample: !last, settings: settings(mirrored), rng: &rng))
            }
        }
        _upBlocks.wrappedValue = up
        _convNormOut.wrappedValue = GroupNorm(groups: config.normNumGroups, channels: channels[0], eps: eps)
        _convOut.wrappedValue = Conv2d(channels[0], config.outChannels, kernelSize: config.convOutKernel,
                                       padding: (config.convOutKernel - 1) / 2, rng: &rng)
        super.init()
    }

    /// A UNet with the given config and seed 0 for its (to be overwritten) initial weights.
    public convenience init(config: UNet2DConditionConfig) throws {
        var rng = SeededGenerator(seed: 0)
        try self.init(config: config, rng: &rng)
    }

    // MARK: Forward

    /// Predicts the model output (ε, v or x₀, per the training objective) for a noisy sample.
    ///
    /// - Parameters:
    ///   - sample: [N, in_channels, H, W]; H and W must be multiples of 2^(blocks − 1).
    ///   - timesteps: N timesteps, or one shared by the whole batch (may be fractional).
    ///   - encoderHiddenStates: conditioning tokens [N, L, cross_attention_dim], any L ≥ 1.
    ///   - encoderAttentionMask: optional [N, L] with 1 for tokens to attend to and 0 for padding;
    ///     turned into the additive bias (1 − m)·(−10000) on the cross-attention scores, as diffusers does.
    /// - Returns: [N, out_channels, H, W].
    /// - Throws: `DiffusionConfigError.invalidInput` or `.conditioningWidthMismatch` naming the tensor.
    public func forward(sample: Tensor, timesteps: [Float], encoderHiddenStates: Tensor,
                        encoderAttentionMask: Tensor? = nil) throws -> Tensor {
        try checkInputs(sample: sample, timestepCount: timesteps.count, encoderHiddenStates: encoderHiddenStates,
                        encoderAttentionMask: encoderAttentionMask)
        let n = sample.shape[0]
        let steps = timesteps.count == 1 ? [Float](repeating: timesteps[0], count: n) : timesteps
        let channels0 = config.blockOutChannels[0]
        let tEmb = sinusoidalTimestepEmbedding(timesteps: steps, dim: channels0, flipSinToCos: config.flipSinToCos,
                                               downscaleFreqShift: Float(config.freqShift))
        var emb = timeEmbedding(tEmb)
        if let act = config.timeEmbeddingActFn { emb = act(emb) }

        // (1 − mask)·(−10000) as [N, 1, 1, L]: broadcast over heads and query positions.
        let maskBias = encoderAttentionMask.map { m in
            ((1 - m.detached()) * -10_000).reshaped([n, 1, 1, m.shape[1]])
        }
        let context = encoderHiddenStates

        var h = config.centerInputSample ? sample * 2 - 1 : sample
        h = convIn(h)
        var skips = [h]
        for block in downBlocks {
            let (out, states) = block(h, temb: emb, context: context, contextMask: maskBias)
            h = out
            skips.append(contentsOf: states)
        }
        if let mid = midBlock as? UNetMidBlock2DCrossAttn {
            h = mid(h, temb: emb, context: context, contextMask: maskBias)
        } else if let mid = midBlock as? UNetMidBlock2D {
            h = mid(h, temb: emb)
        }
        for block in upBlocks {
            h = block(h, skips: &skips, temb: emb, context: context, contextMask: maskBias)
        }
        return convOut(config.actFn(convNormOut(h)))
    }

    /// `forward` with the timesteps given as a tensor of N values (or one value for the whole batch).
    public func forward(sample: Tensor, timestep: Tensor, encoderHiddenStates: Tensor,
                        encoderAttentionMask: Tensor? = nil) throws -> Tensor {
        guard timestep.rank <= 1 else {
            throw DiffusionConfigError.invalidInput(tensor: "timestep", expected: "a scalar or [N]", got: timestep.shape)
        }
        return try forward(sample: sample, timesteps: timestep.scalars, encoderHiddenStates: encoderHiddenStates,
                           encoderAttentionMask: encoderAttentionMask)
    }

    /// `forward` with one timestep for the whole batch.
    public func callAsFunction(_ sample: Tensor, timestep: Float, encoderHiddenStates: Tensor,
                               encoderAttentionMask: Tensor? = nil) throws -> Tensor {
        try forward(sample: sample, timesteps: [timestep], encoderHiddenStates: encoderHiddenStates,
                    encoderAttentionMask: encoderAttentionMask)
    }

    /// `forward` with one timestep per sample.
    public func callAsFunction(_ sample: Tensor, timesteps: [Float], encoderHiddenStates: Tensor,
                               encoderAttentionMask: Tensor? = nil) throws -> Tensor {
        try forward(sample: sample, timesteps: timesteps, encoderHiddenStates: encoderHiddenStates,
                    encoderAttentionMask: encoderAttentionMask)
    }

    /// Throws, naming the tensor, for every input the network cannot run on.
    private func checkInputs(sample: Tensor, timestepCount: Int, encoderHiddenStates ehs: Tensor,
                             encoderAttentionMask mask: Tensor?) throws {
        let factor = 1 << config.upsamplerCount
        guard sample.rank == 4, sample.shape[0] > 0, sample.shape[1] == config.inChannels,
              sample.shape[2] > 0, sample.shape[3] > 0, sample.shape[2] % factor == 0, sample.shape[3] % factor == 0 else {
            throw DiffusionConfigError.invalidInput(
                tensor: "sample", expected: "[N, \(config.inChannels), H, W] with H and W positive multiples of \(factor)",
                got: sample.shape)
        }
        let n = sample.shape[0]
        guard timestepCount == 1 || timestepCount == n else {
            throw DiffusionConfigError.invalidInput(tensor: "timestep", expected: "1 or \(n) values (one per sample)",
                                                    got: [timestepCount])
        }
        let width = config.crossAttentionDim.value(at: 0)
        guard ehs.rank == 3, ehs.shape[0] == n, ehs.shape[1] >= 1 else {
            throw DiffusionConfigError.invalidInput(tensor: "encoder_hidden_states", expected: "[\(n), L, \(width)] with L ≥ 1",
                                                    got: ehs.shape)
        }
        for (i, type) in config.downBlockTypes.enumerated() where type == "CrossAttnDownBlock2D" || config.upBlockTypes[config.blockCount - 1 - i] == "CrossAttnUpBlock2D" {
            let expected = config.crossAttentionDim.value(at: i)
            if ehs.shape[2] != expected {
                throw DiffusionConfigError.conditioningWidthMismatch(tensor: "encoder_hidden_states", expected: expected,
                                                                     got: ehs.shape[2], block: "block \(i) (\(type))")
            }
        }
        if config.midBlockType == "UNetMidBlock2DCrossAttn" {
            let expected = config.crossAttentionDim.value(at: config.blockCount - 1)
            if ehs.shape[2] != expected {
                throw DiffusionConfigError.conditioningWidthMismatch(tensor: "encoder_hidden_states", expected: expected,
                                                                     got: ehs.shape[2], block: "mid_block")
            }
        }
        if let mask, mask.shape != [n, ehs.shape[1]] {
            throw DiffusionConfigError.invalidInput(tensor: "encoder_attention_mask", expected: "[\(n), \(ehs.shape[1])]",
                                                    got: mask.shape)
        }
    }
}
