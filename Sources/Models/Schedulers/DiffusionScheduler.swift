import Foundation
import Tensor

/// The result of one reverse-diffusion step.
public struct SchedulerStepOutput {
    /// x_{t−1} (or, for sigma-space samplers, the sample at the next noise level); same shape as the sample.
    public let prevSample: Tensor
    /// The model's estimate of the clean sample x₀ at this step (after any clipping).
    public let predictedOriginalSample: Tensor
}

/// A diffusion noise scheduler in the shape of diffusers' scheduler API: plain math, separate from
/// the model, configured by a `scheduler_config.json`.
///
/// The sampling loop is
/// ```
/// try scheduler.setTimesteps(25)
/// var x = noise * scheduler.initNoiseSigma
/// for t in scheduler.timesteps {
///     let input = try scheduler.scaleModelInput(x, timestep: t)
///     let output = model(input, t)
///     x = try scheduler.step(modelOutput: output, timestep: t, sample: x, generator: &rng).prevSample
/// }
/// ```
/// Timesteps are `Float` because the model's timestep embedding takes a float and Euler's
/// timesteps are fractional; DDPM, DDIM and DPM-Solver timesteps are whole numbers (their
/// `discreteTimesteps` gives them as `Int`), exactly the values diffusers produces.
/// Tensors are NCHW (any rank ≥ 1 works; axis 0 is the batch).
public protocol DiffusionScheduler: AnyObject {
    /// The diffusers class this scheduler mirrors (`_class_name`).
    static var className: String { get }
    /// The config it was built from.
    var config: SchedulerConfig { get }
    /// β, α and ᾱ over the training timesteps.
    var schedule: NoiseSchedule { get }
    /// The inference timesteps in sampling order (high noise first); empty before `setTimesteps`.
    var timesteps: [Float] { get }
    /// The standard deviation of the initial noise: x_T = noise · initNoiseSigma.
    var initNoiseSigma: Float { get }
    /// Chooses `count` inference timesteps (1 ≤ count ≤ num_train_timesteps) and resets any
    /// multistep state.
    func setTimesteps(_ count: Int) throws
    /// The input the model must see at `timestep` (identity except for sigma-space samplers).
    func scaleModelInput(_ sample: Tensor, timestep: Float) throws -> Tensor
    /// One reverse step from `timestep` to the next timestep of the schedule.
    ///
    /// - Parameters:
    ///   - modelOutput: the model's prediction (ε, v or x₀ per `prediction_type`), shape of `sample`.
    ///   - generator: the random source for stochastic steps; may be nil when the step is deterministic.
    ///   - varianceNoise: standard-normal noise to use instead of drawing from `generator` (tests, reproduction).
    func step(modelOutput: Tensor, timestep: Float, sample: Tensor,
              generator: inout SeededGenerator?, varianceNoise: Tensor?) throws -> SchedulerStepOutput
    /// The forward process at per-batch-element timesteps (`timesteps.count` = batch size), in this
    /// sampler's own sample space: √ᾱₜ·x₀ + √(1−ᾱₜ)·ε for DDPM, DDIM and DPM-Solver; x₀ + σ·ε at
    /// *schedule* timesteps for Euler (img2img). Training code should call `schedule.addNoise`.
    func addNoise(original: Tensor, noise: Tensor, timesteps: [Int]) throws -> Tensor
}

extension DiffusionScheduler {
    /// A step drawing any noise from `generator`.
    public func step(modelOutput: Tensor, timestep: Float, sample: Tensor,
                     generator: inout SeededGenerator?) throws -> SchedulerStepOutput {
        try step(modelOutput: modelOutput, timestep: timestep, sample: sample, generator: &generator, varianceNoise: nil)
    }

    /// A step without a random source: fine for deterministic samplers; stochastic ones throw
    /// `SchedulerError.missingNoiseSource` when they need noise.
    public func step(modelOutput: Tensor, timestep: Float, sample: Tensor,
                     varianceNoise: Tensor? = nil) throws -> SchedulerStepOutput {
        var none: SeededGenerator? = nil
        return try step(modelOutput: modelOutput, timestep: timestep, sample: sample, generator: &none,
                        varianceNoise: varianceNoise)
    }
}

/// The scheduler classes Sura implements, by diffusers class name.
public enum SchedulerRegistry {
    public static let classNames = [DDPMScheduler.className, DDIMScheduler.className,
                                    EulerDiscreteScheduler.className, DPMSolverMultistepScheduler.className]

    /// Builds the scheduler that `config._class_name` names (or `className`, which takes precedence).
    public static func makeScheduler(config: SchedulerConfig, className: String? = nil) throws -> any DiffusionScheduler {
        guard let name = className ?? config.className else {
            throw SchedulerError.invalidConfig(key: "_class_name", message: "missing; expected one of \(classNames.joined(separator: ", "))")
        }
        switch name {
        case DDPMScheduler.className: return try DDPMScheduler(config: config)
        case DDIMScheduler.className: return try DDIMScheduler(config: config)
        case EulerDiscreteScheduler.className: return try EulerDiscreteScheduler(config: config)
        case DPMSolverMultistepScheduler.className: return try DPMSolverMultistepScheduler(config: config)
        default: throw SchedulerError.invalidValue(key: "_class_name", value: name, allowed: classNames)
        }
    }

    /// Reads a `scheduler_config.json` (or a folder holding one) and builds its scheduler.
    public static func load(contentsOf url: URL) throws -> any DiffusionScheduler {
        try makeScheduler(config: SchedulerConfig.load(contentsOf: url))
    }
}

// MARK: Shared checks and tensor helpers

enum SchedulerChecks {
    /// Rejects config keys that are set to something no Sura scheduler implements.
    static func rejectUnsupported(_ config: SchedulerConfig) throws {
        if config.thresholding {
            throw SchedulerError.unsupported(key: "thresholding", value: "true",
                                             reason: "dynamic thresholding is not implemented; use clip_sample instead")
        }
    }

    /// Karras sigma overrides must be positive, with sigma_min < sigma_max when both are set.
    static func karrasRange(_ config: SchedulerConfig) throws {
        for (key, value) in [("sigma_min", config.sigmaMin), ("sigma_max", config.sigmaMax)] {
            if let value, !(value > 0 && value.isFinite) {
                throw SchedulerError.invalidConfig(key: key, message: "must be a positive number, got \(value)")
            }
        }
        if let lo = config.sigmaMin, let hi = config.sigmaMax, lo >= hi {
            throw SchedulerError.invalidConfig(key: "sigma_min", message: "\(lo) must be below sigma_max \(hi)")
        }
    }

    /// Validates a requested inference step count.
    static func stepCount(_ count: Int, _ schedule: NoiseSchedule) throws {
        guard count >= 1 && count <= schedule.numTrainTimesteps else {
            throw SchedulerError.invalidStepCount(requested: count, numTrainTimesteps: schedule.numTrainTimesteps)
        }
    }

    /// A whole-number timestep within the training range, as an index.
    static func discreteTimestep(_ t: Float, _ scheduler: String, _ schedule: NoiseSchedule) throws -> Int {
        guard t.isFinite, t == t.rounded(), t >= 0, Int(t) < schedule.numTrainTimesteps else {
            throw SchedulerError.timestepNotInSchedule(scheduler: scheduler, timestep: t, expected: nil)
        }
        return Int(t)
    }

    static func sameShape(_ what: String, _ tensor: Tensor, _ reference: Tensor) throws {
        guard tensor.shape == reference.shape else {
            throw SchedulerError.shapeMismatch(what: what, expected: reference.shape, got: tensor.shape)
        }
    }

    /// The noise for a stochastic step: the supplied tensor, or a draw from the generator.
    static func noise(like sample: Tensor, supplied: Tensor?, generator: inout SeededGenerator?,
                      scheduler: String, timestep: Float) throws -> Tensor {
        if let supplied {
            try sameShape("\(scheduler) varianceNoise", supplied, sample)
            return supplied
        }
        guard generator != nil else { throw SchedulerError.missingNoiseSource(scheduler: scheduler, timestep: timestep) }
        return Tensor.randn(sample.shape, using: &generator!)
    }

    /// Per-batch-element coefficients shaped [B, 1, 1, …] to broadcast against `like`.
    static func batchCoefficients(_ values: [Float], like sample: Tensor, what: String) throws -> Tensor {
        guard sample.rank >= 1, sample.shape[0] == values.count else {
            throw SchedulerError.shapeMismatch(what: "\(what): one timestep per batch element",
                                               expected: [values.count], got: sample.shape.isEmpty ? [] : [sample.shape[0]])
        }
        return Tensor(shape: [values.count] + [Int](repeating: 1, count: sample.rank - 1), data: values)
    }
}
