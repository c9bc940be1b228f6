import Coordinator
import Foundation
import Tensor
import Worker
import XCTest

/// The HTTP gateway and server in process: the OpenAI-style endpoint, auth, limits, malformed
/// HTTP, health, metrics, status and the page.
final class HTTPGatewayTests: XCTestCase {
    var cluster: InProcessCluster!
    var client: SchedulerClient!
    var server: HTTPServer!

    override func setUpWithError() throws {
        cluster = try InProcessCluster { $0.queueCapacity = 64 }
        try cluster.addWorker(name: "http-worker", executor: NullImageExecutor(batchDelay: 0.002))
        XCTAssertTrue(cluster.waitForWorkers(1))
        client = try SchedulerClient(endpoint: cluster.scheduler.frontendEndpoint, context: cluster.context)
        var gatewayConfiguration = ImageGatewayConfiguration()
        gatewayConfiguration.apiToken = "s3cret"
        gatewayConfiguration.maxPromptCharacters = 100
        let scheduler = cluster.scheduler
        let gateway = ImageGateway(configuration: gatewayConfiguration, client: client, metrics: cluster.metrics, status: { scheduler.status })
        var httpConfiguration = HTTPServerConfiguration()
        httpConfiguration.port = 0
        httpConfiguration.maxBodyBytes = 64 * 1024
        httpConfiguration.maxHeaderBytes = 4096
        httpConfiguration.requestTimeout = 1
        server = HTTPServer(configuration: httpConfiguration, handler: { gateway.handle($0) })
        try server.start()
    }

    override func tearDown() {
        server?.stop()
        client?.close()
        cluster?.stop()
    }

    func testGenerationsReturnsOneDecodablePNGPerImage() throws {
        let response = try RawHTTP.generate(port: server.port, ["prompt": "two red bags", "n": 3, "size": "16x16", "seed": 5,
                                                               "response_format": "b64_json", "model": "default", "user": "ignored"],
                                            token: "s3cret")
        XCTAssertEqual(response.status, 200, response.text)
        let data = try XCTUnwrap(response.json?["data"] as? [[String: Any]])
        XCTAssertEqual(data.count, 3)
        for (index, item) in data.enumerated() {
            let png = try XCTUnwrap(Data(base64Encoded: try XCTUnwrap(item["b64_json"] as? String)))
            let image = try PNGImage(pngData: png)
            XCTAssertEqual(image.pixels, NullImageExecutor.pixels(for: GenerationRequest(id: "", prompt: "two red bags", width: 16, height: 16,
                                                                                        seed: UInt64(5 + index))))
        }
        XCTAssertNotNil(response.json?["created"] as? Int)
    }

    func testConcurrentHTTPClients() throws {
        let lock = NSLock()
        var statuses: [Int] = []
        DispatchQueue.concurrentPerform(iterations: 6) { i in
            let status = (try? RawHTTP.generate(port: server.port, ["prompt": "p\(i)", "n": 2], token: "s3cret"))?.status ?? -1
            lock.lock(); statuses.append(status); lock.unlock()
        }
        XCTAssertEqual(statuses, Array(repeating: 200, count: 6))
    }

    func testAuthenticationAndValidationErrorsUseTheOpenAIErrorShape() throws {
        let port = server.port
        XCTAssertEqual(try RawHTTP.generate(port: port, ["prompt": "p"]).status, 401)
        let wrong = try RawHTTP.generate(port: port, ["prompt": "p"], token: "nope")
        XCTAssertEqual(wrong.status, 401)
        XCTAssertEqual(wrong.headers["www-authenticate"], "Bearer")
        XCTAssertEqual((wrong.json?["error"] as? [String: Any])?["code"] as? String, "invalid_api_key")

        func check(_ json: [String: Any], status: Int, param: String?, mentions: String, file: StaticString = #filePath, line: UInt = #line) throws {
            let response = try RawHTTP.generate(port: port, json, token: "s3cret")
            XCTAssertEqual(response.status, status, response.text, file: file, line: line)
            let error = response.json?["error"] as? [String: Any]
            XCTAssertEqual(error?["param"] as? String, param, response.text, file: file, line: line)
            XCTAssertTrue((error?["message"] as? String ?? "").contains(mentions), response.text, file: file, line: line)
        }
        try check(["n": 1], status: 400, param: "prompt", mentions: "'prompt'")
        try check(["prompt": String(repeating: "x", count: 101)], status: 400, param: "prompt", mentions: "101 characters")
        try check(["prompt": "p", "n": 0], status: 400, param: "n", mentions: "1…8")
        try check(["prompt": "p", "n": "two"], status: 400, param: "n", mentions: "'n'")
        try check(["prompt": "p", "response_format": "url"], status: 400, param: "response_format", mentions: "b64_json")
        try check(["prompt": "p", "size": "huge"], status: 400, param: "size", mentions: "WIDTHxHEIGHT")
        try check(["prompt": "p", "size": "13x13"], status: 400, param: "width", mentions: "multiple of 8")
        let notJSON = try RawHTTP.request(port: port, method: "POST", path: "/v1/images/generations", body: Data("{oops".utf8),
                                          headers: ["Authorization": "Bearer s3cret"])
        XCTAssertEqual(notJSON.status, 400)
        XCTAssertEqual((notJSON.json?["error"] as? [String: Any])?["type"] as? String, "invalid_request_error")
    }

    func testHealthMetricsStatusAndPage() throws {
        let port = server.port
        _ = try RawHTTP.generate(port: port, ["prompt": "warm up"], token: "s3cret")
        let health = try RawHTTP.request(port: port, method: "GET", path: "/healthz")
        XCTAssertEqual(health.status, 200)
        XCTAssertEqual(health.json?["status"] as? String, "serving")
        let metrics = try RawHTTP.request(port: port, method: "GET", path: "/metrics")
        XCTAssertEqual(metrics.status, 200)
        XCTAssertTrue(metrics.headers["content-type"]?.hasPrefix("text/plain; version=0.0.4") ?? false)
        for name in ["sura_queue_depth", "sura_batch_size_bucket", "sura_request_latency_seconds_bucket", "sura_workers{state=\"idle\"}",
                     "sura_requests_total{outcome=\"queue_full\"}", "sura_requests_total{outcome=\"ok\"} 1", "sura_http_requests_total"] {
            XCTAssertTrue(metrics.text.contains(name), "missing \(name)")
        }
        let status = try RawHTTP.request(port: port, method: "GET", path: "/v1/status")
        XCTAssertEqual(status.status, 200)
        XCTAssertEqual((status.json?["workers"] as? [[String: Any]])?.first?["name"] as? String, "http-worker")
        XCTAssertEqual(status.json?["protocol"] as? String, "sura/1")
        let page = try RawHTTP.request(port: port, method: "GET", path: "/")
        XCTAssertEqual(page.status, 200)
        for id in ["prompt", "size", "count", "api-token", "generate", "images", "error", "queue-depth", "in-flight", "worker-count", "workers"] {
            XCTAssertTrue(page.text.contains("id=\"\(id)\""), "page lacks #\(id)")
        }
        XCTAssertEqual(try RawHTTP.request(port: port, method: "GET", path: "/nope").status, 404)
        let wrongMethod = try RawHTTP.request(port: port, method: "GET", path: "/v1/images/generations")
        XCTAssertEqual(wrongMethod.status, 405)
        XCTAssertEqual(wrongMethod.headers["allow"], "POST")
    }

    func testMalformedAndOversizedHTTPRequestsGetClearErrors() throws {
        let port = server.port
        func raw(_ text: String) throws -> RawHTTP.Response { try RawHTTP.exchange(port: port, Data(text.utf8)) }
        XCTAssertEqual(try raw("NONSENSE\r\n\r\n").status, 400)
        XCTAssertEqual(try raw("GET / HTTP/2.0\r\n\r\n").status, 505)
        XCTAssertEqual(try raw("GET / HTTP/1.1\r\nbad header line\r\n\r\n").status, 400)
        XCTAssertEqual(try raw("GET / HTTP/1.1\r\nX-Big: \(String(repeating: "a", count: 5000))\r\n\r\n").status, 431)
        XCTAssertEqual(try raw("POST /v1/images/generations HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n").status, 501)
        XCTAssertEqual(try raw("POST /v1/images/generations HTTP/1.1\r\n\r\n").status, 411)
        XCTAssertEqual(try raw("POST /v1/images/generations HTTP/1.1\r\nContent-Length: -4\r\n\r\n").status, 400)
        let big = try raw("POST /v1/images/generations HTTP/1.1\r\nContent-Length: 100000\r\n\r\n")
        XCTAssertEqual(big.status, 413)
        XCTAssertTrue(big.text.contains("65536"), big.text)
        // A client that stops halfway gets 408 after the request timeout (1 s here), not a hung thread.
        let started = Date()
        XCTAssertEqual(try raw("POST /v1/images/generations HTTP/1.1\r\nContent-Length: 50\r\n\r\n{\"prompt\"").status, 408)
        XCTAssertLessThan(Date().timeIntervalSince(started), 5)
        // Keep-alive: two requests on one connection.
        let twice = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        XCTAssertEqual(try raw(twice).status, 200)
        // Still serving.
        XCTAssertEqual(try RawHTTP.generate(port: port, ["prompt": "after"], token: "s3cret").status, 200)
    }
}
