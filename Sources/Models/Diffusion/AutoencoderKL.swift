import Foundation
import Tensor

/// The diagonal Gaussian the VAE encoder predicts per latent element: the encoder's 2·latent
/// output channels are split into `mean` and `logvar` (clamped to [−30, 20] as in diffusers).
public struct DiagonalGaussianDistribution {
    /// [N, latent, h, w].
    public let mean: Tensor
    /// log σ², clamped; [N, latent, h, w].
    public let logvar: Tensor

    /// - parameters: [N, 2·latent, h, w]; the first half of the channels is the mean.
    public init(parameters: Tensor) {
        let halves = parameters.chunked(2, axis: 1)
        mean = halves[0]
        logvar = halves[1].clamp(min: -30, max: 20)
    }

    /// σ = exp(½·logvar).
    public var std: Tensor { (logvar * 0.5).exp() }
    /// σ² = exp(logvar).
    public var variance: Tensor { logvar.exp() }

    /// The mode of the distribution (its mean): what pipelines use for deterministic encodes.
    public func mode() -> Tensor { mean }

    /// mean + σ·ε with ε ~ N(0, 1) drawn from `rng`.
    public func sample(using rng: inout SeededGenerator) -> Tensor {
        mean + std * Tensor.randn(mean.shape, using: &rng)
    }

    /// KL(N(mean, σ²) ‖ N(0, 1)) summed over channels and positions: ½·Σ(mean² + σ² − 1 − logvar) → [N].
    public func kl() -> Tensor {
        ((mean.square() + variance - 1 - logvar) * 0.5).sum(axes: [1, 2, 3])
    }
}

/// diffusers' `AutoencoderKL` (the Stable Diffusion VAE): `encoder`, `quant_conv`,
/// `post_quant_conv`, `decoder`, with diffusers' parameter names.
///
/// `encode` returns the latent distribution; pipelines scale latents by `scalingFactor`
/// (after subtracting `shiftFactor` when the config has one) before the UNet and undo it before
/// `decode`.
public final class AutoencoderKL: Module {
    public let config: AutoencoderKLConfig
    public var encoder: VAEEncoder
    public var decoder: VAEDecoder
    @ModuleKey("quant_conv") public var quantConv: Conv2d?
    @ModuleKey("post_quant_conv") public var postQuantConv: Conv2d?

    /// A randomly initialised VAE (PyTorch's default initialisation, drawn from `rng`).
    /// - Throws: `DiffusionConfigError` naming the config key that is inconsistent.
    public init(config: AutoencoderKLConfig, rng: inout SeededGenerator) throws {
        try config.validate()
        self.config = config
        encoder = VAEEncoder(config: config, rng: &rng)
        decoder = VAEDecoder(config: config, rng: &rng)
        let latent = config.latentChannels
        _quantConv.wrappedValue = config.useQuantConv ? Conv2d(2 * latent, 2 * latent, kernelSize: 1, rng: &rng) : nil
        _postQuantConv.wrappedValue = config.usePostQuantConv ? Conv2d(latent, latent, kernelSize: 1, rng: &rng) : nil
        super.init()
    }

    /// A VAE with the given config and seed 0 for its (to be overwritten) initial weights.
    public convenience init(config: AutoencoderKLConfig) throws {
        var rng = SeededGenerator(seed: 0)
        try self.init(config: config, rng: &rng)
    }

    public var scalingFactor: Float { Float(config.scalingFactor) }
    public var shiftFactor: Float? { config.shiftFactor.map(Float.init) }

    /// Images [N, in_channels, H, W] (H, W multiples of the downsampling factor) → latent distribution
    /// over [N, latent_channels, H/f, W/f].
    /// - Throws: `DiffusionConfigError.invalidInput` naming `sample` when the shape does not fit.
    public func encode(_ sample: Tensor) throws -> DiagonalGaussianDistribution {
        let f = config.downsamplingFactor
        guard sample.rank == 4, sample.shape[1] == config.inChannels, sample.shape[0] > 0,
              sample.shape[2] > 0, sample.shape[3] > 0, sample.shape[2] % f == 0, sample.shape[3] % f == 0 else {
            throw DiffusionConfigError.invalidInput(
                tensor: "sample", expected: "[N, \(config.inChannels), H, W] with H and W positive multiples of \(f)", got: sample.shape)
        }
        var moments = encoder(sample)
        if let quantConv { moments = quantConv(moments) }
        return DiagonalGaussianDistribution(parameters: moments)
    }

    /// Latents [N, latent_channels, h, w] → images [N, out_channels, h·f, w·f].
    /// - Throws: `DiffusionConfigError.invalidInput` naming `latents` when the shape does not fit.
    public func decode(_ latents: Tensor) throws -> Tensor {
        guard latents.rank == 4, latents.shape[1] == config.latentChannels, latents.shape[0] > 0,
              latents.shape[2] > 0, latents.shape[3] > 0 else {
            throw DiffusionConfigError.invalidInput(tensor: "latents", expected: "[N, \(config.latentChannels), h, w]",
                                                    got: latents.shape)
        }
        let z = postQuantConv.map { $0(latents) } ?? latents
        return decoder(z)
    }
}
