import Foundation

/// How β₁…β_T are laid out over the training timesteps (`beta_schedule`).
public enum BetaSchedule: String, CaseIterable, Sendable {
    /// βₜ evenly spaced from `beta_start` to `beta_end` (Ho et al. 2020).
    case linear
    /// √βₜ evenly spaced, then squared (Stable Diffusion's schedule).
    case scaledLinear = "scaled_linear"
    /// The cosine schedule ᾱ(t) = cos²((t + 0.008)/1.008 · π/2), βₜ capped at 0.999 (Nichol & Dhariwal 2021, eq. 17).
    case squaredcosCapV2 = "squaredcos_cap_v2"
}

/// What the denoising model predicts (`prediction_type`).
public enum PredictionType: String, CaseIterable, Sendable {
    /// The added noise ε.
    case epsilon
    /// The velocity v = √ᾱ·ε − √(1−ᾱ)·x₀ (Salimans & Ho 2022, §4).
    case vPrediction = "v_prediction"
    /// The clean sample x₀.
    case sample
}

/// How inference timesteps are picked from the training range (`timestep_spacing`); see
/// Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps are Flawed", table 2.
public enum TimestepSpacing: String, CaseIterable, Sendable {
    case leading
    case trailing
    case linspace
}

/// DDPM's posterior variance choice (`variance_type`).
public enum VarianceType: String, CaseIterable, Sendable {
    /// σ²ₜ = β̃ₜ = (1−ᾱₜ₋₁)/(1−ᾱₜ)·βₜ (Ho et al. 2020, eq. 7).
    case fixedSmall = "fixed_small"
    /// The same β̃ₜ, computed through its logarithm.
    case fixedSmallLog = "fixed_small_log"
    /// σ²ₜ = βₜ.
    case fixedLarge = "fixed_large"
    /// The model's second half of channels is the variance itself.
    case learned
    /// The model's second half of channels v interpolates log σ² between log β̃ₜ and log βₜ
    /// (Nichol & Dhariwal 2021, eq. 15).
    case learnedRange = "learned_range"
}

/// DPM-Solver's formulation (`algorithm_type`). Sura implements the data-prediction form.
public enum DPMSolverAlgorithm: String, CaseIterable, Sendable {
    /// DPM-Solver++ (Lu et al. 2022b): the solver integrates the model's x₀ prediction.
    case dpmsolverPlusPlus = "dpmsolver++"
}

/// The second-order correction of DPM-Solver++ (`solver_type`).
public enum DPMSolverType: String, CaseIterable, Sendable {
    case midpoint
    case heun
}

/// The noise level after the last step (`final_sigmas_type`).
public enum FinalSigmasType: String, CaseIterable, Sendable {
    /// σ = 0: the last step lands on the clean sample.
    case zero
    /// σ = σ at training timestep 0.
    case sigmaMin = "sigma_min"
}

/// Euler's sigma interpolation between training timesteps (`interpolation_type`).
public enum InterpolationType: String, CaseIterable, Sendable {
    /// σ linearly interpolated at the (possibly fractional) timesteps.
    case linear
    /// n + 1 sigmas evenly spaced in log σ between the smallest and largest training sigma.
    case logLinear = "log_linear"
}

/// Euler's timestep values (`timestep_type`); only discrete timesteps are supported.
public enum TimestepType: String, CaseIterable, Sendable {
    case discrete
}

/// A diffusers `scheduler_config.json`, with its keys spelled exactly as diffusers writes them.
///
/// One struct serves every scheduler class: each class reads the keys it knows, as diffusers
/// does. Keys whose default differs by class are optional here (`timestep_spacing`: "leading"
/// for DDPM/DDIM, "linspace" for Euler/DPM-Solver; `variance_type`: "fixed_small" for DDPM).
/// Unknown keys are ignored, as diffusers ignores them; an unknown *value* of a known key
/// throws `SchedulerError.invalidValue` naming the key and the allowed values.
public struct SchedulerConfig: Codable, Equatable, Sendable {
    /// `_class_name`: "DDPMScheduler", "DDIMScheduler", "EulerDiscreteScheduler" or "DPMSolverMultistepScheduler".
    public var className: String?
    /// `_diffusers_version`, kept so a saved config says which diffusers it mirrors.
    public var diffusersVersion: String?
    public var numTrainTimesteps = 1000
    public var betaStart = 0.0001
    public var betaEnd = 0.02
    public var betaSchedule = BetaSchedule.linear
    /// Explicit β values; when present they replace `beta_schedule` (length must be `num_train_timesteps`).
    public var trainedBetas: [Double]?
    public var predictionType = PredictionType.epsilon
    /// nil means the scheduler class's diffusers default.
    public var timestepSpacing: TimestepSpacing?
    public var stepsOffset = 0
    /// DDPM/DDIM: clamp the predicted x₀ to ±`clip_sample_range`.
    public var clipSample = true
    public var clipSampleRange = 1.0
    /// DDIM: ᾱ before the first training step is 1 (true) or ᾱ₀ (false).
    public var setAlphaToOne = true
    /// Dynamic thresholding (Imagen); not implemented, rejected when true.
    public var thresholding = false
    /// Rescale βs so the terminal SNR is exactly zero (Lin et al. 2023, algorithm 1).
    public var rescaleBetasZeroSnr = false
    /// DDPM: nil means "fixed_small". DPM-Solver: "learned"/"learned_range" keep the first 3 channels.
    public var varianceType: VarianceType?
    public var algorithmType = DPMSolverAlgorithm.dpmsolverPlusPlus
    public var solverOrder = 2
    public var solverType = DPMSolverType.midpoint
    public var lowerOrderFinal = true
    public var eulerAtFinal = false
    public var useKarrasSigmas = false
    /// Not implemented; rejected when true.
    public var useExponentialSigmas = false
    /// Not implemented; rejected when true.
    public var useBetaSigmas = false
    /// Not implemented; rejected when true.
    public var useLuLambdas = false
    /// Not implemented; rejected when true.
    public var useFlowSigmas = false
    public var finalSigmasType = FinalSigmasType.zero
    /// DPM-Solver: timesteps whose log-SNR λ is below this are skipped (default −∞: none).
    public var lambdaMinClipped = -Double.infinity
    /// Karras sigma range overrides (nil: the training schedule's own range).
    public var sigmaMin: Double?
    public var sigmaMax: Double?
    public var interpolationType = InterpolationType.linear
    public var timestepType = TimestepType.discrete

    /// A config holding diffusers' defaults; set the fields you need.
    public init(className: String? = nil) {
        self.className = className
    }

    enum CodingKeys: String, CodingKey {
        case className = "_class_name"
        case diffusersVersion = "_diffusers_version"
        case numTrainTimesteps = "num_train_timesteps"
        case betaStart = "beta_start"
        case betaEnd = "beta_end"
        case betaSchedule = "beta_schedule"
        case trainedBetas = "trained_betas"
        case predictionType = "prediction_type"
        case timestepSpacing = "timestep_spacing"
        case stepsOffset = "steps_offset"
        case clipSample = "clip_sample"
        case clipSampleRange = "clip_sample_range"
        case setAlphaToOne = "set_alpha_to_one"
        case thresholding
        case rescaleBetasZeroSnr = "rescale_betas_zero_snr"
        case varianceType = "variance_type"
        case algorithmType = "algorithm_type"
        case solverOrder = "solver_order"
        case solverType = "solver_type"
        case lowerOrderFinal = "lower_order_final"
        case eulerAtFinal = "euler_at_final"
        case useKarrasSigmas = "use_karras_sigmas"
        case useExponentialSigmas = "use_exponential_sigmas"
        case useBetaSigmas = "use_beta_sigmas"
        case useLuLambdas = "use_lu_lambdas"
        case useFlowSigmas = "use_flow_sigmas"
        case finalSigmasType = "final_sigmas_type"
        case lambdaMinClipped = "lambda_min_clipped"
        case sigmaMin = "sigma_min"
        case sigmaMax = "sigma_max"
        case interpolationType = "interpolation_type"
        case timestepType = "timestep_type"
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        func value<T: Decodable>(_ key: CodingKeys, _ fallback: T) throws -> T {
            do {
                return try c.decodeIfPresent(T.self, forKey: key) ?? fallback
            } catch let error as DecodingError {
                throw SchedulerError.invalidConfig(key: key.stringValue, message: "expected \(T.self): \(error.briefDescription)")
            }
        }
        func choice<E: RawRepresentable & CaseIterable>(_ key: CodingKeys) throws -> E? where E.RawValue == String {
            guard let raw = try value(key, String?.none) else { return nil }
            guard let v = E(rawValue: raw) else {
                throw SchedulerError.invalidValue(key: key.stringValue, value: raw, allowed: E.allCases.map(\.rawValue))
            }
            return v
        }
        className = try value(.className, nil)
        diffusersVersion = try value(.diffusersVersion, nil)
        numTrainTimesteps = try value(.numTrainTimesteps, numTrainTimesteps)
        betaStart = try value(.betaStart, betaStart)
        betaEnd = try value(.betaEnd, betaEnd)
        betaSchedule = try choice(.betaSchedule) ?? betaSchedule
        trainedBetas = try value(.trainedBetas, nil)
        predictionType = try choice(.predictionType) ?? predictionType
        timestepSpacing = try choice(.timestepSpacing)
        stepsOffset = try value(.stepsOffset, stepsOffset)
        clipSample = try value(.clipSample, clipSample)
        clipSampleRange = try value(.clipSampleRange, clipSampleRange)
        setAlphaToOne = try value(.setAlphaToOne, setAlphaToOne)
        thresholding = try value(.thresholding, thresholding)
        rescaleBetasZeroSnr = try value(.rescaleBetasZeroSnr, rescaleBetasZeroSnr)
        varianceType = try choice(.varianceType)
        algorithmType = try choice(.algorithmType) ?? algorithmType
        solverOrder = try value(.solverOrder, solverOrder)
        solverType = try choice(.solverType) ?? solverType
        lowerOrderFinal = try value(.lowerOrderFinal, lowerOrderFinal)
        eulerAtFinal = try value(.eulerAtFinal, eulerAtFinal)
        useKarrasSigmas = try value(.useKarrasSigmas, useKarrasSigmas)
        useExponentialSigmas = try value(.useExponentialSigmas, useExponentialSigmas)
        useBetaSigmas = try value(.useBetaSigmas, useBetaSigmas)
        useLuLambdas = try value(.useLuLambdas, useLuLambdas)
        useFlowSigmas = try value(.useFlowSigmas, useFlowSigmas)
        finalSigmasType = try choice(.finalSigmasType) ?? finalSigmasType
        lambdaMinClipped = try value(.lambdaMinClipped, lambdaMinClipped)
        sigmaMin = try value(.sigmaMin, nil)
        sigmaMax = try value(.sigmaMax, nil)
        interpolationType = try choice(.interpolationType) ?? interpolationType
        timestepType = try choice(.timestepType) ?? timestepType
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encodeIfPresent(className, forKey: .className)
        try c.encodeIfPresent(diffusersVersion, forKey: .diffusersVersion)
        try c.encode(numTrainTimesteps, forKey: .numTrainTimesteps)
        try c.encode(betaStart, forKey: .betaStart)
        try c.encode(betaEnd, forKey: .betaEnd)
        try c.encode(betaSchedule.rawValue, forKey: .betaSchedule)
        try c.encodeIfPresent(trainedBetas, forKey: .trainedBetas)
        try c.encode(predictionType.rawValue, forKey: .predictionType)
        try c.encodeIfPresent(timestepSpacing?.rawValue, forKey: .timestepSpacing)
        try c.encode(stepsOffset, forKey: .stepsOffset)
        try c.encode(clipSample, forKey: .clipSample)
        try c.encode(clipSampleRange, forKey: .clipSampleRange)
        try c.encode(setAlphaToOne, forKey: .setAlphaToOne)
        try c.encode(thresholding, forKey: .thresholding)
        try c.encode(rescaleBetasZeroSnr, forKey: .rescaleBetasZeroSnr)
        try c.encodeIfPresent(varianceType?.rawValue, forKey: .varianceType)
        try c.encode(algorithmType.rawValue, forKey: .algorithmType)
        try c.encode(solverOrder, forKey: .solverOrder)
        try c.encode(solverType.rawValue, forKey: .solverType)
        try c.encode(lowerOrderFinal, forKey: .lowerOrderFinal)
        try c.encode(eulerAtFinal, forKey: .eulerAtFinal)
        try c.encode(useKarrasSigmas, forKey: .useKarrasSigmas)
        try c.encode(useExponentialSigmas, forKey: .useExponentialSigmas)
        try c.encode(useBetaSigmas, forKey: .useBetaSigmas)
        try c.encode(useLuLambdas, forKey: .useLuLambdas)
        try c.encode(useFlowSigmas, forKey: .useFlowSigmas)
        try c.encode(finalSigmasType.rawValue, forKey: .finalSigmasType)
        // Strict JSON has no −∞; leaving the key out gives diffusers its default, which is −∞.
        if lambdaMinClipped.isFinite { try c.encode(lambdaMinClipped, forKey: .lambdaMinClipped) }
        try c.encodeIfPresent(sigmaMin, forKey: .sigmaMin)
        try c.encodeIfPresent(sigmaMax, forKey: .sigmaMax)
        try c.encode(interpolationType.rawValue, forKey: .interpolationType)
        try c.encode(timestepType.rawValue, forKey: .timestepType)
    }

    // MARK: Files

    /// Parses a `scheduler_config.json`. Python's `json` writes −∞ as the bare token `-Infinity`
    /// (DPM-Solver's `lambda_min_clipped`), so the non-standard tokens Infinity/NaN are accepted.
    public static func decode(_ data: Data, path: String = "scheduler_config.json") throws -> SchedulerConfig {
        let decoder = JSONDecoder()
        decoder.allowsJSON5 = true
        do {
            return try decoder.decode(SchedulerConfig.self, from: data)
        } catch let error as SchedulerError {
            throw error
        } catch let error as DecodingError {
            throw SchedulerError.unreadableConfig(path: path, message: error.briefDescription)
        } catch {
            throw SchedulerError.unreadableConfig(path: path, message: "\(error)")
        }
    }

    /// Reads a `scheduler_config.json` file (or a folder holding one).
    public static func load(contentsOf url: URL) throws -> SchedulerConfig {
        var file = url
        var isDirectory: ObjCBool = false
        if FileManager.default.fileExists(atPath: url.path, isDirectory: &isDirectory), isDirectory.boolValue {
            file = url.appendingPathComponent("scheduler_config.json")
        }
        let data: Data
        do {
            data = try Data(contentsOf: file)
        } catch {
            throw SchedulerError.unreadableConfig(path: file.path, message: "cannot read the file (\(error.localizedDescription))")
        }
        return try decode(data, path: file.path)
    }

    /// The config as pretty-printed JSON with diffusers' key names (sorted, as diffusers sorts them).
    public func jsonData() throws -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        return try encoder.encode(self)
    }

    /// Writes the config to `url` through a temporary file, so a crash never leaves half a file.
    public func write(to url: URL) throws {
        try jsonData().write(to: url, options: .atomic)
    }
}

fileprivate extension DecodingError {
    /// One line: what was wrong and at which key path.
    var briefDescription: String {
        func path(_ context: Context) -> String {
            let p = context.codingPath.map(\.stringValue).joined(separator: ".")
            return p.isEmpty ? context.debugDescription : "\(p): \(context.debugDescription)"
        }
        switch self {
        case let .typeMismatch(_, context), let .valueNotFound(_, context),
             let .keyNotFound(_, context), let .dataCorrupted(context):
            return path(context)
        @unknown default:
            return "\(self)"
        }
    }
}
