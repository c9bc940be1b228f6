import Foundation

/// How a loss turns per-element values into its result.
public enum LossReduction: Sendable, Equatable {
    /// Per-element (or per-sample) values, unreduced.
    case none
    /// Mean over elements (cross-entropy: over non-ignored targets).
    case mean
    /// Sum over elements.
    case sum
    /// Sum divided by the first dimension (PyTorch's `batchmean`, the mathematically correct KL).
    case batchMean
}

/// Training losses with PyTorch semantics.
public enum Loss {
    /// Applies `reduction` to per-element values `values`.
    static func reduce(_ values: Tensor, _ reduction: LossReduction) -> Tensor {
        switch reduction {
        case .none: return values
        case .sum: return values.sum()
        case .mean: return values.mean()
        case .batchMean: return values.sum() * (1 / Float(Swift.max(values.rank > 0 ? values.shape[0] : 1, 1)))
        }
    }

    /// Mean squared error (PyTorch `F.mse_loss`): (prediction − target)², reduced.
    /// - prediction, target: the same shape → a scalar, or that shape with `.none`.
    public static func mse(_ prediction: Tensor, _ target: Tensor, reduction: LossReduction = .mean) -> Tensor {
        precondition(prediction.shape == target.shape, "mse: prediction \(prediction.shape) and target \(target.shape) differ")
        return reduce((prediction - target).square(), reduction)
    }

    /// Cross-entropy from logits (PyTorch `F.cross_entropy`), fused log-softmax + NLL:
    /// lossᵢ = log Σⱼ e^(xᵢⱼ) − xᵢ,ₜᵢ, and 0 for rows whose target is `ignoreIndex`.
    ///
    /// - logits [N, C], targets N class indices → scalar; [N] with `.none`.
    /// - `.mean` divides by the number of non-ignored targets (NaN when every target is ignored,
    ///   as in PyTorch); `.batchMean` divides by N.
    /// - Backward: dxᵢ = cᵢ·(softmax(xᵢ) − onehot(tᵢ)), cᵢ the reduction's weight of row i.
    ///
    /// Targets must be valid here: a bad target is a programmer error and stops the program with
    /// a message naming it. Targets that come from user data (token ids from a tokenizer or a
    /// dataset file) should go through `checkedCrossEntropy`, which throws instead.
    public static func crossEntropy(logits: Tensor, targets: [Int], ignoreIndex: Int = -100,
                                    reduction: LossReduction = .mean) -> Tensor {
        do {
            return try checkedCrossEntropy(logits: logits, targets: targets, ignoreIndex: ignoreIndex, reduction: reduction)
        } catch {
            preconditionFailure("\(error)")
        }
    }

    /// `crossEntropy` that validates the targets first.
    /// - Throws: `TensorError.countMismatch` when targets.count ≠ N, `TensorError.targetOutOfRange`
    ///   naming the first target outside 0..<C that is not `ignoreIndex`.
    public static func checkedCrossEntropy(logits: Tensor, targets: [Int], ignoreIndex: Int = -100,
                                           reduction: LossReduction = .mean) throws -> Tensor {
        precondition(logits.rank == 2, "crossEntropy: logits must be [N, C], got \(logits.shape)")
        let n = logits.shape[0], c = logits.shape[1]
        precondition(c > 0, "crossEntropy: logits \(logits.shape) have no classes")
        guard targets.count == n else {
            throw TensorError.countMismatch(op: "crossEntropy", what: "targets for logits \(logits.shape)", expected: n, actual: targets.count)
        }
        if let position = targets.firstIndex(where: { $0 != ignoreIndex && ($0 < 0 || $0 >= c) }) {
            throw TensorError.targetOutOfRange(target: targets[position], position: position, classCount: c, ignoreIndex: ignoreIndex)
        }
        let x = logits.contiguousValues()                 // [N, C]
        let rowMax = TensorStorage(count: n)              // [N] max per row
        let logSum = TensorStorage(count: n)              // [N] log Σ e^(x − max) per row
        let perRow = Tensor(zeros: [n])                   // [N]
        let xp = x.pointer, mp = rowMax.pointer, lp = logSum.pointer, rp = perRow.storage.pointer
        targets.withUnsafeBufferPointer { tp in
            parallelFor(n, grain: Swift.max(1, 8_192 / Swift.max(c, 1))) { s, e in
                for i in s..<e {
                    let row = xp + i * c
                    let m = c > 0 ? rowMaximum(row, c) : 0
                    let acc = sumOfExponentials(row, minus: m, c)
                    mp[i] = m
                    lp[i] = Float(Foundation.log(acc))
                    rp[i] = tp[i] == ignoreIndex ? 0 : lp[i] - (row[tp[i]] - m)
                }
            }
        }
        let valid = targets.reduce(0) { $1 == ignoreIndex ? $0 : $0 + 1 }
        let out: Tensor
        switch reduction {
        case .none:
            out = perRow
        case .sum, .mean, .batchMean:
            var total: Double = 0
            for i in 0..<n { total += Double(rp[i]) }
            let divisor = reduction == .sum ? 1 : Double(reduction == .mean ? valid : n)
            out = Tensor(scalar: Float(total / divisor))
        }
        return Tensor.record("cross_entropy", out, [logits]) { g in
            let gc = g.contiguousValues()
            let dx = Tensor(zeros: [n, c])                // [N, C]
            // Capture the owners (not only their pointers) so the buffers outlive the forward.
            let dp = dx.storage.pointer, gp = gc.pointer, xp = x.pointer, mp = rowMax.pointer, lp = logSum.pointer
            let uniform: Float = reduction == .mean ? 1 / Float(valid) : (reduction == .batchMean ? 1 / Float(n) : 1)
            targets.withUnsafeBufferPointer { tp in
                parallelFor(n, grain: Swift.max(1, 8_192 / Swift.max(c, 1))) { s, e in
                    for i in s..<e where tp[i] != ignoreIndex {
                        let weight = reduction == .none ? gp[i] : gp[0] * uniform
                        let row = xp + i * c, drow = dp + i * c, m = mp[i], l = lp[i]
                        for j in 0..<c { drow[j] = weight * vectorExp((row[j] - m) - l) }
                        drow[tp[i]] -= weight
                    }
                }
            }
            return [dx]
        }
    }

    /// Kullback–Leibler divergence with PyTorch's `F.kl_div(input, target)` conventions: `input`
    /// holds log q, `target` holds p (or log p with `logTarget`), and the pointwise loss is
    /// p·(log p − input), with 0·log 0 = 0; reduced over all elements (`.batchMean`: the sum
    /// divided by the first dimension, which is KL(p‖q) per sample).
    ///
    /// - input, target: the same shape → scalar, or that shape with `.none`.
    /// - Backward: d/dinput = −p; d/dtarget = log p + 1 − input (0·log 0 terms give −input),
    ///   or with `logTarget` e^t·(t − input + 1).
    public static func klDivergence(input: Tensor, target: Tensor, logTarget: Bool = false,
                                    reduction: LossReduction = .batchMean) -> Tensor {
        precondition(input.shape == target.shape, "klDivergence: input \(input.shape) and target \(target.shape) differ")
        let x = input.contiguousValues(), t = target.contiguousValues()   // shape of input
        let pointwise = Tensor(zeros: input.shape)                         // shape of input
        let xp = x.pointer, tp = t.pointer, op = pointwise.storage.pointer
        parallelFor(pointwise.count, grain: 16_384) { s, e in
            if logTarget {
                for i in s..<e { op[i] = Foundation.exp(tp[i]) * (tp[i] - xp[i]) }
            } else {
                for i in s..<e {
                    let p = tp[i]
                    op[i] = (p == 0 ? 0 : p * Foundation.log(p)) - p * xp[i]
                }
            }
        }
        let shape = input.shape
        let recorded = Tensor.record("kl_div", pointwise, [input, target]) { g in
            let gc = g.contiguousValues()
            let gp = gc.pointer, xp = x.pointer, tp = t.pointer
            let dInput = Tensor(zeros: shape), dTarget = Tensor(zeros: shape)   // shape of input
            let dip = dInput.storage.pointer, dtp = dTarget.storage.pointer
            parallelFor(shape.reduce(1, *), grain: 16_384) { s, e in
                for i in s..<e {
                    let p = tp[i], q = xp[i]
                    if logTarget {
                        let ep = Foundation.exp(p)
                        dip[i] = -gp[i] * ep
                        dtp[i] = gp[i] * ep * (p - q + 1)
                    } else {
                        dip[i] = -gp[i] * p
                        dtp[i] = gp[i] * ((p == 0 ? 0 : Foundation.log(p) + 1) - q)
                    }
                }
            }
            return [input.requiresGrad ? dInput : nil, target.requiresGrad ? dTarget : nil]
        }
        return reduce(recorded, reduction)
    }
}
