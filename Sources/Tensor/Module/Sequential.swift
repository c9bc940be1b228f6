import Foundation

/// PyTorch's `nn.Sequential`: applies its layers in order. Children are named by position
/// (`0.weight`, `2.bias`), so parameter-free layers such as `ReLU` take up an index as in PyTorch.
open class Sequential: Module, UnaryLayer {
    @ModuleKey("") public var layers: [any UnaryLayer]

    public init(_ layers: [any UnaryLayer]) {
        _layers.wrappedValue = layers
        super.init()
    }

    public convenience init(_ layers: any UnaryLayer...) {
        self.init(layers)
    }

    open func callAsFunction(_ x: Tensor) -> Tensor {
        layers.reduce(x) { $1($0) }
    }
}

/// A parameter-free layer applying an elementwise function, standing in for PyTorch's activation
/// modules inside `Sequential`.
open class Activation: Module, UnaryLayer {
    /// A short name for messages, e.g. "ReLU".
    public let name: String
    private let function: (Tensor) -> Tensor

    public init(_ name: String, _ function: @escaping (Tensor) -> Tensor) {
        self.name = name
        self.function = function
        super.init()
    }

    open func callAsFunction(_ x: Tensor) -> Tensor { function(x) }

    /// max(x, 0).
    public static func relu() -> Activation { Activation("ReLU") { $0.relu() } }
    /// x·Φ(x), or the tanh approximation.
    public static func gelu(approximateTanh: Bool = false) -> Activation {
        Activation(approximateTanh ? "GELU(tanh)" : "GELU") { $0.gelu(approximateTanh: approximateTanh) }
    }
    /// x·σ(1.702x), CLIP's activation.
    public static func quickGelu() -> Activation { Activation("QuickGELU") { $0.quickGelu() } }
    /// x·σ(x).
    public static func silu() -> Activation { Activation("SiLU") { $0.silu() } }
    /// tanh x.
    public static func tanh() -> Activation { Activation("Tanh") { $0.tanh() } }
    /// σ(x).
    public static func sigmoid() -> Activation { Activation("Sigmoid") { $0.sigmoid() } }
    /// x.
    public static func identity() -> Activation { Activation("Identity") { $0 } }
}
