import Foundation

/// PyTorch's `nn.Embedding`: a lookup table `weight` [count, dim] initialised from N(0, 1).
///
/// `paddingIndex`, as in PyTorch, zeroes that row at initialisation (its gradient is not masked).
open class Embedding: Module {
    /// [count, dim].
    public var weight: Tensor
    public let paddingIndex: Int?

    public var count: Int { weight.shape[0] }
    public var dim: Int { weight.shape[1] }

    public init(_ count: Int, _ dim: Int, paddingIndex: Int? = nil, rng: inout SeededGenerator) {
        precondition(count >= 0 && dim >= 0, "Embedding(\(count), \(dim)): negative size")
        precondition(paddingIndex == nil || (paddingIndex! >= 0 && paddingIndex! < count),
                     "Embedding: padding index \(paddingIndex!) outside 0..<\(count)")
        let table = ParameterInit.normal([count, dim], using: &rng)
        if let paddingIndex { (table.pointer + paddingIndex * dim).update(repeating: 0, count: dim) }
        self.weight = table
        self.paddingIndex = paddingIndex
        super.init()
    }

    /// A table over an existing tensor [count, dim], used as it is.
    public init(weight: Tensor, paddingIndex: Int? = nil) {
        precondition(weight.rank == 2, "Embedding weight must be [count, dim], got \(weight.shape)")
        self.weight = weight
        self.paddingIndex = paddingIndex
        super.init()
    }

    /// Rows of the table at `ids`, shaped `shape + [dim]`.
    /// - Throws: `TensorError` naming the first id outside `0..<count`, or a shape that does not hold `ids.count` ids.
    open func callAsFunction(_ ids: [Int], shape: [Int]) throws -> Tensor {
        try weight.embedding(ids: ids, shape: shape)
    }

    /// Rows of the table at `ids`: [ids.count, dim].
    open func callAsFunction(_ ids: [Int]) throws -> Tensor {
        try weight.embedding(ids: ids, shape: [ids.count])
    }
}
