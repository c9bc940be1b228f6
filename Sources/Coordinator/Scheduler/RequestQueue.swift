import Foundation
import Worker

/// A request waiting for a worker, as the queue and the batcher see it.
public struct QueuedRequest: Sendable, Equatable {
    /// The scheduler's number for the request; increases with arrival.
    public var ticket: UInt64
    /// Requests with equal keys may share a batch.
    public var key: BatchCompatibility
    /// Higher runs first.
    public var priority: Int
    /// Arrival time, seconds on the scheduler's monotonic clock.
    public var arrival: Double
    /// Time after which the request is answered `deadline_expired`.
    public var deadline: Double

    public init(ticket: UInt64, key: BatchCompatibility, priority: Int, arrival: Double, deadline: Double) {
        self.ticket = ticket
        self.key = key
        self.priority = priority
        self.arrival = arrival
        self.deadline = deadline
    }
}

/// Requests waiting for a worker, grouped by batch compatibility and priority, with a size cap.
///
/// Within one key and one priority, requests are kept in ticket (arrival) order, so a request
/// re-queued after a worker died goes back to its place near the front rather than to the back.
/// The cap applies to new requests only: re-queued ones were admitted already.
public struct RequestQueue: Sendable {
    /// What the batcher needs to know about one compatibility group.
    public struct BucketSummary: Sendable, Equatable {
        public var key: BatchCompatibility
        public var count: Int
        /// The highest priority waiting in the group.
        public var topPriority: Int
        /// The earliest arrival in the group.
        public var oldestArrival: Double
    }

    private struct Bucket: Sendable {
        /// Priority → requests in ticket order.
        var levels: [Int: [QueuedRequest]] = [:]
        var count = 0
    }

    /// Most requests `enqueue` admits.
    public let capacity: Int
    public private(set) var count = 0
    private var buckets: [BatchCompatibility: Bucket] = [:]
    private var locations: [UInt64: (key: BatchCompatibility, priority: Int)] = [:]
    /// No waiting request has an earlier deadline (it may be earlier than the true minimum).
    public private(set) var earliestDeadline = Double.infinity

    public init(capacity: Int) {
        self.capacity = max(0, capacity)
    }

    public var isEmpty: Bool { count == 0 }
    public var isFull: Bool { count >= capacity }

    /// Adds a new request; false (and no change) when the queue already holds `capacity`.
    public mutating func enqueue(_ request: QueuedRequest) -> Bool {
        guard count < capacity else { return false }
        insert(request)
        return true
    }

    /// Puts back a request that had been taken (its worker died), ignoring the cap.
    public mutating func requeue(_ request: QueuedRequest) {
        insert(request)
    }

    private mutating func insert(_ request: QueuedRequest) {
        guard locations[request.ticket] == nil else { return }
        var level = buckets[request.key]?.levels[request.priority] ?? []
        // Binary search for the first ticket greater than this one: appends are the common case.
        var low = 0, high = level.count
        if let last = level.last, last.ticket < request.ticket {
            low = level.count
        } else {
            while low < high {
                let mid = (low + high) / 2
                if level[mid].ticket < request.ticket { low = mid + 1 } else { high = mid }
            }
        }
        level.insert(request, at: low)
        buckets[request.key, default: Bucket()].levels[request.priority] = level
        buckets[request.key]!.count += 1
        locations[request.ticket] = (request.key, request.priority)
        count += 1
        earliestDeadline = min(earliestDeadline, request.deadline)
    }

    /// Whether the ticket is waiting.
    public func contains(ticket: UInt64) -> Bool { locations[ticket] != nil }

    /// Removes one request by ticket.
    @discardableResult
    public mutating func remove(ticket: UInt64) -> QueuedRequest? {
        guard let (key, priority) = locations[ticket],
              let index = buckets[key]?.levels[priority]?.firstIndex(where: { $0.ticket == ticket }) else { return nil }
        let removed = buckets[key]!.levels[priority]!.remove(at: index)
        forget([removed], key: key, priority: priority)
        return removed
    }

    /// Removes and returns every request whose deadline is at or before `now`.
    public mutating func removeExpired(now: Double) -> [QueuedRequest] {
        guard earliestDeadline <= now else { return [] }
        var expired: [QueuedRequest] = []
        var earliest = Double.infinity
        for (key, bucket) in buckets {
            for (priority, level) in bucket.levels {
                var kept: [QueuedRequest] = []
                var gone: [QueuedRequest] = []
                for request in level {
                    if request.deadline <= now { gone.append(request) } else {
                        kept.append(request)
                        earliest = min(earliest, request.deadline)
                    }
                }
                guard !gone.isEmpty else { continue }
                buckets[key]!.levels[priority] = kept
                forget(gone, key: key, priority: priority)
                expired += gone
            }
        }
        earliestDeadline = earliest
        return expired.sorted { $0.ticket < $1.ticket }
    }

    /// One summary per compatibility group that has waiting requests.
    public func summaries() -> [BucketSummary] {
        buckets.map { key, bucket in
            var top = Int.min
            var oldest = Double.infinity
            for (priority, level) in bucket.levels where !level.isEmpty {
                top = max(top, priority)
                oldest = min(oldest, level[0].arrival)
            }
            return BucketSummary(key: key, count: bucket.count, topPriority: top, oldestArrival: oldest)
        }
    }

    /// Removes up to `limit` requests with this key: highest priority first, oldest first within one.
    public mutating func take(key: BatchCompatibility, limit: Int) -> [QueuedRequest] {
        guard let bucket = buckets[key], limit > 0 else { return [] }
        var taken: [QueuedRequest] = []
        for priority in bucket.levels.keys.sorted(by: >) where taken.count < limit {
            let level = buckets[key]!.levels[priority]!
            let slice = Array(level.prefix(limit - taken.count))
            buckets[key]!.levels[priority] = Array(level.dropFirst(slice.count))
            forget(slice, key: key, priority: priority)
            taken += slice
        }
        return taken
    }

    /// Every waiting request, in no particular order.
    public var all: [QueuedRequest] { buckets.values.flatMap { $0.levels.values.flatMap { $0 } } }

    private mutating func forget(_ removed: [QueuedRequest], key: BatchCompatibility, priority: Int) {
        guard !removed.isEmpty else { return }
        for request in removed { locations[request.ticket] = nil }
        count -= removed.count
        buckets[key]!.count -= removed.count
        if buckets[key]!.levels[priority]!.isEmpty { buckets[key]!.levels[priority] = nil }
        if buckets[key]!.count == 0 { buckets[key] = nil }
        if count == 0 { earliestDeadline = .infinity }
    }
}
