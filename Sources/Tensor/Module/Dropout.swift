import Foundation

/// PyTorch's `nn.Dropout` (inverted dropout): in training mode each element is zeroed with
/// probability `p` and the rest are scaled by 1/(1 − p); in evaluation mode it is the identity.
///
/// The layer owns its generator, so a seed fixes which elements drop; save and restore
/// `generator` with a training checkpoint to resume the same stream.
open class Dropout: Module, UnaryLayer {
    public let p: Float
    public var generator: SeededGenerator

    public init(_ p: Float = 0.5, seed: UInt64 = 0) {
        precondition(p >= 0 && p <= 1, "Dropout probability \(p) outside [0, 1]")
        self.p = p
        self.generator = SeededGenerator(seed: seed)
        super.init()
    }

    open func callAsFunction(_ x: Tensor) -> Tensor {
        x.dropout(p: p, training: training, using: &generator)
    }
}
