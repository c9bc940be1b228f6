import Foundation

/// One step of a pipeline stage's schedule. Micro-batches are numbered 0 ..< m. "Next" is stage
/// s+1, "previous" stage s−1. The fused operations post the send and the receive before waiting
/// on either (Megatron's `send_forward_recv_backward`): two neighbours that both want to send —
/// activations going down, gradients coming up — would otherwise wait for each other forever.
public enum PipelineOp: Equatable, Sendable, CustomStringConvertible {
    case forward(Int)
    case backward(Int)
    /// Activation of micro-batch k to the next stage.
    case sendActivation(Int)
    /// Activation of micro-batch k from the previous stage.
    case receiveActivation(Int)
    /// Gradient w.r.t. this stage's input of micro-batch k to the previous stage.
    case sendGradient(Int)
    /// Gradient w.r.t. this stage's output of micro-batch k from the next stage.
    case receiveGradient(Int)
    /// With the next stage: send activation `send`, receive gradient `receive`.
    case sendActivationReceiveGradient(send: Int, receive: Int)
    /// With the previous stage: send gradient `send`, receive activation `receive`.
    case sendGradientReceiveActivation(send: Int, receive: Int)

    public var description: String {
        switch self {
        case let .forward(k): return "F\(k)"
        case let .backward(k): return "B\(k)"
        case let .sendActivation(k): return "sendA\(k)"
        case let .receiveActivation(k): return "recvA\(k)"
        case let .sendGradient(k): return "sendG\(k)"
        case let .receiveGradient(k): return "recvG\(k)"
        case let .sendActivationReceiveGradient(s, r): return "sendA\(s)+recvG\(r)"
        case let .sendGradientReceiveActivation(s, r): return "sendG\(s)+recvA\(r)"
        }
    }
}

/// The order of forward and backward passes over micro-batches on each pipeline stage, as
/// explicit per-stage operation lists.
///
/// - **GPipe**: every stage runs all m forwards, then all m backwards (in reverse micro-batch
///   order). Activations of all m micro-batches are alive at once.
/// - **1F1B** (PipeDream-Flush, Megatron's default): stage s runs w = min(p−s−1, m) warm-up
///   forwards, then alternates one forward and one backward, then drains w backwards. Backwards
///   run in micro-batch order, and at most w+1 micro-batches' activations are alive.
///
/// Both flush at the end of the step, so both have the same bubble: with equal per-stage
/// forward time f and backward time b, the step takes (m+p−1)(f+b) of which each stage computes
/// m(f+b), an idle fraction of (p−1)/(m+p−1) (`theoreticalIdleFraction`).
///
/// Stages below `firstTrainableStage` have no trainable parameters before or in them, so they
/// run no backward and receive no gradients; that stage itself sends none back. With
/// `firstTrainableStage == stages` the schedule is forward-only (feature extraction).
public struct PipelineSchedule: Equatable, Sendable {
    public enum Kind: String, Sendable, CaseIterable {
        case gpipe
        case oneForwardOneBackward = "1f1b"
    }

    public let kind: Kind
    public let stages: Int
    public let microBatches: Int
    public let firstTrainableStage: Int

    /// - Throws: `PipelineError.invalid` for fewer than one stage or micro-batch, or a
    ///   `firstTrainableStage` outside 0 ... stages.
    public init(kind: Kind, stages: Int, microBatches: Int, firstTrainableStage: Int = 0) throws {
        guard stages >= 1 else { throw PipelineError.invalid("stage count \(stages) must be at least 1") }
        guard microBatches >= 1 else {
            throw PipelineError.invalid("micro-batch count \(microBatches) must be at least 1")
        }
        guard firstTrainableStage >= 0 && firstTrainableStage <= stages else {
            throw PipelineError.invalid("first trainable stage \(firstTrainableStage) is outside 0 ... \(stages)")
        }
        self.kind = kind
        self.stages = stages
        self.microBatches = microBatches
        self.firstTrainableStage = firstTrainableStage
    }

    /// (p−1)/(m+p−1): the share of a step each stage is idle when every stage takes the same
    /// time per micro-batch and communication is free.
    public static func theoreticalIdleFraction(stages p: Int, microBatches m: Int) -> Double {
        guard p >= 1, m >= 1 else { return 0 }
        return Double(p - 1) / Double(m + p - 1)
    }

    public var theoreticalIdleFraction: Double {
        Self.theoreticalIdleFraction(stages: stages, microBatches: microBatches)
    }

    /// Whether stage `s` runs backward passes.
    public func runsBackward(stage s: Int) -> Bool { s >= firstTrainableStage }

    /// The operations stage `s` performs, in order.
    public func operations(stage s: Int) -> [PipelineOp] {
        precondition(s >= 0 && s < stages, "stage \(s) outside 0 ..< \(stages)")
        let hasPrevious = s > 0, hasNext = s < stages - 1
        let backward = runsBackward(stage: s)
        // Gradients cross the link to the previous stage only if that stage runs backward.
        let sendsGradient = hasPrevious && runsBackward(stage: s - 1)
        let receivesGradient = hasNext && backward
        let m = microBatches
        var ops: [PipelineOp] = []

        func forwardPass(_ k: Int, receive: Bool = true) {
            if receive && hasPrevious { ops.append(.receiveActivation(k)) }
            ops.append(.forward(k))
        }

        if kind == .gpipe || !backward {
            for k in 0 ..< m {
                forwardPass(k)
                if hasNext { ops.append(.sendActivation(k)) }
            }
            guard backward else { return ops }
            for k in (0 ..< m).reversed() {
                if receivesGradient { ops.append(.receiveGradient(k)) }
                ops.append(.backward(k))
                if sendsGradient { ops.append(.sendGradient(k)) }
            }
            return ops
        }

        // 1F1B. The stages after s all run backward too (s ≥ firstTrainableStage).
        let warmup = min(stages - s - 1, m)
        let steady = m - warmup
        for k in 0 ..< warmup {
            forwardPass(k)
            if hasNext { ops.append(.sendActivation(k)) }
        }
        if steady > 0 && hasPrevious { ops.append(.receiveActivation(warmup)) }
        for i in 0 ..< steady {
            let f = warmup + i, b = i
            forwardPass(f, receive: false)
            if hasNext {
                ops.append(.sendActivationReceiveGradient(send: f, receive: b))
            } else if receivesGradient {
                ops.append(.receiveGradient(b))
            }
            ops.append(.backward(b))
            let last = i == steady - 1
            if sendsGradient && !last {
                ops.append(.sendGradientReceiveActivation(send: b, receive: f + 1))
            } else if sendsGradient {
                ops.append(.sendGradient(b))
            } else if hasPrevious && !last {
                ops.append(.receiveActivation(f + 1))
            }
        }
        for b in steady ..< m {
            if receivesGradient { ops.append(.receiveGradient(b)) }
            ops.append(.backward(b))
            if sendsGradient { ops.append(.sendGradient(b)) }
        }
        return ops
    }

    /// Runs the schedule on an ideal machine — every forward takes `forwardCost`, every backward
    /// `backwardCost`, messages are instant, and each operation waits for the one it depends on —
    /// and returns each stage's idle fraction (1 − busy/makespan) and the makespan.
    /// - Throws: `PipelineError.invalid` if the stages' operation lists do not match up
    ///   (a deadlock or a message nobody receives).
    public func simulate(forwardCost: Double = 1, backwardCost: Double = 2) throws
        -> (idleFractions: [Double], makespan: Double) {
        try simulate { _, op in
            if case .forward = op { return forwardCost }
            return backwardCost
        }
    }

    /// As `simulate(forwardCost:backwardCost:)` with each computation's own cost:
    /// `cost(stage, .forward(k))` or `cost(stage, .backward(k))` — a replay of measured durations
    /// that separates the bubble these stage times imply from what messages add.
    public func simulate(cost: (Int, PipelineOp) -> Double) throws -> (idleFractions: [Double], makespan: Double) {
        let lists = (0 ..< stages).map { operations(stage: $0) }
        var position = Array(repeating: 0, count: stages)
        var clock = Array(repeating: 0.0, count: stages)
        var busy = Array(repeating: 0.0, count: stages)
        // Time at which a message became available: [stage it is for][kind + micro-batch].
        var activationReady: [[Int: Double]] = Array(repeating: [:], count: stages)
        var gradientReady: [[Int: Double]] = Array(repeating: [:], count: stages)
        var progress = true
        while progress {
            progress = false
            for s in 0 ..< stages where position[s] < lists[s].count {
                let op = lists[s][position[s]]
                switch op {
                case .forward, .backward:
                    let seconds = cost(s, op)
                    clock[s] += seconds
                    busy[s] += seconds
                case let .sendActivation(k):
                    activationReady[s + 1][k] = clock[s]
                case let .sendGradient(k):
                    gradientReady[s - 1][k] = clock[s]
                case let .receiveActivation(k):
                    guard let t = activationReady[s][k] else { continue }
                    clock[s] = max(clock[s], t)
                case let .receiveGradient(k):
                    guard let t = gradientReady[s][k] else { continue }
                    clock[s] = max(clock[s], t)
                case let .sendActivationReceiveGradient(send, receive):
                    activationReady[s + 1][send] = activationReady[s + 1][send] ?? clock[s]
                    guard let t = gradientReady[s][receive] else { continue }
                    clock[s] = max(clock[s], t)
                case let .sendGradientReceiveActivation(send, receive):
                    gradientReady[s - 1][send] = gradientReady[s - 1][send] ?? clock[s]
                    guard let t = activationReady[s][receive] else { continue }
                    clock[s] = max(clock[s], t)
                }
                position[s] += 1
                progress = true
            }
        }
        if let stuck = (0 ..< stages).first(where: { position[$0] < lists[$0].count }) {
            throw PipelineError.invalid("\(kind.rawValue) schedule deadlocks: stage \(stuck) waits at "
                + "\(lists[stuck][position[stuck]])")
        }
        let makespan = clock.max() ?? 0
        return (busy.map { makespan > 0 ? 1 - $0 / makespan : 0 }, makespan)
    }
}
