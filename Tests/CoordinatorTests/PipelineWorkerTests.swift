import Coordinator
import Foundation
import Models
import Tensor
import Worker
import XCTest

/// A tiny random-weight text-to-image model folder, as `train` exports one: unet/ (16×16 pixel
/// space, cross_attention_dim 384), scheduler/ (DDIM, v-prediction) and sura.json naming the
/// MiniLM text encoder that scripts/setup installs in cache/models/minilm.
enum TinyModelFolder {
    static let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()
    static let textEncoder = repository.appendingPathComponent("cache/models/minilm")
    static let side = 16

    /// Fails and skips the test when MiniLM is not installed.
    static func requireTextEncoder() throws {
        guard FileManager.default.fileExists(atPath: textEncoder.appendingPathComponent("model.safetensors").path) else {
            XCTFail("MiniLM is missing from \(textEncoder.path): run scripts/setup")
            throw XCTSkip("no text encoder")
        }
    }

    /// Writes the folder at `url` (created) and returns it.
    @discardableResult
    static func write(to url: URL, textEncoder withTextEncoder: Bool = true) throws -> URL {
        let config = """
        {"_class_name": "UNet2DConditionModel", "sample_size": \(side), "in_channels": 3, "out_channels": 3,
         "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"], "mid_block_type": "UNetMidBlock2DCrossAttn",
         "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"], "block_out_channels": [8, 16], "layers_per_block": 1,
         "norm_num_groups": 4, "cross_attention_dim": 384, "attention_head_dim": 2}
        """
        var rng = SeededGenerator(seed: 42)
        let unet = try UNet2DConditionModel(config: UNet2DConditionConfig(jsonData: Data(config.utf8)), rng: &rng)
        try unet.save(to: url.appendingPathComponent("unet", isDirectory: true))
        var scheduler = SchedulerConfig(className: DDIMScheduler.className)
        scheduler.predictionType = .vPrediction
        scheduler.clipSample = false
        scheduler.timestepSpacing = .trailing
        let schedulerDir = url.appendingPathComponent("scheduler", isDirectory: true)
        try FileManager.default.createDirectory(at: schedulerDir, withIntermediateDirectories: true)
        try scheduler.write(to: schedulerDir.appendingPathComponent("scheduler_config.json"))
        if withTextEncoder {
            let sura = #"{"text_encoder": "\#(textEncoder.path)", "max_length": 12}"#
            try Data(sura.utf8).write(to: url.appendingPathComponent(SuraFolderConfig.fileName))
        }
        return url
    }
}

/// The pipeline executor run directly: one PNG per request, independent of batch composition,
/// refusals that name the field, and load errors that name the folder.
final class PipelineExecutorTests: XCTestCase {
    private static var shared: PipelineBatchExecutor?
    private var work: URL!

    override func setUpWithError() throws {
        try TinyModelFolder.requireTextEncoder()
        work = FileManager.default.temporaryDirectory.appendingPathComponent("sura-pipeline-worker-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: work, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        if let work { try? FileManager.default.removeItem(at: work) }
    }

    /// One executor for the class (loading MiniLM takes a moment); the folder it came from is deleted.
    private func executor() throws -> PipelineBatchExecutor {
        if let shared = Self.shared { return shared }
        let folder = try TinyModelFolder.write(to: work.appendingPathComponent("tiny"))
        let executor = try PipelineBatchExecutor(modelFolder: folder)
        Self.shared = executor
        return executor
    }

    private func request(_ id: String, _ prompt: String, seed: UInt64, negative: String = "", steps: Int = 3,
                         guidance: Double = 4, size: Int = TinyModelFolder.side, model: String = "default") -> GenerationRequest {
        GenerationRequest(id: id, prompt: prompt, negativePrompt: negative, width: size, height: size, steps: steps,
                          guidanceScale: guidance, seed: seed, model: model)
    }

    func testSameRequestGivesTheSamePNGWhateverItsBatch() throws {
        let executor = try executor()
        XCTAssertEqual(executor.width, 16)
        XCTAssertEqual(executor.height, 16)
        let requests = [
            request("a", "a red shirt", seed: 1),
            request("b", "two sneakers next to a bag", seed: 2, negative: "blurry"),
            request("c", "a red shirt", seed: 3),
            request("d", "a blue coat", seed: 4, steps: 2),        // another group: fewer steps
            request("e", "a blue coat", seed: 4, guidance: 1),     // another group: conditional branch only
        ]
        let together = try executor.run(batch: requests)
        XCTAssertEqual(together.map(\.requestID), ["a", "b", "c", "d", "e"], "one image per request, in batch order")
        let byID = Dictionary(uniqueKeysWithValues: together.map { ($0.requestID, $0.png) })
        for image in together {
            let png = try PNGImage(pngData: image.png, name: image.requestID)
            XCTAssertEqual([png.width, png.height, png.channels], [16, 16, 3], image.requestID)
            XCTAssertEqual([image.width, image.height], [16, 16])
        }
        // Alone, and in other company and order: the same bytes.
        for single in requests {
            XCTAssertEqual(try executor.run(batch: [single]).first?.png, byID[single.id], "\(single.id) alone")
        }
        let reordered = try executor.run(batch: [requests[2], requests[4], requests[0], request("x", "a hat", seed: 9)])
        XCTAssertEqual(reordered.map(\.requestID), ["c", "e", "a", "x"])
        for image in reordered.prefix(3) { XCTAssertEqual(image.png, byID[image.requestID], "\(image.requestID) reordered") }
        // Same prompt with another seed, and another prompt with the same settings, give other pictures.
        XCTAssertNotEqual(byID["a"], byID["c"])
        XCTAssertNotEqual(byID["d"], byID["e"])
        let pixels = try PNGImage(pngData: byID["a"]!).pixels
        XCTAssertGreaterThan(Set(pixels).count, 8, "a random-weight UNet still draws a non-constant image")
    }

    /// Grouped batching runs each group of equal settings as one pipeline call: the same images,
    /// in order, up to float summation order (at most 1 in an 8-bit value).
    func testGroupedBatchingGivesTheExactImagesUpToRounding() throws {
        let exact = try executor()
        let grouped = try PipelineBatchExecutor(modelFolder: TinyModelFolder.write(to: work.appendingPathComponent("grouped")),
                                                batching: .grouped)
        XCTAssertEqual(grouped.batching, .grouped)
        XCTAssertEqual(exact.batching, .exact, "exact is the default")
        let requests = [request("a", "a red shirt", seed: 1), request("b", "a bag", seed: 2, steps: 2),
                        request("c", "two sneakers", seed: 3, negative: "blurry"), request("d", "a hat", seed: 4, steps: 2)]
        let fast = try grouped.run(batch: requests)
        let reference = try exact.run(batch: requests)
        XCTAssertEqual(fast.map(\.requestID), ["a", "b", "c", "d"])
        for (image, expected) in zip(fast, reference) {
            let a = try PNGImage(pngData: image.png).pixels, b = try PNGImage(pngData: expected.png).pixels
            XCTAssertEqual(a.count, b.count)
            let worst = zip(a, b).map { abs(Int($0) - Int($1)) }.max() ?? 0
            XCTAssertLessThanOrEqual(worst, 1, "\(image.requestID): grouped differs from exact by \(worst)")
        }
    }

    func testUnsupportedRequestsNameTheField() throws {
        let executor = try executor()
        func refusal(_ request: GenerationRequest) -> (field: String, message: String)? {
            do {
                _ = try executor.run(batch: [self.request("ok", "fine", seed: 0), request])
            } catch let InferenceExecutionError.unsupportedRequest(id, field, reason) {
                XCTAssertEqual(id, request.id)
                return (field, "\(InferenceExecutionError.unsupportedRequest(id: id, field: field, reason: reason))")
            } catch {
                XCTFail("unexpected error \(error)")
            }
            return nil
        }
        let wide = refusal(GenerationRequest(id: "w", prompt: "p", width: 32, height: 16, steps: 2, guidanceScale: 4, seed: 0))
        XCTAssertEqual(wide?.field, "width")
        XCTAssertTrue(wide?.message.contains("16x16") == true, wide?.message ?? "")
        XCTAssertEqual(refusal(GenerationRequest(id: "h", prompt: "p", width: 16, height: 8, steps: 2))?.field, "height")
        XCTAssertEqual(refusal(request("m", "p", seed: 0, model: "someone-else"))?.field, "model")
        XCTAssertEqual(refusal(request("s", "p", seed: 0, steps: 5000))?.field, "steps")
        XCTAssertNil(refusal(request("n", "p", seed: 0, model: "tiny")), "the folder's own name is a model name too")
    }

    func testMissingOrIncompleteFolderIsAnErrorNamingThePath() throws {
        let missing = work.appendingPathComponent("no-such-model")
        XCTAssertThrowsError(try PipelineBatchExecutor(modelFolder: missing)) { error in
            XCTAssertTrue("\(error)".contains(missing.path), "\(error)")
        }
        let noEncoder = try TinyModelFolder.write(to: work.appendingPathComponent("no-encoder"), textEncoder: false)
        XCTAssertThrowsError(try PipelineBatchExecutor(modelFolder: noEncoder)) { error in
            XCTAssertEqual(error as? PipelineExecutorError, .noTextEncoder(path: noEncoder.path))
        }
        let noUNet = work.appendingPathComponent("no-unet")
        try FileManager.default.createDirectory(at: noUNet, withIntermediateDirectories: true)
        XCTAssertThrowsError(try PipelineBatchExecutor(modelFolder: noUNet)) { error in
            XCTAssertTrue("\(error)".contains(noUNet.path) && "\(error)".contains("unet/config.json"), "\(error)")
        }
    }
}

/// `sura serve` and `sura worker --executor pipeline` processes on loopback, answering the HTTP
/// image API with real pipeline PNGs.
final class PipelineWorkerProcessTests: XCTestCase {
    private var started: [SuraProcess] = []
    private var work: URL!
    private var context: ZMQContext!

    override func setUpWithError() throws {
        _ = try SuraProcess.executable()
        try TinyModelFolder.requireTextEncoder()
        context = try ZMQContext()
        work = FileManager.default.temporaryDirectory.appendingPathComponent("sura-pipeline-serve-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: work, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        for process in started.reversed() { process.stop() }
        if (testRun?.failureCount ?? 0) > 0 { for process in started { print(process.transcript) } }
        started.removeAll()
        if let work { try? FileManager.default.removeItem(at: work) }
    }

    private func workerCount(_ serve: ServeProcess) -> Int {
        guard let client = try? SchedulerClient(endpoint: serve.frontend, context: context) else { return -1 }
        defer { client.close() }
        return (try? client.status(timeout: 5))?.workers.count ?? -1
    }

    /// POSTs one generation and returns the decoded PNGs with their seeds.
    private func generate(_ serve: ServeProcess, _ body: [String: Any]) throws -> [(png: Data, seed: UInt64)] {
        let response = try RawHTTP.generate(port: try XCTUnwrap(serve.httpPort), body, timeout: 120)
        XCTAssertEqual(response.status, 200, response.text)
        let data = try XCTUnwrap(response.json?["data"] as? [[String: Any]], response.text)
        return try data.map { item in
            let text = try XCTUnwrap(item["b64_json"] as? String)
            return (try XCTUnwrap(Data(base64Encoded: text)), UInt64(try XCTUnwrap(item["seed"] as? Int)))
        }
    }

    func testWorkerWithThePipelineExecutorAnswersTheHTTPAPI() throws {
        let folder = try TinyModelFolder.write(to: work.appendingPathComponent("tiny"))
        let serve = try ServeProcess(["--max-batch", "4"], http: true)
        started.append(serve.serve)
        // This process's thread count: the byte comparison below needs the same BLAS partitioning.
        let worker = try serve.worker("pipeline-worker", ["--executor", "pipeline", "--model", folder.path,
                                                          "--threads", String(Threads.count)])
        started.append(worker)
        XCTAssertTrue(eventually(timeout: 60, interval: 0.1) { workerCount(serve) == 1 }, "the pipeline worker never registered")
        XCTAssertNotNil(worker.line(containing: "loaded model \(folder.path) (16x16, DDIMScheduler, exact batching)", timeout: 1),
                        worker.transcript)

        let body: [String: Any] = ["prompt": "a red shirt", "size": "16x16", "steps": 3, "seed": 7, "n": 2,
                                   "response_format": "b64_json"]
        let images = try generate(serve, body)
        XCTAssertEqual(images.map(\.seed), [7, 8])
        for image in images {
            let png = try PNGImage(pngData: image.png)
            XCTAssertEqual([png.width, png.height, png.channels], [16, 16, 3])
        }
        // The same pipeline in this process gives the same bytes for the same prompt and seed.
        let local = try PipelineBatchExecutor(modelFolder: folder)
        let expected = try local.run(batch: [GenerationRequest(id: "x", prompt: "a red shirt", width: 16, height: 16, steps: 3,
                                                               guidanceScale: 4, seed: 8)])
        XCTAssertEqual(images[1].png, expected[0].png)

        // A size the model does not generate fails with the field named (after one retry).
        let wrong = try RawHTTP.generate(port: try XCTUnwrap(serve.httpPort), ["prompt": "p", "size": "32x32", "steps": 2],
                                         timeout: 60)
        XCTAssertEqual(wrong.status, 502, wrong.text)
        XCTAssertTrue(wrong.text.contains("width"), wrong.text)
    }

    func testServeStartsLocalPipelineWorkersAndRefusesABadFolder() throws {
        let missing = work.appendingPathComponent("missing-model").path
        let bad = try SuraProcess(["serve", "--frontend", "tcp://127.0.0.1:*", "--backend", "tcp://127.0.0.1:*", "--no-http",
                                   "--workers", "1", "--executor", "pipeline", "--model", missing], name: "bad-serve")
        started.append(bad)
        XCTAssertEqual(bad.waitForExit(timeout: 30), 1)
        XCTAssertNotNil(bad.line(containing: missing, timeout: 1), "the error names the folder:\n\(bad.transcript)")
        let noModel = try SuraProcess(["worker", "--executor", "pipeline"], name: "no-model")
        started.append(noModel)
        XCTAssertNotEqual(noModel.waitForExit(timeout: 30), 0)
        XCTAssertNotNil(noModel.line(containing: "--model", timeout: 1), noModel.transcript)
        let badMode = try SuraProcess(["worker", "--executor", "pipeline", "--model", missing, "--pipeline-batching", "fast"], name: "bad-mode")
        started.append(badMode)
        XCTAssertNotEqual(badMode.waitForExit(timeout: 30), 0)
        XCTAssertNotNil(badMode.line(containing: "exact, grouped", timeout: 1), badMode.transcript)

        let folder = try TinyModelFolder.write(to: work.appendingPathComponent("tiny"))
        let serve = try ServeProcess(["--workers", "1", "--executor", "pipeline", "--model", folder.path, "--worker-threads", "1",
                                      "--pipeline-batching", "grouped"], http: true)
        started.append(serve.serve)
        XCTAssertTrue(eventually(timeout: 60, interval: 0.1) { workerCount(serve) == 1 }, "the local pipeline worker never registered")
        let client = try SchedulerClient(endpoint: serve.frontend, context: context)
        defer { client.close() }
        XCTAssertEqual(try client.status(timeout: 5).workers.first?.executor, "pipeline")
        XCTAssertNotNil(serve.serve.line(containing: "grouped batching", timeout: 5), "serve checked the folder first")
        let images = try generate(serve, ["prompt": "two sneakers", "size": "16x16", "steps": 2, "seed": 3, "n": 3])
        XCTAssertEqual(images.map(\.seed), [3, 4, 5])
        for image in images { XCTAssertEqual(try PNGImage(pngData: image.png).width, 16) }
    }
}
