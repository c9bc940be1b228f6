import Foundation
import Tensor

/// The Euler sampler of Karras et al. 2022 ("Elucidating the Design Space of Diffusion-Based
/// Generative Models", algorithm 2 without churn) on the discrete training schedule, mirroring
/// diffusers' `EulerDiscreteScheduler`.
///
/// It integrates the probability-flow ODE dx/dσ = (x − x̂₀)/σ in the variance-exploding
/// parameterisation x = x₀ + σ·ε, σₜ = √((1−ᾱₜ)/ᾱₜ). The model still sees the variance-preserving
/// input x/√(σ² + 1) (`scaleModelInput`), and the first sample is noise · `initNoiseSigma`.
///
/// Config keys read: the schedule keys, `prediction_type`, `interpolation_type`,
/// `use_karras_sigmas`, `sigma_min`, `sigma_max`, `timestep_spacing` (default "linspace"),
/// `steps_offset`, `final_sigmas_type`, `rescale_betas_zero_snr` (ᾱ_T becomes 2⁻²⁴ so σ_T is
/// finite); `timestep_type` must be "discrete"; exponential/beta sigmas are not implemented.
/// Timesteps may be fractional (linspace spacing, Karras sigmas), as in diffusers.
public final class EulerDiscreteScheduler: DiffusionScheduler {
    public static let className = "EulerDiscreteScheduler"
    public let config: SchedulerConfig
    public let schedule: NoiseSchedule
    public let timestepSpacing: TimestepSpacing
    /// σ at every training timestep (float32, as diffusers computes it), index = timestep.
    public let trainingSigmas: [Float]
    public private(set) var timesteps: [Float] = []
    /// σ for each inference step, plus the final σ (0 or σ_min): count = timesteps.count + 1.
    public private(set) var sigmas: [Float]
    /// The index of the next step, set by the first `scaleModelInput` or `step` after `setTimesteps`.
    public private(set) var stepIndex: Int?

    public init(config: SchedulerConfig) throws {
        try SchedulerChecks.rejectUnsupported(config)
        try EulerDiscreteScheduler.rejectUnsupported(config)
        try SchedulerChecks.karrasRange(config)
        self.config = config
        var schedule = try NoiseSchedule(config: config)
        if config.rescaleBetasZeroSnr {
            schedule = schedule.replacingTerminalAlphaCumprod(Float(pow(2.0, -24.0)))
        }
        self.schedule = schedule
        timestepSpacing = config.timestepSpacing ?? .linspace
        trainingSigmas = schedule.alphasCumprod.map { ((1 - $0) / $0).squareRoot() }
        // Before setTimesteps diffusers holds every training sigma, high to low, then 0.
        sigmas = trainingSigmas.reversed() + [0]
    }

    static func rejectUnsupported(_ config: SchedulerConfig) throws {
        if config.useExponentialSigmas {
            throw SchedulerError.unsupported(key: "use_exponential_sigmas", value: "true", reason: "only Karras sigmas are implemented")
        }
        if config.useBetaSigmas {
            throw SchedulerError.unsupported(key: "use_beta_sigmas", value: "true", reason: "only Karras sigmas are implemented")
        }
    }

    /// The largest σ of the current sigmas, or √(σ_max² + 1) for leading spacing (diffusers' rule).
    public var initNoiseSigma: Float {
        let maxSigma = sigmas.max() ?? 0
        if timestepSpacing == .linspace || timestepSpacing == .trailing { return maxSigma }
        return (maxSigma * maxSigma + 1).squareRoot()
    }

    public func setTimesteps(_ count: Int) throws {
        try SchedulerChecks.stepCount(count, schedule)
        let T = schedule.numTrainTimesteps
        var steps: [Double]
        switch timestepSpacing {
        case .linspace:
            steps = NumPyMirror.linspace(0, Double(T - 1), count).map { Double(Float($0)) }.reversed()
        case .leading:
            let ratio = T / count
            steps = (0..<count).map { Double($0 * ratio + config.stepsOffset) }.reversed()
        case .trailing:
            steps = NumPyMirror.arange(Double(T), 0, -Double(T) / Double(count)).map { NumPyMirror.round($0) - 1 }
            if steps.count > count { steps = Array(steps.prefix(count)) }
        }
        if let bad = steps.first(where: { $0 < 0 || $0 > Double(T - 1) }) {
            throw SchedulerError.invalidConfig(
                key: "steps_offset", message: "timestep_spacing \"\(timestepSpacing.rawValue)\" with steps_offset \(config.stepsOffset) gives timestep \(bad), outside 0..<\(T)")
        }

        let table = trainingSigmas.map(Double.init)
        var stepSigmas: [Double]
        switch config.interpolationType {
        case .linear:
            stepSigmas = steps.map { EulerDiscreteScheduler.interpolate(table, at: $0) }
        case .logLinear:
            // n + 1 values evenly spaced in log σ (torch.linspace in float32, then exp).
            let logs = NoiseSchedule.torchLinspace(Foundation.log(trainingSigmas[T - 1]), Foundation.log(trainingSigmas[0]), count + 1)
            stepSigmas = logs.map { Double(Foundation.exp($0)) }
        }
        if config.useKarrasSigmas {
            stepSigmas = KarrasSigmas.sigmas(from: stepSigmas, count: count, sigmaMin: config.sigmaMin, sigmaMax: config.sigmaMax)
            let logTable = trainingSigmas.map { Double(Foundation.log($0)) }
            steps = stepSigmas.map { KarrasSigmas.timestep(forSigma: $0, logSigmas: logTable) }
        }
        let last: Float = config.finalSigmasType == .zero ? 0 : trainingSigmas[0]
        sigmas = stepSigmas.map { Float($0) } + [last]
        timesteps = steps.map { Float($0) }
        stepIndex = nil
    }

    /// `np.interp(x, arange(n), table)`: linear interpolation, clamped at both ends.
    static func interpolate(_ table: [Double], at x: Double) -> Double {
        if x <= 0 { return table[0] }
        let last = table.count - 1
        if x >= Double(last) { return table[last] }
        let i = Int(x.rounded(.down))
        let w = x - Double(i)
        return w == 0 ? table[i] : table[i] + (table[i + 1] - table[i]) * w
    }

    /// Finds the step for `timestep` on the first call after `setTimesteps` and afterwards checks
    /// that the caller follows the schedule. (diffusers' `_init_step_index` starts at the *second*
    /// match when the timestep repeats, which runs off the end when it is the first timestep;
    /// Sura starts at the first match.)
    func currentStepIndex(for timestep: Float) throws -> Int {
        guard !timesteps.isEmpty else { throw SchedulerError.timestepsNotSet(scheduler: Self.className) }
        if let i = stepIndex {
            guard i < timesteps.count else { throw SchedulerError.scheduleFinished(scheduler: Self.className, steps: timesteps.count) }
            guard timesteps[i] == timestep else {
                throw SchedulerError.timestepNotInSchedule(scheduler: Self.className, timestep: timestep, expected: timesteps[i])
            }
            return i
        }
        let matches = timesteps.indices.filter { timesteps[$0] == timestep }
        guard let first = matches.first else {
            throw SchedulerError.timestepNotInSchedule(scheduler: Self.className, timestep: timestep, expected: nil)
        }
        stepIndex = first
        return first
    }

    /// x / √(σ² + 1): the variance-preserving input the model was trained on.
    public func scaleModelInput(_ sample: Tensor, timestep: Float) throws -> Tensor {
        let sigma = sigmas[try currentStepIndex(for: timestep)]
        return sample / Tensor(scalar: (sigma * sigma + 1).squareRoot())
    }

    /// One Euler step from σᵢ to σᵢ₊₁ (Karras et al. algorithm 2, lines 5–8 without churn):
    /// d = (x − x̂₀)/σᵢ, x' = x + (σᵢ₊₁ − σᵢ)·d. Deterministic: no noise is drawn.
    public func step(modelOutput: Tensor, timestep: Float, sample: Tensor,
                     generator: inout SeededGenerator?, varianceNoise: Tensor?) throws -> SchedulerStepOutput {
        let i = try currentStepIndex(for: timestep)
        try SchedulerChecks.sameShape("EulerDiscreteScheduler model output", modelOutput, sample)
        let sigma = sigmas[i]
        // Without churn γ = 0, so σ̂ = σ·(γ + 1) = σ.
        let sigmaHat = sigma
        let x0: Tensor
        switch config.predictionType {
        case .sample: x0 = modelOutput
        case .epsilon: x0 = sample - modelOutput * sigmaHat
        case .vPrediction:
            // With c = 1/√(σ²+1): x̂₀ = c²·x − σc·v (the VP quantities rewritten in σ).
            x0 = modelOutput * (-sigma / (sigma * sigma + 1).squareRoot()) + sample / Tensor(scalar: sigma * sigma + 1)
        }
        let derivative = (sample - x0) / Tensor(scalar: sigmaHat)
        let dt = sigmas[i + 1] - sigmaHat
        let prev = sample + derivative * dt
        stepIndex = i + 1
        return SchedulerStepOutput(prevSample: prev, predictedOriginalSample: x0)
    }

    /// The forward process in Euler's σ-space, as diffusers' `add_noise`: x₀ + σ·ε, with σ looked
    /// up at each element's timestep in the *current inference schedule* (img2img). The timesteps
    /// must be values of `timesteps`. For training, use `schedule.addNoise` instead.
    public func addNoise(original: Tensor, noise: Tensor, timesteps: [Int]) throws -> Tensor {
        try addNoise(original: original, noise: noise, scheduleTimesteps: timesteps.map(Float.init))
    }

    /// `addNoise` for fractional schedule timesteps.
    public func addNoise(original: Tensor, noise: Tensor, scheduleTimesteps: [Float]) throws -> Tensor {
        try SchedulerChecks.sameShape("addNoise noise", noise, original)
        guard !self.timesteps.isEmpty else { throw SchedulerError.timestepsNotSet(scheduler: Self.className) }
        let levels = try scheduleTimesteps.map { t -> Float in
            let matches = self.timesteps.indices.filter { self.timesteps[$0] == t }
            guard let first = matches.first else {
                throw SchedulerError.timestepNotInSchedule(scheduler: Self.className, timestep: t, expected: nil)
            }
            return sigmas[matches.count > 1 ? matches[1] : first]
        }
        let sigma = try SchedulerChecks.batchCoefficients(levels, like: original, what: "addNoise")
        return original + noise * sigma
    }
}

/// The Karras et al. 2022 noise levels (eq. 5, ρ = 7) and the inverse map from σ to a fractional
/// training timestep, shared by Euler and DPM-Solver.
enum KarrasSigmas {
    /// σᵢ = (σ_max^{1/ρ} + i/(n−1)·(σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ, from σ_max down to σ_min; the
    /// range defaults to the first and last of `descending`.
    static func sigmas(from descending: [Double], count: Int, sigmaMin: Double?, sigmaMax: Double?) -> [Double] {
        let lo = sigmaMin ?? descending[descending.count - 1]
        let hi = sigmaMax ?? descending[0]
        let rho = 7.0
        let minInv = pow(lo, 1 / rho), maxInv = pow(hi, 1 / rho)
        return NumPyMirror.linspace(0, 1, count).map { ramp in pow(maxInv + ramp * (minInv - maxInv), rho) }
    }

    /// The fractional timestep whose σ is `sigma`: linear interpolation in log σ between the two
    /// neighbouring training timesteps (diffusers' `_sigma_to_t`).
    static func timestep(forSigma sigma: Double, logSigmas: [Double]) -> Double {
        let logSigma = Foundation.log(Swift.max(sigma, 1e-10))
        // The last index whose log σ is ≤ the target (0 when none), kept below the final index.
        var low = 0
        for (i, l) in logSigmas.enumerated() where logSigma - l >= 0 { low = i }
        low = Swift.min(low, logSigmas.count - 2)
        let high = low + 1
        let lo = logSigmas[low], hi = logSigmas[high]
        let w = Swift.min(Swift.max((lo - logSigma) / (lo - hi), 0), 1)
        return (1 - w) * Double(low) + w * Double(high)
    }
}
