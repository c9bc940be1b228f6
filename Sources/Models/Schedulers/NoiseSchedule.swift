import Foundation

/// The forward-process noise schedule: β₁…β_T, αₜ = 1 − βₜ and ᾱₜ = ∏ₛ≤ₜ αₛ (Ho et al. 2020, §2).
///
/// The forward process is q(xₜ | x₀) = N(√ᾱₜ·x₀, (1 − ᾱₜ)·I) (Ho et al. eq. 4). Values are float32
/// and computed the way PyTorch computes them in diffusers (fused multiply-add in `linspace`,
/// float64 accumulation in `cumprod`), so Sura's schedule equals diffusers' to the last bit or two.
/// Index t runs over training timesteps 0..<`numTrainTimesteps`.
public struct NoiseSchedule: Sendable, Equatable {
    /// βₜ, length T.
    public let betas: [Float]
    /// αₜ = 1 − βₜ.
    public let alphas: [Float]
    /// ᾱₜ = ∏ₛ≤ₜ αₛ.
    public let alphasCumprod: [Float]

    public var numTrainTimesteps: Int { betas.count }
    /// A bound on `num_train_timesteps` so a typo cannot allocate gigabytes (diffusers models use 1000).
    public static let maxTrainTimesteps = 100_000

    /// The schedule a diffusers config describes (`beta_schedule`, `beta_start`, `beta_end`,
    /// `trained_betas`, `num_train_timesteps`, `rescale_betas_zero_snr`).
    public init(config: SchedulerConfig) throws {
        let n = config.numTrainTimesteps
        guard n >= 1 else {
            throw SchedulerError.invalidConfig(key: "num_train_timesteps", message: "must be at least 1, got \(n)")
        }
        guard n <= NoiseSchedule.maxTrainTimesteps else {
            throw SchedulerError.invalidConfig(key: "num_train_timesteps",
                                               message: "\(n) is more than the \(NoiseSchedule.maxTrainTimesteps) Sura accepts")
        }
        var betas: [Float]
        if let trained = config.trainedBetas {
            guard trained.count == n else {
                throw SchedulerError.invalidConfig(
                    key: "trained_betas", message: "has \(trained.count) values but num_train_timesteps is \(n)")
            }
            betas = trained.map { Float($0) }
        } else {
            switch config.betaSchedule {
            case .linear:
                betas = NoiseSchedule.torchLinspace(Float(config.betaStart), Float(config.betaEnd), n)
            case .scaledLinear:
                // √β evenly spaced, then squared (the latent-diffusion schedule).
                betas = NoiseSchedule.torchLinspace(Float(config.betaStart.squareRoot()),
                                                    Float(config.betaEnd.squareRoot()), n).map { $0 * $0 }
            case .squaredcosCapV2:
                betas = NoiseSchedule.cosineBetas(n)
            }
        }
        for (t, b) in betas.enumerated() where !(b.isFinite && b >= 0 && b < 1) {
            let key = config.trainedBetas != nil ? "trained_betas" : "beta_start/beta_end"
            throw SchedulerError.invalidConfig(key: key, message: "β at timestep \(t) is \(b); every β must lie in [0, 1)")
        }
        if config.rescaleBetasZeroSnr { betas = NoiseSchedule.rescaledToZeroTerminalSNR(betas) }
        self.init(uncheckedBetas: betas)
    }

    /// A schedule from explicit βs (each in [0, 1]).
    public init(betas: [Float]) throws {
        guard !betas.isEmpty else { throw SchedulerError.invalidConfig(key: "betas", message: "empty") }
        for (t, b) in betas.enumerated() where !(b.isFinite && b >= 0 && b <= 1) {
            throw SchedulerError.invalidConfig(key: "betas", message: "β at timestep \(t) is \(b); it must lie in [0, 1]")
        }
        self.init(uncheckedBetas: betas)
    }

    private init(uncheckedBetas betas: [Float]) {
        self.betas = betas
        alphas = betas.map { 1 - $0 }
        alphasCumprod = NoiseSchedule.cumulativeProduct(alphas)
    }

    private init(betas: [Float], alphas: [Float], alphasCumprod: [Float]) {
        self.betas = betas
        self.alphas = alphas
        self.alphasCumprod = alphasCumprod
    }

    /// The same schedule with ᾱ_T replaced: Euler and DPM-Solver set it to 2⁻²⁴ under zero
    /// terminal SNR so that σ_T = √((1−ᾱ)/ᾱ) stays finite.
    public func replacingTerminalAlphaCumprod(_ value: Float) -> NoiseSchedule {
        var ac = alphasCumprod
        ac[ac.count - 1] = value
        return NoiseSchedule(betas: betas, alphas: alphas, alphasCumprod: ac)
    }

    // MARK: Per-timestep quantities

    /// √ᾱₜ, the signal coefficient of q(xₜ | x₀).
    public func signalRate(at t: Int) -> Float { alphasCumprod[t].squareRoot() }
    /// √(1 − ᾱₜ), the noise coefficient of q(xₜ | x₀).
    public func noiseRate(at t: Int) -> Float { (1 - alphasCumprod[t]).squareRoot() }
    /// SNR(t) = ᾱₜ / (1 − ᾱₜ) (Kingma et al. 2021); +∞ when ᾱₜ = 1.
    public func signalToNoiseRatio(at t: Int) -> Float {
        let a = signalRate(at: t), s = noiseRate(at: t)
        return (a / s) * (a / s)
    }
    /// The variance-exploding noise level σₜ = √((1 − ᾱₜ)/ᾱₜ) = 1/√SNR (Karras et al. 2022).
    public func sigma(at t: Int) -> Float {
        let a = alphasCumprod[t]
        return ((1 - a) / a).squareRoot()
    }

    /// Throws unless every timestep lies in 0..<T.
    func checkTrainingTimesteps(_ timesteps: [Int]) throws {
        for t in timesteps where t < 0 || t >= numTrainTimesteps {
            throw SchedulerError.timestepOutOfRange(timestep: t, numTrainTimesteps: numTrainTimesteps)
        }
    }

    // MARK: Construction details

    /// `torch.linspace(start, end, n, dtype=float32)` on the CPU: the step is a float32 quotient,
    /// the first half counts up from `start` and the second half down from `end`, each value one
    /// fused multiply-add.
    static func torchLinspace(_ start: Float, _ end: Float, _ n: Int) -> [Float] {
        if n == 1 { return [start] }
        let step = (end - start) / Float(n - 1)
        let halfway = n / 2
        return (0..<n).map { i in
            i < halfway ? start.addingProduct(step, Float(i)) : end.addingProduct(-step, Float(n - 1 - i))
        }
    }

    /// βₜ = min(1 − ᾱ((t+1)/T)/ᾱ(t/T), 0.999) with ᾱ(s) = cos²((s + 0.008)/1.008 · π/2)
    /// (Nichol & Dhariwal 2021, eq. 17), computed in double precision like diffusers.
    static func cosineBetas(_ n: Int) -> [Float] {
        func alphaBar(_ s: Double) -> Double {
            let c = Foundation.cos((s + 0.008) / 1.008 * Double.pi / 2)
            return c * c
        }
        return (0..<n).map { i in
            let t1 = Double(i) / Double(n), t2 = Double(i + 1) / Double(n)
            return Float(Swift.min(1 - alphaBar(t2) / alphaBar(t1), 0.999))
        }
    }

    /// ᾱₜ as `torch.cumprod` computes it: a float64 running product stored as float32 each step.
    static func cumulativeProduct(_ values: [Float]) -> [Float] {
        var acc = 1.0
        return values.map { v in
            acc *= Double(v)
            return Float(acc)
        }
    }

    /// Lin et al. 2023, algorithm 1: shift √ᾱ so its last value is 0, scale it so its first value
    /// is unchanged, then undo the cumulative product. The last β becomes exactly 1.
    static func rescaledToZeroTerminalSNR(_ betas: [Float]) -> [Float] {
        let alphas = betas.map { 1 - $0 }
        var root = cumulativeProduct(alphas).map { $0.squareRoot() }
        let first = root[0], last = root[root.count - 1]
        let scale = first / (first - last)
        for i in root.indices { root[i] = (root[i] - last) * scale }
        let alphaBar = root.map { $0 * $0 }
        var newAlphas = [alphaBar[0]]
        for i in 1..<alphaBar.count { newAlphas.append(alphaBar[i] / alphaBar[i - 1]) }
        return newAlphas.map { 1 - $0 }
    }
}

/// NumPy's array constructors as diffusers calls them for timestep spacing, reproduced to the bit
/// so that every rounding (NumPy rounds half to even) lands on the same integer.
enum NumPyMirror {
    /// `np.linspace(start, stop, num)` in float64: i·step + start, the last value exactly `stop`.
    static func linspace(_ start: Double, _ stop: Double, _ num: Int) -> [Double] {
        guard num > 0 else { return [] }
        if num == 1 { return [start] }
        let step = (stop - start) / Double(num - 1)
        var y = (0..<num).map { Double($0) * step + start }
        y[num - 1] = stop
        return y
    }

    /// `np.arange(start, stop, step)` in float64: ⌈(stop − start)/step⌉ values; NumPy fills
    /// value i as start + i·δ with δ = (start + step) − start, not with `step` itself.
    static func arange(_ start: Double, _ stop: Double, _ step: Double) -> [Double] {
        let length = Int(Swift.max(0, ((stop - start) / step).rounded(.up)))
        guard length > 0 else { return [] }
        if length == 1 { return [start] }
        let second = start + step
        let delta = second - start
        var y = [start, second]
        for i in 2..<length { y.append(start + Double(i) * delta) }
        return y
    }

    /// `np.round`: half to even.
    static func round(_ x: Double) -> Double { x.rounded(.toNearestOrEven) }
}

extension TimestepSpacing {
    /// DDPM's and DDIM's integer inference timesteps, high to low, as diffusers computes them:
    /// - linspace: round(linspace(0, T−1, n)), reversed;
    /// - leading: i·⌊T/n⌋ for i < n, reversed, plus `steps_offset`;
    /// - trailing: round(arange(T, 0, −T/n)) − 1.
    /// Where NumPy's `arange` yields one value too many for trailing spacing (T/n not exact, e.g.
    /// n = 61 of 1000), diffusers ends the list with timestep −1; Sura drops that value.
    func discreteTimesteps(count n: Int, numTrainTimesteps T: Int, stepsOffset: Int) throws -> [Int] {
        var result: [Int]
        switch self {
        case .linspace:
            result = NumPyMirror.linspace(0, Double(T - 1), n).map { Int(NumPyMirror.round($0)) }.reversed()
        case .leading:
            let ratio = T / n
            result = (0..<n).map { $0 * ratio + stepsOffset }.reversed()
        case .trailing:
            result = NumPyMirror.arange(Double(T), 0, -Double(T) / Double(n)).map { Int(NumPyMirror.round($0)) - 1 }
            if result.count > n { result = Array(result.prefix(n)) }
        }
        if let bad = result.first(where: { $0 < 0 || $0 >= T }) {
            throw SchedulerError.invalidConfig(
                key: "steps_offset", message: "timestep_spacing \"\(rawValue)\" with steps_offset \(stepsOffset) gives timestep \(bad), outside 0..<\(T)")
        }
        return result
    }
}
