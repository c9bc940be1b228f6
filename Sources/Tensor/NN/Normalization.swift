import Foundation

// Layer, group and RMS normalisation as fused kernels with analytic backward.
//
// All three normalise rows of a [rows, d] block: x̂ = (x − μ)·r with r = 1/√(σ² + ε)
// (RMSNorm: μ = 0 and σ² = mean(x²)), then y = x̂·γ + β with one γ, β per "affine slot".
// LayerNorm: one slot per column. GroupNorm: a row is one (sample, group), made of Cg channel
// segments of S = H·W elements, one slot per channel. Statistics are two-pass in Double.
//
// Backward for one row, with ĝ = g·γ and means over the row:
//   dx = r·(ĝ − mean(ĝ) − x̂·mean(ĝ·x̂))      (RMSNorm drops the mean(ĝ) term)
//   dγ = Σ g·x̂,  dβ = Σ g                    (over every element of that slot)

/// How a contiguous tensor is cut into normalised rows and affine slots.
struct NormLayout {
    /// Normalised rows and their length.
    let rows: Int, d: Int
    /// Elements sharing one affine slot inside a row (1 for LayerNorm, H·W for GroupNorm).
    let segment: Int
    /// Rows per sample that use distinct slots (GroupNorm's groups; 1 otherwise).
    let rowsPerSample: Int
    /// Subtract the mean (false for RMSNorm).
    let centered: Bool

    var segmentsPerRow: Int { d / segment }
    var slots: Int { rowsPerSample * segmentsPerRow }
    var samples: Int { rows / rowsPerSample }
    /// First affine slot of `row`.
    @inline(__always) func slotBase(_ row: Int) -> Int { (row % rowsPerSample) * segmentsPerRow }
}

/// Per-row mean and reciprocal standard deviation, saved by the forward for the backward.
struct NormStatistics {
    let mean: TensorStorage   // [rows]
    let rstd: TensorStorage   // [rows]

    init(_ x: UnsafePointer<Float>, _ layout: NormLayout, eps: Float) {
        let rows = layout.rows, d = layout.d, centered = layout.centered
        mean = TensorStorage(count: rows)
        rstd = TensorStorage(count: rows)
        let pm = mean.pointer, pr = rstd.pointer
        parallelFor(rows, grain: Swift.max(1, 16_384 / Swift.max(d, 1))) { s, e in
            for r in s..<e {
                let row = x + r * d
                let mu = centered ? sumInDouble(row, d) / Double(d) : 0
                let ss = sumOfSquaredDeviations(row, d, mean: mu)
                pm[r] = Float(mu)
                pr[r] = Float(1 / (ss / Double(d) + Double(eps)).squareRoot())
            }
        }
    }
}

extension Tensor {
    /// y = x̂·γ + β for every row (γ = 1, β = 0 when absent).
    static func normalizeForward(_ x: UnsafePointer<Float>, _ stats: NormStatistics, _ layout: NormLayout,
                                 _ gamma: UnsafePointer<Float>?, _ beta: UnsafePointer<Float>?,
                                 into y: UnsafeMutablePointer<Float>) {
        let d = layout.d, seg = layout.segment
        let pm = stats.mean.pointer, pr = stats.rstd.pointer
        parallelFor(layout.rows, grain: Swift.max(1, 16_384 / Swift.max(d, 1))) { s, e in
            for r in s..<e {
                let xr = x + r * d, yr = y + r * d
                let mu = pm[r], rs = pr[r]
                let base = layout.slotBase(r)
                if seg == 1 {
                    let gp = gamma.map { $0 + base }, bp = beta.map { $0 + base }
                    switch (gp, bp) {
                    case let (g?, b?): for k in 0..<d { yr[k] = (xr[k] - mu) * rs * g[k] + b[k] }
                    case let (g?, nil): for k in 0..<d { yr[k] = (xr[k] - mu) * rs * g[k] }
                    case let (nil, b?): for k in 0..<d { yr[k] = (xr[k] - mu) * rs + b[k] }
                    case (nil, nil): for k in 0..<d { yr[k] = (xr[k] - mu) * rs }
                    }
                } else {
                    for sIdx in 0..<layout.segmentsPerRow {
                        let scale = rs * (gamma?[base + sIdx] ?? 1), shift = beta?[base + sIdx] ?? 0
                        let off = sIdx * seg
                        for k in off..<(off + seg) { yr[k] = (xr[k] - mu) * scale + shift }
                    }
                }
            }
        }
    }

    /// The fused backward: dx, dγ, dβ (each nil when not needed).
    static func normalizeBackward(_ g: UnsafePointer<Float>, _ x: UnsafePointer<Float>, _ stats: NormStatistics,
                                  _ layout: NormLayout, _ gamma: UnsafePointer<Float>?, xShape: [Int], affineShape: [Int],
                                  needX: Bool, needGamma: Bool, needBeta: Bool) -> (dx: Tensor?, dGamma: Tensor?, dBeta: Tensor?) {
        let d = layout.d, seg = layout.segment
        let pm = stats.mean.pointer, pr = stats.rstd.pointer
        var dx: Tensor? = nil
        if needX {
            let out = Tensor(zeros: xShape)                                     // dx, shape of x
            let o = out.storage.pointer
            let centered = layout.centered
            parallelFor(layout.rows, grain: Swift.max(1, 8_192 / Swift.max(d, 1))) { s, e in
                for r in s..<e {
                    let xr = x + r * d, gr = g + r * d, or = o + r * d
                    let mu = pm[r], rs = pr[r]
                    let base = layout.slotBase(r)
                    // ĝ is written into the output row first, then turned into dx in place.
                    if seg == 1, let gm = gamma.map({ $0 + base }) {
                        for k in 0..<d { or[k] = gr[k] * gm[k] }
                    } else if let gamma {
                        for sIdx in 0..<layout.segmentsPerRow {
                            let gv = gamma[base + sIdx], off = sIdx * seg
                            for k in off..<(off + seg) { or[k] = gr[k] * gv }
                        }
                    } else {
                        or.update(from: gr, count: d)
                    }
                    // mean(ĝ·x̂) = r·(Σ ĝ·x − μ·Σ ĝ)/d, so both sums run over raw rows.
                    let sumG = sumInDouble(or, d)
                    let sumGX = Double(rs) * (dotInDouble(or, xr, d) - Double(mu) * sumG)
                    let a = centered ? Float(sumG / Double(d)) : 0
                    let b = Float(sumGX / Double(d))
                    for k in 0..<d {
                        let xh = (xr[k] - mu) * rs
                        or[k] = rs * (or[k] - a - xh * b)
                    }
                }
            }
            dx = out
        }
        guard needGamma || needBeta else { return (dx, nil, nil) }
        let dGamma = needGamma ? Tensor(zeros: affineShape) : nil   // [slots] in the weight's shape
        let dBeta = needBeta ? Tensor(zeros: affineShape) : nil     // [slots] in the bias's shape
        let pg = dGamma?.storage.pointer, pb = dBeta?.storage.pointer
        let slots = layout.slots
        let perSlot = layout.samples * seg
        if seg == 1 {
            // LayerNorm/RMSNorm: slots are columns; each thread owns a column range and walks
            // the rows in order, so reads stay sequential.
            parallelFor(slots, grain: Swift.max(1, 16_384 / Swift.max(layout.rows, 1))) { s, e in
                var accG = [Double](repeating: 0, count: e - s), accB = [Double](repeating: 0, count: e - s)
                for r in 0..<layout.rows {
                    let xr = x + r * d, gr = g + r * d
                    let mu = pm[r], rs = pr[r]
                    for k in s..<e {
                        accG[k - s] += Double(gr[k] * ((xr[k] - mu) * rs))
                        accB[k - s] += Double(gr[k])
                    }
                }
                for k in s..<e {
                    pg?[k] = Float(accG[k - s])
                    pb?[k] = Float(accB[k - s])
                }
            }
        } else {
            parallelFor(slots, grain: Swift.max(1, 16_384 / Swift.max(perSlot, 1))) { s, e in
                for slot in s..<e {
                    let q = slot / layout.segmentsPerRow, sIdx = slot % layout.segmentsPerRow
                    var accG: Double = 0, accB: Double = 0
                    for sample in 0..<layout.samples {
                        let r = sample * layout.rowsPerSample + q
                        let mu = pm[r], rs = pr[r]
                        let off = r * d + sIdx * seg
                        var partG: Float = 0, partB: Float = 0
                        for k in off..<(off + seg) {
                            partG += g[k] * ((x[k] - mu) * rs)
                            partB += g[k]
                        }
                        accG += Double(partG)
                        accB += Double(partB)
                    }
                    pg?[slot] = Float(accG)
                    pb?[slot] = Float(accB)
                }
            }
        }
        return (dx, dGamma, dBeta)
    }

    /// Shared driver: forward, then the recorded fused backward.
    func normalized(_ name: String, _ layout: NormLayout, eps: Float, weight: Tensor?, bias: Tensor?) -> Tensor {
        let x = contiguousValues()                                              // [rows, d] as laid out
        let gamma = weight?.contiguousValues(), beta = bias?.contiguousValues() // [slots]
        let stats = NormStatistics(x.pointer, layout, eps: eps)                 // [rows] μ and r
        let out = Tensor.uninitialized(shape)              // shape of x; every element is written
        Tensor.normalizeForward(x.pointer, stats, layout, gamma?.pointer, beta?.pointer, into: out.storage.pointer)

        var inputs = [self]
        if let weight { inputs.append(weight) }
        if let bias { inputs.append(bias) }
        let needX = requiresGrad, needGamma = weight?.requiresGrad ?? false, needBeta = bias?.requiresGrad ?? false
        let xShape = shape, affineShape = weight?.shape ?? bias?.shape ?? []
        return Tensor.record(name, out, inputs) { g in
            let gc = g.contiguousValues()
            let r = Tensor.normalizeBackward(gc.pointer, x.pointer, stats, layout, gamma?.pointer,
                                             xShape: xShape, affineShape: affineShape,
                                             needX: needX, needGamma: needGamma, needBeta: needBeta)
            var grads: [Tensor?] = [r.dx]
            if weight != nil { grads.append(r.dGamma) }
            if bias != nil { grads.append(r.dBeta) }
            return grads
        }
    }

    /// Layer normalisation over the trailing dimensions equal to `normalizedShape`
    /// (PyTorch `F.layer_norm`): y = (x − μ)/√(σ² + ε)·γ + β, with μ and the biased σ² taken
    /// over those dimensions.
    /// - x (self) [..., *normalizedShape]; weight γ and bias β [*normalizedShape] or nil → shape of x.
    public func layerNorm(normalizedShape: [Int], weight: Tensor?, bias: Tensor?, eps: Float = 1e-5) -> Tensor {
        precondition(normalizedShape.count <= rank && Array(shape.suffix(normalizedShape.count)) == normalizedShape,
                     "layerNorm: normalized shape \(normalizedShape) is not the trailing shape of \(shape)")
        if let weight { precondition(weight.shape == normalizedShape, "layerNorm: weight \(weight.shape) for normalized shape \(normalizedShape)") }
        if let bias { precondition(bias.shape == normalizedShape, "layerNorm: bias \(bias.shape) for normalized shape \(normalizedShape)") }
        let d = Tensor.count(normalizedShape)
        precondition(d > 0, "layerNorm: empty normalized shape \(normalizedShape)")
        let layout = NormLayout(rows: count / d, d: d, segment: 1, rowsPerSample: 1, centered: true)
        return normalized("layer_norm", layout, eps: eps, weight: weight, bias: bias)
    }

    /// Group normalisation (PyTorch `F.group_norm`): channels are split into `groups`, and each
    /// (sample, group) is normalised over its channels and spatial positions; γ, β are per channel.
    /// - x (self) [N, C, *] with C divisible by `groups`; weight, bias [C] or nil → shape of x.
    public func groupNorm(groups: Int, weight: Tensor?, bias: Tensor?, eps: Float = 1e-5) -> Tensor {
        precondition(rank >= 2, "groupNorm: input must be [N, C, *], got \(shape)")
        let c = shape[1]
        precondition(groups >= 1 && c % groups == 0, "groupNorm: \(groups) groups do not divide \(c) channels")
        if let weight { precondition(weight.shape == [c], "groupNorm: weight \(weight.shape) for \(c) channels") }
        if let bias { precondition(bias.shape == [c], "groupNorm: bias \(bias.shape) for \(c) channels") }
        let spatial = shape.dropFirst(2).reduce(1, *)
        precondition(spatial > 0, "groupNorm: empty spatial size in \(shape)")
        let layout = NormLayout(rows: shape[0] * groups, d: (c / groups) * spatial, segment: spatial,
                                rowsPerSample: groups, centered: true)
        return normalized("group_norm", layout, eps: eps, weight: weight, bias: bias)
    }

    /// RMS normalisation over the last dimension (PyTorch `F.rms_norm`, Llama's RMSNorm):
    /// y = x / √(mean(x²) + ε) · γ.
    /// - x (self) [..., D]; weight γ [D] or nil → shape of x.
    public func rmsNorm(weight: Tensor?, eps: Float = 1e-6) -> Tensor {
        precondition(rank >= 1 && shape[rank - 1] > 0, "rmsNorm: input \(shape) needs a non-empty last dimension")
        let d = shape[rank - 1]
        if let weight { precondition(weight.shape == [d], "rmsNorm: weight \(weight.shape) for last dimension \(d)") }
        let layout = NormLayout(rows: count / d, d: d, segment: 1, rowsPerSample: 1, centered: false)
        return normalized("rms_norm", layout, eps: eps, weight: weight, bias: nil)
    }
}
