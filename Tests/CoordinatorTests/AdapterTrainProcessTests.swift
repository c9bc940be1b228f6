import Foundation
import SuraTestSupport
import Tensor
import XCTest

/// Adapter training as a user runs it: a tiny base model trained by `train`, then every adapter
/// type trained on it with the real SmolLM2 and MiniLM, exported, used by `sura generate
/// --adapter` and scored by `sura eval semantic`; resume, data parallelism and bad configs.
final class AdapterTrainProcessTests: XCTestCase {
    static let repository = TrainProcessTests.repository
    static let llm = repository.appendingPathComponent("cache/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")

    /// Small adapter configs (the paper's structure, narrow and shallow so a step is quick); every
    /// output is 384 wide, the tiny UNet's cross_attention_dim.
    static let adapterConfigs: [String: String] = [
        "sur_adapter": "{depth: 1, heads: 4, dim_feedforward: 64, dropout: 0}",
        "cross_adapter": "{heads: 4}",
        "voken_mapper": "{num_vokens: 2, num_queries: 12, fc_hidden_dim: 64, num_encoder_layers: 1, num_decoder_layers: 1, heads: 4, dim_feedforward: 64}",
        "ella": "{layers: 1, heads: 4, num_latents: 4, width: 64, time_channel: 32, time_embedding_dim: 64}",
    ]

    static var work: URL!

    /// One dataset and one tiny exported base model for the whole class.
    override class func setUp() {
        super.setUp()
        let fm = FileManager.default
        guard fm.fileExists(atPath: TrainProcessTests.textEncoder.appendingPathComponent("model.safetensors").path),
              fm.fileExists(atPath: llm.path) else { return }
        let dir = fm.temporaryDirectory.appendingPathComponent("sura-adapters-\(UUID().uuidString)")
        try? fm.createDirectory(at: dir, withIntermediateDirectories: true)
        work = dir
        guard let sura = try? TrainProcessTests.executable("sura"), let train = try? TrainProcessTests.executable("train") else { return }
        _ = try? launch(sura, ["data", "scenes", "--out", dir.appendingPathComponent("data").path, "--count", "16", "--canvas", "16",
                               "--max-items", "1", "--seed", "3", "--heldout-fraction", "0.25"])
        try? TrainProcessTests.tinyUNetConfig().write(to: dir.appendingPathComponent("unet.json"), atomically: true, encoding: .utf8)
        let base = """
        task: base
        output_dir: \(dir.appendingPathComponent("base-run").path)
        data: {path: \(dir.appendingPathComponent("data").path)}
        optim: {learning_rate: 1.0e-3, steps: 2, batch_size: 4}
        checkpoint: {every: 2}
        base: {unet: \(dir.appendingPathComponent("unet.json").path), text_encoder: \(TrainProcessTests.textEncoder.path), max_length: 12, export: \(dir.appendingPathComponent("base").path)}
        """
        try? base.write(to: dir.appendingPathComponent("base.yaml"), atomically: true, encoding: .utf8)
        _ = try? launch(train, ["--config", dir.appendingPathComponent("base.yaml").path])
    }

    override class func tearDown() {
        if let work { try? FileManager.default.removeItem(at: work) }
        super.tearDown()
    }

    override func setUpWithError() throws {
        guard FileManager.default.fileExists(atPath: Self.llm.path) else {
            XCTFail("SmolLM2 is missing from \(Self.llm.path): run scripts/setup")
            throw XCTSkip("no LLM")
        }
        guard let work = Self.work, FileManager.default.fileExists(atPath: work.appendingPathComponent("base/sura.json").path) else {
            XCTFail("the tiny base model was not trained in setUp (see the output above)")
            throw XCTSkip("no base model")
        }
    }

    static func launch(_ executable: String, _ arguments: [String], timeout: Double = 240) throws -> (status: Int32, output: String) {
        try TrainProcessTests.child(executable, arguments).finish(within: timeout)
    }

    func run(_ name: String, _ arguments: [String], timeout: Double = 240) throws -> (status: Int32, output: String) {
        try Self.launch(try TrainProcessTests.executable(name), arguments, timeout: timeout)
    }

    func path(_ name: String) -> String { Self.work.appendingPathComponent(name).path }

    func writeConfig(_ type: String, output: String, steps: Int = 2, dp: Int = 1, pp: Int = 1, adapterConfig: String? = nil,
                     extra: String = "") throws -> String {
        let text = """
        task: \(type)
        output_dir: \(path(output))
        data: {path: \(path("data")), split: train}
        optim: {learning_rate: 1.0e-3, warmup_steps: 1, steps: \(steps), batch_size: 4}
        checkpoint: {every: 1}
        topology: {dp: \(dp), pp: \(pp)}
        adapter:
          base_model: \(path("base"))
          llm: \(Self.llm.path)
          llm_layer: -1
          llm_max_length: 16
          config: \(adapterConfig ?? Self.adapterConfigs[type]!)
          export: \(path(output + ".safetensors"))
        \(extra)
        """
        let url = Self.work.appendingPathComponent("\(output).yaml")
        try text.write(to: url, atomically: true, encoding: .utf8)
        return url.path
    }

    func losses(_ output: String) throws -> [Int: Double] { try TrainProcessTests.losses(inRun: path(output)) }

    // MARK: Behaviour

    /// Every adapter trains, logs its loss terms, exports, and generates through `sura generate
    /// --adapter`; `sura eval semantic` then scores the base model and all four adapters.
    func testEveryAdapterTrainsExportsGeneratesAndIsEvaluated() throws {
        var exported: [String] = []
        for type in ["sur_adapter", "cross_adapter", "voken_mapper", "ella"] {
            let trained = try run("train", ["--config", try writeConfig(type, output: type)])
            XCTAssertEqual(trained.status, 0, "\(type):\n\(trained.output)")
            XCTAssertTrue(trained.output.contains("exported"), trained.output)
            let metrics = try String(contentsOfFile: path(type) + "/metrics.jsonl", encoding: .utf8)
            XCTAssertTrue(metrics.contains("loss_diffusion"), metrics)
            if type == "sur_adapter" { XCTAssertTrue(metrics.contains("loss_kl_llm") && metrics.contains("loss_kl_complex"), metrics) }
            if type == "voken_mapper" { XCTAssertTrue(metrics.contains("loss_caption") && metrics.contains("loss_lm"), metrics) }
            XCTAssertTrue(FileManager.default.fileExists(atPath: path(type) + "/loss.png"))
            let checkpoint = try SafeTensorsFile(contentsOf: URL(fileURLWithPath: path(type + ".safetensors")))
            XCTAssertEqual(checkpoint.metadata["type"], type)
            if type == "voken_mapper" { XCTAssertEqual(checkpoint.entry(named: "sura.voken_lm_head")?.shape, [2, 576]) }
            exported.append(path(type + ".safetensors"))

            let generated = try run("sura", ["generate", "--model", path("base"), "--adapter", path(type + ".safetensors"),
                                             "--prompt", "a red dress", "--prompt", "two bags", "--steps", "2", "--output", path("gen-\(type)")])
            XCTAssertEqual(generated.status, 0, "\(type):\n\(generated.output)")
            let image = try PNGImage(contentsOf: URL(fileURLWithPath: path("gen-\(type)/image-0.png")))
            XCTAssertEqual(image.width, 16)
        }
        var arguments = ["eval", "semantic", "--model", path("base"), "--data", path("data"), "--count", "3", "--steps", "2",
                         "--checker", Self.repository.appendingPathComponent("models/checker/fashion_classifier.safetensors").path,
                         "--output", path("eval")]
        for file in exported { arguments += ["--adapter", file] }
        let evaluated = try run("sura", arguments, timeout: 300)
        XCTAssertEqual(evaluated.status, 0, evaluated.output)
        for row in ["base, simple prompt", "base, complex prompt (ceiling)", "sur_adapter", "cross_adapter", "voken_mapper", "ella"] {
            XCTAssertTrue(evaluated.output.contains(row), "\(row) missing:\n\(evaluated.output)")
        }
        let json = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path("eval/eval.json")))) as? [String: Any])
        let results = try XCTUnwrap(json["results"] as? [[String: Any]])
        XCTAssertEqual(results.count, 6)
        for result in results { XCTAssertNotNil(result["count"] as? Double, "\(result)") }
        let grid = try PNGImage(contentsOf: URL(fileURLWithPath: path("eval/eval.png")))
        XCTAssertGreaterThan(grid.height, 6 * 16)
    }

    /// The inference cluster serves an adapter: `sura serve` starts a local pipeline worker with
    /// the base model and an ELLA checkpoint (timestep-aware, so the worker re-runs the connector
    /// at every step), and the HTTP API returns its PNG.
    func testServeRunsAWorkerWithAnAdapter() throws {
        let trained = try run("train", ["--config", try writeConfig("ella", output: "served", steps: 1)])
        XCTAssertEqual(trained.status, 0, trained.output)
        let serve = try ServeProcess(["--workers", "1", "--executor", "pipeline", "--model", path("base"),
                                      "--adapter", path("served.safetensors"), "--worker-threads", "1"], http: true)
        defer { serve.serve.stop() }
        XCTAssertNotNil(serve.serve.line(containing: "with the ella adapter", timeout: 60), serve.serve.transcript)
        let response = try RawHTTP.generate(port: try XCTUnwrap(serve.httpPort),
                                            ["prompt": "a couple of red bags", "size": "16x16", "steps": 2, "seed": 1,
                                             "response_format": "b64_json"], timeout: 120)
        XCTAssertEqual(response.status, 200, response.text + serve.serve.transcript)
        let data = try XCTUnwrap(response.json?["data"] as? [[String: Any]], response.text)
        let png = try PNGImage(pngData: try XCTUnwrap(Data(base64Encoded: try XCTUnwrap(data.first?["b64_json"] as? String))))
        XCTAssertEqual([png.width, png.height], [16, 16])

        let bad = try SuraProcess(["worker", "--executor", "pipeline", "--model", path("base"), "--adapter", path("nothing.safetensors")],
                                  name: "bad-adapter")
        defer { bad.stop() }
        XCTAssertNotEqual(bad.waitForExit(timeout: 60), 0)
        XCTAssertNotNil(bad.line(containing: "nothing.safetensors", timeout: 1), bad.transcript)
    }

    /// An interrupted adapter run resumed from its checkpoint continues the same loss curve.
    func testAdapterResumeContinuesTheSameLossCurve() throws {
        // SUR-adapter with its encoder-layer dropout on: the masks must repeat after a resume too.
        let cases = [("cross_adapter", nil as String?), ("sur_adapter", "{depth: 1, heads: 4, dim_feedforward: 64, dropout: 0.3}")]
        for (type, config) in cases {
            let whole = try writeConfig(type, output: "whole-\(type)", steps: 4, adapterConfig: config)
            XCTAssertEqual(try run("train", ["--config", whole]).status, 0)
            let parted = try writeConfig(type, output: "parted-\(type)", steps: 4, adapterConfig: config)
            let first = try run("train", ["--config", parted, "--max-steps", "2"])
            XCTAssertEqual(first.status, 0, first.output)
            XCTAssertTrue(first.output.contains("tables stored in "), first.output)
            let second = try run("train", ["--config", parted, "--resume"])
            XCTAssertEqual(second.status, 0, second.output)
            // The resumed run reads the prompt tables from output_dir/feature-cache; the same
            // losses show they are the tables the first run computed.
            XCTAssertTrue(second.output.contains("LLM layer") && second.output.contains("distinct prompts loaded from "), second.output)
            XCTAssertFalse(second.output.contains("tables stored in "), second.output)
            XCTAssertEqual(try losses("whole-\(type)"), try losses("parted-\(type)"), type)
        }
    }

    /// Two data-parallel ranks under mpirun compute the same global batch as one process: the
    /// losses agree to float rounding (the allreduce sums the two halves in another order). The
    /// ranks share the encoding of the prompts, and the LLM table they assemble is bitwise the
    /// one process's (its logged checksum; both runs use the same threads per process).
    /// Both draw the end-of-run samples (the two ranks 16 each): the same pictures, to a
    /// rounding step of the 8-bit pixels (the UNet runs batches of 16 rather than 32).
    func testAdapterDataParallelMatchesOneProcess() throws {
        func sampling(_ config: String) throws -> String {
            try String(contentsOfFile: config, encoding: .utf8).replacingOccurrences(of: "checkpoint: {every: 1}", with: "checkpoint: {every: 1, sample_every: 3}")
                .write(toFile: config, atomically: true, encoding: .utf8)
            return config
        }
        let one = try sampling(try writeConfig("ella", output: "one", steps: 3))
        let single = try run("train", ["--config", one])
        XCTAssertEqual(single.status, 0, single.output)
        let two = try sampling(try writeConfig("ella", output: "two", steps: 3, dp: 2))
        let mpi = try Self.launch(try TrainProcessTests.mpirun(),
                                  TrainProcessTests.mpiFlags + ["-np", "2", try TrainProcessTests.executable("train"), "--config", two])
        XCTAssertEqual(mpi.status, 0, mpi.output)
        func checksum(_ output: String) -> String? {
            output.split(separator: "\n").first { $0.contains("LLM features:") }?.split(separator: " ").last.map(String.init)
        }
        XCTAssertEqual(try XCTUnwrap(checksum(single.output), single.output), try XCTUnwrap(checksum(mpi.output), mpi.output),
                       "dp = 2 assembled other LLM features than one process")
        let rank1 = try String(contentsOfFile: path("two") + "/logs/rank-1.log", encoding: .utf8)
        XCTAssertTrue(rank1.contains("encoded on rank 1 of 2"), rank1)
        let gridOne = try PNGImage(contentsOf: URL(fileURLWithPath: path("one") + "/samples.png"))
        let gridTwo = try PNGImage(contentsOf: URL(fileURLWithPath: path("two") + "/samples.png"))
        XCTAssertEqual([gridOne.width, gridOne.height], [gridTwo.width, gridTwo.height])
        let differences = zip(gridOne.pixels, gridTwo.pixels).map { abs(Int($0) - Int($1)) }
        XCTAssertLessThanOrEqual(differences.max() ?? 0, 1, "dp = 2 drew other samples than one process")
        let a = try losses("one"), b = try losses("two")
        XCTAssertEqual(a.keys.sorted(), b.keys.sorted())
        for (step, loss) in a { XCTAssertEqual(loss, b[step]!, accuracy: 1e-4 * max(1, abs(loss)), "step \(step)") }
        XCTAssertTrue(FileManager.default.fileExists(atPath: path("two") + "/logs/rank-1.log"), "rank 1 keeps its own log")
    }

    /// pp = 2 splits SmolLM2's layers over two ranks: the features are bitwise those of one
    /// process (the logged checksum of the whole table), also when two replicas' pipelines share
    /// the prompts (dp = 2 × pp = 2), and training on both ranks gives the one-process losses to
    /// float rounding. Too many stages for the layers is an error naming
    /// `topology.pp` on every rank.
    func testPipelineParallelLLMGivesBitwiseTheSameFeatures() throws {
        let one = try writeConfig("cross_adapter", output: "pp1", steps: 2)
        let single = try run("train", ["--config", one])
        XCTAssertEqual(single.status, 0, single.output)
        let two = try writeConfig("cross_adapter", output: "pp2", steps: 2, pp: 2)
        let piped = try Self.launch(try TrainProcessTests.mpirun(),
                                    TrainProcessTests.mpiFlags + ["-np", "2", try TrainProcessTests.executable("train"), "--config", two])
        XCTAssertEqual(piped.status, 0, piped.output)
        func checksum(_ output: String) -> String? {
            output.split(separator: "\n").first { $0.contains("LLM features:") }?.split(separator: " ").last.map(String.init)
        }
        let a = try XCTUnwrap(checksum(single.output), single.output), b = try XCTUnwrap(checksum(piped.output), piped.output)
        XCTAssertEqual(a, b, "pp = 2 features differ from pp = 1")
        XCTAssertTrue(piped.output.contains("LLM pipeline: layers 1…15 | 16…30"), piped.output)
        let x = try losses("pp1"), y = try losses("pp2")
        for (step, loss) in x { XCTAssertEqual(loss, try XCTUnwrap(y[step]), accuracy: 1e-4 * max(1, abs(loss)), "step \(step)") }
        // Both runs stored the same table under the same name in their feature caches, and a
        // second pp = 2 run loads it instead of running the pipeline.
        let stored = try FileManager.default.contentsOfDirectory(atPath: path("pp2/feature-cache")).filter { $0.hasPrefix("llm-layer-") }
        XCTAssertEqual(stored.count, 1, "\(stored)")
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: path("pp1/feature-cache/" + stored[0]))),
                       try Data(contentsOf: URL(fileURLWithPath: path("pp2/feature-cache/" + stored[0]))))
        let again = try Self.launch(try TrainProcessTests.mpirun(),
                                    TrainProcessTests.mpiFlags + ["-np", "2", try TrainProcessTests.executable("train"), "--config", two,
                                                                  "--overwrite", "--max-steps", "1"])
        XCTAssertEqual(again.status, 0, again.output)
        XCTAssertTrue(again.output.contains("LLM layer 30: ") && again.output.contains("distinct prompts loaded from "), again.output)
        XCTAssertFalse(again.output.contains("LLM pipeline: layers"), again.output)
        XCTAssertEqual(checksum(again.output), b)

        // dp = 2 × pp = 2: each replica's pipeline encodes half the prompts and the halves are
        // exchanged; the table is still bitwise one process's.
        let grid = try writeConfig("cross_adapter", output: "dp2pp2", steps: 1, dp: 2, pp: 2)
        let four = try Self.launch(try TrainProcessTests.mpirun(),
                                   TrainProcessTests.mpiFlags + ["-np", "4", try TrainProcessTests.executable("train"), "--config", grid])
        XCTAssertEqual(four.status, 0, four.output)
        XCTAssertTrue(four.output.contains("LLM pipeline: layers 1…15 | 16…30"), four.output)
        XCTAssertTrue(four.output.contains("LLM pipeline: 2 replicas share "), four.output)
        XCTAssertEqual(checksum(four.output), a, "dp = 2 × pp = 2 features differ from pp = 1")
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: path("pp1/feature-cache/" + stored[0]))),
                       try Data(contentsOf: URL(fileURLWithPath: path("dp2pp2/feature-cache/" + stored[0]))))

        let shallow = try writeConfig("cross_adapter", output: "pp-shallow", pp: 2)
        try String(contentsOfFile: shallow, encoding: .utf8).replacingOccurrences(of: "llm_layer: -1", with: "llm_layer: 1")
            .write(toFile: shallow, atomically: true, encoding: .utf8)
        let refused = try Self.launch(try TrainProcessTests.mpirun(),
                                      TrainProcessTests.mpiFlags + ["-np", "2", try TrainProcessTests.executable("train"), "--config", shallow],
                                      timeout: 120)
        XCTAssertNotEqual(refused.status, 0)
        XCTAssertTrue(refused.output.contains("topology.pp"), refused.output)
    }

    /// SUR-adapter's practice, LLM features computed once: `sura features` over the whole
    /// manifest, then `train` reads them through `adapter.llm_features` (only the empty prompt is
    /// encoded) and gives the losses of computing them, to float rounding (other batches, so
    /// other GEMM shapes); also on two data-parallel ranks, and with pp = 2, where they replace
    /// the pipeline pass. A folder of another layer is refused naming the key.
    func testStoredLLMFeaturesFromSuraFeaturesTrainLikeComputedOnes() throws {
        let features = try run("sura", ["features", "--model", Self.llm.path, "--manifest", path("data"), "--layer=-1",
                                        "--output", path("features"), "--shard-size", "5"])
        XCTAssertEqual(features.status, 0, features.output)
        let computed = try run("train", ["--config", try writeConfig("cross_adapter", output: "features-computed")])
        XCTAssertEqual(computed.status, 0, computed.output)
        func storedConfig(_ output: String, folder: String, dp: Int = 1, pp: Int = 1) throws -> String {
            try writeConfig("cross_adapter", output: output, dp: dp, pp: pp)
                .replacingLine("llm_max_length: 16", with: "llm_max_length: 16\n  llm_features: \(path(folder))")
        }
        let stored = try run("train", ["--config", try storedConfig("features-stored", folder: "features")])
        XCTAssertEqual(stored.status, 0, stored.output)
        XCTAssertTrue(stored.output.contains("prompts read from \(path("features")), 1 encoded here"), stored.output)
        XCTAssertFalse(stored.output.contains("tables stored in") && stored.output.contains("LLM layer"), stored.output)
        let a = try losses("features-computed"), b = try losses("features-stored")
        XCTAssertEqual(a.keys.sorted(), b.keys.sorted())
        for (step, loss) in a { XCTAssertEqual(loss, try XCTUnwrap(b[step]), accuracy: 1e-4 * max(1, abs(loss)), "step \(step)") }

        let mpi = try Self.launch(try TrainProcessTests.mpirun(),
                                  TrainProcessTests.mpiFlags + ["-np", "2", try TrainProcessTests.executable("train"),
                                                                "--config", try storedConfig("features-dp2", folder: "features", dp: 2)])
        XCTAssertEqual(mpi.status, 0, mpi.output)
        let c = try losses("features-dp2")
        for (step, loss) in a { XCTAssertEqual(loss, try XCTUnwrap(c[step]), accuracy: 1e-4 * max(1, abs(loss)), "step \(step)") }
        // With pp = 2 the stored rows replace the pipeline pass over the LLM's layers.
        let piped = try Self.launch(try TrainProcessTests.mpirun(),
                                    TrainProcessTests.mpiFlags + ["-np", "2", try TrainProcessTests.executable("train"),
                                                                  "--config", try storedConfig("features-pp2", folder: "features", pp: 2)])
        XCTAssertEqual(piped.status, 0, piped.output)
        XCTAssertFalse(piped.output.contains("LLM pipeline: layers"), piped.output)
        let d = try losses("features-pp2")
        for (step, loss) in a { XCTAssertEqual(loss, try XCTUnwrap(d[step]), accuracy: 1e-4 * max(1, abs(loss)), "step \(step)") }

        let other = try run("sura", ["features", "--model", Self.llm.path, "--manifest", path("data"), "--layer", "3",
                                     "--output", path("features-layer3"), "--max-length", "16"])
        XCTAssertEqual(other.status, 0, other.output)
        let refused = try run("train", ["--config", try storedConfig("features-refused", folder: "features-layer3")])
        XCTAssertNotEqual(refused.status, 0)
        XCTAssertTrue(refused.output.contains("adapter.llm_features") && refused.output.contains("the features are layer 3, adapter.llm_layer resolves to 30"),
                      refused.output)
    }

    /// MiniGPT-5's interleaved generation from the command line: a voken mapper trained with the
    /// LM loss writes a Markdown and an HTML document that start with the prompt; a checkpoint of
    /// another adapter type, or a voken mapper trained without the LM loss, is refused naming why.
    func testInterleavedGenerationWritesADocument() throws {
        let trained = try run("train", ["--config", try writeConfig("voken_mapper", output: "interleaved")])
        XCTAssertEqual(trained.status, 0, trained.output)
        let generated = try run("sura", ["generate", "--interleaved", "--model", path("base"), "--adapter", path("interleaved.safetensors"),
                                         "--prompt", "a red dress", "--max-new-tokens", "6", "--steps", "2", "--output", path("doc")])
        XCTAssertEqual(generated.status, 0, generated.output)
        let markdown = try String(contentsOfFile: path("doc/document.md"), encoding: .utf8)
        XCTAssertTrue(markdown.hasPrefix("**a red dress**"), markdown)
        let html = try String(contentsOfFile: path("doc/document.html"), encoding: .utf8)
        XCTAssertTrue(html.contains("<b>a red dress</b>"), html)
        // Every image the document names was written.
        for line in markdown.split(separator: "\n") where line.hasPrefix("![") {
            let name = String(line[line.index(after: line.firstIndex(of: "(")!) ..< line.lastIndex(of: ")")!])
            XCTAssertNoThrow(try PNGImage(contentsOf: URL(fileURLWithPath: path("doc/" + name))))
        }

        let noLM = try writeConfig("voken_mapper", output: "interleaved-nolm").replacingLine("  export:", with: "  loss: {lm: 0}\n  export:")
        XCTAssertEqual(try run("train", ["--config", noLM]).status, 0)
        let cross = try writeConfig("cross_adapter", output: "interleaved-cross", steps: 1)
        XCTAssertEqual(try run("train", ["--config", cross]).status, 0)
        for (checkpoint, detail) in [("interleaved-nolm", "voken_lm_head"), ("interleaved-cross", "voken_mapper checkpoint")] {
            let refused = try run("sura", ["generate", "--interleaved", "--model", path("base"), "--adapter", path(checkpoint + ".safetensors"),
                                           "--prompt", "a red dress", "--output", path("doc-" + checkpoint)])
            XCTAssertNotEqual(refused.status, 0, refused.output)
            XCTAssertTrue(refused.output.contains(detail) && refused.output.contains(checkpoint + ".safetensors"), refused.output)
            XCTAssertFalse(refused.output.contains("Fatal error"), refused.output)
        }
    }

    /// Unknown adapter types, layers beyond the LLM, a width that is not the UNet's
    /// cross_attention_dim and unknown adapter keys each stop the job naming the key.
    func testBadAdapterConfigsNameTheKey() throws {
        let cases: [(String, String, String)] = [
            ("task", try writeConfig("cross_adapter", output: "bad-type").replacingTask("cross_adapter", with: "crosss_adapter"), "crosss_adapter"),
            ("adapter.llm_layer", try writeConfig("ella", output: "bad-layer", extra: "").replacingLine("llm_layer: -1", with: "llm_layer: 99"), "99"),
            ("adapter.config.output_dim", try writeConfig("cross_adapter", output: "bad-width", adapterConfig: "{heads: 4, output_dim: 256}"), "384"),
            ("adapter.config.hedas", try writeConfig("cross_adapter", output: "bad-key", adapterConfig: "{hedas: 4}"), "hedas"),
            ("adapter.config.input_dim", try writeConfig("ella", output: "bad-llm-width", adapterConfig: "{layers: 1, width: 64, input_dim: 512}"), "576"),
            ("adapter.llm_features", try writeConfig("voken_mapper", output: "bad-features-type")
                .replacingLine("llm_max_length: 16", with: "llm_max_length: 16\n  llm_features: /nowhere"), "voken states"),
            ("adapter.llm_features", try writeConfig("ella", output: "bad-features-folder")
                .replacingLine("llm_max_length: 16", with: "llm_max_length: 16\n  llm_features: /nowhere"), "/nowhere/index.json: cannot be read"),
        ]
        for (key, config, detail) in cases {
            let result = try run("train", ["--config", config])
            XCTAssertNotEqual(result.status, 0, "\(key): \(result.output)")
            XCTAssertTrue(result.output.contains(key) && result.output.contains(detail), "expected '\(key)' and '\(detail)' in:\n\(result.output)")
            XCTAssertFalse(result.output.contains("Fatal error"), result.output)
        }
    }
}

private extension String {
    /// Rewrites the file at this path, replacing the task line.
    func replacingTask(_ old: String, with new: String) throws -> String {
        try replacingLine("task: \(old)", with: "task: \(new)")
    }

    func replacingLine(_ old: String, with new: String) throws -> String {
        let text = try String(contentsOfFile: self, encoding: .utf8)
        try text.replacingOccurrences(of: old, with: new).write(toFile: self, atomically: true, encoding: .utf8)
        return self
    }
}
