import Foundation

/// The outcome of comparing analytic gradients with central finite differences.
public struct GradientCheckResult: CustomStringConvertible, Sendable {
    /// Largest |analytic − numeric| over all checked elements.
    public let maxAbsoluteError: Float
    /// Largest |analytic − numeric| / max(|numeric|, 1e-3).
    public let maxRelativeError: Float
    /// True when every element satisfies |analytic − numeric| ≤ atol + rtol·|numeric|.
    public let passed: Bool
    /// Where the worst element was, for the failure message.
    public let worst: String

    public var description: String {
        "\(passed ? "passed" : "FAILED"): max abs error \(maxAbsoluteError), max rel error \(maxRelativeError); worst \(worst)"
    }
}

/// Finite-difference gradient checking for any differentiable function of tensors.
///
/// The scalar probed is L = Σ f(x) ⊙ w with a fixed random w, so every output element and its
/// ordering matter (a plain Σ would hide gradients that are wrong but sum to the right value).
/// Numeric: ∂L/∂xᵢ ≈ (L(x + εeᵢ) − L(x − εeᵢ)) / 2ε, evaluated in float32 with the sums in Double.
public enum GradientChecker {
    public static func check(_ inputs: [Tensor], epsilon: Float = 1e-2, absoluteTolerance: Float = 5e-3,
                             relativeTolerance: Float = 2e-2, seed: UInt64 = 1234,
                             _ f: ([Tensor]) -> Tensor) -> GradientCheckResult {
        let leaves = inputs.map { t -> Tensor in
            let leaf = t.contiguousCopy()
            leaf.requiresGrad = t.requiresGrad
            return leaf
        }
        var rng = SeededGenerator(seed: seed)
        let probe = f(leaves)
        let weights = Tensor.randn(probe.shape, using: &rng)
        let loss = (probe * weights).sum()
        loss.backward()

        func probeLoss() -> Double {
            withoutGrad {
                let out = f(leaves).contiguous()
                let w = weights.pointer
                var acc: Double = 0
                for i in 0..<out.count { acc += Double(out.pointer[i]) * Double(w[i]) }
                return acc
            }
        }

        var maxAbs: Float = 0, maxRel: Float = 0, passed = true, worst = "none"
        var worstScore: Float = -1
        for (n, leaf) in leaves.enumerated() where leaf.requiresGrad {
            let analytic = leaf.grad?.scalars ?? [Float](repeating: 0, count: leaf.count)
            let p = leaf.pointer
            for i in 0..<leaf.count {
                let original = p[i]
                p[i] = original + epsilon
                let plus = probeLoss()
                p[i] = original - epsilon
                let minus = probeLoss()
                p[i] = original
                let numeric = Float((plus - minus) / Double(2 * epsilon))
                let err = Swift.abs(analytic[i] - numeric)
                let rel = err / Swift.max(Swift.abs(numeric), 1e-3)
                maxAbs = Swift.max(maxAbs, err)
                maxRel = Swift.max(maxRel, rel)
                let allowed = absoluteTolerance + relativeTolerance * Swift.abs(numeric)
                if err > allowed { passed = false }
                let score = err / allowed
                if score > worstScore {
                    worstScore = score
                    worst = "input \(n) element \(i): analytic \(analytic[i]), numeric \(numeric)"
                }
            }
        }
        return GradientCheckResult(maxAbsoluteError: maxAbs, maxRelativeError: maxRel, passed: passed, worst: worst)
    }
}
