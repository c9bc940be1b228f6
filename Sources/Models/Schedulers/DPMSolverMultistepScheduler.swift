import Foundation
import Tensor

/// DPM-Solver++ multistep (Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of
/// Diffusion Probabilistic Models"), mirroring diffusers' `DPMSolverMultistepScheduler` with
/// `algorithm_type = "dpmsolver++"`. With the default `solver_order = 2` this is "DPM++ 2M".
///
/// The solver integrates the data-prediction ODE in log-SNR time λ = log(αₜ/σₜ), where
/// αₜ = √ᾱₜ and σₜ = √(1−ᾱₜ): each step converts the model output to x̂₀ and applies the
/// exponential-integrator update, using the previous x̂₀ for the second-order term.
///
/// Config keys read: the schedule keys, `solver_order` (1–3), `prediction_type`, `algorithm_type`
/// (only "dpmsolver++"), `solver_type` ("midpoint"/"heun"), `lower_order_final`, `euler_at_final`,
/// `use_karras_sigmas`, `sigma_min`, `sigma_max`, `final_sigmas_type`, `lambda_min_clipped`,
/// `variance_type`, `timestep_spacing` (default "linspace"), `steps_offset`,
/// `rescale_betas_zero_snr` (ᾱ_T becomes 2⁻²⁴); exponential/beta/Lu/flow sigmas are not implemented.
public final class DPMSolverMultistepScheduler: DiffusionScheduler {
    public static let className = "DPMSolverMultistepScheduler"
    public let config: SchedulerConfig
    public let schedule: NoiseSchedule
    public let timestepSpacing: TimestepSpacing
    /// The inference timesteps as integers (empty before `setTimesteps`).
    public private(set) var discreteTimesteps: [Int] = []
    public var timesteps: [Float] { discreteTimesteps.map(Float.init) }
    /// σ (variance-exploding form, √((1−ᾱ)/ᾱ)) for each step, plus the final σ: count = timesteps.count + 1.
    public private(set) var sigmas: [Float] = []
    /// The index of the next step, set by the first `step` after `setTimesteps`.
    public private(set) var stepIndex: Int?
    public var initNoiseSigma: Float { 1 }
    /// The x̂₀ of the most recent steps, oldest first (at most `solver_order`).
    private var previousPredictions: [Tensor] = []
    /// How many steps have run, capped at the solver order: the usable history length.
    private var lowerOrderCount = 0

    public init(config: SchedulerConfig) throws {
        try SchedulerChecks.rejectUnsupported(config)
        let unsupported: [(String, Bool)] = [("use_exponential_sigmas", config.useExponentialSigmas),
                                             ("use_beta_sigmas", config.useBetaSigmas),
                                             ("use_lu_lambdas", config.useLuLambdas),
                                             ("use_flow_sigmas", config.useFlowSigmas)]
        for (key, on) in unsupported where on {
            throw SchedulerError.unsupported(key: key, value: "true", reason: "only the default and Karras sigmas are implemented")
        }
        try SchedulerChecks.karrasRange(config)
        guard (1...3).contains(config.solverOrder) else {
            throw SchedulerError.invalidValue(key: "solver_order", value: "\(config.solverOrder)", allowed: ["1", "2", "3"])
        }
        if let v = config.varianceType, v != .learned && v != .learnedRange {
            throw SchedulerError.invalidValue(key: "variance_type", value: v.rawValue, allowed: ["learned", "learned_range", "null"])
        }
        self.config = config
        var schedule = try NoiseSchedule(config: config)
        if config.rescaleBetasZeroSnr {
            schedule = schedule.replacingTerminalAlphaCumprod(Float(pow(2.0, -24.0)))
        }
        self.schedule = schedule
        timestepSpacing = config.timestepSpacing ?? .linspace
    }

    /// Chooses the timesteps (n + 1 points spaced as configured, the last dropped, as diffusers
    /// does) and resets the multistep history.
    public func setTimesteps(_ count: Int) throws {
        try SchedulerChecks.stepCount(count, schedule)
        let T = schedule.numTrainTimesteps
        let alphaCumprod = schedule.alphasCumprod
        // Skip timesteps whose λ falls below lambda_min_clipped (searchsorted on λ ascending).
        let lambdas = alphaCumprod.map { a in Foundation.log(a.squareRoot()) - Foundation.log((1 - a).squareRoot()) }
        let clipped = lambdas.reversed().firstIndex { $0 >= Float(config.lambdaMinClipped) } ?? T
        let lastTimestep = T - clipped
        var steps: [Int]
        switch timestepSpacing {
        case .linspace:
            steps = Array(NumPyMirror.linspace(0, Double(lastTimestep - 1), count + 1)
                .map { Int(NumPyMirror.round($0)) }.reversed().dropLast())
        case .leading:
            let ratio = lastTimestep / (count + 1)
            steps = Array((0...count).map { $0 * ratio + config.stepsOffset }.reversed().dropLast())
        case .trailing:
            steps = NumPyMirror.arange(Double(lastTimestep), 0, -Double(T) / Double(count)).map { Int(NumPyMirror.round($0)) - 1 }
            if steps.count > count { steps = Array(steps.prefix(count)) }
        }
        if let bad = steps.first(where: { $0 < 0 || $0 >= T }) {
            throw SchedulerError.invalidConfig(
                key: "steps_offset", message: "timestep_spacing \"\(timestepSpacing.rawValue)\" with steps_offset \(config.stepsOffset) gives timestep \(bad), outside 0..<\(T)")
        }
        let table = alphaCumprod.map { ((1 - $0) / $0).squareRoot() }
        var stepSigmas: [Float]
        if config.useKarrasSigmas {
            let descending = table.reversed().map(Double.init)
            let karras = KarrasSigmas.sigmas(from: descending, count: count, sigmaMin: config.sigmaMin, sigmaMax: config.sigmaMax)
            let logTable = table.map { Double(Foundation.log($0)) }
            var fractional = karras.map { KarrasSigmas.timestep(forSigma: $0, logSigmas: logTable) }
            if config.betaSchedule != .squaredcosCapV2 { fractional = fractional.map(NumPyMirror.round) }
            // diffusers stores the (possibly fractional) timesteps as int64: truncation.
            steps = fractional.map { Int($0) }
            stepSigmas = karras.map { Float($0) }
        } else {
            stepSigmas = steps.map { table[$0] }
        }
        let last: Float = config.finalSigmasType == .zero ? 0 : table[0]
        sigmas = stepSigmas + [last]
        discreteTimesteps = steps
        stepIndex = nil
        previousPredictions = []
        lowerOrderCount = 0
    }

    public func scaleModelInput(_ sample: Tensor, timestep: Float) throws -> Tensor { sample }

    /// αₜ = 1/√(σ² + 1) and σₜ = σ·αₜ: the variance-preserving coefficients of a VE σ.
    private func alphaSigma(_ sigma: Float) -> (alpha: Float, sigma: Float) {
        let alpha = 1 / (sigma * sigma + 1).squareRoot()
        return (alpha, sigma * alpha)
    }

    /// λ = log αₜ − log σₜ (the half log-SNR).
    private func lambda(_ alphaSigma: (alpha: Float, sigma: Float)) -> Float {
        Foundation.log(alphaSigma.alpha) - Foundation.log(alphaSigma.sigma)
    }

    /// Finds the step for `timestep` on the first call after `setTimesteps` and afterwards checks
    /// that the caller follows the schedule. (diffusers starts at the *second* match when the
    /// first timestep repeats, which runs off the end of the schedule, and jumps to the last step
    /// for a timestep not in the schedule; Sura starts at the first match and throws.)
    private func currentStepIndex(for timestep: Float) throws -> Int {
        guard !discreteTimesteps.isEmpty else { throw SchedulerError.timestepsNotSet(scheduler: Self.className) }
        let ts = timesteps
        if let i = stepIndex {
            guard i < ts.count else { throw SchedulerError.scheduleFinished(scheduler: Self.className, steps: ts.count) }
            guard ts[i] == timestep else {
                throw SchedulerError.timestepNotInSchedule(scheduler: Self.className, timestep: timestep, expected: ts[i])
            }
            return i
        }
        let matches = ts.indices.filter { ts[$0] == timestep }
        guard let first = matches.first else {
            throw SchedulerError.timestepNotInSchedule(scheduler: Self.className, timestep: timestep, expected: nil)
        }
        stepIndex = first
        return first
    }

    /// The model output as a data prediction x̂₀ (Lu et al. 2022b, §3.1).
    public func predictedOriginalSample(modelOutput: Tensor, sample: Tensor, sigma: Float) throws -> Tensor {
        var output = modelOutput
        if config.predictionType == .epsilon, config.varianceType == .learned || config.varianceType == .learnedRange {
            guard output.rank >= 2, output.shape[1] >= 3 else {
                throw SchedulerError.shapeMismatch(what: "DPMSolverMultistepScheduler learned-variance output", expected: sample.shape, got: output.shape)
            }
            output = output.sliced(axis: 1, 0, 3)
        }
        try SchedulerChecks.sameShape("DPMSolverMultistepScheduler model output", output, sample)
        let (alpha, sigmaT) = alphaSigma(sigma)
        switch config.predictionType {
        case .epsilon: return (sample - output * sigmaT) / Tensor(scalar: alpha)
        case .sample: return output
        case .vPrediction: return sample * alpha - output * sigmaT
        }
    }

    /// One DPM-Solver++ step from σᵢ to σᵢ₊₁. First order at the start, at the final step (when
    /// `final_sigmas_type` is "zero", `euler_at_final`, or `lower_order_final` with < 15 steps) and
    /// when `solver_order` is 1; second order otherwise (third with `solver_order` 3 once two
    /// earlier predictions exist). Deterministic: no noise is drawn.
    public func step(modelOutput: Tensor, timestep: Float, sample: Tensor,
                     generator: inout SeededGenerator?, varianceNoise: Tensor?) throws -> SchedulerStepOutput {
        let i = try currentStepIndex(for: timestep)
        let n = discreteTimesteps.count
        let lowerOrderFinal = i == n - 1
            && (config.eulerAtFinal || (config.lowerOrderFinal && n < 15) || config.finalSigmasType == .zero)
        let lowerOrderSecond = i == n - 2 && config.lowerOrderFinal && n < 15

        let x0 = try predictedOriginalSample(modelOutput: modelOutput, sample: sample, sigma: sigmas[i])
        previousPredictions.append(x0)
        if previousPredictions.count > config.solverOrder { previousPredictions.removeFirst() }

        let prev: Tensor
        if config.solverOrder == 1 || lowerOrderCount < 1 || lowerOrderFinal {
            prev = firstOrderUpdate(x0: x0, sample: sample, index: i)
        } else if config.solverOrder == 2 || lowerOrderCount < 2 || lowerOrderSecond {
            prev = secondOrderUpdate(sample: sample, index: i)
        } else {
            prev = thirdOrderUpdate(sample: sample, index: i)
        }
        if lowerOrderCount < config.solverOrder { lowerOrderCount += 1 }
        stepIndex = i + 1
        return SchedulerStepOutput(prevSample: prev, predictedOriginalSample: x0)
    }

    /// Lu et al. 2022b, eq. 5 (DPM-Solver++1, i.e. DDIM): x_t = (σ_t/σ_s)·x_s − α_t·(e^{−h} − 1)·x̂₀
    /// with h = λ_t − λ_s. At σ_t = 0, h = ∞ and the update returns x̂₀ exactly.
    private func firstOrderUpdate(x0: Tensor, sample: Tensor, index i: Int) -> Tensor {
        let t = alphaSigma(sigmas[i + 1]), s = alphaSigma(sigmas[i])
        let h = lambda(t) - lambda(s)
        return sample * (t.sigma / s.sigma) - x0 * (t.alpha * (Foundation.exp(-h) - 1))
    }

    /// Lu et al. 2022b, algorithm 2 (DPM-Solver++(2M)): D₀ = m₀, D₁ = (m₀ − m₁)/r₀ with
    /// r₀ = h₀/h; midpoint: x_t = (σ_t/σ_s0)·x − α_t(e^{−h}−1)·D₀ − ½α_t(e^{−h}−1)·D₁;
    /// heun: the D₁ term is α_t((e^{−h}−1)/h + 1)·D₁.
    private func secondOrderUpdate(sample: Tensor, index i: Int) -> Tensor {
        let t = alphaSigma(sigmas[i + 1]), s0 = alphaSigma(sigmas[i]), s1 = alphaSigma(sigmas[i - 1])
        let lambdaT = lambda(t), lambdaS0 = lambda(s0), lambdaS1 = lambda(s1)
        let m0 = previousPredictions[previousPredictions.count - 1]
        let m1 = previousPredictions[previousPredictions.count - 2]
        let h = lambdaT - lambdaS0, h0 = lambdaS0 - lambdaS1
        let r0 = h0 / h
        let d0 = m0, d1 = (m0 - m1) * (1 / r0)
        let expm = Foundation.exp(-h) - 1
        let base = sample * (t.sigma / s0.sigma) - d0 * (t.alpha * expm)
        switch config.solverType {
        case .midpoint: return base - d1 * (0.5 * (t.alpha * expm))
        case .heun: return base + d1 * (t.alpha * (expm / h + 1))
        }
    }

    /// Lu et al. 2022b, DPM-Solver++(3M): second and third divided differences of x̂₀ in λ.
    private func thirdOrderUpdate(sample: Tensor, index i: Int) -> Tensor {
        let t = alphaSigma(sigmas[i + 1]), s0 = alphaSigma(sigmas[i])
        let s1 = alphaSigma(sigmas[i - 1]), s2 = alphaSigma(sigmas[i - 2])
        let lambdaT = lambda(t), lambdaS0 = lambda(s0), lambdaS1 = lambda(s1), lambdaS2 = lambda(s2)
        let k = previousPredictions.count
        let m0 = previousPredictions[k - 1], m1 = previousPredictions[k - 2], m2 = previousPredictions[k - 3]
        let h = lambdaT - lambdaS0, h0 = lambdaS0 - lambdaS1, h1 = lambdaS1 - lambdaS2
        let r0 = h0 / h, r1 = h1 / h
        let d10 = (m0 - m1) * (1 / r0), d11 = (m1 - m2) * (1 / r1)
        let d1 = d10 + (d10 - d11) * (r0 / (r0 + r1))
        let d2 = (d10 - d11) * (1 / (r0 + r1))
        let expm = Foundation.exp(-h) - 1
        return sample * (t.sigma / s0.sigma) - m0 * (t.alpha * expm)
            + d1 * (t.alpha * (expm / h + 1)) - d2 * (t.alpha * ((expm + h) / (h * h) - 0.5))
    }

    /// The forward process √ᾱₜ·x₀ + √(1−ᾱₜ)·ε at training timesteps. (diffusers looks σ up in the
    /// current inference schedule and uses the last step for a timestep not in it; Sura uses the
    /// training schedule, which gives the same values for scheduled timesteps and the right ones otherwise.)
    public func addNoise(original: Tensor, noise: Tensor, timesteps: [Int]) throws -> Tensor {
        try schedule.addNoise(original: original, noise: noise, timesteps: timesteps)
    }
}
