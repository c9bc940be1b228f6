import Foundation

/// Errors from tensor operations whose arguments come from user data (token ids, class
/// targets), so that a bad input gives a message naming the value, where it sits and the
/// valid range instead of an out-of-bounds read.
///
/// Shape mismatches between tensors that code wires together (a conv weight with the wrong
/// channel count, say) are programmer errors and stay preconditions.
public enum TensorError: Error, CustomStringConvertible, Equatable, Sendable {
    /// An embedding id outside 0..<vocabularySize at `position` in the flattened id list.
    case idOutOfVocabulary(id: Int, position: Int, vocabularySize: Int)
    /// A class target outside 0..<classCount that is not the ignore index.
    case targetOutOfRange(target: Int, position: Int, classCount: Int, ignoreIndex: Int)
    /// A list whose length does not match the shape it is meant to fill.
    case countMismatch(op: String, what: String, expected: Int, actual: Int)
    /// An argument outside its allowed range.
    case invalidArgument(op: String, reason: String)

    public var description: String {
        switch self {
        case let .idOutOfVocabulary(id, position, vocabularySize):
            return "embedding: id \(id) at position \(position) is outside the vocabulary of \(vocabularySize) rows (valid ids are 0..<\(vocabularySize))"
        case let .targetOutOfRange(target, position, classCount, ignoreIndex):
            return "crossEntropy: target \(target) at position \(position) is outside 0..<\(classCount) classes and is not the ignore index \(ignoreIndex)"
        case let .countMismatch(op, what, expected, actual):
            return "\(op): \(what) needs \(expected) values, got \(actual)"
        case let .invalidArgument(op, reason):
            return "\(op): \(reason)"
        }
    }
}

extension Tensor {
    /// Self when contiguous, otherwise a contiguous copy made outside the graph. Fused ops read
    /// their inputs through this and record the original tensor as the graph input.
    func contiguousValues() -> Tensor {
        isContiguous ? self : contiguousCopy()
    }
}
