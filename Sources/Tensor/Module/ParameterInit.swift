import Foundation

/// PyTorch's default initialisations, drawn from a `SeededGenerator` so that a seed fixes every
/// weight. Each returns a contiguous leaf with `requiresGrad` set (a parameter).
public enum ParameterInit {
    /// U(−bound, bound).
    public static func uniform(_ shape: [Int], bound: Float, using rng: inout SeededGenerator) -> Tensor {
        let t = Tensor.uniform(shape, low: -bound, high: bound, using: &rng)
        t.requiresGrad = true
        return t
    }

    /// Kaiming-uniform (He) with leaky-ReLU slope `a`: bound = gain·√(3 / fanIn),
    /// gain = √(2 / (1 + a²)). PyTorch's `Linear`/`Conv` weights use a = √5, i.e. bound = 1/√fanIn.
    public static func kaimingUniform(_ shape: [Int], fanIn: Int, a: Float = Float(5).squareRoot(),
                                      using rng: inout SeededGenerator) -> Tensor {
        let gain = (2 / (1 + a * a)).squareRoot()
        let bound = fanIn > 0 ? gain * (3 / Float(fanIn)).squareRoot() : 0
        return uniform(shape, bound: bound, using: &rng)
    }

    /// The bias of PyTorch's `Linear`/`Conv`: U(−1/√fanIn, 1/√fanIn) (zero when fanIn is 0).
    public static func fanInBias(_ shape: [Int], fanIn: Int, using rng: inout SeededGenerator) -> Tensor {
        uniform(shape, bound: fanIn > 0 ? 1 / Float(fanIn).squareRoot() : 0, using: &rng)
    }

    /// Xavier/Glorot-uniform: bound = gain·√(6 / (fanIn + fanOut)).
    public static func xavierUniform(_ shape: [Int], fanIn: Int, fanOut: Int, gain: Float = 1,
                                     using rng: inout SeededGenerator) -> Tensor {
        let total = fanIn + fanOut
        return uniform(shape, bound: total > 0 ? gain * (6 / Float(total)).squareRoot() : 0, using: &rng)
    }

    /// N(0, std²).
    public static func normal(_ shape: [Int], std: Float = 1, using rng: inout SeededGenerator) -> Tensor {
        let t = Tensor.randn(shape, using: &rng)
        if std != 1 { t.assign(t * std) }
        t.requiresGrad = true
        return t
    }

    /// A constant-filled parameter (ones for norm scales, zeros for biases).
    public static func constant(_ shape: [Int], _ value: Float) -> Tensor {
        let t = Tensor.full(shape, value)
        t.requiresGrad = true
        return t
    }
}
