import Coordinator
import Foundation
import Worker
import XCTest

/// The scheduler's state machine driven by hand: exactly-once replies, re-queue once, deadlines,
/// the queue cap, heartbeats and draining, all on a fake clock.
final class SchedulerCoreTests: XCTestCase {
    let client = ClientRoute(envelope: [Data("client-1".utf8)])
    let w1 = Data("w1".utf8), w2 = Data("w2".utf8)

    func makeCore(capacity: Int = 100, maxBatch: Int = 4, delay: Double = 0.01) -> SchedulerCore {
        var configuration = SchedulerConfiguration()
        configuration.batching = BatchingPolicy(maxBatchSize: maxBatch, maxQueueDelay: delay)
        configuration.queueCapacity = capacity
        configuration.heartbeatInterval = 1
        configuration.liveness = 3
        return SchedulerCore(configuration: configuration, metrics: SchedulerMetrics(registry: MetricsRegistry()))
    }

    func ready(_ name: String, maxBatch: Int = 4) -> ReadyBody { ReadyBody(name: name, pid: 1, maxBatch: maxBatch, executor: "null") }

    func submit(_ core: SchedulerCore, _ id: String, timeoutMs: Int? = nil, width: Int? = nil, now: Double) -> [SchedulerAction] {
        core.submit(SubmitBody(id: id, prompt: "prompt \(id)", width: width, timeoutMs: timeoutMs), route: client, now: now)
    }

    func dispatches(_ actions: [SchedulerAction]) -> [(worker: Data, batch: BatchBody)] {
        actions.compactMap { if case let .dispatch(worker, batch) = $0 { return (worker, batch) } else { return nil } }
    }

    /// Client replies as (id, "ok" or error code).
    func replies(_ actions: [SchedulerAction]) -> [(String, String)] {
        actions.compactMap {
            switch $0 {
            case let .replyResult(_, header, _): return (header.id, "ok")
            case let .replyError(_, body): return (body.id ?? "?", body.code.rawValue)
            default: return nil
            }
        }
    }

    func result(for batch: BatchBody) -> (WorkerResultBody, [Data]) {
        (WorkerResultBody(batchID: batch.batchID, execMs: 1, images: batch.requests.map { .init(id: $0.id, width: $0.width, height: $0.height) }),
         batch.requests.map { Data("png-\($0.id)".utf8) })
    }

    func testFullBatchIsDispatchedAtOnceAndAnsweredExactlyOnce() throws {
        let core = makeCore()
        _ = core.workerReady(w1, ready("one"), now: 0)
        var actions: [SchedulerAction] = []
        for i in 0..<4 { actions += submit(core, "r\(i)", now: 0.001) }
        let sent = dispatches(actions)
        XCTAssertEqual(sent.count, 1)
        XCTAssertEqual(sent[0].batch.requests.count, 4)
        XCTAssertTrue(sent[0].batch.requests.allSatisfy { UInt64($0.id) != nil }, "workers see scheduler tickets")
        let (body, pngs) = result(for: sent[0].batch)
        let answered = core.workerResult(w1, body, pngs: pngs, now: 0.01)
        XCTAssertEqual(replies(answered).map(\.0).sorted(), ["r0", "r1", "r2", "r3"])
        XCTAssertTrue(replies(answered).allSatisfy { $0.1 == "ok" })
        let promptByTicket = Dictionary(uniqueKeysWithValues: sent[0].batch.requests.map { ($0.id, $0.prompt) })
        for action in answered {
            guard case let .replyResult(_, header, png) = action else { continue }
            let ticket = String(String(decoding: png, as: UTF8.self).dropFirst(4))
            XCTAssertEqual(promptByTicket[ticket], "prompt \(header.id)", "each client gets the image of its own request")
            XCTAssertEqual(header.batchSize, 4)
            XCTAssertEqual(header.attempts, 1)
        }
        // The same result again (a duplicate delivery) answers nothing.
        XCTAssertTrue(replies(core.workerResult(w1, body, pngs: pngs, now: 0.02)).isEmpty)
        XCTAssertEqual(core.metrics.lateResultsDropped.value, 4)
        XCTAssertTrue(core.isIdle)
    }

    func testPartialBatchWaitsForTheQueueDelay() {
        let core = makeCore(delay: 0.010)
        _ = core.workerReady(w1, ready("one"), now: 1)
        _ = core.tick(now: 1)
        XCTAssertTrue(dispatches(submit(core, "a", now: 1.000)).isEmpty)
        XCTAssertTrue(dispatches(submit(core, "b", now: 1.004)).isEmpty)
        XCTAssertEqual(core.nextWakeup(now: 1.005), 1.010, accuracy: 1e-9)
        XCTAssertTrue(dispatches(core.tick(now: 1.009)).isEmpty)
        XCTAssertEqual(dispatches(core.tick(now: 1.010)).first?.batch.requests.count, 2)
    }

    func testDeadWorkersBatchIsRequeuedOnceThenAnsweredWorkerFailed() {
        let core = makeCore()
        _ = core.workerReady(w1, ready("one"), now: 0)
        _ = core.workerReady(w2, ready("two"), now: 0)
        var actions = submit(core, "a", now: 0) + submit(core, "b", now: 0) + core.tick(now: 0.02)
        XCTAssertEqual(dispatches(actions).map(\.worker), [w1], "least recently used worker first")
        // w2 keeps heartbeating, w1 falls silent; after 3 s it is dead and its batch goes to w2.
        _ = core.workerHeartbeat(w2, now: 2.0)
        actions = core.tick(now: 3.1)
        XCTAssertEqual(core.metrics.workerDeaths.value, 1)
        XCTAssertEqual(core.metrics.requeued.value, 2)
        XCTAssertEqual(dispatches(actions).map(\.worker), [w2])
        XCTAssertTrue(replies(actions).isEmpty, "re-queued, not answered")
        // w2 dies too: the second loss answers each request once with worker_failed.
        actions = core.tick(now: 6.0)
        let answered = replies(actions)
        XCTAssertEqual(answered.map(\.0).sorted(), ["a", "b"])
        XCTAssertTrue(answered.allSatisfy { $0.1 == "worker_failed" })
        XCTAssertTrue(core.isIdle)
        XCTAssertTrue(replies(core.tick(now: 20)).isEmpty)
    }

    func testLateReplyFromPresumedDeadWorkerIsAnsweredExactlyOnce() {
        let core = makeCore()
        _ = core.workerReady(w1, ready("one"), now: 0)
        _ = core.workerReady(w2, ready("two"), now: 0)
        let first = dispatches(submit(core, "a", now: 0) + core.tick(now: 0.02))[0]
        _ = core.workerHeartbeat(w2, now: 2.5)
        let second = dispatches(core.tick(now: 3.1))[0]
        XCTAssertEqual(second.worker, w2)
        // The presumed-dead w1 answers after all: first answer wins…
        let (lateBody, latePNGs) = result(for: first.batch)
        let late = core.workerResult(w1, lateBody, pngs: latePNGs, now: 3.2)
        XCTAssertEqual(replies(late).map(\.0), ["a"])
        XCTAssertTrue(late.contains { if case let .log(text) = $0 { return text.contains("no longer owned") }; return false })
        // …and w2's answer for the same request is dropped.
        let (body, pngs) = result(for: second.batch)
        XCTAssertTrue(replies(core.workerResult(w2, body, pngs: pngs, now: 3.3)).isEmpty)
        XCTAssertEqual(core.metrics.lateResultsDropped.value, 1)
        // A heartbeat from the forgotten worker tells it to register again.
        XCTAssertTrue(core.workerHeartbeat(w1, now: 3.4).contains { if case .disconnect(worker: w1, _) = $0 { return true }; return false })
    }

    func testResultFromAWorkerThatWasNeverSentTheRequestIsIgnored() {
        let core = makeCore()
        _ = core.workerReady(w1, ready("one"), now: 0)
        let sent = dispatches(submit(core, "a", now: 0) + core.tick(now: 0.02))[0]
        let (body, pngs) = result(for: sent.batch)
        XCTAssertTrue(replies(core.workerResult(w2, body, pngs: pngs, now: 0.1)).isEmpty)
        XCTAssertEqual(replies(core.workerResult(w1, body, pngs: pngs, now: 0.2)).map(\.0), ["a"])
    }

    func testFullQueueIsAnExplicitRejection() {
        let core = makeCore(capacity: 2)
        XCTAssertTrue(replies(submit(core, "a", now: 0) + submit(core, "b", now: 0)).isEmpty)
        let rejected = replies(submit(core, "c", now: 0))
        XCTAssertEqual(rejected.map(\.0), ["c"])
        XCTAssertEqual(rejected.map(\.1), ["queue_full"])
        XCTAssertEqual(core.metrics.registry.value("sura_requests_total", labels: ["outcome": "queue_full"]), 1)
    }

    func testDeadlinesExpireInTheQueueAndWhileRunning() {
        let core = makeCore()
        _ = core.tick(now: 0)
        XCTAssertTrue(replies(submit(core, "queued", timeoutMs: 100, now: 0)).isEmpty)
        XCTAssertEqual(core.nextWakeup(now: 0.01), 0.1, accuracy: 1e-9)
        XCTAssertTrue(replies(core.tick(now: 0.09)).isEmpty)
        XCTAssertEqual(replies(core.tick(now: 0.1)).map(\.1), ["deadline_expired"])

        _ = core.workerReady(w1, ready("one"), now: 1)
        let sent = dispatches(submit(core, "running", timeoutMs: 200, now: 1) + core.tick(now: 1.02))[0]
        XCTAssertEqual(replies(core.tick(now: 1.21)).map { "\($0.0):\($0.1)" }, ["running:deadline_expired"])
        let (body, pngs) = result(for: sent.batch)
        XCTAssertTrue(replies(core.workerResult(w1, body, pngs: pngs, now: 1.5)).isEmpty, "answered already")
        XCTAssertTrue(core.isIdle)
    }

    func testInvalidAndDuplicateRequestsAreRefusedNamingTheProblem() {
        let core = makeCore()
        let bad = core.submit(SubmitBody(id: "x", prompt: "p", width: 13), route: client, now: 0)
        guard case let .replyError(_, body) = bad.first else { return XCTFail("expected an error reply, got \(bad)") }
        XCTAssertEqual(body.code, .badRequest)
        XCTAssertTrue(body.message.contains("'width'"), body.message)
        XCTAssertTrue(replies(submit(core, "dup", now: 0)).isEmpty)
        XCTAssertEqual(replies(submit(core, "dup", now: 0)).map(\.1), ["duplicate_id"])
        for (field, submitBody) in [("prompt", SubmitBody(id: "p", prompt: "")),
                                    ("steps", SubmitBody(id: "s", prompt: "p", steps: 0)),
                                    ("guidance_scale", SubmitBody(id: "g", prompt: "p", guidanceScale: .infinity)),
                                    ("priority", SubmitBody(id: "q", prompt: "p", priority: 99)),
                                    ("timeout_ms", SubmitBody(id: "t", prompt: "p", timeoutMs: 0)),
                                    ("prompt", SubmitBody(id: "l", prompt: String(repeating: "a", count: 5000)))] {
            guard case let .replyError(_, error) = core.submit(submitBody, route: client, now: 0).first else { return XCTFail(field) }
            XCTAssertEqual(error.code, .badRequest)
            XCTAssertTrue(error.message.contains("'\(field)'"), "\(field): \(error.message)")
        }
    }

    func testExecutorFailureIsRetriedOnceThenReported() {
        let core = makeCore()
        _ = core.workerReady(w1, ready("one"), now: 0)
        let first = dispatches(submit(core, "a", now: 0) + core.tick(now: 0.02))[0]
        let retry = core.workerFailed(w1, batchID: first.batch.batchID, message: "boom", now: 0.1)
        let second = dispatches(retry)
        XCTAssertEqual(second.count, 1, "re-queued and sent again (the worker is idle again)")
        let final = replies(core.workerFailed(w1, batchID: second[0].batch.batchID, message: "boom again", now: 0.2))
        XCTAssertEqual(final.map(\.1), ["worker_failed"])
    }

    func testDrainRefusesNewRequestsAndFlushesPartialBatches() {
        let core = makeCore(delay: 10)
        _ = core.workerReady(w1, ready("one"), now: 0)
        XCTAssertTrue(dispatches(submit(core, "a", now: 0)).isEmpty, "waits for company")
        let drain = core.beginDrain(now: 0.1)
        XCTAssertEqual(dispatches(drain).count, 1, "draining sends partial batches at once")
        XCTAssertEqual(replies(submit(core, "late", now: 0.2)).map(\.1), ["shutting_down"])
        XCTAssertFalse(core.isIdle)
        XCTAssertEqual(replies(core.abandonAll(WireError(.shuttingDown, "stop"))).map(\.0), ["a"])
        XCTAssertTrue(core.isIdle)
    }

    func testByeWhileBusyLeavesAfterTheBatch() {
        let core = makeCore()
        _ = core.workerReady(w1, ready("one"), now: 0)
        let sent = dispatches(submit(core, "a", now: 0) + core.tick(now: 0.02))[0]
        _ = core.workerLeaving(w1, now: 0.05)
        XCTAssertEqual(core.registry.workers[w1]?.state, .draining)
        XCTAssertTrue(dispatches(submit(core, "b", now: 0.06) + core.tick(now: 0.2)).isEmpty, "no new batch for a leaving worker")
        let (body, pngs) = result(for: sent.batch)
        XCTAssertEqual(replies(core.workerResult(w1, body, pngs: pngs, now: 0.3)).map(\.0), ["a"])
        XCTAssertNil(core.registry.workers[w1], "forgotten after its last batch")
    }

    func testUnreachableWorkerDoesNotSpendAnAttempt() {
        let core = makeCore()
        _ = core.workerReady(w1, ready("one"), now: 0)
        _ = core.workerReady(w2, ready("two"), now: 0)
        let first = dispatches(submit(core, "a", now: 0) + core.tick(now: 0.02))[0]
        XCTAssertEqual(first.worker, w1)
        let again = dispatches(core.workerGone(w1, reason: "unreachable", batchReachedWorker: false, now: 0.03))
        XCTAssertEqual(again.map(\.worker), [w2])
        // w2 fails: this is the first real attempt, so the request is re-queued rather than failed.
        _ = core.workerFailed(w2, batchID: again[0].batch.batchID, message: "boom", now: 0.04)
        XCTAssertEqual(core.metrics.requeued.value, 2)
        XCTAssertFalse(core.isIdle)
    }
}
