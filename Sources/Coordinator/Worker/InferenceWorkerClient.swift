import Foundation
import Worker

/// Settings of one inference worker process.
public struct InferenceWorkerConfiguration: Sendable, Equatable {
    /// The scheduler's back-end endpoint, e.g. `tcp://127.0.0.1:5556`.
    public var scheduler: String
    /// Name shown in logs and the status page.
    public var name: String
    /// Most requests the worker takes in one batch.
    public var maxBatch = 8
    /// Executor name announced in READY (`null`, `pipeline`, …).
    public var executorName = "null"
    /// Seconds between heartbeats to the scheduler.
    public var heartbeatInterval: TimeInterval = 1
    /// Missed scheduler heartbeat intervals after which the worker reconnects.
    public var liveness = 3
    /// First reconnect delay; doubles on each failed attempt up to `reconnectMaxDelay`.
    public var reconnectInitialDelay: TimeInterval = 0.1
    public var reconnectMaxDelay: TimeInterval = 5
    /// When set, the worker leaves once this process is no longer its parent (the server died).
    public var parentPID: Int32?
    /// When set, the connection is a CurveZMQ client of the scheduler's back end (encrypted, and
    /// authenticated by this key pair). Either way, failed handshakes are logged in words.
    public var curve: CurveClientSecurity?

    public init(scheduler: String, name: String) {
        self.scheduler = scheduler
        self.name = name
    }
}

/// The worker side of the back-end protocol: a DEALER connected to the scheduler that announces
/// READY, heartbeats, runs each BATCH on an executor thread (so heartbeats continue during long
/// batches), returns RESULT or FAILED, reconnects with exponential backoff when the scheduler
/// falls silent, and on `requestStop` finishes its batch, says BYE and returns.
public final class InferenceWorkerClient: @unchecked Sendable {
    public let configuration: InferenceWorkerConfiguration
    private let context: ZMQContext
    private let runner: BatchRunner
    private let log: @Sendable (String) -> Void
    private let lock = NSLock()
    private var stopRequested = false
    private var counters = (batches: 0, images: 0, failures: 0, reconnects: 0)
    /// Only the `run()` thread uses it.
    private var handshakes: HandshakeDiagnostics?

    /// A worker that runs batches on `executor`; nothing connects until `run()`.
    public init(configuration: InferenceWorkerConfiguration, executor: InferenceBatchExecutor, context: ZMQContext? = nil,
                log: @escaping @Sendable (String) -> Void) throws {
        self.configuration = configuration
        self.context = try context ?? ZMQContext()
        self.log = log
        runner = try BatchRunner(executor: executor, context: self.context)
        if let curve = configuration.curve {
            try CurveSupport.requireAvailable()
            _ = try curve.keyPair.requireSecret(file: "the worker's key")
        }
        handshakes = HandshakeDiagnostics(role: .client(configuration.curve), context: self.context)
    }

    /// Asks the worker to leave after its current batch. Thread-safe; signal handlers call it.
    public func requestStop() {
        lock.lock()
        stopRequested = true
        lock.unlock()
    }

    private var shouldStop: Bool {
        lock.lock()
        defer { lock.unlock() }
        return stopRequested
    }

    /// Batches completed, images produced, batches failed and reconnections so far.
    public var statistics: (batches: Int, images: Int, failures: Int, reconnects: Int) {
        lock.lock()
        defer { lock.unlock() }
        return counters
    }

    private func makeSocket() throws -> ZMQSocket {
        let socket = try ZMQSocket(context: context, kind: .dealer)
        try socket.setHighWaterMarks(send: 10_000, receive: 10_000)
        if let curve = configuration.curve { try socket.makeCurveClient(curve) }
        try handshakes?.watch(socket, name: "backend")
        try socket.connect(configuration.scheduler)
        return socket
    }

    /// Sends READY if the connection can take it now; false if it must be offered again later.
    private func offerReady(on socket: ZMQSocket) -> Bool {
        (try? socket.send(readyFrames(), dontWait: true)) ?? false
    }

    private func readyFrames() -> [Data] {
        WireProtocol.frames(WireProtocol.ready, [WireProtocol.encode(ReadyBody(
            name: configuration.name, pid: getpid(), maxBatch: configuration.maxBatch, executor: configuration.executorName))])
    }

    /// Serves batches until `requestStop`; returns once the current batch is delivered and BYE sent.
    public func run() throws {
        defer {
            runner.shutdown()
            handshakes?.close()
        }
        var socket: ZMQSocket? = try makeSocket()
        log("worker \(configuration.name) connecting to \(configuration.scheduler)")
        let interval = configuration.heartbeatInterval
        var lastHeard = MonotonicClock.now()
        var nextHeartbeat = lastHeard + interval
        var backoff = configuration.reconnectInitialDelay
        var reconnectAt: Double?
        var busyBatch: UInt64?
        // READY still to be sent. Every send to the scheduler is non-blocking: a DEALER whose
        // connection failed its handshake has no pipe, and a blocking send would wait there for
        // good, deaf to requestStop and SIGTERM.
        var owesReady = true
        var saidBye = false
        var byeSentAt = -Double.infinity

        while true {
            let now = MonotonicClock.now()
            if let parent = configuration.parentPID, getppid() != parent {
                log("worker \(configuration.name): parent process \(parent) is gone; leaving")
                requestStop()
            }
            // BYE means "no new batches"; a batch already running is still delivered, then the worker leaves.
            if shouldStop && !saidBye, let socket {
                _ = try? socket.send(WireProtocol.frames(WireProtocol.bye), dontWait: true)
                saidBye = true
                byeSentAt = now
                owesReady = false
                if busyBatch != nil { log("worker \(configuration.name): finishing batch \(busyBatch!) before leaving") }
            }
            // A batch the scheduler sent before it read BYE may still be on its way: wait briefly for it.
            if shouldStop && busyBatch == nil && (socket == nil || now - byeSentAt >= min(0.2, interval)) {
                if let socket {
                    if !saidBye { _ = try? socket.send(WireProtocol.frames(WireProtocol.bye), dontWait: true) }
                    try? socket.setLinger(milliseconds: 1000)
                    socket.close()
                }
                log("worker \(configuration.name) left after \(statistics.batches) batches")
                return
            }
            // Reconnect when the backoff delay has passed.
            if socket == nil, let at = reconnectAt, now >= at {
                socket = try makeSocket()
                reconnectAt = nil
                lastHeard = now
                lock.lock(); counters.reconnects += 1; lock.unlock()
                if shouldStop { saidBye = false } else { owesReady = true }
            }
            if owesReady, busyBatch == nil, !shouldStop, let socket, offerReady(on: socket) { owesReady = false }
            if let handshakes { for line in handshakes.reports(now: now) { log("worker \(configuration.name): " + line) } }
            var sockets = [runner.completions]
            if let socket { sockets.append(socket) }
            let untilHeartbeat = max(0, nextHeartbeat - now)
            let readable = try ZMQSocket.pollReadable(sockets, timeout: min(50, Int((untilHeartbeat * 1000).rounded(.up))))

            if readable[0], let outcome = runner.takeOutcome() {
                busyBatch = nil
                deliver(outcome, on: socket)
            }
            if readable.count > 1, readable[1], let current = socket {
                while let message = try current.receive(dontWait: true, maxFrames: 8, maxBytes: 64 << 20) {
                    lastHeard = MonotonicClock.now()
                    backoff = configuration.reconnectInitialDelay
                    handle(message, socket: current, busyBatch: &busyBatch, owesReady: &owesReady)
                }
            }
            let after = MonotonicClock.now()
            if let socket, after >= nextHeartbeat {
                try socket.send(WireProtocol.frames(WireProtocol.heartbeat), dontWait: true)
                nextHeartbeat = after + interval
            }
            if let current = socket, after - lastHeard > interval * Double(max(1, configuration.liveness)) {
                log(String(format: "worker %@: no message from the scheduler for %.2f s; reconnecting in %.2f s",
                           configuration.name, after - lastHeard, backoff))
                current.close()
                socket = nil
                reconnectAt = after + backoff
                backoff = min(configuration.reconnectMaxDelay, backoff * 2)
                owesReady = !shouldStop
            }
        }
    }

    /// Counts a finished batch and sends its RESULT or FAILED. A READY still owed goes at the
    /// top of the loop's next pass, before the next poll.
    private func deliver(_ outcome: BatchRunner.Outcome, on socket: ZMQSocket?) {
        lock.lock()
        if case .images(let images, _) = outcome.result { counters.batches += 1; counters.images += images.count } else { counters.failures += 1 }
        lock.unlock()
        if let socket {
            if !((try? socket.send(outcome.frames(), dontWait: true)) ?? false) {
                log("worker \(configuration.name): result of batch \(outcome.batchID) could not be sent; the scheduler re-queues it")
            }
        } else {
            log("worker \(configuration.name): scheduler unreachable, result of batch \(outcome.batchID) dropped (it was re-queued)")
        }
    }

    private func handle(_ message: ZMQMessage, socket: ZMQSocket, busyBatch: inout UInt64?, owesReady: inout Bool) {
        do {
            let (command, payload) = try WireProtocol.parse(message.frames)
            switch command {
            case WireProtocol.heartbeat:
                break
            case WireProtocol.batch:
                guard let frame = payload.first else { throw WireError(.badRequest, "BATCH without its JSON frame") }
                let body = try WireProtocol.decode(BatchBody.self, from: frame, what: "BATCH body")
                if let running = busyBatch {
                    try socket.send(WireProtocol.frames(WireProtocol.failed, [WireProtocol.encode(FailedBody(
                        batchID: body.batchID, message: "worker \(configuration.name) is still running batch \(running)"))]), dontWait: true)
                } else if runner.runsOnCallerThread {
                    deliver(runner.run(body), on: socket)
                } else {
                    busyBatch = body.batchID
                    runner.start(body)
                }
            case WireProtocol.disconnect:
                log("worker \(configuration.name): scheduler asked to register again")
                if !shouldStop { owesReady = true }
            case WireProtocol.error:
                let text = payload.first.map { String(decoding: $0, as: UTF8.self) } ?? ""
                log("worker \(configuration.name): scheduler reported an error: \(text)")
            default:
                throw WireError(.unknownCommand, "unknown command '\(command)' from the scheduler")
            }
        } catch {
            log("worker \(configuration.name): ignoring bad message from the scheduler: \(error)")
        }
    }
}

/// Runs batches on its own thread and signals each completion over an inproc PAIR socket, so
/// the worker's loop keeps heartbeating while the executor works.
final class BatchRunner: @unchecked Sendable {
    struct Outcome {
        enum Result {
            case images([GeneratedImage], execMs: Double)
            case failure(String, execMs: Double)
        }

        var batchID: UInt64
        var result: Result

        /// RESULT with one PNG frame per image, or FAILED.
        func frames() -> [Data] {
            switch result {
            case let .images(images, execMs):
                let header = WorkerResultBody(batchID: batchID, execMs: execMs, images: images.map {
                    WorkerResultBody.Image(id: $0.requestID, width: $0.width, height: $0.height)
                })
                return WireProtocol.frames(WireProtocol.result, [WireProtocol.encode(header)] + images.map(\.png))
            case let .failure(message, _):
                return WireProtocol.frames(WireProtocol.failed, [WireProtocol.encode(FailedBody(batchID: batchID, message: message))])
            }
        }
    }

    /// The loop's end of the PAIR: readable when a batch finished.
    let completions: ZMQSocket
    private let signal: ZMQSocket
    private let executor: InferenceBatchExecutor
    private let condition = NSCondition()
    private var job: BatchBody?
    private var outcome: Outcome?
    private var finished = false
    private var thread: Thread?

    init(executor: InferenceBatchExecutor, context: ZMQContext) throws {
        self.executor = executor
        let address = "inproc://sura-batch-runner-\(UUID().uuidString)"
        completions = try ZMQSocket(context: context, kind: .pair)
        try completions.bind(address)
        signal = try ZMQSocket(context: context, kind: .pair)
        try signal.connect(address)
        let thread = Thread { [unowned self] in self.loop() }
        self.thread = thread
        thread.start()
        thread.name = "sura-runner"
    }

    func start(_ batch: BatchBody) {
        condition.lock()
        job = batch
        condition.signal()
        condition.unlock()
    }

    func takeOutcome() -> Outcome? {
        _ = try? completions.receive(dontWait: true)
        condition.lock()
        defer { condition.unlock() }
        let result = outcome
        outcome = nil
        return result
    }

    func shutdown() {
        condition.lock()
        finished = true
        condition.signal()
        condition.unlock()
        while thread?.isFinished == false { usleep(1000) }
        signal.close()
        completions.close()
    }

    private func loop() {
        while true {
            condition.lock()
            while job == nil && !finished { condition.wait() }
            if finished {
                condition.unlock()
                return
            }
            let batch = job!
            job = nil
            condition.unlock()

            let finished = run(batch)
            condition.lock()
            outcome = finished
            condition.unlock()
            _ = try? signal.send([Data([1])])
        }
    }

    /// Whether the worker runs batches itself (`run`) instead of handing them to this thread.
    var runsOnCallerThread: Bool { executor.returnsWithinMilliseconds }

    /// Runs `batch` on the calling thread and checks that the images answer its requests in order.
    func run(_ batch: BatchBody) -> Outcome {
        let started = MonotonicClock.now()
        do {
            let images = try executor.run(batch: batch.requests)
            let elapsed = (MonotonicClock.now() - started) * 1000
            if images.count != batch.requests.count {
                return Outcome(batchID: batch.batchID, result: .failure(
                    "\(InferenceExecutionError.resultCountMismatch(expected: batch.requests.count, got: images.count))", execMs: elapsed))
            }
            if let wrong = zip(images, batch.requests).first(where: { $0.0.requestID != $0.1.id }) {
                return Outcome(batchID: batch.batchID, result: .failure(
                    "executor returned image '\(wrong.0.requestID)' where '\(wrong.1.id)' was expected", execMs: elapsed))
            }
            return Outcome(batchID: batch.batchID, result: .images(images, execMs: elapsed))
        } catch {
            return Outcome(batchID: batch.batchID, result: .failure("\(error)", execMs: (MonotonicClock.now() - started) * 1000))
        }
    }
}
