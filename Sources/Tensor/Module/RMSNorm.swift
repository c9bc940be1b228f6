import Foundation

/// RMSNorm over the last dimension (PyTorch's `nn.RMSNorm`, Llama's `LlamaRMSNorm`):
/// y = x / √(mean(x²) + eps) · weight, with `weight` [dim] initialised to ones.
open class RMSNorm: Module, UnaryLayer {
    public let eps: Float
    public var weight: Tensor?

    public init(_ dim: Int, eps: Float = 1e-6, elementwiseAffine: Bool = true) {
        precondition(dim > 0, "RMSNorm: invalid dimension \(dim)")
        self.eps = eps
        self.weight = elementwiseAffine ? ParameterInit.constant([dim], 1) : nil
        super.init()
    }

    /// x [..., dim] → same shape.
    open func callAsFunction(_ x: Tensor) -> Tensor {
        x.rmsNorm(weight: weight, eps: eps)
    }
}
