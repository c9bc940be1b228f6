import Foundation

/// Adam with decoupled weight decay, following `torch.optim.AdamW` (amsgrad off, maximize off).
///
/// For each parameter p with gradient g, at that parameter's t-th update (t counts from 1):
///
///     p ← p · (1 − lr·λ)                       (λ = 0 for parameters exempt from decay)
///     m ← m + (1 − β1)(g − m)                  (PyTorch's lerp form of β1·m + (1 − β1)·g)
///     v ← β2·v + (1 − β2)·g²
///     p ← p − (lr / (1 − β1ᵗ)) · m / (√v / √(1 − β2ᵗ) + ε)
///
/// Scalars are formed in double precision and rounded to float32 once, and elementwise terms are
/// evaluated in PyTorch's order with the multiply-adds fused where PyTorch's CPU kernels fuse
/// them (lerp, addcmul). Results are PyTorch's bit for bit except where PyTorch's vectorised
/// float32 square root (MKL on x86) is one unit in the last place away from the correctly rounded
/// one that Sura uses.
///
/// State per parameter (created at its first update): `exp_avg.<name>`, `exp_avg_sq.<name>` with
/// the parameter's shape, and `step.<name>` ([1], that parameter's update count); plus `step`
/// ([1], the number of `step()` calls).
public final class AdamW: Optimizer {
    private let table: ParameterTable
    /// Whether weight decay applies to each parameter, in parameter order.
    private let decays: [Bool]
    private var expAvg: [Tensor?]
    private var expAvgSq: [Tensor?]
    private var updates: [Int]

    public var learningRate: Double
    public let beta1: Double
    public let beta2: Double
    public let epsilon: Double
    public let weightDecay: Double
    public private(set) var stepCount: Int = 0

    public var parameters: [(name: String, tensor: Tensor)] { table.named }

    /// Parameters of rank ≤ 1 (biases, norm scales and shifts): the usual set kept free of decay.
    public static let exemptBiasesAndNorms: (String, Tensor) -> Bool = { _, t in t.rank <= 1 }

    /// - Parameters:
    ///   - parameters: named contiguous parameters; names must be unique and tensors distinct.
    ///   - learningRate: lr ≥ 0 (PyTorch default 1e-3).
    ///   - betas: (β1, β2), each in [0, 1).
    ///   - epsilon: ε ≥ 0, added to the bias-corrected √v.
    ///   - weightDecay: λ ≥ 0, decoupled (multiplies p by 1 − lr·λ each step).
    ///   - exemptFromWeightDecay: parameters for which λ is 0 (a second PyTorch parameter group),
    ///     e.g. `AdamW.exemptBiasesAndNorms`.
    /// - Throws: `OptimizerError` naming the bad setting or parameter.
    public init(parameters: [(name: String, tensor: Tensor)],
                learningRate: Double = 1e-3,
                betas: (Double, Double) = (0.9, 0.999),
                epsilon: Double = 1e-8,
                weightDecay: Double = 1e-2,
                exemptFromWeightDecay: (String, Tensor) -> Bool = { _, _ in false }) throws {
        try requireSetting("learning_rate", learningRate, "≥ 0") { $0 >= 0 }
        try requireSetting("beta1", betas.0, "[0, 1)") { $0 >= 0 && $0 < 1 }
        try requireSetting("beta2", betas.1, "[0, 1)") { $0 >= 0 && $0 < 1 }
        try requireSetting("epsilon", epsilon, "≥ 0") { $0 >= 0 }
        try requireSetting("weight_decay", weightDecay, "≥ 0") { $0 >= 0 }
        table = try ParameterTable(parameters)
        decays = parameters.map { !exemptFromWeightDecay($0.name, $0.tensor) }
        expAvg = Array(repeating: nil, count: parameters.count)
        expAvgSq = Array(repeating: nil, count: parameters.count)
        updates = Array(repeating: 0, count: parameters.count)
        self.learningRate = learningRate
        self.beta1 = betas.0
        self.beta2 = betas.1
        self.epsilon = epsilon
        self.weightDecay = weightDecay
    }

    /// Whether weight decay applies to the parameter called `name` (false for unknown names).
    public func decaysWeight(of name: String) -> Bool {
        table.index[name].map { decays[$0] } ?? false
    }

    public func step() throws {
        try requireSetting("learning_rate", learningRate, "≥ 0") { $0 >= 0 }
        let grads = try table.gradients()
        withoutGrad {
            for (i, g) in grads.enumerated() {
                guard let g else { continue }
                update(i, gradient: g)
            }
        }
        stepCount += 1
    }

    private func update(_ i: Int, gradient g: Tensor) {
        let p = table.tensors[i]
        let n = p.count
        if expAvg[i] == nil {
            expAvg[i] = Tensor(zeros: p.shape)
            expAvgSq[i] = Tensor(zeros: p.shape)
        }
        updates[i] += 1
        let t = Double(updates[i])
        let lr = learningRate
        // PyTorch skips the decay multiply when λ = 0; multiplying by exactly 1 is the same.
        let decayFactor = decays[i] && weightDecay != 0 ? Float(1 - lr * weightDecay) : 1
        let bc1 = 1 - pow(beta1, t)
        let bc2 = 1 - pow(beta2, t)
        let k = AdamWConstants(
            decayFactor: decayFactor,
            lerpWeight: Float(1 - beta1),
            beta2: Float(beta2),
            oneMinusBeta2: Float(1 - beta2),
            bc2Sqrt: Float(pow(bc2, 0.5)),  // Python's `** 0.5`
            epsilon: Float(epsilon),
            negStepSize: Float(-(lr / bc1)))
        let pp = p.pointer, gp = g.pointer, mp = expAvg[i]!.pointer, vp = expAvgSq[i]!.pointer
        parallelFor(n, grain: 16_384) { start, end in
            AdamW.kernel(pp + start, gp + start, mp + start, vp + start, end - start, k)
        }
    }

    /// The fused per-element update over `count` contiguous elements.
    @inline(__always)
    private static func kernel(_ p: UnsafeMutablePointer<Float>, _ g: UnsafeMutablePointer<Float>,
                               _ m: UnsafeMutablePointer<Float>, _ v: UnsafeMutablePointer<Float>,
                               _ count: Int, _ k: AdamWConstants) {
        let df = k.decayFactor, w = k.lerpWeight, b2 = k.beta2, c2 = k.oneMinusBeta2
        let s = k.bc2Sqrt, eps = k.epsilon, neg = k.negStepSize
        // PyTorch's lerp is fma(w, end − start, start) for |w| < 0.5 and fma(w − 1, end − start, end)
        // otherwise (chosen once per call). `addingProduct` is a true fused
        // multiply-add, as in PyTorch's kernels.
        let small = abs(w) < 0.5
        let coef = small ? w : w - 1
        for j in 0..<count {
            let gj = g[j], mOld = m[j]
            let mj = (small ? mOld : gj).addingProduct(coef, gj - mOld)
            let vj = (v[j] * b2).addingProduct(c2 * gj, gj)
            m[j] = mj
            v[j] = vj
            p[j] = p[j] * df + neg * mj / (vj.squareRoot() / s + eps)
        }
    }

    public func stateDict() -> [String: Tensor] {
        var out: [String: Tensor] = ["step": stepTensor(stepCount)]
        for (i, name) in table.names.enumerated() {
            guard let m = expAvg[i], let v = expAvgSq[i] else { continue }
            out["exp_avg.\(name)"] = m.contiguousCopy()
            out["exp_avg_sq.\(name)"] = v.contiguousCopy()
            out["step.\(name)"] = stepTensor(updates[i])
        }
        return out
    }

    public func loadStateDict(_ state: [String: Tensor]) throws {
        var reader = StateDictReader(state)
        let steps = try reader.count("step")
        var newAvg = [Tensor?](repeating: nil, count: table.names.count)
        var newAvgSq = newAvg
        var newUpdates = [Int](repeating: 0, count: table.names.count)
        for (i, name) in table.names.enumerated() {
            let keys = ["exp_avg.\(name)", "exp_avg_sq.\(name)", "step.\(name)"]
            let present = keys.filter(reader.has)
            // A parameter never updated has no state; otherwise all three buffers belong together.
            if present.isEmpty { continue }
            if let missing = keys.first(where: { !reader.has($0) }) { throw OptimizerError.missingStateKey(missing) }
            let shape = table.tensors[i].shape
            newAvg[i] = try reader.buffer(keys[0], shape: shape)
            newAvgSq[i] = try reader.buffer(keys[1], shape: shape, nonNegative: true)
            newUpdates[i] = try reader.count(keys[2], minimum: 1)
            if newUpdates[i] > steps {
                throw OptimizerError.invalidStateValue(
                    key: keys[2], reason: "\(newUpdates[i]) updates exceed the optimizer's \(steps) steps")
            }
        }
        try reader.rejectUnused()
        expAvg = newAvg
        expAvgSq = newAvgSq
        updates = newUpdates
        stepCount = steps
    }
}

/// Float32 scalars of one AdamW update, rounded once from double as PyTorch does.
private struct AdamWConstants {
    let decayFactor: Float
    let lerpWeight: Float
    let beta2: Float
    let oneMinusBeta2: Float
    let bc2Sqrt: Float
    let epsilon: Float
    let negStepSize: Float
}
