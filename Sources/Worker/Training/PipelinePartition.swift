import Foundation

/// Why a model cannot be cut into pipeline stages, or a stage cannot run.
public enum PipelineError: Error, CustomStringConvertible, Equatable {
    /// More stages than layers: some stage would be empty.
    case moreStagesThanLayers(stages: Int, layers: Int)
    /// A count or cost outside its allowed range.
    case invalid(String)
    /// A stage received a message other than the one its schedule expects next.
    case unexpectedMessage(stage: Int, expected: String, received: String)
    /// A tensor that cannot be sent as an activation message (too many dimensions or elements).
    case unsendable(stage: Int, detail: String)
    /// A pipeline wait outlived the timeout; `peers` are the world ranks waited on.
    case stalled(stage: Int, operation: String, peers: [Int], seconds: Double)

    public var description: String {
        switch self {
        case let .moreStagesThanLayers(stages, layers):
            return "cannot split \(layers) layer\(layers == 1 ? "" : "s") into \(stages) pipeline stages: "
                + "every stage needs at least one layer (use at most \(layers) stages)"
        case let .invalid(detail):
            return "pipeline: \(detail)"
        case let .unexpectedMessage(stage, expected, received):
            return "pipeline stage \(stage) expected \(expected) but received \(received)"
        case let .unsendable(stage, detail):
            return "pipeline stage \(stage) cannot send: \(detail)"
        case let .stalled(stage, operation, peers, seconds):
            let limit = String(format: "%g s", seconds)
            let names = peers.isEmpty ? "a peer" : peers.map { "rank \($0)" }.joined(separator: ", ")
            return "pipeline stage \(stage): \(operation) stalled for \(limit) waiting for \(names) (dead or stalled)"
        }
    }
}

/// A cut of L layers into p contiguous, non-empty stages.
///
/// `balanced` minimises the largest stage cost (the pipeline's throughput is set by its slowest
/// stage): a dynamic programme over (stages used, layers covered), O(p·L²), exact for any costs.
/// `uniform` gives every stage ⌊L/p⌋ or ⌈L/p⌉ layers, the larger stages first; `counts` takes
/// the layer count of each stage as given.
public struct PipelinePartition: Equatable, Sendable {
    /// Layer index range of each stage, contiguous and covering 0 ..< L in order.
    public let stages: [Range<Int>]
    /// Summed cost of each stage's layers.
    public let stageCosts: [Int]

    /// The cost of the most expensive stage.
    public var maxStageCost: Int { stageCosts.max() ?? 0 }

    /// Stage owning layer `layer`.
    public func stage(ofLayer layer: Int) -> Int? {
        stages.firstIndex { $0.contains(layer) }
    }

    /// The partition minimising the maximum stage cost. Ties between optimal cuts go to the
    /// earlier cut point, so the result is deterministic.
    /// - Parameter costs: cost of each layer (parameter count, measured time, …), ≥ 0.
    /// - Throws: `PipelineError.moreStagesThanLayers`, or `.invalid` for p < 1 or a negative cost.
    public static func balanced(costs: [Int], stages p: Int) throws -> PipelinePartition {
        try validate(costs: costs, stages: p)
        let n = costs.count
        var prefix = [0]
        for c in costs { prefix.append(prefix.last! + c) }
        // best[k][i]: the least possible max cost of cutting layers 0 ..< i into k stages;
        // cut[k][i]: where the last of those k stages starts.
        let infinity = Int.max
        var best = Array(repeating: Array(repeating: infinity, count: n + 1), count: p + 1)
        var cut = Array(repeating: Array(repeating: 0, count: n + 1), count: p + 1)
        best[0][0] = 0
        for k in 1 ... p {
            for i in k ... n - (p - k) {
                for j in (k - 1) ..< i where best[k - 1][j] != infinity {
                    let cost = max(best[k - 1][j], prefix[i] - prefix[j])
                    // `<` keeps the earliest j among equals.
                    if cost < best[k][i] {
                        best[k][i] = cost
                        cut[k][i] = j
                    }
                }
            }
        }
        var bounds: [Range<Int>] = []
        var end = n
        for k in stride(from: p, through: 1, by: -1) {
            let start = cut[k][end]
            bounds.append(start ..< end)
            end = start
        }
        bounds.reverse()
        return PipelinePartition(stages: bounds, stageCosts: bounds.map { prefix[$0.upperBound] - prefix[$0.lowerBound] })
    }

    /// Equal layer counts per stage, ignoring costs (the first L mod p stages get one more).
    /// - Parameter costs: only used to report `stageCosts`.
    public static func uniform(costs: [Int], stages p: Int) throws -> PipelinePartition {
        try validate(costs: costs, stages: p)
        let n = costs.count
        return try counts((0 ..< p).map { n / p + ($0 < n % p ? 1 : 0) }, costs: costs)
    }

    /// The given number of layers per stage, in order (a hand-made cut: for instance fewer layers
    /// on a last stage that also runs the loss).
    /// - Throws: `.invalid` when a count is below 1 or the counts do not add up to the layers.
    public static func counts(_ counts: [Int], costs: [Int]) throws -> PipelinePartition {
        try validate(costs: costs, stages: counts.count)
        if let bad = counts.firstIndex(where: { $0 < 1 }) {
            throw PipelineError.invalid("stage \(bad) has \(counts[bad]) layers; every stage needs at least one")
        }
        let total = counts.reduce(0, +)
        guard total == costs.count else {
            throw PipelineError.invalid("the stages' layer counts \(counts) add up to \(total), but there are \(costs.count) layers to split")
        }
        var bounds: [Range<Int>] = []
        var start = 0
        for count in counts {
            bounds.append(start ..< start + count)
            start += count
        }
        return PipelinePartition(stages: bounds, stageCosts: bounds.map { costs[$0].reduce(0, +) })
    }

    /// `uniform` over `layers` layers of unit cost.
    public static func uniform(layers: Int, stages p: Int) throws -> PipelinePartition {
        guard layers >= 0 else { throw PipelineError.invalid("layer count \(layers) is negative") }
        return try uniform(costs: Array(repeating: 1, count: layers), stages: p)
    }

    private static func validate(costs: [Int], stages p: Int) throws {
        guard p >= 1 else { throw PipelineError.invalid("stage count \(p) must be at least 1") }
        guard p <= costs.count else { throw PipelineError.moreStagesThanLayers(stages: p, layers: costs.count) }
        if let bad = costs.firstIndex(where: { $0 < 0 }) {
            throw PipelineError.invalid("layer \(bad) has negative cost \(costs[bad])")
        }
    }
}
