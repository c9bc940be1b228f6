import Foundation

/// Stochastic gradient descent with momentum, dampening, Nesterov momentum and (coupled) weight
/// decay, following `torch.optim.SGD` (maximize off).
///
/// For each parameter p with gradient g:
///
///     g ← g + λ·p                              (λ = 0 for parameters exempt from decay)
///     b ← g at the first update, else μ·b + (1 − τ)·g      (only when μ ≠ 0)
///     g ← g + μ·b if Nesterov, else b                       (only when μ ≠ 0)
///     p ← p − lr·g
///
/// Scalars are rounded to float32 once and terms evaluated in PyTorch's order, with PyTorch's
/// fused multiply-adds, so results are PyTorch's bit for bit (fixture-tested).
/// State: `momentum_buffer.<name>` (parameter's shape) for parameters updated at least once
/// with μ ≠ 0, and `step` ([1], the number of `step()` calls).
public final class SGD: Optimizer {
    private let table: ParameterTable
    private let decays: [Bool]
    private var momentumBuffers: [Tensor?]

    public var learningRate: Double
    public let momentum: Double
    public let dampening: Double
    public let nesterov: Bool
    public let weightDecay: Double
    public private(set) var stepCount: Int = 0

    public var parameters: [(name: String, tensor: Tensor)] { table.named }

    /// - Parameters:
    ///   - parameters: named contiguous parameters; names must be unique and tensors distinct.
    ///   - learningRate: lr ≥ 0 (PyTorch default 1e-3).
    ///   - momentum: μ ≥ 0.
    ///   - dampening: τ, scales new gradients into the buffer by 1 − τ.
    ///   - nesterov: needs μ > 0 and τ = 0 (as in PyTorch).
    ///   - weightDecay: λ ≥ 0, added to the gradient (L2 regularisation).
    ///   - exemptFromWeightDecay: parameters for which λ is 0.
    /// - Throws: `OptimizerError` naming the bad setting or parameter.
    public init(parameters: [(name: String, tensor: Tensor)],
                learningRate: Double = 1e-3,
                momentum: Double = 0,
                dampening: Double = 0,
                nesterov: Bool = false,
                weightDecay: Double = 0,
                exemptFromWeightDecay: (String, Tensor) -> Bool = { _, _ in false }) throws {
        try requireSetting("learning_rate", learningRate, "≥ 0") { $0 >= 0 }
        try requireSetting("momentum", momentum, "≥ 0") { $0 >= 0 }
        try requireSetting("dampening", dampening, "a finite number") { _ in true }
        try requireSetting("weight_decay", weightDecay, "≥ 0") { $0 >= 0 }
        if nesterov {
            try requireSetting("momentum", momentum, "> 0 with nesterov") { $0 > 0 }
            try requireSetting("dampening", dampening, "0 with nesterov") { $0 == 0 }
        }
        table = try ParameterTable(parameters)
        decays = parameters.map { !exemptFromWeightDecay($0.name, $0.tensor) }
        momentumBuffers = Array(repeating: nil, count: parameters.count)
        self.learningRate = learningRate
        self.momentum = momentum
        self.dampening = dampening
        self.nesterov = nesterov
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
        let decay: Float = decays[i] ? Float(weightDecay) : 0
        let mu = Float(momentum)
        let keep = Float(1 - dampening)
        let negLR = Float(-learningRate)
        let pp = p.pointer, gp = g.pointer
        // PyTorch's `add(x, alpha:)` is a fused multiply-add; `addingProduct` is too. The decay
        // term is skipped when λ = 0, as PyTorch does (it matters only for non-finite p).
        if momentum == 0 {
            parallelFor(n, grain: 32_768) { s, e in
                for j in s..<e {
                    let gj = decay == 0 ? gp[j] : gp[j].addingProduct(decay, pp[j])
                    pp[j] = pp[j].addingProduct(negLR, gj)
                }
            }
            return
        }
        let first = momentumBuffers[i] == nil
        if first { momentumBuffers[i] = Tensor(zeros: p.shape) }
        let bp = momentumBuffers[i]!.pointer
        let nesterov = self.nesterov
        parallelFor(n, grain: 32_768) { s, e in
            for j in s..<e {
                let gj = decay == 0 ? gp[j] : gp[j].addingProduct(decay, pp[j])
                // The first update copies the gradient into the buffer (PyTorch clones it).
                let bj = first ? gj : (bp[j] * mu).addingProduct(keep, gj)
                bp[j] = bj
                pp[j] = pp[j].addingProduct(negLR, nesterov ? gj.addingProduct(mu, bj) : bj)
            }
        }
    }

    public func stateDict() -> [String: Tensor] {
        var out: [String: Tensor] = ["step": stepTensor(stepCount)]
        for (i, name) in table.names.enumerated() {
            if let b = momentumBuffers[i] { out["momentum_buffer.\(name)"] = b.contiguousCopy() }
        }
        return out
    }

    public func loadStateDict(_ state: [String: Tensor]) throws {
        var reader = StateDictReader(state)
        let steps = try reader.count("step")
        var buffers = [Tensor?](repeating: nil, count: table.names.count)
        for (i, name) in table.names.enumerated() {
            let key = "momentum_buffer.\(name)"
            // Without momentum there are no buffers, so any such key is reported as unexpected.
            if momentum != 0 && reader.has(key) {
                buffers[i] = try reader.buffer(key, shape: table.tensors[i].shape)
            }
        }
        try reader.rejectUnused()
        momentumBuffers = buffers
        stepCount = steps
    }
}
