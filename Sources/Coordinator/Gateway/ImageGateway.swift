import Foundation
import Worker

/// Settings of the HTTP image API.
public struct ImageGatewayConfiguration: Sendable, Equatable {
    /// When set, `POST /v1/images/generations` needs `Authorization: Bearer <token>`.
    public var apiToken: String?
    /// Longest prompt, in characters.
    public var maxPromptCharacters = 1000
    /// Largest `n`.
    public var maxImagesPerRequest = 8
    /// `size` when the request gives none.
    public var defaultSize = "32x32"
    /// Seconds the gateway waits for the scheduler beyond the request's own timeout.
    public var replyGrace: TimeInterval = 5
    /// The request timeout used to compute the wait when the client gives no `timeout_ms`.
    public var defaultTimeout: TimeInterval = 60

    public init() {}
}

/// The HTTP face of the scheduler: an OpenAI-images-compatible generation endpoint, health,
/// Prometheus metrics, a JSON status and a small web page.
///
/// Routes: `POST /v1/images/generations`, `GET /healthz`, `GET /metrics`, `GET /v1/status`, `GET /`.
/// Only `response_format: "b64_json"` is served (there is no image store behind `url`).
public final class ImageGateway: @unchecked Sendable {
    /// The JSON body of `POST /v1/images/generations`. Unknown keys are ignored, as OpenAI clients
    /// send extras (`quality`, `style`, `user`); Sura's own extensions are listed last.
    struct GenerationBody: Decodable {
        var prompt: String
        var n: Int?
        var size: String?
        var responseFormat: String?
        var model: String?
        var negativePrompt: String?
        var steps: Int?
        var guidanceScale: Double?
        var seed: UInt64?
        var priority: Int?
        var timeoutMs: Int?

        enum CodingKeys: String, CodingKey {
            case prompt, n, size, model, steps, seed, priority
            case responseFormat = "response_format", negativePrompt = "negative_prompt"
            case guidanceScale = "guidance_scale", timeoutMs = "timeout_ms"
        }
    }

    public let configuration: ImageGatewayConfiguration
    private let client: SchedulerClient
    private let metrics: MetricsRegistry
    private let statusProvider: @Sendable () throws -> SchedulerStatus
    private let lock = NSLock()
    private var counter = 0
    private let instance = UUID().uuidString.prefix(8)

    /// `status` gives the scheduler's current state (in process: `InferenceScheduler.status`).
    public init(configuration: ImageGatewayConfiguration, client: SchedulerClient, metrics: MetricsRegistry,
                status: @escaping @Sendable () throws -> SchedulerStatus) {
        self.configuration = configuration
        self.client = client
        self.metrics = metrics
        self.statusProvider = status
    }

    /// Routes one request; never throws: every failure is an HTTP error response.
    public func handle(_ request: HTTPRequest) -> HTTPResponse {
        let route: String
        let response: HTTPResponse
        switch (request.method, request.path) {
        case ("POST", "/v1/images/generations"):
            route = "generations"
            response = generate(request)
        case ("GET", "/"), ("HEAD", "/"), ("GET", "/index.html"):
            route = "page"
            response = HTTPResponse.text(200, WebPage.html, contentType: "text/html; charset=utf-8")
        case ("GET", "/healthz"), ("HEAD", "/healthz"):
            route = "healthz"
            response = health()
        case ("GET", "/metrics"):
            route = "metrics"
            response = HTTPResponse.text(200, metrics.exposition(), contentType: "text/plain; version=0.0.4; charset=utf-8")
        case ("GET", "/v1/status"):
            route = "status"
            do {
                response = .json(200, WireProtocol.encode(try statusProvider()))
            } catch {
                response = Self.error(502, "the scheduler did not answer STATUS: \(error)", type: "server_error", code: "scheduler_unavailable")
            }
        case (_, "/v1/images/generations"), (_, "/healthz"), (_, "/metrics"), (_, "/v1/status"), (_, "/"):
            route = "other"
            var refused = Self.error(405, "method \(request.method) is not allowed on \(request.path)", type: "invalid_request_error")
            refused.headers.append(("Allow", request.path == "/v1/images/generations" ? "POST" : "GET, HEAD"))
            response = refused
        default:
            route = "other"
            response = Self.error(404, "no route for \(request.method) \(request.path)", type: "invalid_request_error", code: "not_found")
        }
        metrics.counter("sura_http_requests_total", help: "HTTP requests by route and status code.",
                        labels: ["route": route, "code": String(response.status)]).increment()
        return response
    }

    private func health() -> HTTPResponse {
        guard let status = try? statusProvider() else {
            return .json(503, Data(#"{"status":"unavailable"}"#.utf8))
        }
        let body = #"{"status":"\#(status.state)","workers":\#(status.workers.count),"queue_depth":\#(status.queueDepth)}"#
        return .json(status.state == "serving" ? 200 : 503, Data(body.utf8))
    }

    /// An OpenAI-style error body: `{"error": {"message", "type", "param", "code"}}`.
    static func error(_ status: Int, _ message: String, type: String, param: String? = nil, code: String? = nil) -> HTTPResponse {
        let inner: [String: Any] = ["message": message, "type": type,
                                    "param": param.map { $0 as Any } ?? NSNull(), "code": code.map { $0 as Any } ?? NSNull()]
        let data = (try? JSONSerialization.data(withJSONObject: ["error": inner], options: [.sortedKeys])) ?? Data()
        return .json(status, data)
    }

    private func authorised(_ request: HTTPRequest) -> Bool {
        guard let token = configuration.apiToken, !token.isEmpty else { return true }
        guard let header = request.header("authorization"), header.hasPrefix("Bearer ") else { return false }
        let given = Array(header.dropFirst(7).utf8), expected = Array(token.utf8)
        // Compare in time independent of where the first difference is.
        var difference = given.count ^ expected.count
        for i in 0..<max(given.count, expected.count) {
            difference |= Int((i < given.count ? given[i] : 0) ^ (i < expected.count ? expected[i] : 0))
        }
        return difference == 0
    }

    private func generate(_ request: HTTPRequest) -> HTTPResponse {
        guard authorised(request) else {
            var response = Self.error(401, "missing or wrong bearer token (send 'Authorization: Bearer <token>')",
                                      type: "invalid_request_error", code: "invalid_api_key")
            response.headers.append(("WWW-Authenticate", "Bearer"))
            return response
        }
        if let type = request.header("content-type"), !type.lowercased().hasPrefix("application/json") {
            return Self.error(400, "Content-Type must be application/json, got '\(type)'", type: "invalid_request_error")
        }
        let body: GenerationBody
        do {
            body = try WireProtocol.decode(GenerationBody.self, from: request.body, what: "request body")
        } catch let error as WireError {
            let param = error.message.range(of: "field '").map { range -> String in
                String(error.message[range.upperBound...].prefix { $0 != "'" })
            }
            return Self.error(400, error.message, type: "invalid_request_error", param: param)
        } catch {
            return Self.error(400, "\(error)", type: "invalid_request_error")
        }
        guard !body.prompt.isEmpty else { return Self.error(400, "prompt must not be empty", type: "invalid_request_error", param: "prompt") }
        guard body.prompt.count <= configuration.maxPromptCharacters else {
            return Self.error(400, "prompt is \(body.prompt.count) characters; the limit is \(configuration.maxPromptCharacters)",
                              type: "invalid_request_error", param: "prompt")
        }
        let n = body.n ?? 1
        guard (1...configuration.maxImagesPerRequest).contains(n) else {
            return Self.error(400, "n must be 1…\(configuration.maxImagesPerRequest), got \(n)", type: "invalid_request_error", param: "n")
        }
        if let format = body.responseFormat, format != "b64_json" {
            return Self.error(400, "response_format '\(format)' is not supported; use 'b64_json'", type: "invalid_request_error",
                              param: "response_format")
        }
        let sizeText = body.size ?? configuration.defaultSize
        let parts = sizeText.lowercased().split(separator: "x")
        guard parts.count == 2, let width = Int(parts[0]), let height = Int(parts[1]) else {
            return Self.error(400, "size must be 'WIDTHxHEIGHT' such as '\(configuration.defaultSize)', got '\(sizeText)'",
                              type: "invalid_request_error", param: "size")
        }
        let seed = body.seed ?? UInt64.random(in: 0..<(1 << 32))
        lock.lock()
        counter += 1
        let base = "http-\(instance)-\(counter)"
        lock.unlock()
        let submits = (0..<n).map { index in
            SubmitBody(id: "\(base)-\(index)", prompt: body.prompt, negativePrompt: body.negativePrompt, width: width, height: height,
                       steps: body.steps, guidanceScale: body.guidanceScale, seed: seed &+ UInt64(index),
                       model: body.model.flatMap { $0.isEmpty ? nil : $0 }, priority: body.priority, timeoutMs: body.timeoutMs)
        }
        let wait = (body.timeoutMs.map { Double($0) / 1000 } ?? configuration.defaultTimeout) + configuration.replyGrace
        let replies: [SchedulerReply]
        do {
            replies = try client.submitAll(submits, timeout: max(1, min(wait, 7200)))
        } catch SchedulerClientError.requestTooLarge(_, let bytes, let limit) {
            return Self.error(413, "request is \(bytes) bytes; the scheduler accepts \(limit)", type: "invalid_request_error")
        } catch {
            return Self.error(504, "\(error)", type: "server_error", code: "timeout")
        }
        var images: [[String: Any]] = []
        for reply in replies {
            switch reply {
            case let .image(header, png):
                images.append(["b64_json": png.base64EncodedString(), "seed": header.seed])
            case let .error(failure):
                var response = Self.error(Self.httpStatus(for: failure.code), failure.message, type: failure.code == .badRequest ? "invalid_request_error" : "server_error",
                                  param: failure.message.range(of: "field '").map { range in
                                      String(failure.message[range.upperBound...].prefix { $0 != "'" })
                                  }, code: failure.code.rawValue)
                if failure.code == .queueFull { response.headers.append(("Retry-After", "1")) }
                return response
            }
        }
        let payload: [String: Any] = ["created": Int(Date().timeIntervalSince1970), "data": images]
        guard let data = try? JSONSerialization.data(withJSONObject: payload) else {
            return Self.error(500, "could not encode the response", type: "server_error")
        }
        return .json(200, data)
    }

    /// The HTTP status for a scheduler error code.
    public static func httpStatus(for code: WireErrorCode) -> Int {
        switch code {
        case .badRequest, .unknownCommand, .unsupportedVersion, .duplicateID: return 400
        case .tooLarge: return 413
        case .queueFull: return 429
        case .deadlineExpired: return 504
        case .shuttingDown: return 503
        case .workerFailed: return 502
        case .internal: return 500
        }
    }
}
