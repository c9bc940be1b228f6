import Collective
import Foundation
import SuraTestSupport
import Worker
import XCTest

final class TopologyTests: XCTestCase {
    func testRankGridCoordinates() throws {
        let t = try TrainingTopology(worldSize: 6, pipelineStages: 3)
        XCTAssertEqual(t.dataParallel, 2)
        XCTAssertEqual((0 ..< 6).map { t.coordinates(of: $0).dpRank }, [0, 0, 0, 1, 1, 1])
        XCTAssertEqual((0 ..< 6).map { t.coordinates(of: $0).ppRank }, [0, 1, 2, 0, 1, 2])
        XCTAssertEqual(t.rank(dpRank: 1, ppRank: 2), 5)
        XCTAssertEqual(t.dataParallelGroup(ppRank: 1), [1, 4])
        XCTAssertEqual(t.pipelineGroup(dpRank: 1), [3, 4, 5])
    }

    func testTopologyErrorsSayWhatIsWrong() {
        XCTAssertThrowsError(try TrainingTopology(worldSize: 6, pipelineStages: 4)) {
            XCTAssertEqual($0 as? TopologyError, .doesNotDivideWorld(worldSize: 6, dataParallel: nil, pipelineStages: 4))
            XCTAssertTrue("\($0)".contains("4 pipeline stages do not divide the 6 ranks"), "\($0)")
        }
        XCTAssertThrowsError(try TrainingTopology(worldSize: 3, dataParallel: 2, pipelineStages: 2)) {
            XCTAssertTrue("\($0)".contains("dp=2 × pp=2 = 4 ranks does not match the 3 ranks"), "\($0)")
        }
        XCTAssertThrowsError(try TrainingTopology(worldSize: 8, pipelineStages: 8, layers: 5)) {
            XCTAssertEqual($0 as? TopologyError, .moreStagesThanLayers(stages: 8, layers: 5))
            XCTAssertTrue("\($0)".contains("only 5 layers"), "\($0)")
        }
        XCTAssertThrowsError(try TrainingTopology(worldSize: 2, pipelineStages: 4))
        XCTAssertThrowsError(try TrainingTopology(worldSize: 4, dataParallel: 0, pipelineStages: 1))
        XCTAssertThrowsError(try TrainingTopology(worldSize: 4, pipelineStages: 0))
        XCTAssertNoThrow(try TrainingTopology(worldSize: 4, dataParallel: 2, pipelineStages: 2, layers: 2))
    }

    func testSplittingTheWorldIntoDataAndPipelineGroups() {
        let sums = PerRank<[Float]>(size: 4)
        runRanksExpectingSuccess(4) { world in
            let groups = try TopologyGroups(world: world, topology: try TrainingTopology(worldSize: 4, pipelineStages: 2))
            XCTAssertEqual(groups.dpRank, world.rank / 2)
            XCTAssertEqual(groups.ppRank, world.rank % 2)
            var dp = [Float(world.rank)], pp = [Float(world.rank)]
            try groups.dataParallel.allreduce(&dp)
            try groups.pipeline.allreduce(&pp)
            sums[world.rank] = [dp[0], pp[0]]
        }
        // dp groups {0, 2} and {1, 3}; pipelines {0, 1} and {2, 3}.
        XCTAssertEqual(sums[0], [2, 1])
        XCTAssertEqual(sums[1], [4, 1])
        XCTAssertEqual(sums[2], [2, 5])
        XCTAssertEqual(sums[3], [4, 5])
    }

    func testGroupsRefuseATopologyForAnotherWorld() {
        let errors = PerRank<Error>(size: 2)
        runRanks(2) { world in
            do {
                _ = try TopologyGroups(world: world, topology: try TrainingTopology(worldSize: 4, pipelineStages: 2))
            } catch {
                errors[world.rank] = error
            }
        }
        XCTAssertEqual(errors[0] as? TopologyError, .doesNotDivideWorld(worldSize: 2, dataParallel: 2, pipelineStages: 2))
    }
}
