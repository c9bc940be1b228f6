import Foundation
import Tensor
import Data
import Collective

/// Builds the feature tables of a frozen encoder (text encoder, LLM) that every rank of a job
/// needs, sharing the encoding over the ranks instead of repeating it on each.
///
/// The distinct prompts are cut into the chunks one process would encode (`chunk` prompts each,
/// first-seen order); rank r of n encodes the r-th of n contiguous runs of chunks, then each run
/// is broadcast from the rank that encoded it (`RankShares`). Every chunk meets the same kernels
/// with the same shapes as in one process, so the tables are bitwise those of one process
/// (`PromptFeatureTable.checksum`), whatever the number of ranks.
///
/// With a `cache` and an `identity`, tables are first looked up on disk; all ranks load them
/// only when every rank found them (one agreed answer), otherwise all encode as above and rank 0
/// stores the result.
public struct PromptTableEncoder {
    /// The ranks sharing the work and the agreement that fails them together; nil: this process alone.
    public var agreement: RankAgreement?
    /// Prompts per encoder call.
    public var chunk: Int
    /// Finished tables kept between runs; nil: always encode.
    public var cache: FeatureTableCache?

    public init(agreement: RankAgreement?, chunk: Int, cache: FeatureTableCache? = nil) {
        self.agreement = agreement
        self.chunk = max(1, chunk)
        self.cache = cache
    }

    /// One table (run of chunks, broadcast) per tensor `encode` returns.
    ///   - identity: what decides the features besides the prompts (encoder files, layer,
    ///     length; see `FeatureTableCache`); nil: not cached.
    ///   - encode: [b] prompts → tables' features, each [b, L_t, D_t].
    /// - Throws: what `encode` throws (on every rank: `TrainingError.otherRank` on the others);
    ///   `TrainingError.data` when `prompts` is empty or the encoder's shapes change between chunks.
    public func tables(_ label: String, _ prompts: [String], identity: [String]? = nil, log: (String) -> Void,
                       encode: ([String]) throws -> [Tensor]) throws -> [PromptFeatureTable] {
        let started = Date()
        let distinct = PromptFeatureTable.distinct(prompts)
        guard !distinct.isEmpty else { throw TrainingError.data("\(label): no prompts to encode") }
        return try cached(label, distinct, identity: identity, log: log) {
            try encodeTables(label, distinct, started: started, log: log, encode: encode)
        }
    }

    /// The tables of `distinct` (distinct prompts, in table order) from the cache when every rank
    /// has them, else from `compute` (which all ranks run together), then stored by rank 0.
    /// Without a cache or an identity: `compute()`.
    public func cached(_ label: String, _ distinct: [String], identity: [String]?, log: (String) -> Void,
                       compute: () throws -> [PromptFeatureTable]) throws -> [PromptFeatureTable] {
        let started = Date()
        guard let cache, let identity else { return try compute() }
        let entry = cache.entry(label: label, identity: identity, prompts: distinct)
        var loaded: [PromptFeatureTable]?
        let everyRankHasThem = try agreeing("\(label): reading the feature cache") {
            let (tables, miss) = entry.load()
            if let miss { log("\(label): not using the cached tables, \(miss)") }
            loaded = tables
            return tables != nil
        }
        if everyRankHasThem, let loaded {
            log(String(format: "%@: %d distinct prompts loaded from %@ in %.1f s", label, distinct.count, entry.url.path,
                       Date().timeIntervalSince(started)))
            return loaded
        }
        let tables = try compute()
        if (agreement?.communicator.rank ?? 0) == 0 {
            // A cache that cannot be written costs the next run time, not this one its result.
            do {
                try entry.store(tables)
                log("\(label): tables stored in \(entry.url.path)")
                for file in cache.evict(keeping: entry.url) {
                    log(String(format: "feature cache: removed %@ (%.1f MB, last used %@) to stay within %.2f GB", file.url.lastPathComponent,
                               Double(file.bytes) / 1e6, ISO8601DateFormatter().string(from: file.lastUsed), Double(cache.maxBytes ?? 0) / 1e9))
                }
            } catch {
                log("\(label): warning: could not store the tables in \(entry.url.path): \(error)")
            }
        }
        return tables
    }

    /// `body`'s answer agreed over the ranks (true only when true on every rank).
    private func agreeing(_ what: String, _ body: () throws -> Bool) throws -> Bool {
        guard let agreement else { return try body() }
        return try agreement.everyRank(what, body)
    }

    /// The shared encoding of `distinct` (see the type's comment).
    private func encodeTables(_ label: String, _ distinct: [String], started: Date, log: (String) -> Void,
                              encode: ([String]) throws -> [Tensor]) throws -> [PromptFeatureTable] {
        let size = agreement?.communicator.size ?? 1, rank = agreement?.communicator.rank ?? 0
        let runs = RankShares.runs(count: distinct.count, ranks: size, unit: chunk)
        let mine = runs[rank]

        // Local part: per table, the shape [L, D] of one prompt and the values of `mine`.
        func encodeMine() throws -> (shapes: [[Int]], values: [[Float]]) {
            var shapes: [[Int]] = [], values: [[Float]] = []
            let bar = mine.isEmpty ? nil : ProgressBar(total: mine.count, label: size > 1 ? "\(label) (rank \(rank)'s share)" : label,
                                                       unit: "prompts")
            var start = mine.lowerBound
            while start < mine.upperBound {
                let prompts = Array(distinct[start ..< min(start + chunk, mine.upperBound)])
                let outputs = try encode(prompts)
                if shapes.isEmpty {
                    shapes = outputs.map { Array($0.shape.dropFirst()) }
                    values = shapes.map { shape in
                        var buffer: [Float] = []
                        buffer.reserveCapacity(mine.count * shape.reduce(1, *))
                        return buffer
                    }
                }
                guard outputs.count == shapes.count else {
                    throw TrainingError.data("\(label): the encoder returned \(shapes.count) tensors, then \(outputs.count)")
                }
                for (t, output) in outputs.enumerated() {
                    guard output.shape == [prompts.count] + shapes[t] else {
                        throw TrainingError.data("\(label): the encoder returned \(output.shape) for \(prompts.count) prompts, expected \([prompts.count] + shapes[t])")
                    }
                    let contiguous = output.contiguous()
                    values[t].append(contentsOf: UnsafeBufferPointer(start: contiguous.storage.pointer + contiguous.offset, count: contiguous.count))
                }
                start += prompts.count
                bar?.update(start - mine.lowerBound)
            }
            if shapes.isEmpty {
                // No chunk fell to this rank (fewer chunks than ranks): one prompt gives the shapes.
                shapes = try encode([distinct[0]]).map { Array($0.shape.dropFirst()) }
                values = shapes.map { _ in [] }
            }
            if let bad = shapes.first(where: { $0.count != 2 }) {
                throw TrainingError.data("\(label): the encoder returned rows of shape \(bad), expected [L, D]")
            }
            return (shapes, values)
        }
        let local = try agreement.map { try $0(label) { try encodeMine() } } ?? encodeMine()

        var tables: [PromptFeatureTable] = []
        for (t, shape) in local.shapes.enumerated() {
            let all = try agreement.map {
                try RankShares.assemble(local.values[t], rowSize: shape[0] * shape[1], runs: runs, count: distinct.count,
                                        communicator: $0.communicator)
            } ?? local.values[t]
            tables.append(try PromptFeatureTable(prompts: distinct, values: Tensor(shape: [distinct.count] + shape, data: all)))
        }
        log(String(format: "%@: %d distinct prompts in %.1f s", label, distinct.count, Date().timeIntervalSince(started))
            + (size > 1 ? ", \(mine.count) of them encoded on rank \(rank) of \(size)" : ""))
        return tables
    }

    /// The table of a single-output encoder ([b] prompts → [b, L, D]).
    public func table(_ label: String, _ prompts: [String], identity: [String]? = nil, log: (String) -> Void,
                      encode: ([String]) throws -> Tensor) throws -> PromptFeatureTable {
        try tables(label, prompts, identity: identity, log: log) { [try encode($0)] }[0]
    }
}
