import Foundation
import Worker
import XCTest

final class PipelinePartitionTests: XCTestCase {
    /// The best max-stage cost by trying every placement of the p−1 cuts.
    private func bruteForce(_ costs: [Int], _ p: Int) -> Int {
        var best = Int.max
        func place(_ start: Int, _ left: Int, _ worst: Int) {
            if left == 1 {
                best = min(best, max(worst, costs[start...].reduce(0, +)))
                return
            }
            guard start < costs.count else { return }
            for end in (start + 1) ... (costs.count - left + 1) {
                place(end, left - 1, max(worst, costs[start ..< end].reduce(0, +)))
            }
        }
        place(0, p, 0)
        return best
    }

    func testKnownOptimalCuts() throws {
        let nine = try PipelinePartition.balanced(costs: [1, 2, 3, 4, 5, 6, 7, 8, 9], stages: 3)
        XCTAssertEqual(nine.maxStageCost, 17)
        XCTAssertEqual(nine.stages, [0 ..< 5, 5 ..< 7, 7 ..< 9])
        XCTAssertEqual(nine.stageCosts, [15, 13, 17])
        // One huge layer: it stands alone and sets the cost.
        let huge = try PipelinePartition.balanced(costs: [1, 1, 100, 1, 1], stages: 3)
        XCTAssertEqual(huge.maxStageCost, 100)
        XCTAssertEqual(huge.stages[1], 2 ..< 3)
        // Equal layers split evenly; a stage per layer when p = L.
        XCTAssertEqual(try PipelinePartition.balanced(costs: Array(repeating: 5, count: 8), stages: 4).stageCosts,
                       [10, 10, 10, 10])
        XCTAssertEqual(try PipelinePartition.balanced(costs: [3, 1, 2], stages: 3).stages, [0 ..< 1, 1 ..< 2, 2 ..< 3])
        XCTAssertEqual(try PipelinePartition.balanced(costs: [3, 1, 2], stages: 1).stages, [0 ..< 3])
        // Embedding-heavy first layer (like an LLM): the rest share the other stages.
        let llm = try PipelinePartition.balanced(costs: [50, 10, 10, 10, 10, 10, 10, 60], stages: 3)
        XCTAssertEqual(llm.maxStageCost, 60)
    }

    func testBalancedIsOptimalOnRandomCases() throws {
        var state: UInt64 = 12345
        for _ in 0 ..< 200 {
            state = state &* 6_364_136_223_846_793_005 &+ 1
            let n = Int(state >> 60) % 8 + 1
            let costs = (0 ..< n).map { i in Int((state >> UInt64(i * 7 % 50)) % 20) }
            let p = Int(state >> 33) % n + 1
            let partition = try PipelinePartition.balanced(costs: costs, stages: p)
            XCTAssertEqual(partition.maxStageCost, bruteForce(costs, p), "\(costs) into \(p)")
            XCTAssertEqual(partition.stages.count, p)
            XCTAssertEqual(partition.stages.first?.lowerBound, 0)
            XCTAssertEqual(partition.stages.last?.upperBound, n)
            XCTAssertTrue(partition.stages.allSatisfy { !$0.isEmpty })
            XCTAssertTrue(zip(partition.stages, partition.stages.dropFirst()).allSatisfy { $0.upperBound == $1.lowerBound })
        }
    }

    func testUniform() throws {
        let u = try PipelinePartition.uniform(layers: 10, stages: 4)
        XCTAssertEqual(u.stages, [0 ..< 3, 3 ..< 6, 6 ..< 8, 8 ..< 10])
        XCTAssertEqual(u.stage(ofLayer: 7), 2)
        XCTAssertEqual(try PipelinePartition.uniform(costs: [4, 1, 1, 4], stages: 2).stageCosts, [5, 5])
    }

    func testCounts() throws {
        let cut = try PipelinePartition.counts([3, 1, 2], costs: [1, 2, 3, 4, 5, 6])
        XCTAssertEqual(cut.stages, [0 ..< 3, 3 ..< 4, 4 ..< 6])
        XCTAssertEqual(cut.stageCosts, [6, 4, 11])
        XCTAssertThrowsError(try PipelinePartition.counts([2, 2], costs: [1, 1, 1])) {
            XCTAssertTrue("\($0)".contains("add up to 4, but there are 3 layers"), "\($0)")
        }
        XCTAssertThrowsError(try PipelinePartition.counts([3, 0], costs: [1, 1, 1])) {
            XCTAssertTrue("\($0)".contains("stage 1 has 0 layers"), "\($0)")
        }
        XCTAssertThrowsError(try PipelinePartition.counts([1, 1, 1, 1], costs: [1, 1, 1])) {
            XCTAssertEqual($0 as? PipelineError, .moreStagesThanLayers(stages: 4, layers: 3))
        }
    }

    func testErrors() {
        XCTAssertThrowsError(try PipelinePartition.balanced(costs: [1, 2], stages: 3)) {
            XCTAssertEqual($0 as? PipelineError, .moreStagesThanLayers(stages: 3, layers: 2))
            XCTAssertTrue("\($0)".contains("at most 2 stages"), "\($0)")
        }
        XCTAssertThrowsError(try PipelinePartition.uniform(layers: 2, stages: 0))
        XCTAssertThrowsError(try PipelinePartition.balanced(costs: [1, -2], stages: 1)) {
            XCTAssertTrue("\($0)".contains("layer 1 has negative cost"), "\($0)")
        }
        XCTAssertThrowsError(try PipelinePartition.balanced(costs: [], stages: 1))
    }
}
