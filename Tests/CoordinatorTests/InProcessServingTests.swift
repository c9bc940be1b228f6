import Coordinator
import Foundation
import Tensor
import Worker
import XCTest

/// The scheduler, workers and clients on threads of the test process, over loopback TCP:
/// concurrent clients, slow workers, executor failures, malformed frames and worker reconnection.
final class InProcessServingTests: XCTestCase {
    func testConcurrentClientsEachGetTheirOwnImageExactlyOnce() throws {
        let cluster = try InProcessCluster { $0.batching = BatchingPolicy(maxBatchSize: 4, maxQueueDelay: 0.005) }
        defer { cluster.stop() }
        try cluster.addWorker(name: "a", executor: NullImageExecutor(batchDelay: 0.005), maxBatch: 4)
        try cluster.addWorker(name: "b", executor: NullImageExecutor(batchDelay: 0.005), maxBatch: 4)
        XCTAssertTrue(cluster.waitForWorkers(2))
        let client = try SchedulerClient(endpoint: cluster.scheduler.frontendEndpoint, context: cluster.context)
        defer { client.close() }
        let lock = NSLock()
        var failures: [String] = []
        var answered = 0
        DispatchQueue.concurrentPerform(iterations: 8) { thread in
            for i in 0..<10 {
                let body = SubmitBody(id: "t\(thread)-\(i)", prompt: "prompt \(thread) \(i)", width: 16, height: 16, seed: UInt64(i))
                do {
                    let reply = try client.submit(body, timeout: 20)
                    guard case let .image(header, png) = reply else { throw RawHTTP.Failure(description: "\(reply)") }
                    let image = try PNGImage(pngData: png)
                    let expected = NullImageExecutor.pixels(for: GenerationRequest(id: "", prompt: body.prompt, width: 16, height: 16, seed: UInt64(i)))
                    guard header.id == body.id, image.pixels == expected else { throw RawHTTP.Failure(description: "wrong image for \(body.id)") }
                    lock.lock(); answered += 1; lock.unlock()
                } catch {
                    lock.lock(); failures.append("\(body.id): \(error)"); lock.unlock()
                }
            }
        }
        XCTAssertEqual(failures, [])
        XCTAssertEqual(answered, 80)
        XCTAssertEqual(cluster.metrics.value("sura_requests_total", labels: ["outcome": "ok"]), 80)
        let status = try client.status(timeout: 5)
        XCTAssertEqual(status.completed, 80)
        XCTAssertEqual(status.workers.map(\.imagesDone).reduce(0, +), 80)
        XCTAssertGreaterThan(status.meanBatchSize, 1, "concurrent requests share batches")
    }

    func testSlowWorkerKeepsHeartbeatingWhileItsBatchRuns() throws {
        let cluster = try InProcessCluster { $0.heartbeatInterval = 0.05; $0.liveness = 6 }
        defer { cluster.stop() }
        try cluster.addWorker(name: "slow", executor: NullImageExecutor(batchDelay: 0.8), heartbeat: 0.05)
        XCTAssertTrue(cluster.waitForWorkers(1))
        let client = try SchedulerClient(endpoint: cluster.scheduler.frontendEndpoint, context: cluster.context)
        defer { client.close() }
        let reply = try client.submit(SubmitBody(id: "slow-1", prompt: "p"), timeout: 10)
        guard case let .image(header, _) = reply else { return XCTFail("\(reply)") }
        XCTAssertGreaterThanOrEqual(header.execMs, 800)
        XCTAssertEqual(header.attempts, 1)
        XCTAssertEqual(cluster.metrics.value("sura_worker_deaths_total"), 0, "a slow worker is not a dead worker")
    }

    /// A batch that returns within milliseconds runs on the worker's own thread (no handoff to
    /// another thread and back); a model's batch runs on the batch runner's thread, so the
    /// worker's thread stays free to heartbeat. Failures come back the same way on both.
    func testQuickBatchesRunOnTheWorkersThreadAndModelBatchesOnTheRunner() throws {
        final class ThreadRecordingExecutor: InferenceBatchExecutor {
            let inner = NullImageExecutor(failingPrompt: "explode")
            let quick: Bool
            private let lock = NSLock()
            private var names: [String] = []
            init(quick: Bool) { self.quick = quick }
            var returnsWithinMilliseconds: Bool { quick }
            var threads: [String] { lock.lock(); defer { lock.unlock() }; return names }
            func run(batch: [GenerationRequest]) throws -> [GeneratedImage] {
                // The kernel's name of this thread, which is what debuggers and top show.
                let name = (try? String(contentsOfFile: "/proc/thread-self/comm", encoding: .utf8))?
                    .trimmingCharacters(in: .whitespacesAndNewlines) ?? "unknown"
                lock.lock(); names.append(name); lock.unlock()
                return try inner.run(batch: batch)
            }
        }
        XCTAssertTrue(NullImageExecutor().returnsWithinMilliseconds)
        XCTAssertTrue(NullImageExecutor(batchDelay: 0.002).returnsWithinMilliseconds)
        XCTAssertFalse(NullImageExecutor(batchDelay: 0.8).returnsWithinMilliseconds)
        for quick in [true, false] {
            let cluster = try InProcessCluster()
            defer { cluster.stop() }
            let executor = ThreadRecordingExecutor(quick: quick)
            try cluster.addWorker(name: quick ? "quick" : "model", executor: executor)
            XCTAssertTrue(cluster.waitForWorkers(1))
            let client = try SchedulerClient(endpoint: cluster.scheduler.frontendEndpoint, context: cluster.context)
            defer { client.close() }
            guard case .image = try client.submit(SubmitBody(id: "a", prompt: "fine"), timeout: 10) else { return XCTFail("no image") }
            guard case .error = try client.submit(SubmitBody(id: "b", prompt: "explode"), timeout: 10) else { return XCTFail("no error") }
            guard case .image = try client.submit(SubmitBody(id: "c", prompt: "fine again"), timeout: 10) else { return XCTFail("no image") }
            let threads = executor.threads
            XCTAssertGreaterThanOrEqual(threads.count, 3)
            XCTAssertEqual(Set(threads).count, 1, "\(threads)")
            if quick {
                XCTAssertFalse(threads.contains("sura-runner"), "\(threads)")
            } else {
                XCTAssertEqual(threads.first, "sura-runner")
            }
        }
    }

    func testExecutorFailureIsRetriedOnceThenReportedToTheClient() throws {
        let cluster = try InProcessCluster()
        defer { cluster.stop() }
        try cluster.addWorker(name: "fails", executor: NullImageExecutor(failingPrompt: "explode"))
        XCTAssertTrue(cluster.waitForWorkers(1))
        let client = try SchedulerClient(endpoint: cluster.scheduler.frontendEndpoint, context: cluster.context)
        defer { client.close() }
        let reply = try client.submit(SubmitBody(id: "bad", prompt: "explode"), timeout: 10)
        guard case let .error(body) = reply else { return XCTFail("\(reply)") }
        XCTAssertEqual(body.code, .workerFailed)
        XCTAssertTrue(body.message.contains("2 workers") && body.message.contains("injected"), body.message)
        guard case .image = try client.submit(SubmitBody(id: "good", prompt: "fine"), timeout: 10) else {
            return XCTFail("the worker keeps serving after a failed batch")
        }
    }

    func testMalformedFramesGetClearErrorsAndTheSchedulerKeepsServing() throws {
        let cluster = try InProcessCluster { $0.maxRequestBytes = 64 * 1024 }
        defer { cluster.stop() }
        try cluster.addWorker(name: "w")
        XCTAssertTrue(cluster.waitForWorkers(1))
        let raw = try RawClient(endpoint: cluster.scheduler.frontendEndpoint, context: cluster.context)
        let cases: [(frames: [Data], code: String, mentions: String)] = [
            ([Data("garbage".utf8)], "bad_request", "protocol tag"),
            ([Data("sura/9".utf8), Data("SUBMIT".utf8)], "unsupported_version", "sura/1"),
            ([Data("sura/1".utf8), Data("EXPLODE".utf8)], "unknown_command", "EXPLODE"),
            ([Data("sura/1".utf8), Data("SUBMIT".utf8)], "bad_request", "exactly one"),
            ([Data("sura/1".utf8), Data("SUBMIT".utf8), Data("{not json".utf8)], "bad_request", "JSON"),
            ([Data("sura/1".utf8), Data("SUBMIT".utf8), Data(#"{"id":"x","prompt":"p","width":"big"}"#.utf8)], "bad_request", "'width'"),
            ([Data("sura/1".utf8), Data("SUBMIT".utf8), Data(#"{"id":"x","prompt":"p","colour":1}"#.utf8)], "bad_request", "'colour'"),
            ([Data("sura/1".utf8), Data("SUBMIT".utf8), Data(repeating: 0x20, count: 200_000)], "too_large", "limit"),
            (Array(repeating: Data("x".utf8), count: 70), "too_large", "frames"),
        ]
        for (frames, code, mentions) in cases {
            try raw.send(frames)
            guard let (command, payload) = try raw.receive(timeout: 5) else { return XCTFail("no reply for \(code) / \(mentions)") }
            XCTAssertEqual(command, "ERROR")
            let body = try WireProtocol.decode(ErrorBody.self, from: payload[0], what: "ERROR")
            XCTAssertEqual(body.code.rawValue, code, body.message)
            XCTAssertTrue(body.message.contains(mentions), "\(code): \(body.message)")
        }
        try raw.send([Data("sura/1".utf8), Data("SUBMIT".utf8), Data(#"{"id":"named","prompt":""}"#.utf8)])
        let named = try raw.receive(timeout: 5)
        XCTAssertEqual(try named.map { try WireProtocol.decode(ErrorBody.self, from: $0.payload[0], what: "") }?.id, "named",
                       "a refused SUBMIT names its id")
        try raw.send(WireProtocol.frames(WireProtocol.ping))
        XCTAssertEqual(try raw.receive(timeout: 5)?.command, "PONG")
        try raw.submit(SubmitBody(id: "after", prompt: "still serving"))
        XCTAssertEqual(try raw.collect(count: 1, timeout: 5), ["after": ["ok"]])

        // A REQ socket (which adds the empty delimiter itself) gets the same protocol.
        let req = try ZMQSocket(context: cluster.context, kind: .req)
        try req.connect(cluster.scheduler.frontendEndpoint)
        try req.send(WireProtocol.frames(WireProtocol.submit, [WireProtocol.encode(SubmitBody(id: "req", prompt: "p"))]))
        XCTAssertTrue(eventually(timeout: 5) { (try? ZMQSocket.pollReadable([req], timeout: 10))?.first == true })
        let reply = try XCTUnwrap(try req.receive(dontWait: true))
        XCTAssertEqual(try WireProtocol.parse(reply.frames).command, "RESULT")
    }

    func testWorkerReconnectsWithBackoffWhenTheSchedulerFallsSilent() throws {
        let context = try ZMQContext()
        let router = try ZMQSocket(context: context, kind: .router)
        let endpoint = try router.bind("tcp://127.0.0.1:*")
        var configuration = InferenceWorkerConfiguration(scheduler: endpoint, name: "reconnecting")
        configuration.heartbeatInterval = 0.05
        configuration.liveness = 3
        configuration.reconnectInitialDelay = 0.05
        let worker = try InferenceWorkerClient(configuration: configuration, executor: NullImageExecutor(), context: context, log: { _ in })
        let thread = Thread { try? worker.run() }
        thread.start()
        defer {
            worker.requestStop()
            _ = eventually(timeout: 5) { thread.isFinished }
        }
        func next(_ wanted: String, timeout: TimeInterval) throws -> (identity: Data, payload: [Data])? {
            let deadline = Date().addingTimeInterval(timeout)
            while Date() < deadline {
                guard try ZMQSocket.pollReadable([router], timeout: 20)[0], let message = try router.receive(dontWait: true) else { continue }
                let (command, payload) = try WireProtocol.parse(message.frames.dropFirst())
                if command == wanted { return (message.frames[0], payload) }
            }
            return nil
        }
        let first = try XCTUnwrap(try next("READY", timeout: 5))
        XCTAssertEqual(try WireProtocol.decode(ReadyBody.self, from: first.payload[0], what: "").name, "reconnecting")
        // Silence: after 3 × 50 ms the worker gives up on this connection and comes back on a new one.
        let second = try XCTUnwrap(try next("READY", timeout: 2), "worker did not reconnect")
        XCTAssertNotEqual(first.identity, second.identity, "a new socket, a new routing id")
        XCTAssertGreaterThanOrEqual(worker.statistics.reconnects, 1)
        // Heartbeats from the scheduler keep it connected; a batch is served on the new connection.
        let reconnects = worker.statistics.reconnects
        let until = Date().addingTimeInterval(0.5)
        while Date() < until {
            try router.send([second.identity] + WireProtocol.frames(WireProtocol.heartbeat))
            _ = try router.receive(dontWait: true)
            Thread.sleep(forTimeInterval: 0.02)
        }
        XCTAssertEqual(worker.statistics.reconnects, reconnects, "no reconnect while the scheduler heartbeats")
        let batch = BatchBody(batchID: 7, requests: [GenerationRequest(id: "42", prompt: "p", width: 8, height: 8)])
        try router.send([second.identity] + WireProtocol.frames(WireProtocol.batch, [WireProtocol.encode(batch)]))
        let result = try XCTUnwrap(try next("RESULT", timeout: 5))
        let header = try WireProtocol.decode(WorkerResultBody.self, from: result.payload[0], what: "")
        XCTAssertEqual(header.batchID, 7)
        XCTAssertEqual(header.images.map(\.id), ["42"])
        XCTAssertEqual(result.payload.count, 2)
        // DISCONNECT (the scheduler forgot it) makes an idle worker announce READY again.
        try router.send([second.identity] + WireProtocol.frames(WireProtocol.disconnect, [WireProtocol.encode(DisconnectBody(reason: "test"))]))
        XCTAssertNotNil(try next("READY", timeout: 2))
        // Stopping: BYE.
        worker.requestStop()
        XCTAssertNotNil(try next("BYE", timeout: 2))
    }
}
