import Foundation
import Tensor

/// Encoder features of a fixed set of prompts, computed once and looked up per batch.
///
/// Training a model conditioned on a frozen encoder needs the same few thousand prompts' features
/// over and over; the table stores each distinct prompt's [L, D] features once (row-major in one
/// buffer) and gathers batches from it.
public final class PromptFeatureTable: @unchecked Sendable {
    /// Tokens per prompt (L) and width (D).
    public let length: Int
    public let width: Int
    public let prompts: [String]
    private let rows: [String: Int]
    private let values: TensorStorage

    /// A table of computed features (by one process, or shared out over the ranks of a job):
    /// `values` [N, L, D] are the features of `prompts`, which must be distinct and in that order.
    /// - Throws: `PromptFeatureError` when the counts or shapes disagree or a prompt repeats.
    public init(prompts: [String], values: Tensor) throws {
        guard values.rank == 3, values.shape[0] == prompts.count, prompts.count > 0 else {
            throw PromptFeatureError(message: "features of shape \(values.shape) for \(prompts.count) prompts; expected [\(prompts.count), L, D]")
        }
        guard Set(prompts).count == prompts.count else { throw PromptFeatureError(message: "the prompts of a feature table must be distinct") }
        length = values.shape[1]
        width = values.shape[2]
        let copy = values.contiguousCopy()
        self.values = TensorStorage(uninitializedCount: values.count)
        self.values.pointer.update(from: copy.storage.pointer, count: values.count)
        self.prompts = prompts
        rows = Dictionary(uniqueKeysWithValues: prompts.enumerated().map { ($1, $0) })
    }

    public var count: Int { prompts.count }

    /// FNV-1a over the bit patterns of every stored value, in prompt order: equal checksums mean
    /// bitwise-equal features (to compare runs, e.g. pp = 1 with pp = 2).
    public func checksum() -> UInt64 {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for i in 0..<(prompts.count * length * width) {
            var bits = values.pointer[i].bitPattern
            for _ in 0..<4 {
                hash = (hash ^ UInt64(bits & 0xff)) &* 0x0000_0100_0000_01b3
                bits >>= 8
            }
        }
        return hash
    }

    /// The distinct prompts of `prompts` in first-seen order, as the table stores them.
    public static func distinct(_ prompts: [String]) -> [String] {
        var seen = Set<String>()
        return prompts.filter { seen.insert($0).inserted }
    }

    public func contains(_ prompt: String) -> Bool { rows[prompt] != nil }

    /// The features of `prompts` stacked: [prompts.count, L, D].
    /// - Throws: `PromptFeatureError` naming a prompt the table does not hold.
    public func features(_ prompts: [String]) throws -> Tensor {
        let stride = length * width
        let out = Tensor.uninitialized([prompts.count, length, width])
        for (b, prompt) in prompts.enumerated() {
            guard let row = rows[prompt] else { throw PromptFeatureError(message: "no features for the prompt \"\(prompt)\"") }
            (out.storage.pointer + b * stride).update(from: values.pointer + row * stride, count: stride)
        }
        return out
    }
}

public struct PromptFeatureError: Error, CustomStringConvertible, Sendable {
    public let message: String
    public var description: String { message }
}
