import Foundation
import Tensor

/// Denoising diffusion probabilistic models (Ho et al. 2020): ancestral sampling from the
/// posterior q(x_{t−1} | xₜ, x₀), mirroring diffusers' `DDPMScheduler`.
///
/// Config keys read: `num_train_timesteps`, `beta_start`, `beta_end`, `beta_schedule`,
/// `trained_betas`, `variance_type` (default "fixed_small"), `clip_sample`, `clip_sample_range`,
/// `prediction_type`, `timestep_spacing` (default "leading"), `steps_offset`,
/// `rescale_betas_zero_snr`; `thresholding` must be false.
public final class DDPMScheduler: DiffusionScheduler {
    public static let className = "DDPMScheduler"
    public let config: SchedulerConfig
    public let schedule: NoiseSchedule
    public let timestepSpacing: TimestepSpacing
    public let varianceType: VarianceType
    /// The inference timesteps as integers (empty before `setTimesteps`).
    public private(set) var discreteTimesteps: [Int] = []
    public var timesteps: [Float] { discreteTimesteps.map(Float.init) }
    public var initNoiseSigma: Float { 1 }

    public init(config: SchedulerConfig) throws {
        try SchedulerChecks.rejectUnsupported(config)
        self.config = config
        schedule = try NoiseSchedule(config: config)
        timestepSpacing = config.timestepSpacing ?? .leading
        varianceType = config.varianceType ?? .fixedSmall
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

    /// The timestep after `t` in the schedule, or −1 after the last one.
    public func previousTimestep(_ t: Int) throws -> Int {
        guard !discreteTimesteps.isEmpty else { throw SchedulerError.timestepsNotSet(scheduler: Self.className) }
        guard let i = discreteTimesteps.firstIndex(of: t) else {
            throw SchedulerError.timestepNotInSchedule(scheduler: Self.className, timestep: Float(t), expected: nil)
        }
        return i + 1 < discreteTimesteps.count ? discreteTimesteps[i + 1] : -1
    }

    /// One ancestral step: x_{t−1} = μ̃ₜ(xₜ, x̂₀) + σₜ·z with z ~ N(0, I) when t > 0.
    ///
    /// With learned variances (`variance_type` "learned"/"learned_range") `modelOutput` has twice
    /// the sample's channels: the prediction, then the variance output.
    public func step(modelOutput: Tensor, timestep: Float, sample: Tensor,
                     generator: inout SeededGenerator?, varianceNoise: Tensor?) throws -> SchedulerStepOutput {
        let t = try SchedulerChecks.discreteTimestep(timestep, Self.className, schedule)
        let prevT = try previousTimestep(t)
        var prediction = modelOutput
        var predictedVariance: Tensor? = nil
        if varianceType == .learned || varianceType == .learnedRange {
            guard sample.rank >= 2, modelOutput.rank == sample.rank, modelOutput.shape[1] == 2 * sample.shape[1] else {
                var expected = sample.shape
                if expected.count >= 2 { expected[1] *= 2 }
                throw SchedulerError.shapeMismatch(what: "DDPMScheduler model output with variance_type \(varianceType.rawValue)",
                                                   expected: expected, got: modelOutput.shape)
            }
            let halves = modelOutput.split([sample.shape[1], sample.shape[1]], axis: 1)
            prediction = halves[0]
            predictedVariance = halves[1]
        }
        try SchedulerChecks.sameShape("DDPMScheduler model output", prediction, sample)

        let alphaProd = schedule.alphasCumprod[t]
        let alphaProdPrev: Float = prevT >= 0 ? schedule.alphasCumprod[prevT] : 1
        let betaProd = 1 - alphaProd
        let betaProdPrev = 1 - alphaProdPrev
        let currentAlpha = alphaProd / alphaProdPrev
        let currentBeta = 1 - currentAlpha

        // Ho et al. eq. 15: x̂₀ from the prediction.
        var x0: Tensor
        switch config.predictionType {
        case .epsilon: x0 = (sample - prediction * betaProd.squareRoot()) / Tensor(scalar: alphaProd.squareRoot())
        case .sample: x0 = prediction
        case .vPrediction: x0 = sample * alphaProd.squareRoot() - prediction * betaProd.squareRoot()
        }
        if config.clipSample {
            let r = Float(config.clipSampleRange)
            x0 = x0.clamp(min: -r, max: r)
        }

        // Ho et al. eq. 7: the posterior mean μ̃ₜ = √ᾱₜ₋₁βₜ/(1−ᾱₜ)·x̂₀ + √αₜ(1−ᾱₜ₋₁)/(1−ᾱₜ)·xₜ,
        // with βₜ, αₜ taken between the two (possibly non-adjacent) inference timesteps.
        let x0Coefficient = (alphaProdPrev.squareRoot() * currentBeta) / betaProd
        let sampleCoefficient = currentAlpha.squareRoot() * betaProdPrev / betaProd
        var prev = x0 * x0Coefficient + sample * sampleCoefficient

        if t > 0 {
            let z = try SchedulerChecks.noise(like: sample, supplied: varianceNoise, generator: &generator,
                                              scheduler: Self.className, timestep: timestep)
            // Ho et al. eq. 7: β̃ₜ = (1−ᾱₜ₋₁)/(1−ᾱₜ)·βₜ, floored so its logarithm stays finite.
            let small = Swift.max(betaProdPrev / betaProd * currentBeta, 1e-20)
            switch varianceType {
            case .fixedSmall: prev = prev + z * small.squareRoot()
            case .fixedSmallLog: prev = prev + z * Foundation.exp(0.5 * Foundation.log(small))
            case .fixedLarge: prev = prev + z * currentBeta.squareRoot()
            case .learned: prev = prev + predictedVariance!.sqrt() * z
            case .learnedRange:
                // Nichol & Dhariwal eq. 15: log σ² = v·log βₜ + (1−v)·log β̃ₜ with v = (output + 1)/2.
                let frac = (predictedVariance! + 1) / 2
                let logVariance = frac * Foundation.log(currentBeta) + (1 - frac) * Foundation.log(small)
                prev = prev + (logVariance * 0.5).exp() * z
            }
        }
        return SchedulerStepOutput(prevSample: prev, predictedOriginalSample: x0)
    }

    /// q(xₜ | x₀): √ᾱₜ·x₀ + √(1−ᾱₜ)·ε per batch element (Ho et al. eq. 4).
    public func addNoise(original: Tensor, noise: Tensor, timesteps: [Int]) throws -> Tensor {
        try schedule.addNoise(original: original, noise: noise, timesteps: timesteps)
    }

    /// The v-prediction target v = √ᾱₜ·ε − √(1−ᾱₜ)·x₀ per batch element.
    public func velocity(sample: Tensor, noise: Tensor, timesteps: [Int]) throws -> Tensor {
        try schedule.velocity(sample: sample, noise: noise, timesteps: timesteps)
    }
}
