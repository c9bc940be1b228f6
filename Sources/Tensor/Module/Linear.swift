import Foundation

/// y = x·Wᵀ + b, PyTorch's `nn.Linear`: parameters `weight` [out, in] and `bias` [out].
///
/// Initialisation as in PyTorch: weight kaiming-uniform(a = √5), i.e. U(±1/√in); bias U(±1/√in).
open class Linear: Module, UnaryLayer {
    /// [outFeatures, inFeatures]. Replaceable (e.g. to tie it to an embedding table).
    public var weight: Tensor
    /// [outFeatures], or nil without bias.
    public var bias: Tensor?

    public var inFeatures: Int { weight.shape[1] }
    public var outFeatures: Int { weight.shape[0] }

    /// A randomly initialised layer.
    public init(_ inFeatures: Int, _ outFeatures: Int, bias: Bool = true, rng: inout SeededGenerator) {
        precondition(inFeatures >= 0 && outFeatures >= 0, "Linear(\(inFeatures), \(outFeatures)): negative size")
        self.weight = ParameterInit.kaimingUniform([outFeatures, inFeatures], fanIn: inFeatures, using: &rng)
        self.bias = bias ? ParameterInit.fanInBias([outFeatures], fanIn: inFeatures, using: &rng) : nil
        super.init()
    }

    /// A layer over existing tensors (used as they are, not copied): weight [out, in], bias [out]?.
    public init(weight: Tensor, bias: Tensor? = nil) {
        precondition(weight.rank == 2, "Linear weight must be [out, in], got \(weight.shape)")
        precondition(bias == nil || bias!.shape == [weight.shape[0]],
                     "Linear bias must be [\(weight.shape[0])], got \(bias!.shape)")
        self.weight = weight
        self.bias = bias
        super.init()
    }

    /// x [..., in] → [..., out].
    open func callAsFunction(_ x: Tensor) -> Tensor {
        x.linear(weight: weight, bias: bias)
    }
}
