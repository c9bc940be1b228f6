import Foundation
import Worker

/// A message every request passes through (SUBMIT, BATCH, a worker's RESULT, the RESULT header),
/// read by `JSONScanner` instead of `JSONDecoder`. `init(scanning:)` throws for anything but the
/// usual form, and `WireProtocol.decode` then lets `JSONDecoder` read it: same values, same errors.
protocol ScannedWireMessage {
    init(scanning scanner: inout JSONScanner) throws
}

/// A message written by `JSONObjectWriter` in `JSONEncoder`'s form (sorted keys) instead of by
/// `JSONEncoder`; nil when a value has no JSON form, and `WireProtocol.encode` falls back.
protocol DirectlyWrittenWireMessage {
    var directJSON: Data? { get }
}

/// The fields of one object seen so far: a repeated key is refused (JSONDecoder decides what it means).
private struct SeenFields {
    private var bits: UInt32 = 0

    mutating func insert(_ field: Int) throws {
        guard bits & (1 << field) == 0 else { throw JSONScanner.Unsupported() }
        bits |= 1 << field
    }

    func containsAll(_ count: Int) -> Bool { bits == (1 << count) - 1 }
}

extension SubmitBody: ScannedWireMessage {
    init(scanning scanner: inout JSONScanner) throws {
        var body = SubmitBody(id: "", prompt: "")
        var seen = SeenFields(), required = SeenFields()
        try scanner.object { scanner, key in
            switch key {
            case "id": try seen.insert(0); try required.insert(0); body.id = try scanner.string()
            case "prompt": try seen.insert(1); try required.insert(1); body.prompt = try scanner.string()
            case "negative_prompt": try seen.insert(2); body.negativePrompt = scanner.null() ? nil : try scanner.string()
            case "width": try seen.insert(3); body.width = scanner.null() ? nil : try scanner.int()
            case "height": try seen.insert(4); body.height = scanner.null() ? nil : try scanner.int()
            case "steps": try seen.insert(5); body.steps = scanner.null() ? nil : try scanner.int()
            case "guidance_scale": try seen.insert(6); body.guidanceScale = scanner.null() ? nil : try scanner.double()
            case "seed": try seen.insert(7); body.seed = scanner.null() ? nil : try scanner.uint64()
            case "model": try seen.insert(8); body.model = scanner.null() ? nil : try scanner.string()
            case "priority": try seen.insert(9); body.priority = scanner.null() ? nil : try scanner.int()
            case "timeout_ms": try seen.insert(10); body.timeoutMs = scanner.null() ? nil : try scanner.int()
            default: throw JSONScanner.Unsupported()
            }
        }
        guard required.containsAll(2) else { throw JSONScanner.Unsupported() }
        self = body
    }
}

extension GenerationRequest {
    init(scanning scanner: inout JSONScanner) throws {
        var request = GenerationRequest(id: "", prompt: "")
        var seen = SeenFields()
        try scanner.object { scanner, key in
            switch key {
            case "id": try seen.insert(0); request.id = try scanner.string()
            case "prompt": try seen.insert(1); request.prompt = try scanner.string()
            case "negative_prompt": try seen.insert(2); request.negativePrompt = try scanner.string()
            case "width": try seen.insert(3); request.width = try scanner.int()
            case "height": try seen.insert(4); request.height = try scanner.int()
            case "steps": try seen.insert(5); request.steps = try scanner.int()
            case "guidance_scale": try seen.insert(6); request.guidanceScale = try scanner.double()
            case "seed": try seen.insert(7); request.seed = try scanner.uint64()
            case "model": try seen.insert(8); request.model = try scanner.string()
            default: throw JSONScanner.Unsupported()
            }
        }
        guard seen.containsAll(9) else { throw JSONScanner.Unsupported() }
        self = request
    }

    /// Adds the fields, sorted, to the object `writer` has open.
    func write(to writer: inout JSONObjectWriter) {
        writer.field("guidance_scale", guidanceScale)
        writer.field("height", height)
        writer.field("id", id)
        writer.field("model", model)
        writer.field("negative_prompt", negativePrompt)
        writer.field("prompt", prompt)
        writer.field("seed", seed)
        writer.field("steps", steps)
        writer.field("width", width)
    }
}

extension BatchBody: ScannedWireMessage, DirectlyWrittenWireMessage {
    init(scanning scanner: inout JSONScanner) throws {
        var batchID: UInt64 = 0
        var requests: [GenerationRequest] = []
        var seen = SeenFields()
        try scanner.object { scanner, key in
            switch key {
            case "batch_id": try seen.insert(0); batchID = try scanner.uint64()
            case "requests":
                try seen.insert(1)
                try scanner.array { scanner in requests.append(try GenerationRequest(scanning: &scanner)) }
            default: throw JSONScanner.Unsupported()
            }
        }
        guard seen.containsAll(2) else { throw JSONScanner.Unsupported() }
        self.init(batchID: batchID, requests: requests)
    }

    var directJSON: Data? {
        var writer = JSONObjectWriter()
        writer.field("batch_id", batchID)
        writer.field("requests", objects: requests) { writer, request in request.write(to: &writer) }
        return writer.finish()
    }
}

extension WorkerResultBody: ScannedWireMessage, DirectlyWrittenWireMessage {
    init(scanning scanner: inout JSONScanner) throws {
        var batchID: UInt64 = 0
        var execMs = 0.0
        var images: [Image] = []
        var seen = SeenFields()
        try scanner.object { scanner, key in
            switch key {
            case "batch_id": try seen.insert(0); batchID = try scanner.uint64()
            case "exec_ms": try seen.insert(1); execMs = try scanner.double()
            case "images":
                try seen.insert(2)
                try scanner.array { scanner in
                    var image = Image(id: "", width: 0, height: 0)
                    var imageSeen = SeenFields()
                    try scanner.object { scanner, key in
                        switch key {
                        case "id": try imageSeen.insert(0); image.id = try scanner.string()
                        case "width": try imageSeen.insert(1); image.width = try scanner.int()
                        case "height": try imageSeen.insert(2); image.height = try scanner.int()
                        default: throw JSONScanner.Unsupported()
                        }
                    }
                    guard imageSeen.containsAll(3) else { throw JSONScanner.Unsupported() }
                    images.append(image)
                }
            default: throw JSONScanner.Unsupported()
            }
        }
        guard seen.containsAll(3) else { throw JSONScanner.Unsupported() }
        self.init(batchID: batchID, execMs: execMs, images: images)
    }

    var directJSON: Data? {
        var writer = JSONObjectWriter()
        writer.field("batch_id", batchID)
        writer.field("exec_ms", execMs)
        writer.field("images", objects: images) { writer, image in
            writer.field("height", image.height)
            writer.field("id", image.id)
            writer.field("width", image.width)
        }
        return writer.finish()
    }
}

extension ResultHeader: ScannedWireMessage, DirectlyWrittenWireMessage {
    init(scanning scanner: inout JSONScanner) throws {
        var header = ResultHeader(id: "", width: 0, height: 0, seed: 0, queueMs: 0, execMs: 0, totalMs: 0, batchSize: 0, worker: "", attempts: 0)
        var seen = SeenFields()
        try scanner.object { scanner, key in
            switch key {
            case "id": try seen.insert(0); header.id = try scanner.string()
            case "width": try seen.insert(1); header.width = try scanner.int()
            case "height": try seen.insert(2); header.height = try scanner.int()
            case "seed": try seen.insert(3); header.seed = try scanner.uint64()
            case "queue_ms": try seen.insert(4); header.queueMs = try scanner.double()
            case "exec_ms": try seen.insert(5); header.execMs = try scanner.double()
            case "total_ms": try seen.insert(6); header.totalMs = try scanner.double()
            case "batch_size": try seen.insert(7); header.batchSize = try scanner.int()
            case "worker": try seen.insert(8); header.worker = try scanner.string()
            case "attempts": try seen.insert(9); header.attempts = try scanner.int()
            default: throw JSONScanner.Unsupported()
            }
        }
        guard seen.containsAll(10) else { throw JSONScanner.Unsupported() }
        self = header
    }

    var directJSON: Data? {
        var writer = JSONObjectWriter()
        writer.field("attempts", attempts)
        writer.field("batch_size", batchSize)
        writer.field("exec_ms", execMs)
        writer.field("height", height)
        writer.field("id", id)
        writer.field("queue_ms", queueMs)
        writer.field("seed", seed)
        writer.field("total_ms", totalMs)
        writer.field("width", width)
        writer.field("worker", worker)
        return writer.finish()
    }
}
