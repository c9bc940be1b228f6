import Foundation
import Tensor

/// diffusers' `ResnetBlock2D` (pre-norm, no up/down sampling inside):
///
///     h = conv1(act(norm1(x)))
///     h = h + time_emb_proj(act(temb))[:, :, None, None]          ("default")
///     h = conv2(dropout(act(norm2(h))))                            (or FiLM with "scale_shift")
///     out = (conv_shortcut(x) or x + h) / outputScaleFactor
///
/// Parameters: `norm1`, `conv1` (3×3), `time_emb_proj` (absent in the VAE), `norm2`, `conv2`
/// (3×3) and `conv_shortcut` (1×1, only when the channel count changes).
public final class ResnetBlock2D: Module {
    public var norm1: GroupNorm
    public var conv1: Conv2d
    @ModuleKey("time_emb_proj") public var timeEmbProj: Linear?
    public var norm2: GroupNorm
    public var dropout: Dropout
    public var conv2: Conv2d
    @ModuleKey("conv_shortcut") public var convShortcut: Conv2d?
    public let activation: DiffusionActivation
    /// "scale_shift": the time projection is 2·out wide and modulates norm2's output as
    /// h·(1 + scale) + shift instead of being added before norm2.
    public let scaleShift: Bool
    public let outputScaleFactor: Float
    public let inChannels: Int
    public let outChannels: Int

    /// - timeEmbedChannels: width of `temb`, or nil for a block without timestep input (VAE).
    public init(inChannels: Int, outChannels: Int? = nil, timeEmbedChannels: Int?, groups: Int, groupsOut: Int? = nil,
                eps: Float = 1e-6, dropout: Float = 0, activation: DiffusionActivation = .silu, scaleShift: Bool = false,
                outputScaleFactor: Float = 1, rng: inout SeededGenerator) {
        let out = outChannels ?? inChannels
        norm1 = GroupNorm(groups: groups, channels: inChannels, eps: eps)
        conv1 = Conv2d(inChannels, out, kernelSize: 3, padding: 1, rng: &rng)
        if let timeEmbedChannels {
            _timeEmbProj.wrappedValue = Linear(timeEmbedChannels, scaleShift ? 2 * out : out, rng: &rng)
        } else {
            _timeEmbProj.wrappedValue = nil
        }
        norm2 = GroupNorm(groups: groupsOut ?? groups, channels: out, eps: eps)
        self.dropout = Dropout(dropout)
        conv2 = Conv2d(out, out, kernelSize: 3, padding: 1, rng: &rng)
        _convShortcut.wrappedValue = inChannels != out ? Conv2d(inChannels, out, kernelSize: 1, rng: &rng) : nil
        self.activation = activation
        self.scaleShift = scaleShift
        self.outputScaleFactor = outputScaleFactor
        self.inChannels = inChannels
        self.outChannels = out
        super.init()
    }

    /// - x: [N, inChannels, H, W].
    /// - temb: [N, timeEmbedChannels] (the UNet's timestep embedding), or nil for the VAE.
    /// - Returns: [N, outChannels, H, W].
    public func callAsFunction(_ x: Tensor, temb: Tensor?) -> Tensor {
        var h = conv1(activation(norm1(x)))
        var film: (scale: Tensor, shift: Tensor)?
        if let proj = timeEmbProj, let temb {
            let t = proj(activation(temb))                                  // [N, out] or [N, 2·out]
            let n = t.shape[0]
            if scaleShift {
                let parts = t.chunked(2, axis: 1)
                film = (parts[0].reshaped([n, outChannels, 1, 1]), parts[1].reshaped([n, outChannels, 1, 1]))
            } else {
                h = h + t.reshaped([n, outChannels, 1, 1])
            }
        }
        h = norm2(h)
        if let film { h = h * (film.scale + 1) + film.shift }
        h = activation(h)
        // Only a training-mode dropout touches its generator, so evaluation stays free of shared
        // mutable state and one model can serve several threads.
        if dropout.p > 0 && dropout.training { h = dropout(h) }
        h = conv2(h)
        let residual = convShortcut.map { $0(x) } ?? x
        let sum = residual + h
        return outputScaleFactor == 1 ? sum : sum / outputScaleFactor
    }
}

/// diffusers' `Downsample2D` with a convolution: a 3×3 stride-2 `conv`. With `padding` 0 the
/// input is first padded by one row and column at the bottom-right (as the VAE encoder does).
public final class Downsample2D: Module {
    public var conv: Conv2d
    public let padding: Int

    public init(channels: Int, outChannels: Int? = nil, padding: Int = 1, rng: inout SeededGenerator) {
        conv = Conv2d(channels, outChannels ?? channels, kernelSize: 3, stride: 2, padding: padding, rng: &rng)
        self.padding = padding
        super.init()
    }

    /// [N, C, H, W] → [N, C′, ⌊(H + 2p − 3)/2⌋ + 1, …] (H/2 for even H).
    public func callAsFunction(_ x: Tensor) -> Tensor {
        conv(padding == 0 ? x.padBottomRight() : x)
    }
}

/// diffusers' `Upsample2D` with a convolution: nearest-neighbour ×2, then a 3×3 `conv`.
public final class Upsample2D: Module {
    public var conv: Conv2d

    public init(channels: Int, outChannels: Int? = nil, rng: inout SeededGenerator) {
        conv = Conv2d(channels, outChannels ?? channels, kernelSize: 3, padding: 1, rng: &rng)
        super.init()
    }

    /// [N, C, H, W] → [N, C′, 2H, 2W].
    public func callAsFunction(_ x: Tensor) -> Tensor {
        conv(x.upsampleNearest(scale: (2, 2)))
    }
}
