import Foundation
import Worker

/// How large batches grow and how long a request may wait for company.
public struct BatchingPolicy: Sendable, Equatable {
    /// Most requests in one batch (a worker may announce a smaller maximum).
    public var maxBatchSize: Int
    /// Seconds the oldest request of a group may wait for the group to fill before it is sent
    /// anyway, when a worker is free.
    public var maxQueueDelay: TimeInterval

    public init(maxBatchSize: Int = 8, maxQueueDelay: TimeInterval = 0.005) {
        self.maxBatchSize = max(1, maxBatchSize)
        self.maxQueueDelay = max(0, maxQueueDelay)
    }
}

/// Chooses which compatible requests go together to the next free worker.
///
/// A compatibility group is ready when it holds a full batch, when its oldest request has waited
/// `maxQueueDelay`, or when the scheduler is flushing (draining). Among ready groups the one with
/// the highest waiting priority goes first, then the one whose oldest request arrived first.
/// Requests of different groups never share a batch.
public struct DynamicBatcher: Sendable {
    public var policy: BatchingPolicy

    public init(policy: BatchingPolicy) {
        self.policy = policy
    }

    /// The group to send to a worker that takes at most `limit` requests, or nil to keep waiting.
    public func readyGroup(in queue: RequestQueue, now: Double, limit: Int, flush: Bool) -> BatchCompatibility? {
        let full = max(1, min(limit, policy.maxBatchSize))
        var best: RequestQueue.BucketSummary?
        for summary in queue.summaries() {
            let ready = flush || summary.count >= full || now - summary.oldestArrival >= policy.maxQueueDelay
            guard ready else { continue }
            if let current = best {
                if summary.topPriority < current.topPriority { continue }
                if summary.topPriority == current.topPriority && summary.oldestArrival >= current.oldestArrival { continue }
            }
            best = summary
        }
        return best?.key
    }

    /// Takes the next batch for a worker that accepts at most `limit` requests, or nil to wait.
    public func nextBatch(from queue: inout RequestQueue, now: Double, limit: Int, flush: Bool) -> [QueuedRequest]? {
        guard let key = readyGroup(in: queue, now: now, limit: limit, flush: flush) else { return nil }
        let batch = queue.take(key: key, limit: max(1, min(limit, policy.maxBatchSize)))
        return batch.isEmpty ? nil : batch
    }

    /// When the next group becomes ready by age alone (nil when the queue is empty).
    public func nextFlushTime(in queue: RequestQueue) -> Double? {
        queue.summaries().map { $0.oldestArrival + policy.maxQueueDelay }.min()
    }
}
