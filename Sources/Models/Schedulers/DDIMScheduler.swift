import Foundation
import Tensor

/// Denoising diffusion implicit models (Song et al. 2021), mirroring diffusers' `DDIMScheduler`.
///
/// Config keys read: the schedule keys, `clip_sample`, `clip_sample_range`, `set_alpha_to_one`,
/// `steps_offset`, `prediction_type`, `timestep_spacing` (default "leading"),
/// `rescale_betas_zero_snr`; `thresholding` must be false.
///
/// **Clipping and the noise estimate.** With `clip_sample` on, x̂₀ is clamped to
/// ±`clip_sample_range`. The DDIM update then combines x̂₀ with a noise estimate ε̂. diffusers
/// (`use_clipped_model_output=False`, the default its pipelines use) keeps ε̂ from the *unclipped*
/// prediction, so the step points at a clean image and a noise that no longer belong together.
/// With v-prediction and classifier-free guidance the mismatch is large and images contradict the
/// prompt (DESIGN.md §6). Sura's default, `recomputesNoiseFromClippedSample = true`, recomputes
/// ε̂ = (xₜ − √ᾱₜ·x̂₀ᶜˡⁱᵖ)/√(1−ᾱₜ) from the clipped x̂₀ — diffusers' `use_clipped_model_output=True`.
/// Set it to false only to reproduce diffusers' default output.
public final class DDIMScheduler: DiffusionScheduler {
    public static let className = "DDIMScheduler"
    public let config: SchedulerConfig
    public let schedule: NoiseSchedule
    public let timestepSpacing: TimestepSpacing
    /// ᾱ "before" timestep 0, used by the last step: 1 with `set_alpha_to_one`, else ᾱ₀.
    public let finalAlphaCumprod: Float
    /// η in Song et al. eq. 16: 0 is deterministic DDIM, 1 has DDPM's posterior variance.
    public var eta: Float = 0
    /// Recompute the noise estimate from the clipped x̂₀ (see the type's documentation).
    public var recomputesNoiseFromClippedSample = true
    /// The inference timesteps as integers (empty before `setTimesteps`).
    public private(set) var discreteTimesteps: [Int] = []
    public var timesteps: [Float] { discreteTimesteps.map(Float.init) }
    public var initNoiseSigma: Float { 1 }

    public init(config: SchedulerConfig) throws {
        try SchedulerChecks.rejectUnsupported(config)
        self.config = config
        schedule = try NoiseSchedule(config: config)
        timestepSpacing = config.timestepSpacing ?? .leading
        finalAlphaCumprod = config.setAlphaToOne ? 1 : schedule.alphasCumprod[0]
        if config.clipSample && !(config.clipSampleRange > 0) {
            throw SchedulerError.invalidConfig(key: "clip_sample_range", message: "must be positive, got \(config.clipSampleRange)")
        }
    }

    public func setTimesteps(_ count: Int) throws {
        try SchedulerChecks.stepCount(count, schedule)
        discreteTimesteps = try timestepSpacing.discreteTimesteps(
            count: count, numTrainTimesteps: schedule.numTrainTimesteps, stepsOffset: config.stepsOffset)
    }

    public func scaleModelInput(_ sample: Tensor, timestep: Float) throws -> Tensor { sample }

    /// The previous timestep as diffusers computes it: t − ⌊T/n⌋, whatever the spacing.
    public func previousTimestep(_ t: Int) throws -> Int {
        guard !discreteTimesteps.isEmpty else { throw SchedulerError.timestepsNotSet(scheduler: Self.className) }
        return t - schedule.numTrainTimesteps / discreteTimesteps.count
    }

    /// σₜ(η)² = η²·(1−ᾱₜ₋₁)/(1−ᾱₜ)·(1 − ᾱₜ/ᾱₜ₋₁) (Song et al. eq. 16), before the η² factor.
    func variance(alphaProd: Float, alphaProdPrev: Float) -> Float {
        let betaProd = 1 - alphaProd, betaProdPrev = 1 - alphaProdPrev
        return (betaProdPrev / betaProd) * (1 - alphaProd / alphaProdPrev)
    }

    /// One DDIM step (Song et al. eq. 12):
    /// x_{t−1} = √ᾱₜ₋₁·x̂₀ + √(1−ᾱₜ₋₁−σₜ²)·ε̂ + σₜ·z.
    ///
    /// The timestep must be whole and in 0..<T; `setTimesteps` must have run (the step size is
    /// ⌊T/n⌋). Noise is drawn only when `eta` > 0.
    public func step(modelOutput: Tensor, timestep: Float, sample: Tensor,
                     generator: inout SeededGenerator?, varianceNoise: Tensor?) throws -> SchedulerStepOutput {
        let t = try SchedulerChecks.discreteTimestep(timestep, Self.className, schedule)
        let prevT = try previousTimestep(t)
        try SchedulerChecks.sameShape("DDIMScheduler model output", modelOutput, sample)

        let alphaProd = schedule.alphasCumprod[t]
        let alphaProdPrev = prevT >= 0 ? schedule.alphasCumprod[prevT] : finalAlphaCumprod
        let betaProd = 1 - alphaProd

        // Song et al. eq. 12's "predicted x₀" and the matching noise estimate.
        var x0: Tensor
        var epsilon: Tensor
        switch config.predictionType {
        case .epsilon:
            x0 = (sample - modelOutput * betaProd.squareRoot()) / Tensor(scalar: alphaProd.squareRoot())
            epsilon = modelOutput
        case .sample:
            x0 = modelOutput
            epsilon = (sample - x0 * alphaProd.squareRoot()) / Tensor(scalar: betaProd.squareRoot())
        case .vPrediction:
            x0 = sample * alphaProd.squareRoot() - modelOutput * betaProd.squareRoot()
            epsilon = modelOutput * alphaProd.squareRoot() + sample * betaProd.squareRoot()
        }
        if config.clipSample {
            let r = Float(config.clipSampleRange)
            x0 = x0.clamp(min: -r, max: r)
            if recomputesNoiseFromClippedSample {
                // Keep x̂₀ and ε̂ consistent: xₜ = √ᾱₜ·x̂₀ + √(1−ᾱₜ)·ε̂ must still hold after clipping.
                epsilon = (sample - x0 * alphaProd.squareRoot()) / Tensor(scalar: betaProd.squareRoot())
            }
        }

        let stdDev = eta * variance(alphaProd: alphaProd, alphaProdPrev: alphaProdPrev).squareRoot()
        // Song et al. eq. 12: the "direction pointing to xₜ".
        let direction = epsilon * (1 - alphaProdPrev - stdDev * stdDev).squareRoot()
        var prev = x0 * alphaProdPrev.squareRoot() + direction
        if eta > 0 {
            let z = try SchedulerChecks.noise(like: sample, supplied: varianceNoise, generator: &generator,
                                              scheduler: Self.className, timestep: timestep)
            prev = prev + z * stdDev
        }
        return SchedulerStepOutput(prevSample: prev, predictedOriginalSample: x0)
    }

    /// q(xₜ | x₀): √ᾱₜ·x₀ + √(1−ᾱₜ)·ε per batch element.
    public func addNoise(original: Tensor, noise: Tensor, timesteps: [Int]) throws -> Tensor {
        try schedule.addNoise(original: original, noise: noise, timesteps: timesteps)
    }

    /// The v-prediction target v = √ᾱₜ·ε − √(1−ᾱₜ)·x₀ per batch element.
    public func velocity(sample: Tensor, noise: Tensor, timesteps: [Int]) throws -> Tensor {
        try schedule.velocity(sample: sample, noise: noise, timesteps: timesteps)
    }
}
