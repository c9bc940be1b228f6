import Foundation
import Tensor

/// One block of the probe MLP: y = act(x·Wᵀ + b), the activation tanh except on the last block.
public final class ProbeBlock: Module, UnaryLayer {
    public let linear: Linear
    public let activates: Bool

    public init(_ inputs: Int, _ outputs: Int, activates: Bool, rng: inout SeededGenerator) {
        linear = Linear(inputs, outputs, rng: &rng)
        self.activates = activates
        super.init()
    }

    public func callAsFunction(_ x: Tensor) -> Tensor {
        let y = linear(x)
        return activates ? y.tanh() : y
    }
}

/// A small deterministic MLP regression problem that the distributed self-test, the training
/// benchmark and the tests all use: the same seed gives the same bits on every rank, so each
/// rank can rebuild the unpartitioned single-process reference locally and compare.
public enum ProbeModel {
    /// Blocks widths[0]→widths[1]→…→widths.last, tanh between them; one block is one pipeline
    /// "layer". Parameters named like `Sequential`: `0.linear.weight`, `0.linear.bias`, `1.…`.
    public static func blocks(widths: [Int], seed: UInt64) -> [ProbeBlock] {
        precondition(widths.count >= 2, "a probe model needs at least an input and an output width")
        var rng = SeededGenerator(seed: seed)
        return (0 ..< widths.count - 1).map {
            ProbeBlock(widths[$0], widths[$0 + 1], activates: $0 < widths.count - 2, rng: &rng)
        }
    }

    /// The named parameters of `blocks`, by global block index starting at `firstIndex`.
    public static func namedParameters(_ blocks: [ProbeBlock], firstIndex: Int = 0) -> [(name: String, tensor: Tensor)] {
        blocks.enumerated().flatMap { i, block in
            block.namedParameters().map { (name: "\(firstIndex + i).\($0.0)", tensor: $0.1) }
        }
    }

    /// Runs the blocks in order.
    public static func forward(_ blocks: [ProbeBlock], _ x: Tensor) -> Tensor {
        blocks.reduce(x) { $1($0) }
    }

    /// `samples` inputs of width `inputs` drawn from N(0, 1) and targets sin(x·A) for a fixed
    /// random A, so the problem is learnable but not trivial.
    public static func data(samples: Int, inputs: Int, outputs: Int, seed: UInt64) -> (x: Tensor, y: Tensor) {
        var rng = SeededGenerator(seed: seed ^ 0xDA7A)
        let x = Tensor.randn([samples, inputs], using: &rng)
        let a = Tensor.randn([inputs, outputs], using: &rng) * (1 / Float(inputs).squareRoot())
        let y = withoutGrad { x.matmul(a).sin() }
        return (x, y.contiguousCopy())
    }

    /// Rows `range` of a [N, …] tensor as a fresh contiguous tensor.
    public static func rows(_ t: Tensor, _ range: Range<Int>) -> Tensor {
        t.sliced(axis: 0, range.lowerBound, range.upperBound).contiguousCopy()
    }

    /// Rows `indices` of a [N, F] tensor, in that order.
    public static func rows(_ t: Tensor, _ indices: [Int]) -> Tensor {
        let width = t.count / max(t.shape[0], 1)
        let source = t.contiguousCopy()
        let out = Tensor(zeros: [indices.count] + Array(t.shape.dropFirst()))
        for (i, index) in indices.enumerated() {
            (out.pointer + i * width).update(from: source.pointer + index * width, count: width)
        }
        return out
    }
}
