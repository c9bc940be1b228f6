import Foundation

/// PyTorch's `nn.LayerNorm` over the trailing `normalizedShape` dims:
/// y = (x − mean) / √(var + eps) · weight + bias, with parameters `weight` and `bias`
/// (shape `normalizedShape`, initialised to ones and zeros) when `elementwiseAffine`.
open class LayerNorm: Module, UnaryLayer {
    public let normalizedShape: [Int]
    public let eps: Float
    public var weight: Tensor?
    public var bias: Tensor?

    public init(_ normalizedShape: [Int], eps: Float = 1e-5, elementwiseAffine: Bool = true, bias: Bool = true) {
        precondition(!normalizedShape.isEmpty && normalizedShape.allSatisfy { $0 > 0 },
                     "LayerNorm: invalid normalized shape \(normalizedShape)")
        self.normalizedShape = normalizedShape
        self.eps = eps
        self.weight = elementwiseAffine ? ParameterInit.constant(normalizedShape, 1) : nil
        self.bias = elementwiseAffine && bias ? ParameterInit.constant(normalizedShape, 0) : nil
        super.init()
    }

    /// Normalisation over the last dimension of size `dim`.
    public convenience init(_ dim: Int, eps: Float = 1e-5, elementwiseAffine: Bool = true, bias: Bool = true) {
        self.init([dim], eps: eps, elementwiseAffine: elementwiseAffine, bias: bias)
    }

    /// x [..., normalizedShape] → same shape.
    open func callAsFunction(_ x: Tensor) -> Tensor {
        x.layerNorm(normalizedShape: normalizedShape, weight: weight, bias: bias, eps: eps)
    }
}
