import Foundation

// Scaled dot-product attention, composed from matmul (k is passed as a transposed view, so no
// copy is made), a broadcast additive mask and the fused softmax. Its gradient comes from
// those ops' own backward functions.

extension Tensor {
    /// softmax(q·kᵀ·scale + mask)·v.
    ///
    /// - query [..., Lq, d], key [..., Lk, d], value [..., Lk, dv]; batch dimensions broadcast
    ///   as in `matmul` (heads usually sit in the batch dimensions: [B, H, L, d]).
    /// - mask: additive, broadcastable to [..., Lq, Lk] (0 to keep, −∞ or a large negative to drop).
    /// - causal: query i sees key j only when j ≤ i + (Lk − Lq), the alignment used with a key
    ///   cache (for Lq == Lk this is PyTorch's `is_causal`). A query that sees no key at all
    ///   gives NaN, as in PyTorch.
    /// - scale: defaults to 1/√d.
    /// - Returns: [..., Lq, dv].
    public static func scaledDotProductAttention(query: Tensor, key: Tensor, value: Tensor, mask: Tensor? = nil,
                                                 causal: Bool = false, scale: Float? = nil) -> Tensor {
        precondition(query.rank >= 2 && key.rank >= 2 && value.rank >= 2,
                     "attention: query \(query.shape), key \(key.shape) and value \(value.shape) need rank ≥ 2")
        let d = query.shape[query.rank - 1]
        let lq = query.shape[query.rank - 2], lk = key.shape[key.rank - 2]
        precondition(key.shape[key.rank - 1] == d, "attention: key \(key.shape) and query \(query.shape) differ in the last dimension")
        precondition(value.shape[value.rank - 2] == lk, "attention: value \(value.shape) and key \(key.shape) differ in length")
        let s = scale ?? 1 / Float(Swift.max(d, 1)).squareRoot()
        // Scaling q ([Lq, d]) is cheaper than scaling the scores ([Lq, Lk]) whenever d < Lk.
        var scores = (d <= lk ? (query * s).matmul(key.transposed(-1, -2))
                              : query.matmul(key.transposed(-1, -2)) * s)      // [..., Lq, Lk]
        if let mask {
            precondition(Tensor.broadcastShape(mask.shape, scores.shape) == scores.shape,
                         "attention: mask \(mask.shape) does not broadcast to the scores \(scores.shape)")
            scores = scores + mask
        }
        if causal { scores = scores + causalMask(queries: lq, keys: lk) }
        let weights = scores.softmax(axis: -1)                                    // [..., Lq, Lk]
        return weights.matmul(value)                                              // [..., Lq, dv]
    }

    /// The additive causal mask [Lq, Lk]: 0 where key j ≤ i + (Lk − Lq), −∞ elsewhere.
    public static func causalMask(queries lq: Int, keys lk: Int) -> Tensor {
        let m = Tensor(zeros: [lq, lk])
        let p = m.storage.pointer
        let offset = lk - lq
        for i in 0..<lq {
            for j in 0..<lk where j > i + offset { p[i * lk + j] = -.infinity }
        }
        return m
    }
}
