import Coordinator
import Foundation
import Worker
import XCTest

/// Real `sura serve` and `sura worker` processes on loopback: concurrent ZeroMQ and HTTP
/// clients, SIGKILL and SIGSTOP mid-batch, a full queue, deadlines, malformed frames, SIGTERM
/// drains and the autoscaler starting and draining null workers. Every wait has a deadline.
final class ServeProcessTests: XCTestCase {
    private var started: [SuraProcess] = []
    private var context: ZMQContext!

    override func setUpWithError() throws {
        _ = try SuraProcess.executable()
        context = try ZMQContext()
    }

    override func tearDown() {
        for process in started.reversed() { process.stop() }
        if (testRun?.failureCount ?? 0) > 0 { for process in started { print(process.transcript) } }
        started.removeAll()
    }

    private func serve(_ extra: [String], http: Bool = false) throws -> ServeProcess {
        let serve = try ServeProcess(extra, http: http)
        started.append(serve.serve)
        return serve
    }

    private func worker(_ serve: ServeProcess, _ name: String, _ extra: [String] = []) throws -> SuraProcess {
        let process = try serve.worker(name, extra)
        started.append(process)
        return process
    }

    private func status(_ serve: ServeProcess) throws -> SchedulerStatus {
        let client = try SchedulerClient(endpoint: serve.frontend, context: context)
        defer { client.close() }
        return try client.status(timeout: 5)
    }

    private func metric(_ serve: ServeProcess, _ name: String) throws -> Double? {
        guard let port = serve.httpPort else { return nil }
        let text = try RawHTTP.request(port: port, method: "GET", path: "/metrics").text
        return text.split(separator: "\n").first { $0.hasPrefix(name + " ") }.flatMap { Double($0.split(separator: " ")[1]) }
    }

    private func waitForWorkers(_ serve: ServeProcess, _ count: Int, timeout: TimeInterval = 20) throws {
        let reached = eventually(timeout: timeout, interval: 0.05) { ((try? status(serve))?.workers.count ?? -1) == count }
        XCTAssertTrue(reached, "expected \(count) workers, have \((try? status(serve))?.workers.count ?? -1)")
    }

    func testConcurrentZeroMQAndHTTPClients() throws {
        let serve = try serve(["--max-batch", "4"], http: true)
        _ = try worker(serve, "w1", ["--null-delay-ms", "5"])
        _ = try worker(serve, "w2", ["--null-delay-ms", "5"])
        try waitForWorkers(serve, 2)
        let client = try SchedulerClient(endpoint: serve.frontend, context: context)
        defer { client.close() }
        let lock = NSLock()
        var problems: [String] = []
        var zmqAnswered = 0, httpImages = 0
        DispatchQueue.concurrentPerform(iterations: 7) { index in
            if index < 4 {
                for i in 0..<10 {
                    let reply = try? client.submit(SubmitBody(id: "z\(index)-\(i)", prompt: "zmq \(index) \(i)"), timeout: 20)
                    lock.lock()
                    if case let .image(header, _) = reply, header.id == "z\(index)-\(i)" { zmqAnswered += 1 } else { problems.append("z\(index)-\(i): \(String(describing: reply))") }
                    lock.unlock()
                }
            } else {
                for i in 0..<2 {
                    let response = try? RawHTTP.generate(port: serve.httpPort!, ["prompt": "http \(index) \(i)", "n": 2])
                    lock.lock()
                    if response?.status == 200, let data = response?.json?["data"] as? [[String: Any]] { httpImages += data.count } else {
                        problems.append("http \(index) \(i): \(response?.status ?? -1) \(response?.text ?? "")")
                    }
                    lock.unlock()
                }
            }
        }
        XCTAssertEqual(problems, [])
        XCTAssertEqual(zmqAnswered, 40)
        XCTAssertEqual(httpImages, 12)
        XCTAssertEqual(try metric(serve, "sura_requests_total{outcome=\"ok\"}"), 52)
    }

    func testWorkerKilledMidBatchEveryRequestAnsweredExactlyOnce() throws {
        let serve = try serve(["--max-batch", "4", "--max-queue-delay-ms", "1"], http: true)
        let doomed = try worker(serve, "doomed", ["--null-delay-ms", "5000", "--max-batch", "4"])
        try waitForWorkers(serve, 1)
        let client = try RawClient(endpoint: serve.frontend, context: context)
        for i in 0..<8 { try client.submit(SubmitBody(id: "k\(i)", prompt: "kill test \(i)")) }
        XCTAssertTrue(eventually(timeout: 10) { (try? status(serve))?.workers.first?.batchSize == 4 }, "doomed worker never got a batch")
        _ = try worker(serve, "survivor", ["--max-batch", "4"])
        doomed.signal(SIGKILL)
        let outcomes = try client.collect(count: 8, timeout: 20, linger: 1.0)
        XCTAssertEqual(outcomes, Dictionary(uniqueKeysWithValues: (0..<8).map { ("k\($0)", ["ok"]) }), "each request answered exactly once")
        XCTAssertEqual(try metric(serve, "sura_worker_deaths_total"), 1)
        XCTAssertEqual(try metric(serve, "sura_requests_requeued_total"), 4)
        XCTAssertEqual(try status(serve).workers.map(\.name), ["survivor"])
    }

    func testStoppedWorkerIsDeclaredDeadAndItsLateReplyIsDropped() throws {
        let serve = try serve(["--max-batch", "4"], http: true)
        let frozen = try worker(serve, "frozen", ["--null-delay-ms", "1200"])
        try waitForWorkers(serve, 1)
        let client = try RawClient(endpoint: serve.frontend, context: context)
        for i in 0..<2 { try client.submit(SubmitBody(id: "s\(i)", prompt: "stop test \(i)")) }
        XCTAssertTrue(eventually(timeout: 10) { (try? status(serve))?.workers.first?.state == .busy })
        frozen.signal(SIGSTOP)
        _ = try worker(serve, "rescuer")
        // 5 missed 100 ms heartbeats: the frozen worker is dead, its batch goes to the rescuer.
        let outcomes = try client.collect(count: 2, timeout: 10)
        XCTAssertEqual(outcomes, ["s0": ["ok"], "s1": ["ok"]])
        XCTAssertEqual(try metric(serve, "sura_worker_deaths_total"), 1)
        XCTAssertNotNil(serve.serve.line(containing: "frozen (pid \(frozen.pid)) missed heartbeats", timeout: 1))
        frozen.signal(SIGCONT)
        // It finishes its batch late: the images are dropped, nobody is answered twice, and it registers again.
        XCTAssertTrue(eventually(timeout: 10) { ((try? metric(serve, "sura_late_results_dropped_total")) ?? nil) == 2 })
        XCTAssertEqual(try client.collect(count: 1, timeout: 0.5), [:], "no second reply")
        try waitForWorkers(serve, 2)
    }

    func testFullQueueAndExpiredDeadlinesAreExplicitRejections() throws {
        let serve = try serve(["--queue-capacity", "3"], http: true)
        let client = try RawClient(endpoint: serve.frontend, context: context)
        for i in 0..<5 { try client.submit(SubmitBody(id: "q\(i)", prompt: "no workers", timeoutMs: 400)) }
        let outcomes = try client.collect(count: 5, timeout: 10, linger: 0.3)
        XCTAssertEqual(outcomes, ["q0": ["deadline_expired"], "q1": ["deadline_expired"], "q2": ["deadline_expired"],
                                  "q3": ["queue_full"], "q4": ["queue_full"]])
        for i in 0..<3 { try client.submit(SubmitBody(id: "f\(i)", prompt: "fill", timeoutMs: 5000)) }
        XCTAssertTrue(eventually(timeout: 5) { (try? status(serve))?.queueDepth == 3 })
        let rejected = try RawHTTP.generate(port: serve.httpPort!, ["prompt": "one too many"])
        XCTAssertEqual(rejected.status, 429, rejected.text)
        XCTAssertEqual(rejected.headers["retry-after"], "1")
        XCTAssertEqual((rejected.json?["error"] as? [String: Any])?["code"] as? String, "queue_full")
        let expired = try RawHTTP.generate(port: serve.httpPort!, ["prompt": "too slow", "timeout_ms": 200], timeout: 10)
        XCTAssertEqual(expired.status, 429, "the queue is still full")
        XCTAssertGreaterThanOrEqual(try metric(serve, "sura_requests_total{outcome=\"queue_full\"}") ?? 0, 3)
    }

    func testMalformedFramesAndOversizedRequestsDoNotStopTheScheduler() throws {
        let serve = try serve(["--max-request-bytes", "65536"])
        _ = try worker(serve, "w")
        try waitForWorkers(serve, 1)
        let client = try RawClient(endpoint: serve.frontend, context: context)
        for (frames, code) in [([Data([0, 1, 2])], "bad_request"),
                               ([Data("sura/1".utf8), Data("SUBMIT".utf8), Data(repeating: 65, count: 100_000)], "too_large"),
                               ([Data("sura/1".utf8), Data("SUBMIT".utf8), Data(#"{"id":"m","prompt":"p","steps":-1}"#.utf8)], "bad_request")] {
            try client.send(frames)
            let reply = try XCTUnwrap(try client.receive(timeout: 5), "no reply for \(code)")
            XCTAssertEqual(reply.command, "ERROR")
            XCTAssertEqual(try WireProtocol.decode(ErrorBody.self, from: reply.payload[0], what: "").code.rawValue, code)
        }
        try client.submit(SubmitBody(id: "fine", prompt: "p"))
        XCTAssertEqual(try client.collect(count: 1, timeout: 10), ["fine": ["ok"]])
    }

    func testSIGTERMDrainsTheSchedulerAfterAnsweringQueuedAndRunningRequests() throws {
        let serve = try serve(["--max-batch", "2", "--max-queue-delay-ms", "1"])
        _ = try worker(serve, "w", ["--null-delay-ms", "600", "--max-batch", "2"])
        try waitForWorkers(serve, 1)
        let client = try RawClient(endpoint: serve.frontend, context: context)
        for i in 0..<4 { try client.submit(SubmitBody(id: "d\(i)", prompt: "drain \(i)")) }
        XCTAssertTrue(eventually(timeout: 10) { (try? status(serve))?.workers.first?.state == .busy })
        serve.serve.signal(SIGTERM)
        XCTAssertNotNil(serve.serve.line(containing: "draining: ", timeout: 5), "the loop began draining")
        try client.submit(SubmitBody(id: "late", prompt: "after SIGTERM"))
        let outcomes = try client.collect(count: 5, timeout: 15)
        XCTAssertEqual(outcomes, ["d0": ["ok"], "d1": ["ok"], "d2": ["ok"], "d3": ["ok"], "late": ["shutting_down"]])
        XCTAssertEqual(serve.serve.waitForExit(timeout: 15), 0)
        XCTAssertNotNil(serve.serve.line(containing: "drained: every request answered", timeout: 1))
    }

    func testSIGTERMMakesAWorkerFinishItsBatchAndLeave() throws {
        let serve = try serve([], http: true)
        let leaving = try worker(serve, "leaving", ["--null-delay-ms", "800"])
        try waitForWorkers(serve, 1)
        let client = try RawClient(endpoint: serve.frontend, context: context)
        try client.submit(SubmitBody(id: "last", prompt: "finish me"))
        XCTAssertTrue(eventually(timeout: 10) { (try? status(serve))?.workers.first?.state == .busy })
        leaving.signal(SIGTERM)
        try client.submit(SubmitBody(id: "next", prompt: "not for the leaving worker", timeoutMs: 3000))
        XCTAssertEqual(try client.collect(count: 1, timeout: 10)["last"], ["ok"])
        XCTAssertEqual(leaving.waitForExit(timeout: 10), 0)
        try waitForWorkers(serve, 0)
        XCTAssertEqual(try metric(serve, "sura_worker_deaths_total"), 0, "a drained worker is not a dead one")
        XCTAssertEqual(try client.collect(count: 1, timeout: 10)["next"], ["deadline_expired"], "the queued request waited for a new worker")
    }

    func testAutoscalerStartsAndDrainsNullWorkers() throws {
        let serve = try serve(["--autoscale", "--min-workers", "1", "--max-workers", "3", "--autoscale-interval", "0.2",
                               "--scale-up-window", "0", "--scale-down-window", "1", "--max-batch", "2",
                               "--max-queue-delay-ms", "1", "--null-delay-ms", "250"], http: true)
        try waitForWorkers(serve, 1)
        let client = try RawClient(endpoint: serve.frontend, context: context)
        for i in 0..<30 { try client.submit(SubmitBody(id: "a\(i)", prompt: "load \(i)")) }
        XCTAssertNotNil(serve.serve.line(containing: "autoscaler: scale up 1 → ", timeout: 10))
        try waitForWorkers(serve, 3)
        XCTAssertEqual(try metric(serve, "sura_autoscaler_desired_workers"), 3)
        let outcomes = try client.collect(count: 30, timeout: 30)
        XCTAssertEqual(outcomes.count, 30)
        XCTAssertTrue(outcomes.values.allSatisfy { $0 == ["ok"] })
        // Idle for the 1 s scale-down window: back to the minimum, by draining (no worker deaths).
        XCTAssertNotNil(serve.serve.line(containing: "→ 1 (demand below target", timeout: 15))
        try waitForWorkers(serve, 1)
        XCTAssertEqual(try metric(serve, "sura_worker_deaths_total"), 0)
        XCTAssertTrue(eventually(timeout: 5) { (try? status(serve))?.autoscaler?.inputs.currentWorkers == 1 },
                      "the status carries the latest decision and its inputs")
        XCTAssertNotNil(serve.serve.line(containing: "(drained)", timeout: 5), "drained workers exit cleanly")
    }
}
