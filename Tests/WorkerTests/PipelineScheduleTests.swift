import Foundation
import Worker
import XCTest

final class PipelineScheduleTests: XCTestCase {
    private func text(_ schedule: PipelineSchedule, _ stage: Int) -> String {
        schedule.operations(stage: stage).map(\.description).joined(separator: " ")
    }

    func testOneForwardOneBackwardOperationLists() throws {
        let s = try PipelineSchedule(kind: .oneForwardOneBackward, stages: 2, microBatches: 4)
        XCTAssertEqual(text(s, 0), "F0 sendA0 F1 sendA1+recvG0 B0 F2 sendA2+recvG1 B1 F3 sendA3+recvG2 B2 recvG3 B3")
        XCTAssertEqual(text(s, 1), "recvA0 F0 B0 sendG0+recvA1 F1 B1 sendG1+recvA2 F2 B2 sendG2+recvA3 F3 B3 sendG3")
        let three = try PipelineSchedule(kind: .oneForwardOneBackward, stages: 3, microBatches: 4)
        XCTAssertEqual(text(three, 1),
                       "recvA0 F0 sendA0 recvA1 F1 sendA1+recvG0 B0 sendG0+recvA2 F2 sendA2+recvG1 B1 "
                       + "sendG1+recvA3 F3 sendA3+recvG2 B2 sendG2 recvG3 B3 sendG3")
    }

    func testGPipeOperationLists() throws {
        let s = try PipelineSchedule(kind: .gpipe, stages: 2, microBatches: 3)
        XCTAssertEqual(text(s, 0), "F0 sendA0 F1 sendA1 F2 sendA2 recvG2 B2 recvG1 B1 recvG0 B0")
        XCTAssertEqual(text(s, 1), "recvA0 F0 recvA1 F1 recvA2 F2 B2 sendG2 B1 sendG1 B0 sendG0")
    }

    func testFrozenPrefixAndForwardOnly() throws {
        // Stage 0 has nothing to train: it only runs forwards, and stage 1 sends nothing back.
        let s = try PipelineSchedule(kind: .oneForwardOneBackward, stages: 2, microBatches: 2, firstTrainableStage: 1)
        XCTAssertEqual(text(s, 0), "F0 sendA0 F1 sendA1")
        XCTAssertEqual(text(s, 1), "recvA0 F0 B0 recvA1 F1 B1")
        let forward = try PipelineSchedule(kind: .gpipe, stages: 3, microBatches: 2, firstTrainableStage: 3)
        XCTAssertEqual(text(forward, 2), "recvA0 F0 recvA1 F1")
    }

    func testEveryMicroBatchRunsForwardThenBackwardOnEveryStage() throws {
        for kind in PipelineSchedule.Kind.allCases {
            for p in 1 ... 5 {
                for m in 1 ... 9 {
                    let schedule = try PipelineSchedule(kind: kind, stages: p, microBatches: m)
                    for s in 0 ..< p {
                        let ops = schedule.operations(stage: s)
                        for k in 0 ..< m {
                            let f = ops.firstIndex(of: .forward(k)), b = ops.firstIndex(of: .backward(k))
                            XCTAssertNotNil(f)
                            XCTAssertNotNil(b)
                            if let f, let b { XCTAssertLessThan(f, b, "\(kind) p=\(p) m=\(m) stage \(s) mb \(k)") }
                        }
                        if kind == .oneForwardOneBackward {
                            // At most p−s micro-batches in flight on stage s.
                            var live = 0, peak = 0
                            for op in ops {
                                if case .forward = op { live += 1 }
                                if case .backward = op { live -= 1 }
                                peak = max(peak, live)
                            }
                            XCTAssertLessThanOrEqual(peak, min(p - s, m))
                        }
                    }
                }
            }
        }
    }

    func testSimulatedIdleFractionIsTheTheory() throws {
        for kind in PipelineSchedule.Kind.allCases {
            for (p, m) in [(1, 4), (2, 1), (2, 4), (3, 6), (4, 8), (4, 3), (5, 16)] {
                let schedule = try PipelineSchedule(kind: kind, stages: p, microBatches: m)
                let (idle, makespan) = try schedule.simulate(forwardCost: 1, backwardCost: 2)
                let theory = PipelineSchedule.theoreticalIdleFraction(stages: p, microBatches: m)
                XCTAssertEqual(makespan, Double((m + p - 1) * 3), accuracy: 1e-9, "\(kind) p=\(p) m=\(m)")
                for (s, fraction) in idle.enumerated() {
                    XCTAssertEqual(fraction, theory, accuracy: 1e-9, "\(kind) p=\(p) m=\(m) stage \(s)")
                }
            }
        }
        XCTAssertEqual(PipelineSchedule.theoreticalIdleFraction(stages: 4, microBatches: 8), 3.0 / 11.0)
    }

    /// Stage 1 twice as slow as stage 0 (forward 2, backward 4 against 1 and 2), GPipe, m = 4:
    /// stage 1's forwards end at 1 + 2(k+1), its backwards then run back to back until 1 + 6m, and
    /// stage 0's last backward follows: makespan 6m + 3 = 27, idle 1 − 12/27 and 1 − 24/27 — not
    /// the 1/5 of equal stages. 1F1B cannot beat the slow stage either: its makespan is the same.
    func testReplayWithMeasuredCostsShowsTheImbalance() throws {
        for kind in PipelineSchedule.Kind.allCases {
            let schedule = try PipelineSchedule(kind: kind, stages: 2, microBatches: 4)
            let (idle, makespan) = try schedule.simulate { stage, op in
                let scale = stage == 1 ? 2.0 : 1.0
                if case .forward = op { return scale }
                return 2 * scale
            }
            XCTAssertEqual(makespan, 27, accuracy: 1e-9, "\(kind)")
            XCTAssertEqual(idle[0], 15.0 / 27.0, accuracy: 1e-9, "\(kind)")
            XCTAssertEqual(idle[1], 3.0 / 27.0, accuracy: 1e-9, "\(kind)")
        }
        // Per-micro-batch costs are honoured: one slow forward on stage 0 delays everything after it.
        let gpipe = try PipelineSchedule(kind: .gpipe, stages: 2, microBatches: 2)
        let slowFirst = try gpipe.simulate { stage, op in
            if stage == 0, op == .forward(0) { return 5 }
            if case .forward = op { return 1 }
            return 2
        }
        // Stage 0: F0 0–5, F1 5–6; stage 1: F0 5–6, F1 6–7, B1 7–9, B0 9–11; stage 0: B1 9–11, B0 11–13.
        XCTAssertEqual(slowFirst.makespan, 13, accuracy: 1e-9)
    }

    func testInvalidSchedules() {
        XCTAssertThrowsError(try PipelineSchedule(kind: .gpipe, stages: 0, microBatches: 1))
        XCTAssertThrowsError(try PipelineSchedule(kind: .gpipe, stages: 2, microBatches: 0)) {
            XCTAssertTrue("\($0)".contains("micro-batch count 0"), "\($0)")
        }
        XCTAssertThrowsError(try PipelineSchedule(kind: .gpipe, stages: 2, microBatches: 1, firstTrainableStage: 3))
    }
}
