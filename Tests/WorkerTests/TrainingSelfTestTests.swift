import Collective
import Foundation
import SuraTestSupport
import Tensor
import Worker
import XCTest

/// The distributed self-test on thread ranks (the same code `sura selftest training` runs
/// under mpirun), plus a quick run of the training benchmark.
final class TrainingSelfTestTests: SingleThreadedTestCase {
    private func selfTest(ranks: Int, dp: Int?, pp: Int, algorithm: AllreduceAlgorithm = .native) {
        let summaries = PerRank<String>(size: ranks)
        runRanksExpectingSuccess(ranks) { world in
            let options = DistributedTrainingSelfTest.Options(dataParallel: dp, pipelineStages: pp, algorithm: algorithm)
            summaries[world.rank] = try DistributedTrainingSelfTest.run(world: world, options: options)
        }
        let summary = summaries[0] ?? ""
        XCTAssertTrue(summary.hasPrefix("training selftest passed: dp=\(ranks / pp) × pp=\(pp)"), summary)
    }

    func testDataParallelTwo() { selfTest(ranks: 2, dp: 2, pp: 1) }
    func testDataParallelTwoOverTheRing() { selfTest(ranks: 2, dp: 2, pp: 1, algorithm: .ring) }
    func testPipelineTwo() { selfTest(ranks: 2, dp: 1, pp: 2) }
    func testPipelineThree() { selfTest(ranks: 3, dp: nil, pp: 3) }
    func testDataTwoByPipelineTwo() { selfTest(ranks: 4, dp: 2, pp: 2) }
    func testOneRank() { selfTest(ranks: 1, dp: nil, pp: 1) }

    func testATopologyThatDoesNotFitFails() {
        let errors = PerRank<Error>(size: 2)
        runRanks(2) { world in
            do {
                _ = try DistributedTrainingSelfTest.run(world: world, options: .init(pipelineStages: 6))
            } catch {
                errors[world.rank] = error
            }
        }
        XCTAssertTrue("\(errors[0]!)".contains("only 5 layers"), "\(errors[0]!)")
    }

    func testBenchmarkRunsAndReportsSaneFigures() throws {
        let trace = FileManager.default.temporaryDirectory.appendingPathComponent("sura-bench-\(UUID().uuidString).json")
        let pipelineTrace = TrainingBenchmark.pipelineTimelineURL(trace)
        defer { for url in [trace, pipelineTrace] { try? FileManager.default.removeItem(at: url) } }
        XCTAssertEqual(pipelineTrace.lastPathComponent, trace.deletingPathExtension().lastPathComponent + ".pipeline.json")
        let options = TrainingBenchmark.Options(widths: [64, 128, 64], batchPerRank: 16, warmupSteps: 1, steps: 2,
                                                pipelineMicroBatches: [2, 4], pipelineSteps: 3, pipelineWidths: [32, 32, 32, 32],
                                                pipelineBatch: 8, rounds: 3, timeline: trace)
        let report = try TrainingBenchmark.run(world: InProcessCommunicator.singleProcess(), options: options)
        XCTAssertEqual(report.ranks, 2)
        XCTAssertEqual(report.singleRounds.count, 3)
        XCTAssertEqual(report.parallelRounds.count, 3)
        XCTAssertEqual(report.singleSamplesPerSecond, report.singleRounds.sorted()[1], "the median round")
        XCTAssertEqual(report.parallelSamplesPerSecond, report.parallelRounds.sorted()[1], "the median round")
        XCTAssertEqual(report.unsynchronizedRounds.count, 3)
        XCTAssertEqual(report.unsynchronizedSamplesPerSecond, report.unsynchronizedRounds.sorted()[1], "the median round")
        XCTAssertGreaterThan(report.computeOnlyEfficiency, 0)
        XCTAssertGreaterThan(report.singleSamplesPerSecond, 0)
        XCTAssertGreaterThan(report.parallelSamplesPerSecond, 0)
        XCTAssertGreaterThanOrEqual(report.hiddenCommunicationShare, 0)
        XCTAssertLessThanOrEqual(report.hiddenCommunicationShare, 1)
        XCTAssertGreaterThanOrEqual(report.exposedWaitSecondsPerStep, 0)
        XCTAssertGreaterThanOrEqual(report.backwardSpreadSecondsPerStep, 0)
        XCTAssertEqual(report.pipeline.count, 4)
        XCTAssertEqual(report.pipeline.first?.theoreticalIdle ?? 0, 1.0 / 3.0, accuracy: 1e-12)
        for row in report.pipeline {
            XCTAssertGreaterThan(row.replayedIdle, 0, "\(row)")
            XCTAssertLessThan(row.replayedIdle, 1, "\(row)")
        }
        // The pipeline's trace: the recorded steps (both schedules at m = 4) on both stages.
        let events = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(contentsOf: pipelineTrace)) as? [String: Any])
        let spans = try XCTUnwrap(events["traceEvents"] as? [[String: Any]]).filter { ($0["ph"] as? String) == "X" }
        for stage in 0 ..< 2 {
            let names = spans.filter { ($0["pid"] as? Int) == stage }.compactMap { $0["name"] as? String }
            XCTAssertEqual(names.filter { $0.hasPrefix("forward ") }.count, 2 * 4, "stage \(stage): \(names)")
            XCTAssertEqual(names.filter { $0.hasPrefix("backward ") }.count, 2 * 4, "stage \(stage)")
        }
        XCTAssertTrue(FileManager.default.fileExists(atPath: trace.path))
        let table = TrainingBenchmark.format(report)
        XCTAssertTrue(table.contains("scaling efficiency"), table)
        XCTAssertTrue(table.contains("no gradient sync"), table)
        XCTAssertTrue(table.contains("waited a median") && table.contains("backward times differed by a median"), table)
        XCTAssertTrue(table.contains("(p-1)/(m+p-1)") && table.contains("replayed idle"), table)
    }
}
