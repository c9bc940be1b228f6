import Foundation
import Tensor

// The training side of the noise schedule: corrupt a clean batch, build the regression target,
// weight the per-sample loss. Every tensor is [B, …] with one training timestep per batch element.
// These are ordinary Tensor ops, so gradients flow through them when their inputs need one.

extension NoiseSchedule {
    /// q(xₜ | x₀) = √ᾱₜ·x₀ + √(1−ᾱₜ)·ε, per batch element (Ho et al. 2020, eq. 4).
    ///
    /// - Parameters:
    ///   - original: x₀, shape [B, …].
    ///   - noise: ε, the same shape.
    ///   - timesteps: B training timesteps in 0..<T.
    /// - Returns: xₜ, shape [B, …].
    public func addNoise(original: Tensor, noise: Tensor, timesteps: [Int]) throws -> Tensor {
        try SchedulerChecks.sameShape("addNoise noise", noise, original)
        try checkTrainingTimesteps(timesteps)
        let signal = try SchedulerChecks.batchCoefficients(timesteps.map { signalRate(at: $0) }, like: original, what: "addNoise")
        let noiseScale = try SchedulerChecks.batchCoefficients(timesteps.map { noiseRate(at: $0) }, like: original, what: "addNoise")
        return signal * original + noiseScale * noise
    }

    /// The v-prediction target v = √ᾱₜ·ε − √(1−ᾱₜ)·x₀ (Salimans & Ho 2022, §4), per batch element;
    /// diffusers' `get_velocity`.
    public func velocity(sample: Tensor, noise: Tensor, timesteps: [Int]) throws -> Tensor {
        try SchedulerChecks.sameShape("velocity noise", noise, sample)
        try checkTrainingTimesteps(timesteps)
        let signal = try SchedulerChecks.batchCoefficients(timesteps.map { signalRate(at: $0) }, like: sample, what: "velocity")
        let noiseScale = try SchedulerChecks.batchCoefficients(timesteps.map { noiseRate(at: $0) }, like: sample, what: "velocity")
        return signal * noise - noiseScale * sample
    }

    /// The regression target the model learns for `predictionType`: ε, v, or x₀.
    public func trainingTarget(predictionType: PredictionType, original: Tensor, noise: Tensor,
                               timesteps: [Int]) throws -> Tensor {
        switch predictionType {
        case .epsilon:
            try SchedulerChecks.sameShape("trainingTarget noise", noise, original)
            return noise
        case .vPrediction: return try velocity(sample: original, noise: noise, timesteps: timesteps)
        case .sample:
            try SchedulerChecks.sameShape("trainingTarget noise", noise, original)
            return original
        }
    }

    /// SNR(t) = ᾱₜ/(1−ᾱₜ) for each timestep, computed as (√ᾱ/√(1−ᾱ))² like diffusers' `compute_snr`.
    public func signalToNoiseRatios(_ timesteps: [Int]) throws -> [Float] {
        try checkTrainingTimesteps(timesteps)
        return timesteps.map { signalToNoiseRatio(at: $0) }
    }

    /// Min-SNR-γ loss weights (Hang et al. 2023, "Efficient Diffusion Training via Min-SNR
    /// Weighting Strategy", eq. 9 and its ε/v forms), one per batch element:
    /// - ε-prediction: min(SNR, γ)/SNR,
    /// - v-prediction: min(SNR, γ)/(SNR + 1),
    /// - x₀-prediction: min(SNR, γ).
    /// Multiply each sample's mean squared error by its weight. At zero SNR (the terminal step of a
    /// zero-terminal-SNR schedule) the ε weight is its limit 1 rather than 0/0; at infinite SNR
    /// (ᾱ = 1) the ε and v weights are 0.
    public func minSNRWeights(timesteps: [Int], gamma: Float, predictionType: PredictionType) throws -> [Float] {
        guard gamma > 0, gamma.isFinite else {
            throw SchedulerError.invalidArgument(name: "snr_gamma", message: "must be a positive finite number, got \(gamma)")
        }
        return try signalToNoiseRatios(timesteps).map { snr in
            let clipped = Swift.min(snr, gamma)
            switch predictionType {
            case .epsilon:
                if snr == 0 { return 1 }
                return snr.isInfinite ? 0 : clipped / snr
            case .vPrediction: return snr.isInfinite ? 0 : clipped / (snr + 1)
            case .sample: return clipped
            }
        }
    }

    /// `count` training timesteps drawn uniformly from 0..<T.
    public func randomTimesteps(count: Int, using generator: inout SeededGenerator) -> [Int] {
        let n = UInt64(numTrainTimesteps)
        return (0..<count).map { _ in Int(generator.next(upperBound: n)) }
    }
}

/// Offset noise (Guttenberg 2023, "Diffusion with Offset Noise"): ε + offset·δ with one
/// δ ~ N(0, 1) per (batch, channel), broadcast over the spatial axes, so the model also learns
/// to change an image's mean brightness.
///
/// - Parameters:
///   - noise: ε, shape [B, C, …].
///   - offset: the offset scale (0.05–0.1 is usual); 0 returns `noise` unchanged.
/// - Returns: the offset noise, shape of `noise`.
public func offsetNoise(_ noise: Tensor, offset: Float, using generator: inout SeededGenerator) throws -> Tensor {
    guard offset >= 0, offset.isFinite else {
        throw SchedulerError.invalidArgument(name: "noise_offset", message: "must be a non-negative finite number, got \(offset)")
    }
    guard noise.rank >= 2 else {
        throw SchedulerError.shapeMismatch(what: "offsetNoise: noise must be [B, C, …]", expected: [-1, -1], got: noise.shape)
    }
    if offset == 0 { return noise }
    let perChannel = Tensor.randn([noise.shape[0], noise.shape[1]] + [Int](repeating: 1, count: noise.rank - 2),
                                  using: &generator)
    return noise + perChannel * offset
}
