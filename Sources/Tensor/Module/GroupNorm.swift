import Foundation

/// PyTorch's `nn.GroupNorm`: the channels of x [N, C, *] split into `groups` groups, each
/// normalised over its channels and spatial positions; per-channel `weight`/`bias` [C]
/// (ones and zeros) when `affine`.
open class GroupNorm: Module, UnaryLayer {
    public let groups: Int
    public let channels: Int
    public let eps: Float
    public var weight: Tensor?
    public var bias: Tensor?

    public init(groups: Int, channels: Int, eps: Float = 1e-5, affine: Bool = true) {
        precondition(groups > 0 && channels % groups == 0, "GroupNorm: \(channels) channels not divisible by \(groups) groups")
        self.groups = groups
        self.channels = channels
        self.eps = eps
        self.weight = affine ? ParameterInit.constant([channels], 1) : nil
        self.bias = affine ? ParameterInit.constant([channels], 0) : nil
        super.init()
    }

    /// x [N, C, *] → same shape.
    open func callAsFunction(_ x: Tensor) -> Tensor {
        x.groupNorm(groups: groups, weight: weight, bias: bias, eps: eps)
    }
}
