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

extension SubmitBody: ScannedWireMessage {
    init(scanning scanner: inout JSONScanner) throws {
        var body = SubmitBody(id: "", prompt: "")
        var id: String?, prompt: String?
        try scanner.object { scanner, key in
            switch key {
            case "id": id = try scanner.string()
            case "prompt": prompt = try scanner.string()
            case "negative_prompt": body.negativePrompt = scanner.null() ? nil : try scanner.string()
            case "width": body.width = scanner.null() ? nil : try scanner.int()
            case "height": body.height = scanner.null() ? nil : try scanner.int()
            case "steps": body.steps = scanner.null() ? nil : try scanner.int()
            case "guidance_scale": body.guidanceScale = scanner.null() ? nil : try scanner.double()
            case "seed": body.seed = scanner.null() ? nil : try scanner.uint64()
            case "model": body.model = scanner.null() ? nil : try scanner.string()
            case "priority": body.priority = scanner.null() ? nil : try scanner.int()
            case "timeout_ms": body.timeoutMs = scanner.null() ? nil : try scanner.int()
            default: throw JSONScanner.Unsupported()
            }
        }
        guard let id, let prompt else { throw JSONScanner.Unsupported() }
        body.id = id
        body.prompt = prompt
        self = body
    }
}

extension GenerationRequest {
    init(scanning scanner: inout JSONScanner) throws {
        var request = GenerationRequest(id: "", prompt: "")
        let fields = try scanner.object { scanner, key in
            switch key {
            case "id": request.id = try scanner.string()
            case "prompt": request.prompt = try scanner.string()
            case "negative_prompt": request.negativePrompt = try scanner.string()
            case "width": request.width = try scanner.int()
            case "height": request.height = try scanner.int()
            case "steps": request.steps = try scanner.int()
            case "guidance_scale": request.guidanceScale = try scanner.double()
            case "seed": request.seed = try scanner.uint64()
            case "model": request.model = try scanner.string()
            default: throw JSONScanner.Unsupported()
            }
        }
        guard fields == 9 else { throw JSONScanner.Unsupported() }
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
        let fields = try scanner.object { scanner, key in
            switch key {
            case "batch_id": batchID = try scanner.uint64()
            case "requests":
                try scanner.array { scanner in requests.append(try GenerationRequest(scanning: &scanner)) }
            default: throw JSONScanner.Unsupported()
            }
        }
        guard fields == 2 else { throw JSONScanner.Unsupported() }
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
        let fields = try scanner.object { scanner, key in
            switch key {
            case "batch_id": batchID = try scanner.uint64()
            case "exec_ms": execMs = try scanner.double()
            case "images":
                try scanner.array { scanner in
                    var image = Image(id: "", width: 0, height: 0)
                    let imageFields = try scanner.object { scanner, key in
                        switch key {
                        case "id": image.id = try scanner.string()
                        case "width": image.width = try scanner.int()
                        case "height": image.height = try scanner.int()
                        default: throw JSONScanner.Unsupported()
                        }
                    }
                    guard imageFields == 3 else { throw JSONScanner.Unsupported() }
                    images.append(image)
                }
            default: throw JSONScanner.Unsupported()
            }
        }
        guard fields == 3 else { throw JSONScanner.Unsupported() }
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
        let fields = try scanner.object { scanner, key in
            switch key {
            case "id": header.id = try scanner.string()
            case "width": header.width = try scanner.int()
            case "height": header.height = try scanner.int()
            case "seed": header.seed = try scanner.uint64()
            case "queue_ms": header.queueMs = try scanner.double()
            case "exec_ms": header.execMs = try scanner.double()
            case "total_ms": header.totalMs = try scanner.double()
            case "batch_size": header.batchSize = try scanner.int()
            case "worker": header.worker = try scanner.string()
            case "attempts": header.attempts = try scanner.int()
            default: throw JSONScanner.Unsupported()
            }
        }
        guard fields == 10 else { throw JSONScanner.Unsupported() }
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
