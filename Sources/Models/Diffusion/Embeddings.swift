import Foundation
import Tensor

/// Sinusoidal timestep embeddings (DDPM; diffusers' `get_timestep_embedding`).
///
/// With half = ⌊dim/2⌋ and frequencies fᵢ = exp(−ln(maxPeriod)·i / (half − downscaleFreqShift)),
/// i = 0..<half, each timestep t gives [sin(s·t·fᵢ)…, cos(s·t·fᵢ)…] (s = `scale`), or
/// [cos…, sin…] when `flipSinToCos`; an odd `dim` gets one trailing zero.
/// Computed in float32 in the same order as the reference, so the values match it bit for bit
/// up to the last ulp of the library `exp`, `sin` and `cos`.
///
/// - Parameters:
///   - timesteps: N timesteps (may be fractional).
///   - dim: embedding width.
/// - Returns: [N, dim], outside the autograd graph (timesteps are data, not parameters).
public func sinusoidalTimestepEmbedding(timesteps: [Float], dim: Int, flipSinToCos: Bool = false,
                                        downscaleFreqShift: Float = 1, scale: Float = 1,
                                        maxPeriod: Float = 10_000) -> Tensor {
    let n = timesteps.count
    let half = dim / 2
    let out = Tensor(zeros: [n, dim])
    guard half > 0 else { return out }
    let logPeriod = -Foundation.log(maxPeriod)
    let denominator = Float(half) - downscaleFreqShift
    let frequencies: [Float] = (0..<half).map { i in Foundation.exp(logPeriod * Float(i) / denominator) }
    let p = out.storage.pointer
    for (row, t) in timesteps.enumerated() {
        let base = p + row * dim
        let sinOffset = flipSinToCos ? half : 0
        let cosOffset = flipSinToCos ? 0 : half
        for i in 0..<half {
            let angle = scale * (t * frequencies[i])
            base[sinOffset + i] = Foundation.sin(angle)
            base[cosOffset + i] = Foundation.cos(angle)
        }
    }
    return out
}

/// diffusers' `TimestepEmbedding`: the MLP that turns the sinusoidal embedding into the vector
/// every resnet receives: linear_2(act(linear_1(x))), optionally followed by `postAct`.
///
/// Parameters: `linear_1` [timeEmbedDim, inChannels], `linear_2` [outDim, timeEmbedDim] (+ biases).
public final class TimestepEmbedding: Module {
    @ModuleKey("linear_1") public var linear1: Linear
    @ModuleKey("linear_2") public var linear2: Linear
    public let activation: DiffusionActivation
    public let postActivation: DiffusionActivation?

    public init(inChannels: Int, timeEmbedDim: Int, outDim: Int? = nil, activation: DiffusionActivation = .silu,
                postActivation: DiffusionActivation? = nil, rng: inout SeededGenerator) {
        _linear1.wrappedValue = Linear(inChannels, timeEmbedDim, rng: &rng)
        _linear2.wrappedValue = Linear(timeEmbedDim, outDim ?? timeEmbedDim, rng: &rng)
        self.activation = activation
        self.postActivation = postActivation
        super.init()
    }

    /// x [N, inChannels] → [N, outDim].
    public func callAsFunction(_ x: Tensor) -> Tensor {
        let h = linear2(activation(linear1(x)))
        return postActivation.map { $0(h) } ?? h
    }
}
