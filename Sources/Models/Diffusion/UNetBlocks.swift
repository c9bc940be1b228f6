import Foundation
import Tensor

/// What every resnet and transformer of one UNet block is built with.
public struct UNetBlockSettings {
    public var timeEmbedChannels: Int
    public var groups: Int
    public var eps: Float
    public var dropout: Float
    public var activation: DiffusionActivation
    public var scaleShift: Bool
    public var heads: Int
    public var crossAttentionDim: Int
    public var transformerLayers: Int
    public var useLinearProjection: Bool

    public init(timeEmbedChannels: Int, groups: Int, eps: Float, dropout: Float = 0, activation: DiffusionActivation = .silu,
                scaleShift: Bool = false, heads: Int = 1, crossAttentionDim: Int = 1, transformerLayers: Int = 1,
                useLinearProjection: Bool = false) {
        self.timeEmbedChannels = timeEmbedChannels
        self.groups = groups
        self.eps = eps
        self.dropout = dropout
        self.activation = activation
        self.scaleShift = scaleShift
        self.heads = heads
        self.crossAttentionDim = crossAttentionDim
        self.transformerLayers = transformerLayers
        self.useLinearProjection = useLinearProjection
    }

    func resnet(_ inChannels: Int, _ outChannels: Int, outputScale: Float = 1, rng: inout SeededGenerator) -> ResnetBlock2D {
        ResnetBlock2D(inChannels: inChannels, outChannels: outChannels, timeEmbedChannels: timeEmbedChannels, groups: groups,
                      eps: eps, dropout: dropout, activation: activation, scaleShift: scaleShift,
                      outputScaleFactor: outputScale, rng: &rng)
    }

    /// A spatial transformer over `channels` channels; diffusers gives each head channels/heads dims.
    func transformer(_ channels: Int, rng: inout SeededGenerator) -> Transformer2DModel {
        Transformer2DModel(heads: heads, headDim: channels / heads, inChannels: channels, layers: transformerLayers,
                           crossAttentionDim: crossAttentionDim, normGroups: groups,
                           useLinearProjection: useLinearProjection, rng: &rng)
    }
}

/// A block of the UNet's contracting path: returns its output and the states the up path reuses.
public protocol UNetDownBlock: Module {
    /// Whether the block attends to the conditioning.
    var hasCrossAttention: Bool { get }
    /// x [N, C, H, W] → (output, one skip state per resnet plus one after the downsampler).
    func callAsFunction(_ x: Tensor, temb: Tensor, context: Tensor, contextMask: Tensor?) -> (Tensor, [Tensor])
}

/// A block of the UNet's expanding path: each resnet consumes the last remaining skip state.
public protocol UNetUpBlock: Module {
    var hasCrossAttention: Bool { get }
    /// Number of skip states the block consumes (one per resnet).
    var resnetCount: Int { get }
    /// x [N, C, H, W] → [N, C′, H′, W′]; pops `resnetCount` states from the end of `skips`.
    func callAsFunction(_ x: Tensor, skips: inout [Tensor], temb: Tensor, context: Tensor, contextMask: Tensor?) -> Tensor
}

/// diffusers' `CrossAttnDownBlock2D`: (resnet → transformer) × layers, then a stride-2 `Downsample2D`
/// unless it is the last block. Parameters: `resnets.i`, `attentions.i`, `downsamplers.0.conv`.
public final class CrossAttnDownBlock2D: Module, UNetDownBlock {
    public var resnets: [ResnetBlock2D]
    public var attentions: [Transformer2DModel]
    public var downsamplers: [Downsample2D]
    public var hasCrossAttention: Bool { true }

    public init(inChannels: Int, outChannels: Int, layers: Int, addDownsample: Bool, downsamplePadding: Int = 1,
                settings: UNetBlockSettings, rng: inout SeededGenerator) {
        resnets = (0..<layers).map { i in settings.resnet(i == 0 ? inChannels : outChannels, outChannels, rng: &rng) }
        attentions = (0..<layers).map { _ in settings.transformer(outChannels, rng: &rng) }
        downsamplers = addDownsample ? [Downsample2D(channels: outChannels, padding: downsamplePadding, rng: &rng)] : []
        super.init()
    }

    public func callAsFunction(_ x: Tensor, temb: Tensor, context: Tensor, contextMask: Tensor?) -> (Tensor, [Tensor]) {
        var h = x
        var states: [Tensor] = []
        for (resnet, attention) in zip(resnets, attentions) {
            h = attention(resnet(h, temb: temb), context: context, contextMask: contextMask)
            states.append(h)
        }
        for down in downsamplers {
            h = down(h)
            states.append(h)
        }
        return (h, states)
    }
}

/// diffusers' `DownBlock2D`: resnets only, then an optional `Downsample2D`.
public final class DownBlock2D: Module, UNetDownBlock {
    public var resnets: [ResnetBlock2D]
    public var downsamplers: [Downsample2D]
    public var hasCrossAttention: Bool { false }

    public init(inChannels: Int, outChannels: Int, layers: Int, addDownsample: Bool, downsamplePadding: Int = 1,
                settings: UNetBlockSettings, rng: inout SeededGenerator) {
        resnets = (0..<layers).map { i in settings.resnet(i == 0 ? inChannels : outChannels, outChannels, rng: &rng) }
        downsamplers = addDownsample ? [Downsample2D(channels: outChannels, padding: downsamplePadding, rng: &rng)] : []
        super.init()
    }

    public func callAsFunction(_ x: Tensor, temb: Tensor, context: Tensor, contextMask: Tensor?) -> (Tensor, [Tensor]) {
        var h = x
        var states: [Tensor] = []
        for resnet in resnets {
            h = resnet(h, temb: temb)
            states.append(h)
        }
        for down in downsamplers {
            h = down(h)
            states.append(h)
        }
        return (h, states)
    }
}

/// diffusers' `UNetMidBlock2DCrossAttn`: resnet, then (transformer → resnet) × layers, at the
/// bottleneck's width. Parameters: `resnets.0…layers`, `attentions.0…layers−1`.
public final class UNetMidBlock2DCrossAttn: Module {
    public var resnets: [ResnetBlock2D]
    public var attentions: [Transformer2DModel]

    public init(channels: Int, layers: Int = 1, outputScaleFactor: Float = 1, settings: UNetBlockSettings,
                rng: inout SeededGenerator) {
        var r = [settings.resnet(channels, channels, outputScale: outputScaleFactor, rng: &rng)]
        var a: [Transformer2DModel] = []
        for _ in 0..<layers {
            a.append(settings.transformer(channels, rng: &rng))
            r.append(settings.resnet(channels, channels, outputScale: outputScaleFactor, rng: &rng))
        }
        resnets = r
        attentions = a
        super.init()
    }

    /// x [N, C, H, W] → [N, C, H, W].
    public func callAsFunction(_ x: Tensor, temb: Tensor, context: Tensor, contextMask: Tensor?) -> Tensor {
        var h = resnets[0](x, temb: temb)
        for (attention, resnet) in zip(attentions, resnets.dropFirst()) {
            h = resnet(attention(h, context: context, contextMask: contextMask), temb: temb)
        }
        return h
    }
}

/// diffusers' `CrossAttnUpBlock2D`: for each layer, concatenate the next skip state along
/// channels, then resnet → transformer; then an optional `Upsample2D` (`upsamplers.0.conv`).
public final class CrossAttnUpBlock2D: Module, UNetUpBlock {
    public var resnets: [ResnetBlock2D]
    public var attentions: [Transformer2DModel]
    public var upsamplers: [Upsample2D]
    public var hasCrossAttention: Bool { true }
    public var resnetCount: Int { resnets.count }

    /// - inChannels: channels of the skip state taken by the last resnet (the matching down block's input).
    /// - prevOutputChannels: channels arriving from the block below.
    public init(inChannels: Int, outChannels: Int, prevOutputChannels: Int, layers: Int, addUpsample: Bool,
                settings: UNetBlockSettings, rng: inout SeededGenerator) {
        resnets = (0..<layers).map { i in
            let skip = i == layers - 1 ? inChannels : outChannels
            let incoming = i == 0 ? prevOutputChannels : outChannels
            return settings.resnet(incoming + skip, outChannels, rng: &rng)
        }
        attentions = (0..<layers).map { _ in settings.transformer(outChannels, rng: &rng) }
        upsamplers = addUpsample ? [Upsample2D(channels: outChannels, rng: &rng)] : []
        super.init()
    }

    public func callAsFunction(_ x: Tensor, skips: inout [Tensor], temb: Tensor, context: Tensor, contextMask: Tensor?) -> Tensor {
        var h = x
        for (resnet, attention) in zip(resnets, attentions) {
            let skip = skips.removeLast()
            h = resnet(Tensor.concatChannels(h, skip), temb: temb)
            h = attention(h, context: context, contextMask: contextMask)
        }
        for up in upsamplers { h = up(h) }
        return h
    }
}

/// diffusers' `UpBlock2D`: like `CrossAttnUpBlock2D` without transformers.
public final class UpBlock2D: Module, UNetUpBlock {
    public var resnets: [ResnetBlock2D]
    public var upsamplers: [Upsample2D]
    public var hasCrossAttention: Bool { false }
    public var resnetCount: Int { resnets.count }

    public init(inChannels: Int, outChannels: Int, prevOutputChannels: Int, layers: Int, addUpsample: Bool,
                settings: UNetBlockSettings, rng: inout SeededGenerator) {
        resnets = (0..<layers).map { i in
            let skip = i == layers - 1 ? inChannels : outChannels
            let incoming = i == 0 ? prevOutputChannels : outChannels
            return settings.resnet(incoming + skip, outChannels, rng: &rng)
        }
        upsamplers = addUpsample ? [Upsample2D(channels: outChannels, rng: &rng)] : []
        super.init()
    }

    public func callAsFunction(_ x: Tensor, skips: inout [Tensor], temb: Tensor, context: Tensor, contextMask: Tensor?) -> Tensor {
        var h = x
        for resnet in resnets {
            let skip = skips.removeLast()
            h = resnet(Tensor.concatChannels(h, skip), temb: temb)
        }
        for up in upsamplers { h = up(h) }
        return h
    }
}
