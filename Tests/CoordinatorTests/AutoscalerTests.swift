import Coordinator
import XCTest

/// The autoscaler's decisions on a hand-driven clock.
final class AutoscalerTests: XCTestCase {
    func inputs(queue: Int, busy: Double, current: Int, starting: Int = 0) -> AutoscalerInputs {
        AutoscalerInputs(queueDepth: queue, busyWorkers: busy, currentWorkers: current, startingWorkers: starting, maxBatch: 8)
    }

    func testRecommendationFollowsDemandWithinBounds() {
        let scaler = Autoscaler(policy: AutoscalerPolicy(minWorkers: 1, maxWorkers: 5, targetUtilisation: 0.5))
        XCTAssertEqual(scaler.recommendation(for: inputs(queue: 0, busy: 0, current: 1)).desired, 1, "idle: the minimum")
        // demand = 1 busy + 16/8 queued = 3; 3 / 0.5 = 6 → clamped to 5.
        let (demand, desired) = scaler.recommendation(for: inputs(queue: 16, busy: 1, current: 2))
        XCTAssertEqual(demand, 3, accuracy: 1e-12)
        XCTAssertEqual(desired, 5)
        XCTAssertEqual(scaler.recommendation(for: inputs(queue: 0, busy: 1, current: 2)).desired, 2)
    }

    func testScaleUpWaitsForTheWholeUpWindow() {
        var scaler = Autoscaler(policy: AutoscalerPolicy(minWorkers: 1, maxWorkers: 4, targetUtilisation: 0.75,
                                                         scaleUpWindow: 3, scaleDownWindow: 10, interval: 1))
        XCTAssertEqual(scaler.decide(inputs(queue: 0, busy: 0.2, current: 1), now: 0).action, .hold)
        var decision = scaler.decide(inputs(queue: 40, busy: 1, current: 1), now: 1)
        XCTAssertEqual(decision.action, .hold, "one high sample is not enough")
        XCTAssertTrue(decision.reason.contains("scale-up window"), decision.reason)
        XCTAssertEqual(decision.desired, 4)
        _ = scaler.decide(inputs(queue: 40, busy: 1, current: 1), now: 2)
        _ = scaler.decide(inputs(queue: 40, busy: 1, current: 1), now: 3)
        decision = scaler.decide(inputs(queue: 40, busy: 1, current: 1), now: 4)
        XCTAssertEqual(decision.action, .scaleUp, "high for the whole 3 s window")
        XCTAssertEqual(decision.target, 4)
        XCTAssertEqual(decision.inputs.queueDepth, 40, "the decision carries its inputs")
        XCTAssertTrue(decision.description.contains("queue=40"), decision.description)
    }

    func testScaleDownUsesTheLargestRecommendationOfTheDownWindow() {
        var scaler = Autoscaler(policy: AutoscalerPolicy(minWorkers: 1, maxWorkers: 4, targetUtilisation: 1,
                                                         scaleUpWindow: 0, scaleDownWindow: 5, interval: 1))
        XCTAssertEqual(scaler.decide(inputs(queue: 0, busy: 3, current: 4), now: 0).action, .hold, "desired 3 but the window is not yet observed")
        for t in 1...4 { XCTAssertEqual(scaler.decide(inputs(queue: 0, busy: 1, current: 4), now: Double(t)).action, .hold) }
        var decision = scaler.decide(inputs(queue: 0, busy: 1, current: 4), now: 5)
        XCTAssertEqual(decision.action, .scaleDown)
        XCTAssertEqual(decision.target, 3, "the 3 recommended at t=0 is still in the window")
        decision = scaler.decide(inputs(queue: 0, busy: 1, current: 3), now: 6)
        XCTAssertEqual(decision.target, 1)
        XCTAssertEqual(decision.action, .scaleDown)
        // A burst inside the window blocks scale-down again.
        _ = scaler.decide(inputs(queue: 8, busy: 1, current: 1), now: 7)
        decision = scaler.decide(inputs(queue: 0, busy: 0, current: 2), now: 8)
        XCTAssertEqual(decision.action, .hold)
    }

    func testImmediateScaleUpAndBoundsEnforced() {
        var scaler = Autoscaler(policy: AutoscalerPolicy(minWorkers: 2, maxWorkers: 3, scaleUpWindow: 0, scaleDownWindow: 0))
        var decision = scaler.decide(inputs(queue: 0, busy: 0, current: 0), now: 0)
        XCTAssertEqual(decision.action, .scaleUp)
        XCTAssertEqual(decision.target, 2)
        XCTAssertTrue(decision.reason.contains("minimum"))
        decision = scaler.decide(inputs(queue: 0, busy: 0, current: 5), now: 1)
        XCTAssertEqual(decision.action, .scaleDown)
        XCTAssertEqual(decision.target, 3)
        decision = scaler.decide(inputs(queue: 100, busy: 3, current: 3), now: 2)
        XCTAssertEqual(decision.action, .hold, "already at the maximum")
        XCTAssertEqual(decision.desired, 3)
    }

    func testStartingWorkersCountAsPresentButNotInUtilisation() {
        var scaler = Autoscaler(policy: AutoscalerPolicy(minWorkers: 1, maxWorkers: 4, targetUtilisation: 0.5, scaleUpWindow: 0))
        let decision = scaler.decide(inputs(queue: 0, busy: 1, current: 2, starting: 1), now: 0)
        XCTAssertEqual(decision.utilisation, 1, accuracy: 1e-12, "1 busy of 1 registered")
        XCTAssertEqual(decision.action, .hold, "desired 2 = 1 registered + 1 starting")
    }
}
