import Foundation

/// PyTorch's `nn.Conv2d` (zero padding): parameters `weight` [out, in/groups, kh, kw] and `bias` [out].
///
/// Initialisation as in PyTorch: weight kaiming-uniform(a = √5) and bias U(±1/√fanIn) with
/// fanIn = in/groups · kh · kw.
open class Conv2d: Module, UnaryLayer {
    public var weight: Tensor
    public var bias: Tensor?
    public let stride: (Int, Int)
    public let padding: (Int, Int)
    public let dilation: (Int, Int)
    public let groups: Int

    public var inChannels: Int { weight.shape[1] * groups }
    public var outChannels: Int { weight.shape[0] }
    public var kernelSize: (Int, Int) { (weight.shape[2], weight.shape[3]) }

    /// A randomly initialised layer with (height, width) pairs.
    public init(_ inChannels: Int, _ outChannels: Int, kernelSize: (Int, Int), stride: (Int, Int) = (1, 1),
                padding: (Int, Int) = (0, 0), dilation: (Int, Int) = (1, 1), groups: Int = 1,
                bias: Bool = true, rng: inout SeededGenerator) {
        precondition(groups > 0 && inChannels % groups == 0 && outChannels % groups == 0,
                     "Conv2d(\(inChannels), \(outChannels)): channels must be divisible by groups \(groups)")
        precondition(kernelSize.0 > 0 && kernelSize.1 > 0 && stride.0 > 0 && stride.1 > 0
                     && dilation.0 > 0 && dilation.1 > 0 && padding.0 >= 0 && padding.1 >= 0,
                     "Conv2d: invalid kernel \(kernelSize), stride \(stride), padding \(padding) or dilation \(dilation)")
        let fanIn = inChannels / groups * kernelSize.0 * kernelSize.1
        self.weight = ParameterInit.kaimingUniform([outChannels, inChannels / groups, kernelSize.0, kernelSize.1],
                                                   fanIn: fanIn, using: &rng)
        self.bias = bias ? ParameterInit.fanInBias([outChannels], fanIn: fanIn, using: &rng) : nil
        self.stride = stride
        self.padding = padding
        self.dilation = dilation
        self.groups = groups
        super.init()
    }

    /// A randomly initialised layer with square kernel, stride, padding and dilation.
    public convenience init(_ inChannels: Int, _ outChannels: Int, kernelSize: Int, stride: Int = 1,
                            padding: Int = 0, dilation: Int = 1, groups: Int = 1, bias: Bool = true,
                            rng: inout SeededGenerator) {
        self.init(inChannels, outChannels, kernelSize: (kernelSize, kernelSize), stride: (stride, stride),
                  padding: (padding, padding), dilation: (dilation, dilation), groups: groups, bias: bias, rng: &rng)
    }

    /// A layer over existing tensors: weight [out, in/groups, kh, kw], bias [out]?.
    public init(weight: Tensor, bias: Tensor? = nil, stride: (Int, Int) = (1, 1), padding: (Int, Int) = (0, 0),
                dilation: (Int, Int) = (1, 1), groups: Int = 1) {
        precondition(weight.rank == 4, "Conv2d weight must be [out, in/groups, kh, kw], got \(weight.shape)")
        precondition(groups > 0 && weight.shape[0] % groups == 0, "Conv2d: \(weight.shape[0]) outputs not divisible by groups \(groups)")
        precondition(bias == nil || bias!.shape == [weight.shape[0]], "Conv2d bias must be [\(weight.shape[0])]")
        self.weight = weight
        self.bias = bias
        self.stride = stride
        self.padding = padding
        self.dilation = dilation
        self.groups = groups
        super.init()
    }

    /// x [N, in, H, W] → [N, out, Ho, Wo], Ho = ⌊(H + 2·ph − dh·(kh − 1) − 1) / sh⌋ + 1.
    open func callAsFunction(_ x: Tensor) -> Tensor {
        x.conv2d(weight: weight, bias: bias, stride: stride, padding: padding, dilation: dilation, groups: groups)
    }
}
