import Foundation
import Tensor

/// The latent-diffusion training loss (Rombach et al. 2022, eq. 2, with the target of the chosen
/// parameterisation): for a clean batch x₀ and conditioning c,
///
///     t ~ U{0, T−1},  ε ~ N(0, I) (+ offset noise),  xₜ = √ᾱₜ·x₀ + √(1−ᾱₜ)·ε
///     L = mean_b  w_b · mean_{c,h,w} (ε_θ(xₜ, t, c) − target)²
///
/// with target ε, v or x₀, and w_b the min-SNR-γ weight (Hang et al. 2023) or 1.
public struct DiffusionLoss: Sendable {
    public let schedule: NoiseSchedule
    public let predictionType: PredictionType
    /// γ of min-SNR weighting; nil weighs every sample by 1.
    public let snrGamma: Float?
    /// Offset-noise scale (0: plain Gaussian noise).
    public let noiseOffset: Float

    public init(schedule: NoiseSchedule, predictionType: PredictionType, snrGamma: Float? = nil, noiseOffset: Float = 0) {
        self.schedule = schedule
        self.predictionType = predictionType
        self.snrGamma = snrGamma
        self.noiseOffset = noiseOffset
    }

    /// One draw of the loss.
    ///
    /// - Parameters:
    ///   - original: x₀, [B, C, H, W] (pixels in [-1, 1] or scaled latents).
    ///   - conditioning: [B, L, D] (gradients flow into it when it requires them).
    ///   - generators: one per sample; sample b's t and ε come from `generators[b]` alone, so a
    ///     sample gets the same noise whichever batch (or data-parallel rank) it lands in.
    ///   - timestepConditioning: called with the drawn timesteps before the UNet runs, for
    ///     conditioners that depend on t (ELLA's connector); returns the conditioning to use.
    /// - Returns: the scalar loss.
    public func callAsFunction(unet: UNet2DConditionModel, original: Tensor, conditioning: Tensor,
                               generators: inout [SeededGenerator],
                               timestepConditioning: (([Int]) throws -> Tensor)? = nil) throws -> Tensor {
        let batch = original.shape[0]
        guard generators.count == batch else {
            throw SchedulerError.invalidArgument(name: "generators", message: "\(generators.count) generators for a batch of \(batch)")
        }
        let sampleShape = [1] + Array(original.shape.dropFirst())
        var timesteps: [Int] = [], noises: [Tensor] = []
        for b in 0..<batch {
            timesteps += schedule.randomTimesteps(count: 1, using: &generators[b])
            var noise = Tensor.randn(sampleShape, using: &generators[b])
            if noiseOffset > 0 { noise = try offsetNoise(noise, offset: noiseOffset, using: &generators[b]) }
            noises.append(noise)
        }
        // [B, C, H, W]
        let noise = batch == 1 ? noises[0] : Tensor.concat(noises, axis: 0)
        let noisy = try schedule.addNoise(original: original, noise: noise, timesteps: timesteps)
        let target = try schedule.trainingTarget(predictionType: predictionType, original: original, noise: noise, timesteps: timesteps)
        let context = try timestepConditioning?(timesteps) ?? conditioning
        // [B, C, H, W]
        let prediction = try unet.forward(sample: noisy, timesteps: timesteps.map(Float.init), encoderHiddenStates: context)
        let difference = prediction - target
        // [B]: per-sample mean squared error
        let perSample = (difference * difference).mean(axes: Array(1..<original.rank))
        guard let snrGamma else { return perSample.mean() }
        let weights = try schedule.minSNRWeights(timesteps: timesteps, gamma: snrGamma, predictionType: predictionType)
        return (perSample * Tensor(shape: [batch], data: weights)).mean()
    }
}
