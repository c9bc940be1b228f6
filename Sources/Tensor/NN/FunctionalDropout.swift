import Foundation

// Inverted dropout with a mask drawn from a seeded generator, so a run is reproducible.

extension Tensor {
    /// Zeroes each element with probability p and scales the survivors by 1/(1 − p), so the
    /// expectation is unchanged: out = x ⊙ m, m ∈ {0, 1/(1 − p)}. Identity when `training` is
    /// false or p == 0; all zeros when p == 1.
    ///
    /// The mask takes one `rng.nextUniform()` per element in row-major order (element dropped
    /// when the draw is < p): the same seed gives the same mask. Backward: dx = g ⊙ m.
    public func dropout(p: Float, training: Bool, using rng: inout SeededGenerator) -> Tensor {
        precondition(p >= 0 && p <= 1, "dropout: probability \(p) outside [0, 1]")
        if !training || p == 0 { return self }
        let mask = Tensor(zeros: shape)     // shape of x, values 0 or 1/(1 − p)
        let keep: Float = p < 1 ? 1 / (1 - p) : 0
        let mp = mask.storage.pointer
        for i in 0..<count { mp[i] = rng.nextUniform() < p ? 0 : keep }
        let x = contiguousValues()          // shape of x
        let out = Tensor(zeros: shape)      // shape of x
        let xp = x.pointer, op = out.storage.pointer
        parallelFor(count) { s, e in for i in s..<e { op[i] = xp[i] * mp[i] } }
        return Tensor.record("dropout", out, [self]) { g in [g * mask] }
    }
}
