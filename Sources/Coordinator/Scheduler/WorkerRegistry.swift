import Foundation
import Worker

/// A batch a worker is running.
public struct InFlightBatch: Sendable, Equatable {
    public var id: UInt64
    public var tickets: [UInt64]
    public var key: BatchCompatibility
    public var dispatchedAt: Double

    public init(id: UInt64, tickets: [UInt64], key: BatchCompatibility, dispatchedAt: Double) {
        self.id = id
        self.tickets = tickets
        self.key = key
        self.dispatchedAt = dispatchedAt
    }
}

/// What the scheduler knows about one connected worker.
public struct WorkerRecord: Sendable, Equatable {
    public enum State: String, Sendable, Codable {
        /// Waiting for a batch.
        case idle
        /// Running `batch`.
        case busy
        /// Told to leave (scale-down): gets no new batch.
        case draining
    }

    /// The ZeroMQ routing id of the worker's DEALER socket.
    public var identity: Data
    public var name: String
    public var pid: Int32
    public var maxBatch: Int
    public var executor: String
    public var state: State
    public var batch: InFlightBatch?
    /// Last time any message arrived from the worker.
    public var lastSeen: Double
    public var registeredAt: Double
    /// The worker said BYE while running a batch: it leaves once the batch is answered.
    public var leaving = false
    public var batchesDone = 0
    public var imagesDone = 0
}

/// Connected workers, the least-recently-used order of the idle ones, and heartbeat liveness.
///
/// A worker that sends nothing (no heartbeat, no result) for `heartbeatInterval × liveness`
/// seconds is dead: `expire` removes it and hands back its batch so the scheduler can re-queue it.
public struct WorkerRegistry: Sendable {
    public let heartbeatInterval: TimeInterval
    public let liveness: Int
    public private(set) var workers: [Data: WorkerRecord] = [:]
    /// Idle workers, least recently used first.
    private var idleOrder: [Data] = []
    /// Worker-seconds spent busy by workers no longer busy (see `busyWorkerSeconds`).
    private var finishedBusySeconds = 0.0

    public init(heartbeatInterval: TimeInterval, liveness: Int) {
        self.heartbeatInterval = heartbeatInterval
        self.liveness = max(1, liveness)
    }

    /// Seconds of silence after which a worker is dead.
    public var deadAfter: TimeInterval { heartbeatInterval * Double(liveness) }

    public var count: Int { workers.count }
    public var idleCount: Int { idleOrder.count }
    public var busyCount: Int { workers.values.filter { $0.batch != nil }.count }

    /// Registers a worker that announced READY, or marks a known one idle again. Returns the batch
    /// a known worker was running, which it has now given up (it restarted its loop).
    public mutating func register(identity: Data, ready: ReadyBody, now: Double) -> InFlightBatch? {
        var lost: InFlightBatch?
        if var known = workers[identity] {
            lost = known.batch
            if let batch = lost { finishedBusySeconds += now - batch.dispatchedAt }
            known.batch = nil
            known.lastSeen = now
            if known.state != .draining { known.state = .idle }
            workers[identity] = known
        } else {
            workers[identity] = WorkerRecord(identity: identity, name: ready.name, pid: ready.pid, maxBatch: max(1, ready.maxBatch),
                                             executor: ready.executor, state: .idle, batch: nil, lastSeen: now, registeredAt: now)
        }
        if workers[identity]!.state == .idle, !idleOrder.contains(identity) { idleOrder.append(identity) }
        return lost
    }

    /// Records that a message arrived; false when the worker is unknown (not registered, or dead).
    @discardableResult
    public mutating func heard(from identity: Data, now: Double) -> Bool {
        guard workers[identity] != nil else { return false }
        workers[identity]!.lastSeen = now
        return true
    }

    /// The idle worker that has waited longest, without removing it.
    public var leastRecentlyUsedIdle: WorkerRecord? { idleOrder.first.flatMap { workers[$0] } }

    /// Marks an idle worker busy with `batch`.
    public mutating func assign(_ batch: InFlightBatch, to identity: Data) {
        guard workers[identity]?.state == .idle else { return }
        idleOrder.removeAll { $0 == identity }
        workers[identity]!.state = .busy
        workers[identity]!.batch = batch
    }

    /// Ends the worker's current batch if its id is `batchID`, making the worker idle (most recently
    /// used) again; nil when the worker is unknown or was not running that batch.
    public mutating func complete(batchID: UInt64, on identity: Data, images: Int, now: Double) -> InFlightBatch? {
        guard var record = workers[identity], let batch = record.batch, batch.id == batchID else { return nil }
        finishedBusySeconds += now - batch.dispatchedAt
        record.batch = nil
        record.lastSeen = now
        record.batchesDone += 1
        record.imagesDone += images
        if record.state == .busy {
            record.state = .idle
            idleOrder.append(identity)
        }
        workers[identity] = record
        return batch
    }

    /// Forgets a worker (it left or is unreachable); returns its record with any batch it held.
    @discardableResult
    public mutating func remove(_ identity: Data, now: Double) -> WorkerRecord? {
        guard let record = workers.removeValue(forKey: identity) else { return nil }
        idleOrder.removeAll { $0 == identity }
        if let batch = record.batch { finishedBusySeconds += now - batch.dispatchedAt }
        return record
    }

    /// Stops sending batches to a worker that was asked to leave.
    public mutating func markDraining(_ identity: Data) {
        guard workers[identity] != nil else { return }
        workers[identity]!.state = .draining
        idleOrder.removeAll { $0 == identity }
    }

    /// A worker that said BYE while busy: no new batches, removed after its batch completes.
    public mutating func markLeaving(_ identity: Data) {
        guard workers[identity] != nil else { return }
        markDraining(identity)
        workers[identity]!.leaving = true
    }

    /// Removes and returns the workers silent for longer than `deadAfter`.
    public mutating func expire(now: Double) -> [WorkerRecord] {
        let dead = workers.values.filter { now - $0.lastSeen > deadAfter }.sorted { $0.registeredAt < $1.registeredAt }
        for record in dead { remove(record.identity, now: now) }
        return dead
    }

    /// Total worker-seconds spent running batches since the registry was created; its growth
    /// over an interval divided by the interval is the mean number of busy workers.
    public func busyWorkerSeconds(now: Double) -> Double {
        finishedBusySeconds + workers.values.compactMap { $0.batch.map { now - $0.dispatchedAt } }.reduce(0, +)
    }

    /// The worker (if any) with this process id.
    public func worker(pid: Int32) -> WorkerRecord? { workers.values.first { $0.pid == pid } }
}
