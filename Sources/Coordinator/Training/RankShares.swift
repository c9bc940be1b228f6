import Foundation
import Collective

/// Work on `count` rows that every rank needs, shared out over the ranks: rank r computes the
/// r-th of n contiguous runs, then each run is broadcast from its rank so that every rank holds
/// all rows. The runs follow whole units (chunks of prompts, say), so a rank computes exactly
/// the pieces one process would, and the assembled rows are bitwise the one-process rows.
enum RankShares {
    /// The runs of `count` rows over `ranks` ranks in whole units of `unit` rows (the last unit may
    /// be short); run sizes differ by at most one unit, and a run is empty when units run out.
    static func runs(count: Int, ranks: Int, unit: Int = 1) -> [Range<Int>] {
        let unit = max(1, unit), ranks = max(1, ranks)
        let units = (count + unit - 1) / unit
        return (0..<ranks).map { r in
            min(r * units / ranks * unit, count) ..< min((r + 1) * units / ranks * unit, count)
        }
    }

    /// All `count` rows of `rowSize` floats, on every rank: `mine` holds the rows of
    /// `runs[communicator.rank]`, and each non-empty run is broadcast from its rank.
    /// Every rank must call it with the same runs (collectives in the same order).
    /// - Throws: `TrainingError.data` when `mine` is not its run's size; the communicator's errors.
    static func assemble(_ mine: [Float], rowSize: Int, runs: [Range<Int>], count: Int,
                         communicator: Communicator) throws -> [Float] {
        let own = runs[communicator.rank]
        guard mine.count == own.count * rowSize else {
            throw TrainingError.data("rank \(communicator.rank) holds \(mine.count) floats for rows \(own) of \(rowSize) floats each")
        }
        if runs.count == 1 { return mine }
        var all = [Float](repeating: 0, count: count * rowSize)
        try all.withUnsafeMutableBufferPointer { buffer in
            mine.withUnsafeBufferPointer { part in
                _ = UnsafeMutableBufferPointer(rebasing: buffer[own.lowerBound * rowSize ..< own.upperBound * rowSize]).update(fromContentsOf: part)
            }
            for (root, run) in runs.enumerated() where !run.isEmpty {
                try communicator.broadcast(UnsafeMutableBufferPointer(rebasing: buffer[run.lowerBound * rowSize ..< run.upperBound * rowSize]),
                                           root: root)
            }
        }
        return all
    }
}
