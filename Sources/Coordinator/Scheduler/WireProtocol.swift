import Foundation
import Worker

/// The ZeroMQ wire protocol between clients, the scheduler and workers (docs/protocol.md).
///
/// Every message, after the ROUTER envelope, is `[tag, COMMAND, payload…]`: the tag names the
/// protocol version (`sura/1`), the command is an ASCII word, and payload frames are UTF-8 JSON
/// objects or raw PNG bytes. JSON keys are snake_case; unknown keys are refused, naming the key.
public enum WireProtocol {
    /// The protocol version this build speaks.
    public static let version = 1
    /// The first frame of every message.
    public static let tag = "sura/\(version)"
    /// Versions a peer may announce; anything else gets `unsupported_version`.
    public static let supportedVersions = [1]

    // Client → scheduler front end.
    public static let submit = "SUBMIT"
    public static let status = "STATUS"
    public static let ping = "PING"
    // Scheduler → client.
    public static let result = "RESULT"
    public static let error = "ERROR"
    public static let pong = "PONG"
    // Worker → scheduler back end (RESULT and HEARTBEAT are shared with the other direction's names).
    public static let ready = "READY"
    public static let heartbeat = "HEARTBEAT"
    public static let failed = "FAILED"
    public static let bye = "BYE"
    // Scheduler → worker.
    public static let batch = "BATCH"
    public static let disconnect = "DISCONNECT"

    /// `[tag, command] + payload`.
    public static func frames(_ command: String, _ payload: [Data] = []) -> [Data] {
        [Data(frame: tag), Data(frame: command)] + payload
    }

    /// Checks the tag and splits a message (without its envelope) into command and payload.
    public static func parse<C: Collection>(_ frames: C) throws -> (command: String, payload: [Data]) where C.Element == Data {
        guard let first = frames.first else {
            throw WireError(.badRequest, "empty message: expected frames [\"\(tag)\", COMMAND, payload…]")
        }
        guard let tagText = String(data: first, encoding: .utf8), tagText.hasPrefix("sura/") else {
            throw WireError(.badRequest, "frame 0 must be the protocol tag \"\(tag)\", got \(preview(first))")
        }
        guard let announced = Int(tagText.dropFirst(5)), supportedVersions.contains(announced) else {
            throw WireError(.unsupportedVersion, "protocol tag \"\(tagText)\" is not supported; this scheduler speaks \(supportedVersions.map { "sura/\($0)" }.joined(separator: ", "))")
        }
        let rest = Array(frames.dropFirst())
        guard let commandFrame = rest.first, let command = String(data: commandFrame, encoding: .utf8),
              !command.isEmpty, command.count <= 32, command.allSatisfy({ $0.isASCII && ($0.isUppercase || $0 == "_") }) else {
            throw WireError(.badRequest, "frame 1 must be an upper-case command word, got \(rest.first.map(preview) ?? "nothing")")
        }
        return (command, Array(rest.dropFirst()))
    }

    /// A short printable rendering of a frame for error messages.
    public static func preview(_ frame: Data) -> String {
        if let text = String(data: frame.prefix(40), encoding: .utf8), text.allSatisfy({ !$0.isASCII || $0.isPrintableASCII }) {
            return "\"\(text)\"" + (frame.count > 40 ? "… (\(frame.count) bytes)" : "")
        }
        return "\(frame.count) binary bytes"
    }

    private static let encoder: JSONEncoder = {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return encoder
    }()

    /// UTF-8 JSON for a payload frame; the per-request messages are written directly.
    public static func encode<T: Encodable>(_ value: T) -> Data {
        if let direct = value as? any DirectlyWrittenWireMessage, let json = direct.directJSON { return json }
        return encodeCodable(value)
    }

    /// `JSONEncoder`'s form, sorted keys; the fallback of the directly written messages.
    static func encodeCodable<T: Encodable>(_ value: T) -> Data {
        // Encoding our own plain structs cannot fail; an empty object keeps the peer's parser honest.
        (try? encoder.encode(value)) ?? Data("{}".utf8)
    }

    /// The direct reading of a per-request message (SUBMIT, BATCH, a worker's RESULT, the RESULT
    /// header) in its usual form; nil for any other type or form, which `decode` leaves to
    /// `JSONDecoder`. Where it gives a value, `JSONDecoder` gives the same one.
    public static func decodeScanned<T: Decodable>(_ type: T.Type, from frame: Data) -> T? {
        guard let scanned = type as? any ScannedWireMessage.Type else { return nil }
        var scanner = JSONScanner(frame)
        guard let value = try? scanned.init(scanning: &scanner), (try? scanner.end()) != nil else { return nil }
        return value as? T
    }

    /// Decodes a JSON payload frame; `what` names the message in errors ("SUBMIT body").
    public static func decode<T: Decodable>(_ type: T.Type, from frame: Data, what: String) throws -> T {
        if let value = decodeScanned(type, from: frame) { return value }
        do {
            return try JSONDecoder().decode(type, from: frame)
        } catch let error as WireError {
            throw WireError(error.code, "\(what): \(error.message)")
        } catch let DecodingError.typeMismatch(expected, context) {
            throw WireError(.badRequest, "\(what): field '\(fieldPath(context))' must be \(typeName(expected)): \(context.debugDescription)")
        } catch let DecodingError.valueNotFound(expected, context) {
            throw WireError(.badRequest, "\(what): field '\(fieldPath(context))' must be \(typeName(expected)), got null")
        } catch let DecodingError.keyNotFound(key, context) {
            let parent = fieldPath(context)
            throw WireError(.badRequest, "\(what): required field '\(parent.isEmpty ? key.stringValue : parent + "." + key.stringValue)' is missing")
        } catch let DecodingError.dataCorrupted(context) {
            let path = fieldPath(context)
            throw WireError(.badRequest, "\(what): \(path.isEmpty ? "not valid JSON" : "field '\(path)'"): \(context.debugDescription)")
        } catch {
            throw WireError(.badRequest, "\(what): \(error)")
        }
    }

    private static func fieldPath(_ context: DecodingError.Context) -> String {
        context.codingPath.map { $0.intValue.map { "[\($0)]" } ?? $0.stringValue }.joined(separator: ".")
    }

    private static func typeName(_ type: Any.Type) -> String {
        switch type {
        case is String.Type: return "a string"
        case is Int.Type, is UInt64.Type, is Int64.Type: return "an integer"
        case is Double.Type: return "a number"
        case is Bool.Type: return "true or false"
        default: return "\(type)"
        }
    }

    /// Throws `bad_request` naming the first key of a JSON object that is not in `known`.
    static func refuseUnknownKeys(_ decoder: Decoder, known: Set<String>) throws {
        let container = try decoder.container(keyedBy: AnyCodingKey.self)
        // Only a refused body pays for sorting (the first unknown key by name, so the message is stable).
        if let unknown = container.allKeys.lazy.map(\.stringValue).filter({ !known.contains($0) }).min() {
            throw WireError(.badRequest, "unknown field '\(unknown)' (known: \(known.sorted().joined(separator: ", ")))")
        }
    }
}

private extension Character {
    var isPrintableASCII: Bool { asciiValue.map { $0 >= 0x20 && $0 < 0x7f } ?? false }
}

struct AnyCodingKey: CodingKey {
    var stringValue: String
    var intValue: Int? { nil }
    init(stringValue: String) { self.stringValue = stringValue }
    init?(intValue: Int) { return nil }
}

/// An error reply's machine-readable reason (the `code` field of an `ERROR` body).
public enum WireErrorCode: String, Codable, Sendable, CaseIterable {
    /// Malformed frames, invalid JSON, a missing, mistyped, unknown or out-of-range field.
    case badRequest = "bad_request"
    /// The protocol tag names a version this scheduler does not speak.
    case unsupportedVersion = "unsupported_version"
    /// A command word the receiver does not know.
    case unknownCommand = "unknown_command"
    /// The message is larger than the receiver accepts.
    case tooLarge = "too_large"
    /// The queue holds its maximum number of requests.
    case queueFull = "queue_full"
    /// The request's deadline passed before an image was ready.
    case deadlineExpired = "deadline_expired"
    /// The client already has a pending request with this id.
    case duplicateID = "duplicate_id"
    /// The batch failed twice (worker died or executor threw), or the executor refused it.
    case workerFailed = "worker_failed"
    /// The scheduler is draining and accepts no new requests.
    case shuttingDown = "shutting_down"
    /// A bug: the scheduler could not handle a message it accepted.
    case `internal` = "internal"
}

/// An error that becomes an `ERROR` reply.
public struct WireError: Error, CustomStringConvertible, Equatable, Sendable {
    public var code: WireErrorCode
    public var message: String

    public init(_ code: WireErrorCode, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { "\(code.rawValue): \(message)" }
}

/// The JSON body of `SUBMIT`: one image to generate. Only `id` and `prompt` are required; the
/// scheduler fills the rest from its defaults and checks every field against its limits.
public struct SubmitBody: Codable, Sendable, Equatable {
    /// Client-chosen id, echoed in the reply; unique among this client's pending requests.
    public var id: String
    public var prompt: String
    public var negativePrompt: String?
    public var width: Int?
    public var height: Int?
    public var steps: Int?
    public var guidanceScale: Double?
    public var seed: UInt64?
    public var model: String?
    /// Higher runs first; −9…9, default 0.
    public var priority: Int?
    /// Milliseconds from arrival after which the request is answered `deadline_expired`.
    public var timeoutMs: Int?

    public init(id: String, prompt: String, negativePrompt: String? = nil, width: Int? = nil, height: Int? = nil,
                steps: Int? = nil, guidanceScale: Double? = nil, seed: UInt64? = nil, model: String? = nil,
                priority: Int? = nil, timeoutMs: Int? = nil) {
        self.id = id
        self.prompt = prompt
        self.negativePrompt = negativePrompt
        self.width = width
        self.height = height
        self.steps = steps
        self.guidanceScale = guidanceScale
        self.seed = seed
        self.model = model
        self.priority = priority
        self.timeoutMs = timeoutMs
    }

    /// The wire names of the fields, built once rather than for every SUBMIT.
    static let fieldNames = Set(CodingKeys.allCases.map(\.rawValue))

    enum CodingKeys: String, CodingKey, CaseIterable {
        case id, prompt, width, height, steps, seed, model, priority
        case negativePrompt = "negative_prompt"
        case guidanceScale = "guidance_scale"
        case timeoutMs = "timeout_ms"
    }

    public init(from decoder: Decoder) throws {
        try WireProtocol.refuseUnknownKeys(decoder, known: Self.fieldNames)
        let c = try decoder.container(keyedBy: CodingKeys.self)
        id = try c.decode(String.self, forKey: .id)
        prompt = try c.decode(String.self, forKey: .prompt)
        negativePrompt = try c.decodeIfPresent(String.self, forKey: .negativePrompt)
        width = try c.decodeIfPresent(Int.self, forKey: .width)
        height = try c.decodeIfPresent(Int.self, forKey: .height)
        steps = try c.decodeIfPresent(Int.self, forKey: .steps)
        guidanceScale = try c.decodeIfPresent(Double.self, forKey: .guidanceScale)
        seed = try c.decodeIfPresent(UInt64.self, forKey: .seed)
        model = try c.decodeIfPresent(String.self, forKey: .model)
        priority = try c.decodeIfPresent(Int.self, forKey: .priority)
        timeoutMs = try c.decodeIfPresent(Int.self, forKey: .timeoutMs)
    }
}

/// Defaults and limits the scheduler applies to `SUBMIT` bodies.
public struct RequestPolicy: Sendable, Equatable {
    public var defaultWidth = 32
    public var defaultHeight = 32
    public var defaultSteps = 25
    public var defaultGuidanceScale = 4.0
    public var defaultModel = "default"
    /// Seconds a request may wait in all when the client gives no `timeout_ms`.
    public var defaultTimeout: TimeInterval = 60
    /// Longest `timeout_ms` accepted, in seconds.
    public var maxTimeout: TimeInterval = 3600
    /// Longest prompt (and negative prompt), in UTF-8 bytes.
    public var maxPromptBytes = 2000
    public var maxIDBytes = 128
    public var maxSide = 1024
    public var maxSteps = 1000
    public var maxGuidanceScale = 100.0
    public var priorities = -9...9

    public init() {}

    /// Applies defaults and limits; errors name the field and the allowed range.
    public func admit(_ body: SubmitBody) throws -> (request: GenerationRequest, priority: Int, timeout: TimeInterval) {
        func refuse(_ field: String, _ reason: String) -> WireError { WireError(.badRequest, "field '\(field)': \(reason)") }
        guard !body.id.isEmpty, body.id.utf8.count <= maxIDBytes else { throw refuse("id", "must be 1…\(maxIDBytes) bytes, got \(body.id.utf8.count)") }
        guard !body.prompt.isEmpty else { throw refuse("prompt", "must not be empty") }
        guard body.prompt.utf8.count <= maxPromptBytes else {
            throw refuse("prompt", "is \(body.prompt.utf8.count) bytes; the limit is \(maxPromptBytes)")
        }
        let negative = body.negativePrompt ?? ""
        guard negative.utf8.count <= maxPromptBytes else {
            throw refuse("negative_prompt", "is \(negative.utf8.count) bytes; the limit is \(maxPromptBytes)")
        }
        let width = body.width ?? defaultWidth, height = body.height ?? defaultHeight
        for (field, value) in [("width", width), ("height", height)] where !(8...maxSide).contains(value) || value % 8 != 0 {
            throw refuse(field, "must be a multiple of 8 in 8…\(maxSide), got \(value)")
        }
        let steps = body.steps ?? defaultSteps
        guard (1...maxSteps).contains(steps) else { throw refuse("steps", "must be 1…\(maxSteps), got \(steps)") }
        let guidance = body.guidanceScale ?? defaultGuidanceScale
        guard guidance.isFinite, (0...maxGuidanceScale).contains(guidance) else {
            throw refuse("guidance_scale", "must be 0…\(maxGuidanceScale), got \(guidance)")
        }
        let model = body.model ?? defaultModel
        guard !model.isEmpty, model.utf8.count <= 128 else { throw refuse("model", "must be 1…128 bytes") }
        let priority = body.priority ?? 0
        guard priorities.contains(priority) else {
            throw refuse("priority", "must be \(priorities.lowerBound)…\(priorities.upperBound), got \(priority)")
        }
        var timeout = defaultTimeout
        if let ms = body.timeoutMs {
            guard ms > 0, Double(ms) <= maxTimeout * 1000 else {
                throw refuse("timeout_ms", "must be 1…\(Int(maxTimeout * 1000)), got \(ms)")
            }
            timeout = Double(ms) / 1000
        }
        let request = GenerationRequest(id: body.id, prompt: body.prompt, negativePrompt: negative, width: width, height: height,
                                        steps: steps, guidanceScale: guidance, seed: body.seed ?? 0, model: model)
        return (request, priority, timeout)
    }
}

/// The JSON header of a `RESULT` reply; the PNG follows as the next frame.
public struct ResultHeader: Codable, Sendable, Equatable {
    public var id: String
    public var width: Int
    public var height: Int
    public var seed: UInt64
    /// Milliseconds from arrival at the scheduler to dispatch to the worker that answered.
    public var queueMs: Double
    /// Milliseconds the worker's executor spent on the whole batch.
    public var execMs: Double
    /// Milliseconds from arrival at the scheduler to the reply.
    public var totalMs: Double
    public var batchSize: Int
    public var worker: String
    /// 1, or 2 when the first worker died and the request was re-queued.
    public var attempts: Int

    public init(id: String, width: Int, height: Int, seed: UInt64, queueMs: Double, execMs: Double, totalMs: Double,
                batchSize: Int, worker: String, attempts: Int) {
        self.id = id
        self.width = width
        self.height = height
        self.seed = seed
        self.queueMs = queueMs
        self.execMs = execMs
        self.totalMs = totalMs
        self.batchSize = batchSize
        self.worker = worker
        self.attempts = attempts
    }

    enum CodingKeys: String, CodingKey {
        case id, width, height, seed, worker, attempts
        case queueMs = "queue_ms", execMs = "exec_ms", totalMs = "total_ms", batchSize = "batch_size"
    }
}

/// The JSON body of an `ERROR` reply.
public struct ErrorBody: Codable, Sendable, Equatable {
    /// The request's id when the error concerns one request (absent for frames that could not be parsed).
    public var id: String?
    public var code: WireErrorCode
    public var message: String

    public init(id: String?, code: WireErrorCode, message: String) {
        self.id = id
        self.code = code
        self.message = message
    }
}

/// `READY` from a worker: it is idle and accepts batches up to `maxBatch` requests.
public struct ReadyBody: Codable, Sendable, Equatable {
    public var name: String
    public var pid: Int32
    public var maxBatch: Int
    public var executor: String

    public init(name: String, pid: Int32, maxBatch: Int, executor: String) {
        self.name = name
        self.pid = pid
        self.maxBatch = maxBatch
        self.executor = executor
    }

    enum CodingKeys: String, CodingKey { case name, pid, executor, maxBatch = "max_batch" }
}

/// `BATCH` to a worker: compatible requests to run together. Request ids are scheduler tickets.
public struct BatchBody: Codable, Sendable, Equatable {
    public var batchID: UInt64
    public var requests: [GenerationRequest]

    public init(batchID: UInt64, requests: [GenerationRequest]) {
        self.batchID = batchID
        self.requests = requests
    }

    enum CodingKeys: String, CodingKey { case requests, batchID = "batch_id" }
}

/// `RESULT` from a worker: one entry per image, each followed in order by its PNG frame.
public struct WorkerResultBody: Codable, Sendable, Equatable {
    public struct Image: Codable, Sendable, Equatable {
        public var id: String
        public var width: Int
        public var height: Int

        public init(id: String, width: Int, height: Int) {
            self.id = id
            self.width = width
            self.height = height
        }
    }

    public var batchID: UInt64
    public var execMs: Double
    public var images: [Image]

    public init(batchID: UInt64, execMs: Double, images: [Image]) {
        self.batchID = batchID
        self.execMs = execMs
        self.images = images
    }

    enum CodingKeys: String, CodingKey { case images, batchID = "batch_id", execMs = "exec_ms" }
}

/// `FAILED` from a worker: the executor threw for the whole batch.
public struct FailedBody: Codable, Sendable, Equatable {
    public var batchID: UInt64
    public var message: String

    public init(batchID: UInt64, message: String) {
        self.batchID = batchID
        self.message = message
    }

    enum CodingKeys: String, CodingKey { case message, batchID = "batch_id" }
}

/// `DISCONNECT` to a worker: the scheduler does not know it (restarted, or declared it dead);
/// the worker sends `READY` again when idle.
public struct DisconnectBody: Codable, Sendable, Equatable {
    public var reason: String
    public init(reason: String) { self.reason = reason }
}
