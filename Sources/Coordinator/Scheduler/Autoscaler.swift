import Foundation

/// Bounds and stabilisation of the worker-count autoscaler.
public struct AutoscalerPolicy: Sendable, Equatable {
    public var minWorkers: Int
    public var maxWorkers: Int
    /// Fraction of workers that should be busy: desired = ⌈demand / targetUtilisation⌉.
    public var targetUtilisation: Double
    /// Seconds the desired count must stay above the current count before adding workers
    /// (the smallest recommendation of the window is used).
    public var scaleUpWindow: TimeInterval
    /// Seconds the desired count must stay below the current count before draining workers
    /// (the largest recommendation of the window is used).
    public var scaleDownWindow: TimeInterval
    /// Seconds between decisions.
    public var interval: TimeInterval

    public init(minWorkers: Int = 1, maxWorkers: Int = 4, targetUtilisation: Double = 0.75,
                scaleUpWindow: TimeInterval = 0, scaleDownWindow: TimeInterval = 30, interval: TimeInterval = 1) {
        self.minWorkers = max(0, minWorkers)
        self.maxWorkers = max(max(0, minWorkers), maxWorkers)
        self.targetUtilisation = min(1, max(0.05, targetUtilisation))
        self.scaleUpWindow = max(0, scaleUpWindow)
        self.scaleDownWindow = max(0, scaleDownWindow)
        self.interval = max(0.01, interval)
    }
}

/// What the autoscaler looks at, once per interval.
public struct AutoscalerInputs: Sendable, Equatable, Codable {
    /// Requests waiting in the queue.
    public var queueDepth: Int
    /// Mean number of busy workers over the last interval (busy worker-seconds / seconds).
    public var busyWorkers: Double
    /// Workers counted as present: registered and not draining, plus started but not yet registered.
    public var currentWorkers: Int
    /// Of `currentWorkers`, those started but not yet registered.
    public var startingWorkers: Int
    /// The batcher's maximum batch: one worker drains this many queued requests per batch.
    public var maxBatch: Int

    public init(queueDepth: Int, busyWorkers: Double, currentWorkers: Int, startingWorkers: Int, maxBatch: Int) {
        self.queueDepth = queueDepth
        self.busyWorkers = busyWorkers
        self.currentWorkers = currentWorkers
        self.startingWorkers = startingWorkers
        self.maxBatch = maxBatch
    }

    enum CodingKeys: String, CodingKey {
        case queueDepth = "queue_depth", busyWorkers = "busy_workers", currentWorkers = "current_workers"
        case startingWorkers = "starting_workers", maxBatch = "max_batch"
    }
}

/// One autoscaler decision with everything it was computed from.
public struct AutoscalerDecision: Sendable, Equatable, Codable, CustomStringConvertible {
    public enum Action: String, Sendable, Codable { case hold, scaleUp = "scale_up", scaleDown = "scale_down" }

    public var time: Double
    public var inputs: AutoscalerInputs
    /// busyWorkers / registered workers.
    public var utilisation: Double
    /// busyWorkers + queueDepth / maxBatch: workers the load would keep busy right now.
    public var demand: Double
    /// ⌈demand / targetUtilisation⌉ clamped to [min, max]: this interval's recommendation.
    public var desired: Int
    /// Smallest recommendation in the scale-up window.
    public var scaleUpCandidate: Int
    /// Largest recommendation in the scale-down window.
    public var scaleDownCandidate: Int
    /// The worker count to have after this decision.
    public var target: Int
    public var action: Action
    /// Why the decision is what it is.
    public var reason: String

    public var description: String {
        let verb: String
        switch action {
        case .hold: verb = "hold at \(inputs.currentWorkers)"
        case .scaleUp: verb = "scale up \(inputs.currentWorkers) → \(target)"
        case .scaleDown: verb = "scale down \(inputs.currentWorkers) → \(target)"
        }
        return String(format: "autoscaler: %@ (%@; queue=%d busy=%.2f util=%.2f starting=%d demand=%.2f desired=%d up_window_min=%d down_window_max=%d)",
                      verb, reason, inputs.queueDepth, inputs.busyWorkers, utilisation, inputs.startingWorkers, demand,
                      desired, scaleUpCandidate, scaleDownCandidate)
    }

    enum CodingKeys: String, CodingKey {
        case time, inputs, utilisation, demand, desired, target, action, reason
        case scaleUpCandidate = "scale_up_candidate", scaleDownCandidate = "scale_down_candidate"
    }
}

/// Decides how many workers to run from queue depth and utilisation, like Kubernetes' HPA:
/// each interval gives a recommendation; workers are added only when every recommendation of
/// the scale-up window is above the current count, and drained only when every recommendation
/// of the scale-down window is below it (a window must have been observed in full first).
/// The clock is passed in, so tests drive it by hand.
public struct Autoscaler: Sendable {
    public let policy: AutoscalerPolicy
    private var history: [(time: Double, desired: Int)] = []
    private var firstDecision: Double?

    public init(policy: AutoscalerPolicy) {
        self.policy = policy
    }

    /// The recommendation alone: ⌈demand / target⌉ within [min, max].
    public func recommendation(for inputs: AutoscalerInputs) -> (demand: Double, desired: Int) {
        let demand = max(0, inputs.busyWorkers) + Double(max(0, inputs.queueDepth)) / Double(max(1, inputs.maxBatch))
        let raw = demand <= 1e-9 ? 0 : Int((demand / policy.targetUtilisation - 1e-9).rounded(.up))
        return (demand, min(policy.maxWorkers, max(policy.minWorkers, raw)))
    }

    /// Records this interval's recommendation and returns the decision.
    public mutating func decide(_ inputs: AutoscalerInputs, now: Double) -> AutoscalerDecision {
        let (demand, desired) = recommendation(for: inputs)
        if firstDecision == nil { firstDecision = now }
        history.append((now, desired))
        let keep = max(policy.scaleUpWindow, policy.scaleDownWindow)
        history.removeAll { $0.time < now - keep - 1e-9 }

        func window(_ seconds: TimeInterval) -> [Int] {
            history.filter { $0.time >= now - seconds - 1e-9 }.map(\.desired)
        }
        let observed = now - firstDecision!
        let upCandidate = window(policy.scaleUpWindow).min() ?? desired
        let downCandidate = window(policy.scaleDownWindow).max() ?? desired
        let current = inputs.currentWorkers
        let registered = max(1, current - inputs.startingWorkers)
        var decision = AutoscalerDecision(time: now, inputs: inputs, utilisation: max(0, inputs.busyWorkers) / Double(registered),
                                          demand: demand, desired: desired, scaleUpCandidate: upCandidate,
                                          scaleDownCandidate: downCandidate, target: current, action: .hold, reason: "")
        if current < policy.minWorkers {
            decision.target = policy.minWorkers
            decision.action = .scaleUp
            decision.reason = "below the minimum of \(policy.minWorkers)"
        } else if current > policy.maxWorkers {
            decision.target = policy.maxWorkers
            decision.action = .scaleDown
            decision.reason = "above the maximum of \(policy.maxWorkers)"
        } else if upCandidate > current && observed + 1e-9 >= policy.scaleUpWindow {
            decision.target = upCandidate
            decision.action = .scaleUp
            decision.reason = "demand above target for \(Self.seconds(policy.scaleUpWindow))"
        } else if downCandidate < current && observed + 1e-9 >= policy.scaleDownWindow {
            decision.target = downCandidate
            decision.action = .scaleDown
            decision.reason = "demand below target for \(Self.seconds(policy.scaleDownWindow))"
        } else if desired > current {
            decision.reason = "waiting for the \(Self.seconds(policy.scaleUpWindow)) scale-up window"
        } else if desired < current {
            decision.reason = "waiting for the \(Self.seconds(policy.scaleDownWindow)) scale-down window"
        } else {
            decision.reason = "at the desired count"
        }
        return decision
    }

    private static func seconds(_ value: TimeInterval) -> String { String(format: "%gs", value) }
}
