import Collective
import Foundation
import Tensor

/// What one pipeline step did on one stage.
public struct PipelineStepResult {
    /// Last stage only: the value `loss` returned for each micro-batch, in micro-batch order.
    public var losses: [Float] = []
    /// Last stage only: each micro-batch's output (detached from the graph).
    public var outputs: [Tensor] = []
    /// Seconds this stage spent in forward and backward computation.
    public var busySeconds = 0.0
    /// Wall seconds of the whole step on this stage.
    public var seconds = 0.0
    /// Seconds of micro-batch k's forward and of its backward on this stage (0 where it ran none).
    public var forwardSeconds: [Double] = []
    public var backwardSeconds: [Double] = []

    /// 1 − busy/wall on this stage alone. Stages start and stop at different moments (the last
    /// stage is done before stage 0's final backward), so for the pipeline's bubble use
    /// `idleFraction(makespan:)` with the slowest stage's wall time.
    public var idleFraction: Double { idleFraction(makespan: seconds) }

    /// 1 − busy/makespan: the share of the step (`makespan`, the longest stage's `seconds` when
    /// the stages started together) this stage spent waiting — bubble plus communication.
    /// Equal stages give (p−1)/(m+p−1) on an ideal machine.
    public func idleFraction(makespan: Double) -> Double {
        makespan > 0 ? max(0, 1 - busySeconds / makespan) : 0
    }
}

/// One stage of a pipeline-parallel model: a contiguous run of layers on one rank of the
/// pipeline communicator (rank s is stage s). It receives activations from stage s−1, runs its
/// layers, sends the result to stage s+1, and in backward sends dL/d(input) back to s−1.
///
/// Messages carry a header of 10 floats — kind (1 activation, 2 gradient), micro-batch index,
/// tensor rank, then up to 7 dimensions (each below 2²⁴, exact in float32) — followed by the
/// float32 values in row-major order, both with tag `messageTag` on the communicator's
/// background channel (sends are posted without waiting, so they overlap computation).
/// A receiver checks kind and micro-batch against its schedule, so a schedule mismatch is an
/// error, not silent corruption.
///
/// A stage runs backward only if it or an earlier stage has trainable parameters (LoRA in the
/// LLM, say); a received input then requires grad so its gradient can be sent back. With a
/// frozen prefix, earlier stages run forward only and nothing is sent to them.
public final class PipelineStage {
    /// Tag of all pipeline messages (below `CollectiveTag.reservedBase`).
    public static let messageTag = 29_100
    static let headerCount = 10
    static let maxDimensions = headerCount - 3

    public let communicator: Communicator
    public let parameters: [(name: String, tensor: Tensor)]
    /// The first stage with trainable parameters (agreed by all stages); `stageCount` if none.
    public let firstTrainableStage: Int
    /// Where compute and communication spans go, when set.
    public var timeline: Timeline?
    private let body: (Tensor, Int) throws -> Tensor
    /// Sends posted this step and not yet finished.
    private var pendingSends: [(OutgoingMessage, String)] = []
    /// Why the last step failed, if it did: the stage and its neighbours are then out of step
    /// (a receive started ahead may still be waiting), so it refuses to run again.
    private var failure: String?
    /// The communicator's background channel, on which every pipeline message travels. Sends are
    /// posted on it from the stage's own thread; receives run on the communication thread.
    private let channel: Communicator

    public var stage: Int { communicator.rank }
    public var stageCount: Int { communicator.size }
    public var isFirst: Bool { stage == 0 }
    public var isLast: Bool { stage == stageCount - 1 }

    /// - Parameters:
    ///   - communicator: the pipeline group; its rank is this stage's index.
    ///   - parameters: this stage's parameters (for the trainable check and gradient sync).
    ///   - forward: the stage's computation, (input, micro-batch index) → output.
    /// Collective over the pipeline group (the stages agree which is the first trainable one).
    public init(communicator: Communicator, parameters: [(name: String, tensor: Tensor)],
                forward: @escaping (Tensor, Int) throws -> Tensor) throws {
        self.communicator = communicator
        self.parameters = parameters
        body = forward
        let trainable: [Float] = [parameters.contains { $0.tensor.requiresGrad } ? 1 : 0]
        let flags: [Float]
        do {
            flags = try communicator.allgather(trainable)
        } catch {
            throw Self.translate(error, stage: communicator.rank, operation: "pipeline set-up")
        }
        firstTrainableStage = flags.firstIndex(of: 1) ?? communicator.size
        // The first background job creates the channel (collectively, under MPI): every stage
        // is here together.
        let box = ChannelBox()
        do {
            try communicator.runInBackground { box.channel = $0 }.wait()
        } catch {
            throw Self.translate(error, stage: communicator.rank, operation: "pipeline set-up")
        }
        channel = box.channel!
    }

    /// A stage running `layers` in order. Parameters are named like `Sequential`'s children,
    /// by global layer index: `"\(firstLayerIndex + i).<name>"`.
    public convenience init(communicator: Communicator, layers: [any UnaryLayer], firstLayerIndex: Int = 0) throws {
        var named: [(name: String, tensor: Tensor)] = []
        for (i, layer) in layers.enumerated() {
            for (name, tensor) in layer.namedParameters() {
                named.append((name: "\(firstLayerIndex + i).\(name)", tensor: tensor))
            }
        }
        try self.init(communicator: communicator, parameters: named) { x, _ in
            layers.reduce(x) { $1($0) }
        }
    }

    // MARK: Running a step

    /// One training step over `microBatches` micro-batches following `kind`'s schedule.
    /// Every stage calls it together with the same `kind` and `microBatches`. It returns once
    /// this stage's last message has been delivered; parameter gradients are then in `grad`.
    ///
    /// - Parameters:
    ///   - input: stage 0 only: the input of micro-batch k.
    ///   - loss: last stage only: the loss of micro-batch k from the stage's output. Backward
    ///     runs on it as returned, so parameter gradients are Σₖ ∇loss(k): return mean/m for the
    ///     gradient of the whole batch's mean.
    ///   - gradientSync: this stage's data-parallel replica, when the pipeline is replicated: the
    ///     stage's last backward runs inside its bucketed allreduce (the others accumulate
    ///     locally), so gradients are averaged across replicas when `run` returns.
    public func run(_ kind: PipelineSchedule.Kind, microBatches: Int,
                    input: (Int) throws -> Tensor,
                    loss: (Tensor, Int) throws -> Tensor,
                    gradientSync: DataParallelReplica? = nil) throws -> PipelineStepResult {
        let schedule = try PipelineSchedule(kind: kind, stages: stageCount, microBatches: microBatches,
                                            firstTrainableStage: firstTrainableStage)
        return try execute(schedule, input: input, loss: loss, computesLoss: true, gradientSync: gradientSync)
    }

    /// Forward only (no graph is recorded): micro-batches flow through every stage in order and
    /// the last stage returns their outputs (other stages return an empty list).
    public func forward(microBatches: Int, input: (Int) throws -> Tensor) throws -> [Tensor] {
        let schedule = try PipelineSchedule(kind: .gpipe, stages: stageCount, microBatches: microBatches,
                                            firstTrainableStage: stageCount)
        return try execute(schedule, input: input, loss: { x, _ in x }, computesLoss: false, gradientSync: nil).outputs
    }

    private func execute(_ schedule: PipelineSchedule, input: (Int) throws -> Tensor,
                         loss: (Tensor, Int) throws -> Tensor, computesLoss: Bool,
                         gradientSync: DataParallelReplica?) throws -> PipelineStepResult {
        if let failure {
            throw PipelineError.invalid("stage \(stage) cannot run another step after a failed one (\(failure)): "
                + "its messages and its neighbours' are out of step")
        }
        let m = schedule.microBatches
        let ops = schedule.operations(stage: stage)
        let training = schedule.runsBackward(stage: stage)
        let sendsGradient = stage > 0 && schedule.runsBackward(stage: stage - 1)
        var inputs = [Tensor?](repeating: nil, count: m)
        var outputs = [Tensor?](repeating: nil, count: m)
        var lossValues = [Tensor?](repeating: nil, count: m)
        var upstream = [Tensor?](repeating: nil, count: m)
        var result = PipelineStepResult()
        result.forwardSeconds = Array(repeating: 0, count: m)
        result.backwardSeconds = Array(repeating: 0, count: m)
        let started = DispatchTime.now().uptimeNanoseconds
        let lastBackward = ops.lastIndex { if case .backward = $0 { return true } else { return false } }
        let receives = PrefetchedReceives(stage: self, plan: ops.compactMap { op -> PrefetchedReceives.Expected? in
            switch op {
            case let .receiveActivation(k), let .sendGradientReceiveActivation(_, k): return .init(kind: 1, microBatch: k, peer: stage - 1)
            case let .receiveGradient(k), let .sendActivationReceiveGradient(_, k): return .init(kind: 2, microBatch: k, peer: stage + 1)
            default: return nil
            }
        })

        func adopt(_ received: Tensor, _ k: Int) {
            received.requiresGrad = sendsGradient
            inputs[k] = received
        }
        func compute(_ name: String, _ category: Timeline.Category, microBatch k: Int,
                     _ work: () throws -> Void) rethrows {
            let t0 = DispatchTime.now().uptimeNanoseconds
            let s0 = timeline?.now ?? 0
            defer {
                let seconds = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
                result.busySeconds += seconds
                if category == .forward { result.forwardSeconds[k] += seconds } else { result.backwardSeconds[k] += seconds }
                timeline?.record(name, category, start: s0, end: timeline?.now ?? 0)
            }
            try work()
        }
        func inputGradient(_ k: Int) -> Tensor {
            let x = inputs[k]!
            return x.grad ?? Tensor(zeros: x.shape)
        }

        func perform(_ op: PipelineOp) throws {
            switch op {
            case let .forward(k):
                if isFirst { inputs[k] = try input(k) }
                guard let x = inputs[k] else {
                    throw PipelineError.invalid("stage \(stage) has no input for micro-batch \(k)")
                }
                try compute("forward \(k)", .forward, microBatch: k) {
                    let y = training ? try body(x, k) : try withoutGrad { try body(x, k) }
                    outputs[k] = y
                    if isLast && computesLoss {
                        let value = try loss(y, k)
                        guard value.count == 1 else {
                            throw PipelineError.invalid("loss of micro-batch \(k) has shape \(value.shape), not a scalar")
                        }
                        lossValues[k] = value
                    }
                }
                if !training { inputs[k] = nil }
            case let .backward(k):
                try compute("backward \(k)", .backward, microBatch: k) {
                    if isLast {
                        guard let value = lossValues[k], value.requiresGrad else {
                            throw PipelineError.invalid("loss of micro-batch \(k) does not require grad")
                        }
                        value.backward()
                    } else {
                        guard let y = outputs[k], y.requiresGrad, let g = upstream[k] else {
                            throw PipelineError.invalid("stage \(stage) output of micro-batch \(k) does not require grad")
                        }
                        y.backward(g)
                    }
                }
                outputs[k] = isLast ? outputs[k] : nil
                upstream[k] = nil
            case let .sendActivation(k):
                try send(outputs[k]!, kind: 1, microBatch: k, to: stage + 1)
            case let .receiveActivation(k):
                adopt(try receives.take(kind: 1, microBatch: k, from: stage - 1), k)
            case let .sendGradient(k):
                try send(inputGradient(k), kind: 2, microBatch: k, to: stage - 1)
                inputs[k] = nil
            case let .receiveGradient(k):
                upstream[k] = try receives.take(kind: 2, microBatch: k, from: stage + 1)
            case let .sendActivationReceiveGradient(f, b):
                // The send is posted before the wait, as the exchange's two halves must be.
                try send(outputs[f]!, kind: 1, microBatch: f, to: stage + 1)
                upstream[b] = try receives.take(kind: 2, microBatch: b, from: stage + 1)
            case let .sendGradientReceiveActivation(b, f):
                try send(inputGradient(b), kind: 2, microBatch: b, to: stage - 1)
                inputs[b] = nil
                adopt(try receives.take(kind: 1, microBatch: f, from: stage - 1), f)
            }
            if !isLast, case let .sendActivation(k) = op, !training { outputs[k] = nil }
        }

        do {
            for (index, op) in ops.enumerated() {
                if let sync = gradientSync, let last = lastBackward, index == last {
                    // The last backward, and the sends after it, run while the buckets reduce.
                    try sync.buckets.reduce(during: { for op in ops[last...] { try perform(op) } })
                    break
                }
                try perform(op)
            }
            try finishSends()
        } catch {
            try? finishSends()
            failure = "\(error)"
            throw error
        }
        if isLast {
            result.losses = lossValues.compactMap { $0?.item }
            result.outputs = outputs.compactMap { $0?.detached() }
        }
        result.seconds = Double(DispatchTime.now().uptimeNanoseconds - started) / 1e9
        return result
    }

    // MARK: Messages

    private func header(kind: Int, microBatch: Int, shape: [Int]) throws -> [Float] {
        guard shape.count <= Self.maxDimensions else {
            throw PipelineError.unsendable(stage: stage, detail: "tensor of rank \(shape.count) (at most \(Self.maxDimensions))")
        }
        guard shape.allSatisfy({ $0 < 1 << 24 }), Tensor.count(shape) <= Int(Int32.max) else {
            throw PipelineError.unsendable(stage: stage, detail: "tensor of shape \(shape) is too large")
        }
        var values = [Float(kind), Float(microBatch), Float(shape.count)] + shape.map(Float.init)
        values += Array(repeating: 0, count: Self.headerCount - values.count)
        return values
    }

    static func shape(from header: [Float], kind: Int, microBatch: Int, peer: Int, stage: Int) throws -> [Int] {
        let names = [1: "activation", 2: "gradient"]
        let expected = "\(names[kind]!) of micro-batch \(microBatch) from stage \(peer)"
        let rank = Int(header[2])
        guard Int(header[0]) == kind, Int(header[1]) == microBatch, rank >= 0, rank <= Self.maxDimensions else {
            let got = names[Int(header[0])] ?? "an unknown message (kind \(header[0]))"
            throw PipelineError.unexpectedMessage(stage: stage, expected: expected,
                                                  received: "\(got) of micro-batch \(Int(header[1]))")
        }
        return header[3 ..< 3 + rank].map { Int($0) }
    }

    // Every message travels over the communicator's background channel, in schedule order.
    // Receives run on the communication thread, one ahead of the stage (`PrefetchedReceives`);
    // sends are posted and not waited for, so the stage computes its next micro-batch while the
    // neighbour takes the last one (a synchronous send would make the stages advance in lock
    // step, adding every jitter to the bubble). The comm thread performs exactly the sequence of
    // receives the schedule lists, and the stage thread never waits for the comm thread to post
    // a send, which is what keeps it deadlock-free.

    // A send is posted (MPI_Isend) by the stage's own thread and not waited for: had it gone
    // through the communication thread, the post would wait until the scheduler preempted the
    // computing thread for it — up to a 5 ms slice on a busy core (seen in `--timeline`), during
    // which the neighbour sat idle. Posted sends are finished at the end of the step
    // (`finishSends`); one peer's messages still arrive in the order they were posted.
    private func send(_ tensor: Tensor, kind: Int, microBatch k: Int, to peer: Int) throws {
        let operation = "send of \(kind == 1 ? "activation" : "gradient") \(k) to stage \(peer)"
        let head = try header(kind: kind, microBatch: k, shape: tensor.shape)
        let message = OutgoingMessage(header: Tensor(shape: [head.count], data: head),
                                      payload: tensor.isContiguous ? tensor : tensor.contiguousCopy())
        let start = timeline?.now ?? 0
        defer { timeline?.record(operation, .send, lane: .communication, start: start, end: timeline?.now ?? 0) }
        pendingSends.append((message, operation))
        do {
            for part in [message.header, message.payload] {
                message.posted.append(try channel.startSend(UnsafeBufferPointer(start: part.pointer, count: part.count),
                                                            to: peer, tag: Self.messageTag))
            }
        } catch {
            throw Self.translate(error, stage: stage, operation: operation)
        }
    }

    /// Starts the receive of the message `expected` names on the communication thread; the
    /// returned request completes once the tensor is in `arrival`.
    fileprivate func startReceive(_ expected: PrefetchedReceives.Expected, into arrival: Arrival) -> CollectiveRequest {
        let stage = self.stage
        return submit(expected.operation, .receive) { channel in
            let head = try channel.receive(count: Self.headerCount, from: expected.peer, tag: Self.messageTag)
            let t = Tensor(zeros: try Self.shape(from: head, kind: expected.kind, microBatch: expected.microBatch,
                                                 peer: expected.peer, stage: stage))
            try channel.receive(into: UnsafeMutableBufferPointer(start: t.pointer, count: t.count),
                                from: expected.peer, tag: Self.messageTag)
            arrival.tensor = t
        }
    }

    /// Queues `work` on the communication thread, recording its span on the communication lane.
    private func submit(_ operation: String, _ category: Timeline.Category,
                        _ work: @escaping (Communicator) throws -> Void) -> CollectiveRequest {
        let timeline = self.timeline
        return communicator.runInBackground { channel in
            let start = timeline?.now ?? 0
            defer { timeline?.record(operation, category, lane: .communication, start: start, end: timeline?.now ?? 0) }
            try work(channel)
        }
    }

    fileprivate func wait(for request: CollectiveRequest, _ operation: String) throws {
        do {
            try request.wait()
        } catch {
            throw Self.translate(error, stage: stage, operation: operation)
        }
    }

    /// Waits until the receivers have taken every send posted this step (on this thread, which
    /// posted them); the first failure is thrown after all have ended.
    private func finishSends() throws {
        var failure: Error?
        for (message, operation) in pendingSends {
            for send in message.posted {
                do { try send.finish() } catch { failure = failure ?? Self.translate(error, stage: stage, operation: operation) }
            }
        }
        pendingSends.removeAll()
        if let failure { throw failure }
    }

    static func translate(_ error: Error, stage: Int, operation: String) -> Error {
        if case let CollectiveError.timeout(_, peers, seconds) = error {
            return PipelineError.stalled(stage: stage, operation: operation, peers: peers, seconds: seconds)
        }
        return error
    }
}

/// The tensor a background receive produced, handed to the waiting stage thread (the request's
/// completion orders the write before the read).
private final class Arrival: @unchecked Sendable {
    var tensor: Tensor?
}

/// A step's receives in schedule order, each started on the communication thread as soon as the
/// one before it has been taken, so the message arrives while the stage computes. Waiting at the
/// moment of need instead cost a hand-over to the communication thread and back per message:
/// 0.1–0.3 ms each, 16 per step at m = 8, the bulk of measured − replayed idle in
/// `sura bench train` (bench/RESULTS.md). The comm thread still runs one receive at a time, in
/// the order the stage takes them.
private final class PrefetchedReceives {
    struct Expected {
        let kind: Int
        let microBatch: Int
        let peer: Int

        var operation: String { "receive of \(kind == 1 ? "activation" : "gradient") \(microBatch) from stage \(peer)" }
    }

    private unowned let stage: PipelineStage
    private let plan: [Expected]
    private var next = 0
    private var pending: (request: CollectiveRequest, arrival: Arrival)?

    init(stage: PipelineStage, plan: [Expected]) {
        self.stage = stage
        self.plan = plan
        startNext()
    }

    private func startNext() {
        guard next < plan.count else { return }
        let arrival = Arrival()
        pending = (stage.startReceive(plan[next], into: arrival), arrival)
    }

    /// The next message of the plan, which must be the one named (the schedule says so).
    func take(kind: Int, microBatch k: Int, from peer: Int) throws -> Tensor {
        guard next < plan.count, let (request, arrival) = pending,
              plan[next].kind == kind, plan[next].microBatch == k, plan[next].peer == peer else {
            throw PipelineError.invalid("stage \(stage.stage) took a receive its schedule does not list next")
        }
        let expected = plan[next]
        pending = nil
        try stage.wait(for: request, expected.operation)
        next += 1
        startNext()
        return arrival.tensor!
    }
}

/// A message a stage posted: header and payload stay alive (their memory untouched) until its
/// sends are finished.
private final class OutgoingMessage {
    let header: Tensor
    let payload: Tensor
    var posted: [PostedSend] = []

    init(header: Tensor, payload: Tensor) {
        self.header = header
        self.payload = payload
    }
}

/// The background channel, handed out by the communication thread once.
private final class ChannelBox: @unchecked Sendable {
    var channel: Communicator?
}
