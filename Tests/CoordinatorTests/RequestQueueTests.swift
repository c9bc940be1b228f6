import Coordinator
import Worker
import XCTest

/// The queue's priorities, deadlines and cap, and the batcher's grouping rules.
final class RequestQueueTests: XCTestCase {
    let small = BatchCompatibility(model: "default", width: 32, height: 32, steps: 25, guidanceScale: 4)
    let large = BatchCompatibility(model: "default", width: 64, height: 64, steps: 25, guidanceScale: 4)

    func entry(_ ticket: UInt64, _ key: BatchCompatibility? = nil, priority: Int = 0, arrival: Double = 0, deadline: Double = 100) -> QueuedRequest {
        QueuedRequest(ticket: ticket, key: key ?? small, priority: priority, arrival: arrival, deadline: deadline)
    }

    func testCapacityRejectsNewRequestsButNotRequeuedOnes() {
        var queue = RequestQueue(capacity: 2)
        XCTAssertTrue(queue.enqueue(entry(1)))
        XCTAssertTrue(queue.enqueue(entry(2)))
        XCTAssertFalse(queue.enqueue(entry(3)), "a full queue must refuse")
        XCTAssertEqual(queue.count, 2)
        queue.requeue(entry(0))
        XCTAssertEqual(queue.count, 3, "re-queued requests were admitted before and bypass the cap")
        XCTAssertEqual(queue.take(key: small, limit: 10).map(\.ticket), [0, 1, 2], "a re-queued request goes back to its place")
        XCTAssertTrue(queue.isEmpty)
    }

    func testHigherPriorityFirstThenArrivalOrder() {
        var queue = RequestQueue(capacity: 10)
        for (ticket, priority) in [(1, 0), (2, 5), (3, 0), (4, 5), (5, -3)] {
            XCTAssertTrue(queue.enqueue(entry(UInt64(ticket), priority: priority, arrival: Double(ticket))))
        }
        XCTAssertEqual(queue.take(key: small, limit: 3).map(\.ticket), [2, 4, 1])
        XCTAssertEqual(queue.take(key: small, limit: 3).map(\.ticket), [3, 5])
    }

    func testExpiredRequestsAreRemovedAndReported() {
        var queue = RequestQueue(capacity: 10)
        XCTAssertTrue(queue.enqueue(entry(1, deadline: 1.0)))
        XCTAssertTrue(queue.enqueue(entry(2, large, deadline: 5.0)))
        XCTAssertTrue(queue.enqueue(entry(3, deadline: 0.5)))
        XCTAssertEqual(queue.earliestDeadline, 0.5)
        XCTAssertEqual(queue.removeExpired(now: 0.4), [])
        XCTAssertEqual(queue.removeExpired(now: 1.0).map(\.ticket), [1, 3])
        XCTAssertEqual(queue.count, 1)
        XCTAssertEqual(queue.earliestDeadline, 5.0)
        XCTAssertNotNil(queue.remove(ticket: 2))
        XCTAssertNil(queue.remove(ticket: 2))
        XCTAssertTrue(queue.isEmpty)
    }

    func testBatcherNeverMixesIncompatibleRequests() {
        var queue = RequestQueue(capacity: 100)
        for ticket in 1...10 { XCTAssertTrue(queue.enqueue(entry(UInt64(ticket), ticket % 2 == 0 ? large : small, arrival: 0))) }
        let batcher = DynamicBatcher(policy: BatchingPolicy(maxBatchSize: 4, maxQueueDelay: 0.01))
        var seen: [UInt64] = []
        while let batch = batcher.nextBatch(from: &queue, now: 1, limit: 8, flush: false) {
            XCTAssertLessThanOrEqual(batch.count, 4, "max batch size")
            XCTAssertEqual(Set(batch.map(\.key)).count, 1, "one compatibility key per batch")
            seen += batch.map(\.ticket)
        }
        XCTAssertEqual(seen.sorted(), Array(1...10))
    }

    func testBatcherWaitsForFullBatchOrMaxDelay() {
        var queue = RequestQueue(capacity: 100)
        let batcher = DynamicBatcher(policy: BatchingPolicy(maxBatchSize: 3, maxQueueDelay: 0.010))
        XCTAssertTrue(queue.enqueue(entry(1, arrival: 1.000)))
        XCTAssertTrue(queue.enqueue(entry(2, arrival: 1.002)))
        XCTAssertNil(batcher.nextBatch(from: &queue, now: 1.005, limit: 8, flush: false), "not full, not old: wait")
        XCTAssertEqual(batcher.nextFlushTime(in: queue)!, 1.010, accuracy: 1e-9)
        XCTAssertEqual(batcher.nextBatch(from: &queue, now: 1.010, limit: 8, flush: false)?.map(\.ticket), [1, 2], "oldest waited max delay")
        for ticket in 3...5 { XCTAssertTrue(queue.enqueue(entry(UInt64(ticket), arrival: 2.0))) }
        XCTAssertEqual(batcher.nextBatch(from: &queue, now: 2.0, limit: 8, flush: false)?.map(\.ticket), [3, 4, 5], "a full batch goes at once")
        XCTAssertTrue(queue.enqueue(entry(6, arrival: 3.0)))
        XCTAssertEqual(batcher.nextBatch(from: &queue, now: 3.0, limit: 8, flush: true)?.map(\.ticket), [6], "flush (drain) sends partial batches")
        XCTAssertTrue(queue.enqueue(entry(7, arrival: 4.0)))
        XCTAssertTrue(queue.enqueue(entry(8, arrival: 4.0)))
        XCTAssertEqual(batcher.nextBatch(from: &queue, now: 4.0, limit: 2, flush: false)?.map(\.ticket), [7, 8],
                       "full for a worker that takes at most 2")
    }

    func testBatcherPrefersHigherPriorityGroupThenOlder() {
        var queue = RequestQueue(capacity: 100)
        let batcher = DynamicBatcher(policy: BatchingPolicy(maxBatchSize: 8, maxQueueDelay: 0))
        XCTAssertTrue(queue.enqueue(entry(1, small, priority: 0, arrival: 1)))
        XCTAssertTrue(queue.enqueue(entry(2, large, priority: 2, arrival: 2)))
        XCTAssertEqual(batcher.nextBatch(from: &queue, now: 3, limit: 8, flush: false)?.map(\.ticket), [2])
        XCTAssertTrue(queue.enqueue(entry(3, large, priority: 0, arrival: 2)))
        XCTAssertEqual(batcher.nextBatch(from: &queue, now: 3, limit: 8, flush: false)?.map(\.ticket), [1], "older group first at equal priority")
    }
}
