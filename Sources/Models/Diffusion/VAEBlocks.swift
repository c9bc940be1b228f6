import Foundation
import Tensor

/// diffusers' `Attention` as built for the VAE's mid block (`_from_deprecated_attn_block`):
/// single- or multi-head self-attention over the H·W positions of a feature map, with its own
/// GroupNorm and a residual connection:
///
///     out = (x + to_out.0(MHA(to_q(t), to_k(t), to_v(t)))) / rescale,   t = tokens(group_norm(x))
///
/// Parameters: `group_norm`, `to_q`, `to_k`, `to_v`, `to_out.0` (all with bias). Checkpoints in
/// diffusers' older layout (`query`, `key`, `value`, `proj_attn`, possibly stored as 1×1 convs)
/// are renamed on load.
public final class SpatialSelfAttention: Module, CheckpointRemapping {
    @ModuleKey("group_norm") public var groupNorm: GroupNorm
    @ModuleKey("to_q") public var toQ: Linear
    @ModuleKey("to_k") public var toK: Linear
    @ModuleKey("to_v") public var toV: Linear
    @ModuleKey("to_out") public var toOut: [Linear]
    public let heads: Int
    public let rescaleOutputFactor: Float

    public init(channels: Int, headDim: Int, groups: Int, eps: Float = 1e-6, rescaleOutputFactor: Float = 1,
                rng: inout SeededGenerator) {
        _groupNorm.wrappedValue = GroupNorm(groups: groups, channels: channels, eps: eps)
        _toQ.wrappedValue = Linear(channels, channels, rng: &rng)
        _toK.wrappedValue = Linear(channels, channels, rng: &rng)
        _toV.wrappedValue = Linear(channels, channels, rng: &rng)
        _toOut.wrappedValue = [Linear(channels, channels, rng: &rng)]
        heads = Swift.max(1, channels / Swift.max(headDim, 1))
        self.rescaleOutputFactor = rescaleOutputFactor
        super.init()
    }

    /// x [N, C, H, W] → [N, C, H, W].
    public func callAsFunction(_ x: Tensor) -> Tensor {
        let n = x.shape[0], c = x.shape[1], hw = x.shape[2] * x.shape[3]
        let tokens = groupNorm(x).reshaped([n, c, hw]).transposed(1, 2)            // [N, HW, C] view
        let o = attendHeads(query: toQ(tokens), key: toK(tokens), value: toV(tokens), heads: heads, mask: nil)
        // to_out.0 straight into channel-first order: [C, C] · oᵀ → [N, C, HW].
        let proj = toOut[0]
        var out = proj.weight.matmul(o.transposed(1, 2))
        if let b = proj.bias { out = out + b.reshaped([c, 1]) }
        let sum = out.reshaped(x.shape) + x
        return rescaleOutputFactor == 1 ? sum : sum / rescaleOutputFactor
    }

    /// Renames diffusers' pre-0.14 attention keys and flattens 1×1 conv weights to matrices.
    public func remapCheckpoint(_ weights: [String: Tensor]) throws -> [String: Tensor] {
        let renames = ["query.": "to_q.", "key.": "to_k.", "value.": "to_v.", "proj_attn.": "to_out.0."]
        var out: [String: Tensor] = [:]
        for (key, value) in weights {
            var name = key
            for (old, new) in renames where key.hasPrefix(old) { name = new + key.dropFirst(old.count) }
            var tensor = value
            if name != key, tensor.rank == 4, tensor.shape[2] == 1, tensor.shape[3] == 1 {
                tensor = tensor.reshaped([tensor.shape[0], tensor.shape[1]])
            }
            out[name] = tensor
        }
        return out
    }
}

/// diffusers' `UNetMidBlock2D`: resnet, then (attention → resnet) × layers. The VAE uses it with
/// `SpatialSelfAttention` and no timestep embedding; a UNet with `mid_block_type`
/// "UNetMidBlock2D" uses a single resnet (layers 0).
public final class UNetMidBlock2D: Module {
    public var attentions: [SpatialSelfAttention]
    public var resnets: [ResnetBlock2D]

    public init(channels: Int, timeEmbedChannels: Int?, layers: Int = 1, addAttention: Bool = true, groups: Int,
                eps: Float = 1e-6, dropout: Float = 0, activation: DiffusionActivation = .silu, scaleShift: Bool = false,
                attentionHeadDim: Int? = nil, outputScaleFactor: Float = 1, rng: inout SeededGenerator) {
        func resnet(_ rng: inout SeededGenerator) -> ResnetBlock2D {
            ResnetBlock2D(inChannels: channels, outChannels: channels, timeEmbedChannels: timeEmbedChannels, groups: groups,
                          eps: eps, dropout: dropout, activation: activation, scaleShift: scaleShift,
                          outputScaleFactor: outputScaleFactor, rng: &rng)
        }
        var r = [resnet(&rng)]
        var a: [SpatialSelfAttention] = []
        for _ in 0..<layers {
            if addAttention {
                a.append(SpatialSelfAttention(channels: channels, headDim: attentionHeadDim ?? channels, groups: groups, eps: eps,
                                              rescaleOutputFactor: outputScaleFactor, rng: &rng))
            }
            r.append(resnet(&rng))
        }
        attentions = a
        resnets = r
        super.init()
    }

    /// x [N, C, H, W] → [N, C, H, W]; temb [N, T] or nil.
    public func callAsFunction(_ x: Tensor, temb: Tensor?) -> Tensor {
        var h = resnets[0](x, temb: temb)
        for (i, resnet) in resnets.dropFirst().enumerated() {
            if i < attentions.count { h = attentions[i](h) }
            h = resnet(h, temb: temb)
        }
        return h
    }
}

/// diffusers' `DownEncoderBlock2D`: resnets without timestep input, then an optional
/// `Downsample2D` (the VAE uses padding 0: pad bottom-right, then an unpadded stride-2 conv).
public final class DownEncoderBlock2D: Module {
    public var resnets: [ResnetBlock2D]
    public var downsamplers: [Downsample2D]

    public init(inChannels: Int, outChannels: Int, layers: Int, addDownsample: Bool, downsamplePadding: Int = 0,
                groups: Int, eps: Float = 1e-6, activation: DiffusionActivation = .silu, rng: inout SeededGenerator) {
        resnets = (0..<layers).map { i in
            ResnetBlock2D(inChannels: i == 0 ? inChannels : outChannels, outChannels: outChannels, timeEmbedChannels: nil,
                          groups: groups, eps: eps, activation: activation, rng: &rng)
        }
        downsamplers = addDownsample ? [Downsample2D(channels: outChannels, padding: downsamplePadding, rng: &rng)] : []
        super.init()
    }

    public func callAsFunction(_ x: Tensor) -> Tensor {
        var h = x
        for resnet in resnets { h = resnet(h, temb: nil) }
        for down in downsamplers { h = down(h) }
        return h
    }
}

/// diffusers' `UpDecoderBlock2D`: resnets without timestep input, then an optional `Upsample2D`.
public final class UpDecoderBlock2D: Module {
    public var resnets: [ResnetBlock2D]
    public var upsamplers: [Upsample2D]

    public init(inChannels: Int, outChannels: Int, layers: Int, addUpsample: Bool, groups: Int, eps: Float = 1e-6,
                activation: DiffusionActivation = .silu, rng: inout SeededGenerator) {
        resnets = (0..<layers).map { i in
            ResnetBlock2D(inChannels: i == 0 ? inChannels : outChannels, outChannels: outChannels, timeEmbedChannels: nil,
                          groups: groups, eps: eps, activation: activation, rng: &rng)
        }
        upsamplers = addUpsample ? [Upsample2D(channels: outChannels, rng: &rng)] : []
        super.init()
    }

    public func callAsFunction(_ x: Tensor) -> Tensor {
        var h = x
        for resnet in resnets { h = resnet(h, temb: nil) }
        for up in upsamplers { h = up(h) }
        return h
    }
}

/// diffusers' VAE `Encoder`: conv_in → down_blocks → mid_block → GroupNorm → act → conv_out,
/// producing 2·latent channels (mean and log-variance) when `doubleZ`.
public final class VAEEncoder: Module {
    @ModuleKey("conv_in") public var convIn: Conv2d
    @ModuleKey("down_blocks") public var downBlocks: [DownEncoderBlock2D]
    @ModuleKey("mid_block") public var midBlock: UNetMidBlock2D
    @ModuleKey("conv_norm_out") public var convNormOut: GroupNorm
    @ModuleKey("conv_out") public var convOut: Conv2d
    public let activation: DiffusionActivation

    public init(config: AutoencoderKLConfig, rng: inout SeededGenerator) {
        let channels = config.blockOutChannels, groups = config.normNumGroups
        _convIn.wrappedValue = Conv2d(config.inChannels, channels[0], kernelSize: 3, padding: 1, rng: &rng)
        var blocks: [DownEncoderBlock2D] = []
        var output = channels[0]
        for i in channels.indices {
            let input = output
            output = channels[i]
            blocks.append(DownEncoderBlock2D(inChannels: input, outChannels: output, layers: config.layersPerBlock,
                                             addDownsample: i != channels.count - 1, downsamplePadding: 0, groups: groups,
                                             activation: config.actFn, rng: &rng))
        }
        _downBlocks.wrappedValue = blocks
        _midBlock.wrappedValue = UNetMidBlock2D(channels: channels[channels.count - 1], timeEmbedChannels: nil,
                                                addAttention: config.midBlockAddAttention, groups: groups,
                                                activation: config.actFn, attentionHeadDim: channels[channels.count - 1], rng: &rng)
        _convNormOut.wrappedValue = GroupNorm(groups: groups, channels: channels[channels.count - 1], eps: 1e-6)
        _convOut.wrappedValue = Conv2d(channels[channels.count - 1], 2 * config.latentChannels, kernelSize: 3, padding: 1, rng: &rng)
        activation = config.actFn
        super.init()
    }

    /// x [N, in, H, W] → [N, 2·latent, H/2^(blocks−1), W/2^(blocks−1)].
    public func callAsFunction(_ x: Tensor) -> Tensor {
        var h = convIn(x)
        for block in downBlocks { h = block(h) }
        h = midBlock(h, temb: nil)
        return convOut(activation(convNormOut(h)))
    }
}

/// diffusers' VAE `Decoder`: conv_in → mid_block → up_blocks → GroupNorm → act → conv_out.
public final class VAEDecoder: Module {
    @ModuleKey("conv_in") public var convIn: Conv2d
    @ModuleKey("mid_block") public var midBlock: UNetMidBlock2D
    @ModuleKey("up_blocks") public var upBlocks: [UpDecoderBlock2D]
    @ModuleKey("conv_norm_out") public var convNormOut: GroupNorm
    @ModuleKey("conv_out") public var convOut: Conv2d
    public let activation: DiffusionActivation

    public init(config: AutoencoderKLConfig, rng: inout SeededGenerator) {
        let channels = config.blockOutChannels, groups = config.normNumGroups
        let top = channels[channels.count - 1]
        _convIn.wrappedValue = Conv2d(config.latentChannels, top, kernelSize: 3, padding: 1, rng: &rng)
        _midBlock.wrappedValue = UNetMidBlock2D(channels: top, timeEmbedChannels: nil, addAttention: config.midBlockAddAttention,
                                                groups: groups, activation: config.actFn, attentionHeadDim: top, rng: &rng)
        let reversed = Array(channels.reversed())
        var blocks: [UpDecoderBlock2D] = []
        var output = reversed[0]
        for i in reversed.indices {
            let previous = output
            output = reversed[i]
            blocks.append(UpDecoderBlock2D(inChannels: previous, outChannels: output, layers: config.layersPerBlock + 1,
                                           addUpsample: i != channels.count - 1, groups: groups, activation: config.actFn,
                                           rng: &rng))
        }
        _upBlocks.wrappedValue = blocks
        _convNormOut.wrappedValue = GroupNorm(groups: groups, channels: channels[0], eps: 1e-6)
        _convOut.wrappedValue = Conv2d(channels[0], config.outChannels, kernelSize: 3, padding: 1, rng: &rng)
        activation = config.actFn
        super.init()
    }

    /// z [N, latent, h, w] → [N, out, h·2^(blocks−1), w·2^(blocks−1)].
    public func callAsFunction(_ z: Tensor) -> Tensor {
        var h = midBlock(convIn(z), temb: nil)
        for block in upBlocks { h = block(h) }
        return convOut(activation(convNormOut(h)))
    }
}
