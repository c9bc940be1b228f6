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

    /// Encodes every distinct prompt in `prompts` with `encode` ([b] prompts → [b, L, D]), in
    /// batches of `batchSize`, calling `progress(done, total)` after each batch.
    /// - Throws: what `encode` throws; `PromptFeatureError` when it returns another shape.
    public init(prompts: [String], batchSize: Int = 64,
                encode: ([String]) throws -> Tensor, progress: ((Int, Int) -> Void)? = nil) throws {
        var seen = Set<String>()
        let distinct = prompts.filter { seen.insert($0).inserted }
        guard let first = distinct.first else { throw PromptFeatureError(message: "no prompts to encode") }
        let probe = try encode([first])
        guard probe.rank == 3, probe.shape[0] == 1 else {
            throw PromptFeatureError(message: "the encoder returned \(probe.shape), expected [1, L, D]")
        }
        length = probe.shape[1]
        width = probe.shape[2]
        let stride = length * width
        values = TensorStorage(uninitializedCount: distinct.count * stride)
        var start = 0
        while start < distinct.count {
            let chunk = Array(distinct[start ..< min(start + max(batchSize, 1), distinct.count)])
            let features = try encode(chunk).contiguous()
            guard features.shape == [chunk.count, length, width] else {
                throw PromptFeatureError(message: "the encoder returned \(features.shape) for \(chunk.count) prompts, expected [\(chunk.count), \(length), \(width)]")
            }
            (values.pointer + start * stride).update(from: features.storage.pointer + features.offset, count: chunk.count * stride)
            start += chunk.count
            progress?(start, distinct.count)
        }
        self.prompts = distinct
        rows = Dictionary(uniqueKeysWithValues: distinct.enumerated().map { ($1, $0) })
    }

    public var count: Int { prompts.count }

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
