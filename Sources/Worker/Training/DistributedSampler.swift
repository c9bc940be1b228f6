import Foundation
import Tensor

/// Which dataset indices each data-parallel replica visits in an epoch, with the semantics of
/// `torch.utils.data.DistributedSampler`:
///
/// - the index list 0 ..< N is shuffled with a generator seeded by `seed + epoch` (the same
///   permutation on every rank, a new one each epoch), or left in order;
/// - `.pad` (torch's `drop_last=False`, the default): the list is extended by repeating its
///   first elements until its length is a multiple of the replica count R, so every replica
///   gets ⌈N/R⌉ samples and R·⌈N/R⌉ − N samples are seen twice;
///   `.dropLast` (`drop_last=True`): the tail is cut to a multiple of R, each replica gets
///   ⌊N/R⌋ samples and N mod R samples are skipped this epoch;
/// - replica r takes positions r, r+R, r+2R, … of that list.
///
/// So with `.dropLast` the shards are disjoint; with `.pad` they are disjoint except for the
/// padding, and together they cover the dataset. The permutation itself is Sura's (a
/// Fisher–Yates shuffle driven by `SeededGenerator`), not torch's `randperm`.
public struct DistributedSampler: Sendable, Equatable {
    /// What to do with the N mod R samples that do not divide evenly.
    public enum Remainder: String, Sendable, CaseIterable {
        /// Repeat samples from the start of the (shuffled) list (torch `drop_last=False`).
        case pad
        /// Skip the tail (torch `drop_last=True`).
        case dropLast
    }

    public let datasetSize: Int
    public let replicas: Int
    public let rank: Int
    public let shuffle: Bool
    public let seed: UInt64
    public let remainder: Remainder

    /// - Throws: `SamplerError` naming the bad argument: a negative dataset size, fewer than one
    ///   replica, a rank outside 0 ..< replicas, or (with `.dropLast`) fewer samples than replicas.
    public init(datasetSize: Int, replicas: Int, rank: Int, shuffle: Bool = true, seed: UInt64 = 0,
                remainder: Remainder = .pad) throws {
        guard datasetSize >= 0 else { throw SamplerError.invalid("dataset size \(datasetSize) is negative") }
        guard replicas >= 1 else { throw SamplerError.invalid("replica count \(replicas) must be at least 1") }
        guard rank >= 0 && rank < replicas else {
            throw SamplerError.invalid("rank \(rank) is outside 0 ..< \(replicas)")
        }
        if remainder == .dropLast && datasetSize > 0 && datasetSize < replicas {
            throw SamplerError.invalid("\(datasetSize) samples cannot give each of \(replicas) replicas one "
                + "with drop-last; use pad or fewer replicas")
        }
        self.datasetSize = datasetSize
        self.replicas = replicas
        self.rank = rank
        self.shuffle = shuffle
        self.seed = seed
        self.remainder = remainder
    }

    /// Samples each replica visits per epoch: ⌈N/R⌉ with `.pad`, ⌊N/R⌋ with `.dropLast`.
    public var samplesPerReplica: Int {
        switch remainder {
        case .pad: return (datasetSize + replicas - 1) / replicas
        case .dropLast: return datasetSize / replicas
        }
    }

    /// The whole epoch's list before sharding: a permutation of 0 ..< N (when shuffling), the
    /// same on every rank.
    public func permutation(epoch: Int) -> [Int] {
        var order = Array(0 ..< datasetSize)
        guard shuffle, datasetSize > 1 else { return order }
        var generator = SeededGenerator(seed: seed &+ UInt64(truncatingIfNeeded: epoch))
        for i in stride(from: datasetSize - 1, to: 0, by: -1) {
            let j = Int(generator.next() % UInt64(i + 1))
            order.swapAt(i, j)
        }
        return order
    }

    /// This replica's dataset indices for `epoch`, `samplesPerReplica` of them.
    public func indices(epoch: Int) -> [Int] {
        var order = permutation(epoch: epoch)
        let total = samplesPerReplica * replicas
        if order.isEmpty { return [] }
        if total > order.count {
            var k = 0
            while order.count < total {    // padding may wrap more than once when N < R
                order.append(order[k])
                k += 1
            }
        } else {
            order.removeLast(order.count - total)
        }
        return Array(stride(from: rank, to: total, by: replicas).map { order[$0] })
    }

    /// This replica's indices for `epoch` cut into batches of `batchSize`; the last, shorter
    /// batch is kept unless `dropIncompleteBatch`.
    public func batches(epoch: Int, batchSize: Int, dropIncompleteBatch: Bool = false) throws -> [[Int]] {
        guard batchSize >= 1 else { throw SamplerError.invalid("batch size \(batchSize) must be at least 1") }
        let mine = indices(epoch: epoch)
        var result: [[Int]] = []
        var start = 0
        while start < mine.count {
            let end = min(start + batchSize, mine.count)
            if end - start == batchSize || !dropIncompleteBatch { result.append(Array(mine[start ..< end])) }
            start = end
        }
        return result
    }
}

/// A sampler argument that cannot work.
public struct SamplerError: Error, CustomStringConvertible, Equatable {
    public let description: String

    static func invalid(_ detail: String) -> SamplerError {
        SamplerError(description: "distributed sampler: \(detail)")
    }
}
