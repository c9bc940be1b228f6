import Foundation
import Worker

/// Where a reply to a client goes: the ROUTER envelope its request came with (routing id, plus
/// the empty delimiter frame when the client sent one, as REQ sockets do).
public struct ClientRoute: Hashable, Sendable {
    public var envelope: [Data]
    public init(envelope: [Data]) { self.envelope = envelope }
}

/// What the scheduler's socket layer must send after an event.
public enum SchedulerAction: Equatable, Sendable {
    case replyResult(ClientRoute, ResultHeader, png: Data)
    case replyError(ClientRoute, ErrorBody)
    case dispatch(worker: Data, BatchBody)
    case heartbeat(worker: Data)
    case disconnect(worker: Data, DisconnectBody)
    case log(String)
}

/// Settings of the scheduler's request handling.
public struct SchedulerConfiguration: Sendable, Equatable {
    public var batching = BatchingPolicy()
    /// Most requests waiting at once; more are rejected `queue_full`.
    public var queueCapacity = 1024
    /// Seconds between heartbeats in both directions.
    public var heartbeatInterval: TimeInterval = 1
    /// Missed heartbeat intervals after which a peer is dead.
    public var liveness = 3
    public var requestPolicy = RequestPolicy()
    /// Largest front-end message accepted, in bytes; larger ones get `too_large`.
    public var maxRequestBytes = 256 * 1024
    /// Seconds a SIGTERM drain waits for queued and running requests before giving up on them.
    public var drainTimeout: TimeInterval = 30

    public init() {}
}

/// The scheduler's state machine, without sockets or clocks: events in, actions out.
///
/// Every request is in exactly one place: the queue, a worker's batch, or answered (gone from
/// `pending`). A reply is produced only by removing the request from `pending`, so each request
/// is answered exactly once, whatever arrives later. A batch whose worker dies or fails is
/// re-queued once, request by request; a second loss answers `worker_failed`.
public final class SchedulerCore {
    private struct Pending {
        var route: ClientRoute
        var request: GenerationRequest
        var priority: Int
        var arrival: Double
        var deadline: Double
        var attempts = 0
        /// Every dispatch of this request, so stray results are recognised and timed.
        var assignments: [(worker: Data, batch: UInt64, at: Double)] = []
        var lastFailure = ""
    }

    private struct ClientKey: Hashable {
        var identity: Data
        var id: String
    }

    public let configuration: SchedulerConfiguration
    public let metrics: SchedulerMetrics
    /// Attempts a request gets: the first dispatch plus one re-queue.
    public static let maxAttempts = 2

    public private(set) var queue: RequestQueue
    public private(set) var registry: WorkerRegistry
    private let batcher: DynamicBatcher
    private var pending: [UInt64: Pending] = [:]
    private var byClient: [ClientKey: UInt64] = [:]
    private var nextTicket: UInt64 = 1
    private var nextBatchID: UInt64 = 1
    private var lastHeartbeat = -Double.infinity
    private var earliestInFlightDeadline = Double.infinity
    private var actions: [SchedulerAction] = []
    public private(set) var isDraining = false

    public init(configuration: SchedulerConfiguration, metrics: SchedulerMetrics) {
        self.configuration = configuration
        self.metrics = metrics
        queue = RequestQueue(capacity: configuration.queueCapacity)
        registry = WorkerRegistry(heartbeatInterval: configuration.heartbeatInterval, liveness: configuration.liveness)
        batcher = DynamicBatcher(policy: configuration.batching)
    }

    /// Requests not yet answered (queued or running).
    public var pendingCount: Int { pending.count }
    public var inFlightCount: Int { pending.count - queue.count }
    /// Nothing queued and nothing running.
    public var isIdle: Bool { pending.isEmpty }

    private func flush() -> [SchedulerAction] {
        metrics.queueDepth.set(Double(queue.count))
        metrics.inFlight.set(Double(inFlightCount))
        let states = registry.workers.values.map(\.state)
        metrics.idleWorkers.set(Double(states.filter { $0 == .idle }.count))
        metrics.busyWorkers.set(Double(states.filter { $0 == .busy }.count))
        metrics.drainingWorkers.set(Double(states.filter { $0 == .draining }.count))
        defer { actions.removeAll(keepingCapacity: true) }
        return actions
    }

    private func log(_ message: String) { actions.append(.log(message)) }

    // MARK: Clients

    /// A client's `SUBMIT`: admitted to the queue, or rejected at once with an explicit error.
    public func submit(_ body: SubmitBody, route: ClientRoute, now: Double) -> [SchedulerAction] {
        let identity = route.envelope.first ?? Data()
        if isDraining {
            reject(route, id: body.id, WireError(.shuttingDown, "the scheduler is draining and accepts no new requests"))
        } else if byClient[ClientKey(identity: identity, id: body.id)] != nil {
            reject(route, id: body.id, WireError(.duplicateID, "request id '\(body.id)' is already pending for this client"))
        } else {
            do {
                let (request, priority, timeout) = try configuration.requestPolicy.admit(body)
                let ticket = nextTicket
                let entry = QueuedRequest(ticket: ticket, key: request.compatibility, priority: priority,
                                          arrival: now, deadline: now + timeout)
                if queue.enqueue(entry) {
                    nextTicket += 1
                    pending[ticket] = Pending(route: route, request: request, priority: priority, arrival: now, deadline: now + timeout)
                    byClient[ClientKey(identity: identity, id: body.id)] = ticket
                    dispatch(now: now)
                } else {
                    reject(route, id: body.id, WireError(.queueFull, "the queue holds its maximum of \(queue.capacity) requests; retry later"))
                }
            } catch let error as WireError {
                reject(route, id: body.id, error)
            } catch {
                reject(route, id: body.id, WireError(.internal, "\(error)"))
            }
        }
        return flush()
    }

    /// An error reply for a message that never became a request (malformed, too large, …).
    public func refuse(_ route: ClientRoute, id: String?, _ error: WireError) -> [SchedulerAction] {
        reject(route, id: id, error)
        return flush()
    }

    private func reject(_ route: ClientRoute, id: String?, _ error: WireError) {
        metrics.count(outcome: error.code.rawValue)
        actions.append(.replyError(route, ErrorBody(id: id, code: error.code, message: error.message)))
    }

    /// Answers a pending request with an error and forgets it.
    private func fail(_ ticket: UInt64, _ error: WireError) {
        guard let entry = pending.removeValue(forKey: ticket) else { return }
        byClient[ClientKey(identity: entry.route.envelope.first ?? Data(), id: entry.request.id)] = nil
        reject(entry.route, id: entry.request.id, error)
    }

    // MARK: Workers

    /// `READY`: a new worker, or a known one idle again (a batch it held is lost and re-queued).
    public func workerReady(_ identity: Data, _ body: ReadyBody, now: Double) -> [SchedulerAction] {
        let known = registry.workers[identity] != nil
        if let lost = registry.register(identity: identity, ready: body, now: now) {
            requeueOrFail(lost.tickets, worker: identity, batchID: lost.id, reason: "worker \(body.name) restarted while running batch \(lost.id)", now: now)
        }
        if !known { log("worker \(body.name) (pid \(body.pid), \(body.executor), max batch \(body.maxBatch)) registered; \(registry.count) workers") }
        dispatch(now: now)
        return flush()
    }

    /// `HEARTBEAT` (or any message) from a worker; an unknown worker is told to register again.
    public func workerHeartbeat(_ identity: Data, now: Double) -> [SchedulerAction] {
        if !registry.heard(from: identity, now: now) {
            actions.append(.disconnect(worker: identity, DisconnectBody(reason: "unknown worker: send READY to register")))
        }
        return flush()
    }

    /// `RESULT`: answers every still-pending request of the batch that was sent to this worker.
    /// Images for requests already answered (the worker had been declared dead and the request
    /// answered elsewhere, or its deadline passed) are dropped.
    public func workerResult(_ identity: Data, _ body: WorkerResultBody, pngs: [Data], now: Double) -> [SchedulerAction] {
        registry.heard(from: identity, now: now)
        let completed = registry.complete(batchID: body.batchID, on: identity, images: body.images.count, now: now)
        let workerName = registry.workers[identity]?.name ?? "unregistered worker"
        var answered = Set<UInt64>()
        for (image, png) in zip(body.images, pngs) {
            guard let ticket = UInt64(image.id), let entry = pending[ticket],
                  let assignment = entry.assignments.first(where: { $0.worker == identity && $0.batch == body.batchID }) else {
                metrics.lateResultsDropped.increment()
                continue
            }
            if queue.contains(ticket: ticket) { queue.remove(ticket: ticket) }
            pending[ticket] = nil
            byClient[ClientKey(identity: entry.route.envelope.first ?? Data(), id: entry.request.id)] = nil
            answered.insert(ticket)
            let dispatched = assignment.at
            let total = now - entry.arrival, queueWait = dispatched - entry.arrival
            metrics.latency.observe(total)
            metrics.queueWait.observe(queueWait)
            metrics.dispatchOverhead.observe(max(0, now - dispatched - body.execMs / 1000))
            metrics.count(outcome: "ok")
            let header = ResultHeader(id: entry.request.id, width: image.width, height: image.height, seed: entry.request.seed,
                                      queueMs: queueWait * 1000, execMs: body.execMs, totalMs: total * 1000,
                                      batchSize: completed?.tickets.count ?? body.images.count, worker: workerName,
                                      attempts: entry.attempts)
            actions.append(.replyResult(entry.route, header, png: png))
        }
        if let completed {
            let missing = completed.tickets.filter { !answered.contains($0) && pending[$0] != nil }
            requeueOrFail(missing, worker: identity, batchID: completed.id,
                          reason: "worker \(workerName) returned no image for the request", now: now)
        } else {
            log("result for batch \(body.batchID) from \(workerName) that no longer owned it: \(answered.count) answered, \(body.images.count - answered.count) dropped")
        }
        forgetIfLeaving(identity, now: now)
        dispatch(now: now)
        return flush()
    }

    /// `FAILED`, or a malformed `RESULT`: the batch is re-queued once, then answered `worker_failed`.
    public func workerFailed(_ identity: Data, batchID: UInt64, message: String, now: Double) -> [SchedulerAction] {
        registry.heard(from: identity, now: now)
        let name = registry.workers[identity]?.name ?? "unregistered worker"
        if let batch = registry.complete(batchID: batchID, on: identity, images: 0, now: now) {
            log("worker \(name) failed batch \(batchID): \(message)")
            requeueOrFail(batch.tickets, worker: identity, batchID: batchID, reason: "worker \(name) failed: \(message)", now: now)
        }
        forgetIfLeaving(identity, now: now)
        dispatch(now: now)
        return flush()
    }

    /// `BYE`, or a worker the ROUTER can no longer reach: it is forgotten and its batch re-queued.
    /// A batch that never reached the worker does not count as an attempt.
    public func workerGone(_ identity: Data, reason: String, batchReachedWorker: Bool = true, now: Double) -> [SchedulerAction] {
        if let record = registry.remove(identity, now: now) {
            log("worker \(record.name) (pid \(record.pid)) left: \(reason); \(registry.count) workers")
            if let batch = record.batch {
                if !batchReachedWorker {
                    for ticket in batch.tickets where pending[ticket] != nil { pending[ticket]!.attempts -= 1 }
                }
                requeueOrFail(batch.tickets, worker: identity, batchID: batch.id, reason: "worker \(record.name) left: \(reason)", now: now)
            }
        }
        dispatch(now: now)
        return flush()
    }

    /// `BYE`: an idle worker is forgotten at once; a busy one gets no new batch and is forgotten
    /// when its batch is answered (or re-queued if it dies first).
    public func workerLeaving(_ identity: Data, now: Double) -> [SchedulerAction] {
        guard let record = registry.workers[identity] else { return flush() }
        guard let batch = record.batch else { return workerGone(identity, reason: "said BYE", now: now) }
        registry.heard(from: identity, now: now)
        registry.markLeaving(identity)
        log("worker \(record.name) (pid \(record.pid)) is leaving after batch \(batch.id)")
        return flush()
    }

    private func forgetIfLeaving(_ identity: Data, now: Double) {
        guard let record = registry.workers[identity], record.leaving, record.batch == nil else { return }
        registry.remove(identity, now: now)
        log("worker \(record.name) (pid \(record.pid)) left after its last batch; \(registry.count) workers")
    }

    /// Stops giving batches to the worker with this process id (the autoscaler drains it).
    public func drainWorker(pid: Int32) {
        if let record = registry.worker(pid: pid) { registry.markDraining(record.identity) }
    }

    private func requeueOrFail(_ tickets: [UInt64], worker: Data, batchID: UInt64, reason: String, now: Double) {
        for ticket in tickets {
            guard let entry = pending[ticket], !queue.contains(ticket: ticket),
                  entry.assignments.last.map({ $0.worker == worker && $0.batch == batchID }) ?? true else { continue }
            pending[ticket]!.lastFailure = reason
            if entry.attempts >= Self.maxAttempts {
                fail(ticket, WireError(.workerFailed, "request failed on \(entry.attempts) workers; last: \(reason)"))
            } else if entry.deadline <= now {
                fail(ticket, WireError(.deadlineExpired, "deadline passed after \(reason)"))
            } else {
                metrics.requeued.increment()
                queue.requeue(QueuedRequest(ticket: ticket, key: entry.request.compatibility, priority: entry.priority,
                                            arrival: entry.arrival, deadline: entry.deadline))
            }
        }
    }

    // MARK: Time

    /// Expires deadlines, declares silent workers dead, sends due heartbeats and dispatches.
    public func tick(now: Double) -> [SchedulerAction] {
        expireDeadlines(now: now)
        for dead in registry.expire(now: now) {
            metrics.workerDeaths.increment()
            log("worker \(dead.name) (pid \(dead.pid)) missed heartbeats for \(String(format: "%.2f", now - dead.lastSeen)) s: declared dead"
                + (dead.batch.map { ", re-queueing batch \($0.id) (\($0.tickets.count) requests)" } ?? ""))
            if let batch = dead.batch {
                requeueOrFail(batch.tickets, worker: dead.identity, batchID: batch.id,
                              reason: "worker \(dead.name) died (no heartbeat) while running batch \(batch.id)", now: now)
            }
        }
        if now - lastHeartbeat >= configuration.heartbeatInterval {
            lastHeartbeat = now
            for identity in registry.workers.keys { actions.append(.heartbeat(worker: identity)) }
        }
        dispatch(now: now)
        return flush()
    }

    private func expireDeadlines(now: Double) {
        for expired in queue.removeExpired(now: now) {
            let waited = pending[expired.ticket].map { now - $0.arrival } ?? 0
            fail(expired.ticket, WireError(.deadlineExpired, String(format: "deadline passed after %.0f ms in the queue", waited * 1000)))
        }
        guard earliestInFlightDeadline <= now else { return }
        var earliest = Double.infinity
        for (ticket, entry) in pending where !queue.contains(ticket: ticket) {
            if entry.deadline <= now {
                fail(ticket, WireError(.deadlineExpired, String(format: "deadline passed after %.0f ms while a worker was running it",
                                                                (now - entry.arrival) * 1000)))
            } else {
                earliest = min(earliest, entry.deadline)
            }
        }
        earliestInFlightDeadline = earliest
    }

    /// Starts refusing new requests and sends queued ones without waiting for batches to fill.
    public func beginDrain(now: Double) -> [SchedulerAction] {
        if !isDraining { log("draining: \(queue.count) queued, \(inFlightCount) running") }
        isDraining = true
        dispatch(now: now)
        return flush()
    }

    /// Answers every pending request with `error` (the drain timed out or the scheduler stops).
    public func abandonAll(_ error: WireError) -> [SchedulerAction] {
        for ticket in pending.keys.sorted() {
            queue.remove(ticket: ticket)
            fail(ticket, error)
        }
        return flush()
    }

    /// The next time `tick` has work: a heartbeat, a deadline, a liveness check or a batch delay.
    public func nextWakeup(now: Double) -> Double {
        var next = lastHeartbeat + configuration.heartbeatInterval
        next = min(next, queue.earliestDeadline, earliestInFlightDeadline)
        if let oldest = registry.workers.values.map(\.lastSeen).min() { next = min(next, oldest + registry.deadAfter + 0.001) }
        if registry.leastRecentlyUsedIdle != nil, let flushAt = batcher.nextFlushTime(in: queue) { next = min(next, flushAt) }
        return next
    }

    private func dispatch(now: Double) {
        while let worker = registry.leastRecentlyUsedIdle,
              let entries = batcher.nextBatch(from: &queue, now: now, limit: worker.maxBatch, flush: isDraining) {
            let batchID = nextBatchID
            nextBatchID += 1
            var requests: [GenerationRequest] = []
            for entry in entries {
                guard var item = pending[entry.ticket] else { continue }
                item.attempts += 1
                item.assignments.append((worker.identity, batchID, now))
                earliestInFlightDeadline = min(earliestInFlightDeadline, item.deadline)
                pending[entry.ticket] = item
                var request = item.request
                request.id = String(entry.ticket)
                requests.append(request)
            }
            guard !requests.isEmpty else { continue }
            registry.assign(InFlightBatch(id: batchID, tickets: entries.map(\.ticket), key: entries[0].key, dispatchedAt: now),
                            to: worker.identity)
            metrics.batchSize.observe(Double(requests.count))
            actions.append(.dispatch(worker: worker.identity, BatchBody(batchID: batchID, requests: requests)))
        }
    }

    // MARK: Observation

    /// A snapshot for the status endpoint and the `STATUS` command.
    public func status(now: Double) -> SchedulerStatus {
        let workers = registry.workers.values.sorted { $0.registeredAt < $1.registeredAt }.map { record in
            SchedulerStatus.Worker(name: record.name, pid: record.pid, executor: record.executor, state: record.state,
                                   maxBatch: record.maxBatch, batchSize: record.batch?.tickets.count ?? 0,
                                   batchesDone: record.batchesDone, imagesDone: record.imagesDone,
                                   lastSeenMs: (now - record.lastSeen) * 1000)
        }
        let latency = metrics.latency.snapshot(), batches = metrics.batchSize.snapshot()
        return SchedulerStatus(protocolTag: WireProtocol.tag, state: isDraining ? "draining" : "serving", queueDepth: queue.count,
                               queueCapacity: queue.capacity, inFlight: inFlightCount,
                               maxBatch: configuration.batching.maxBatchSize, workers: workers, completed: Int(latency.count),
                               meanLatencyMs: latency.mean * 1000, meanBatchSize: batches.mean,
                               rejected: metrics.rejected,
                               autoscaler: nil)
    }
}

/// The scheduler's state as JSON (`STATUS` reply, `GET /v1/status`).
public struct SchedulerStatus: Codable, Sendable, Equatable {
    public struct Worker: Codable, Sendable, Equatable {
        public var name: String
        public var pid: Int32
        public var executor: String
        public var state: WorkerRecord.State
        public var maxBatch: Int
        /// Requests in the batch it is running (0 when idle).
        public var batchSize: Int
        public var batchesDone: Int
        public var imagesDone: Int
        /// Milliseconds since the last message from the worker.
        public var lastSeenMs: Double

        enum CodingKeys: String, CodingKey {
            case name, pid, executor, state
            case maxBatch = "max_batch", batchSize = "batch_size", batchesDone = "batches_done"
            case imagesDone = "images_done", lastSeenMs = "last_seen_ms"
        }
    }

    public var protocolTag: String
    /// "serving" or "draining".
    public var state: String
    public var queueDepth: Int
    public var queueCapacity: Int
    public var inFlight: Int
    public var maxBatch: Int
    public var workers: [Worker]
    /// Requests answered with an image so far.
    public var completed: Int
    public var meanLatencyMs: Double
    public var meanBatchSize: Double
    /// Requests answered with an error so far.
    public var rejected: Int
    /// The last autoscaler decision, when local autoscaling runs.
    public var autoscaler: AutoscalerDecision?

    enum CodingKeys: String, CodingKey {
        case state, workers, completed, rejected, autoscaler
        case protocolTag = "protocol", queueDepth = "queue_depth", queueCapacity = "queue_capacity", inFlight = "in_flight"
        case maxBatch = "max_batch", meanLatencyMs = "mean_latency_ms", meanBatchSize = "mean_batch_size"
    }
}
