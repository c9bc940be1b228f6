import Foundation
import Models
import SuraTestSupport
import Tensor
import XCTest

/// `sura features`, `sura convert` and `sura complete` run as real processes: the feature cache
/// against a direct forward of the fixture Llama, the converted folder loaded back, the real
/// SmolLM2 answering a question, and bad input refused with a message naming it.
final class LLMCLIProcessTests: XCTestCase {
    /// Runs `sura arguments…` (at most `timeout` s), returning (status, stdout, stderr).
    static func sura(_ arguments: [String], timeout: Double = 60) throws -> (status: Int32, out: String, err: String) {
        let run = try ChildProcess.run(try BuiltProducts.executable("sura").path, arguments, timeout: timeout)
        return (run.status, run.out, run.err)
    }

    private var scratch: URL!

    override func setUpWithError() throws {
        scratch = FileManager.default.temporaryDirectory.appendingPathComponent("sura-llmcli-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: scratch, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: scratch)
    }

    private func fixtureGGUF() throws -> URL {
        let root = try XCTUnwrap(Bundle.module.url(forResource: "Fixtures", withExtension: nil), "test bundle has no Fixtures folder")
        return root.appendingPathComponent("llama/untied.gguf")
    }

    private let texts = ["a red shoe", "two bags next to a hat", "hi"]
    private let prompts = ["red shoe, studio photo", "bags, hat", "a b c"]

    /// A manifest of the three records (with a blank line, so line numbers differ from indices).
    private func writeManifest() throws -> URL {
        var lines = zip(texts, prompts).enumerated().map { i, pair in
            "{\"file_name\": \"img\(i).png\", \"text\": \"\(pair.0)\", \"prompt\": \"\(pair.1)\"}"
        }
        lines.insert("", at: 2)
        let url = scratch.appendingPathComponent("metadata.jsonl")
        try (lines.joined(separator: "\n") + "\n").write(to: url, atomically: true, encoding: .utf8)
        return url
    }

    private func readJSON(_ url: URL) throws -> [String: Any] {
        try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: url)) as? [String: Any], "\(url.path) is not a JSON object")
    }

    func testFeatureCacheEqualsDirectForwardAndResumes() throws {
        let gguf = try fixtureGGUF()
        let manifest = try writeManifest()
        let output = scratch.appendingPathComponent("features")
        let args = ["features", "--model", gguf.path, "--manifest", manifest.path, "--layer", "1",
                    "--output", output.path, "--shard-size", "2", "--batch", "2"]
        let run = try Self.sura(args)
        XCTAssertEqual(run.status, 0, run.err)

        let index = try readJSON(output.appendingPathComponent("index.json"))
        XCTAssertEqual(index["count"] as? Int, 3)
        XCTAssertEqual(index["layer"] as? Int, 1)
        XCTAssertEqual(index["field"] as? String, "text")
        XCTAssertEqual(index["hidden_size"] as? Int, 64)
        XCTAssertEqual(index["num_hidden_layers"] as? Int, 2)
        let shards = try XCTUnwrap(index["shards"] as? [[String: Any]])
        XCTAssertEqual(shards.map { $0["file"] as? String }, ["features-00000.safetensors", "features-00001.safetensors"])
        XCTAssertEqual(shards.map { $0["count"] as? Int }, [2, 1])

        // Each record's rows equal the hidden state of its prompt run alone; padding is zero.
        let model = try LlamaForCausalLM(gguf: gguf)
        let tokenizer = try LlamaTokenizerLoader.tokenizer(for: gguf)
        var record = 0
        var firstShardBytes = Data()
        for shard in shards {
            let url = output.appendingPathComponent(shard["file"] as! String)
            if record == 0 { firstShardBytes = try Data(contentsOf: url) }
            let file = try SafeTensorsFile(contentsOf: url)
            let states = try file.tensor(named: "hidden_states"), mask = try file.tensor(named: "attention_mask")
            let count = shard["count"] as! Int, length = states.shape[1]
            XCTAssertEqual(states.shape, [count, length, 64])
            XCTAssertEqual(mask.shape, [count, length])
            XCTAssertEqual(file.metadata["lines"], record == 0 ? "[1,2]" : "[4]")
            let values = states.scalars, maskValues = mask.scalars
            for r in 0..<count {
                let ids = tokenizer.encode(texts[record], addSpecialTokens: true)
                XCTAssertEqual(maskValues[(r * length)..<((r + 1) * length)].map { Int($0) },
                               [Int](repeating: 1, count: ids.count) + [Int](repeating: 0, count: length - ids.count))
                let expected = try withoutGrad { try model.hiddenState(inputIds: [ids], layer: 1) }.scalars
                let got = Array(values[(r * length * 64)..<(r * length * 64 + ids.count * 64)])
                let scale = max(expected.map(abs).max() ?? 1, 1e-6)
                let error = zip(got, expected).map { abs($0 - $1) }.max() ?? 0
                XCTAssertLessThan(error / scale, 1e-4, "record \(record)")
                let padding = values[(r * length * 64 + ids.count * 64)..<((r + 1) * length * 64)]
                XCTAssertTrue(padding.allSatisfy { $0 == 0 }, "record \(record) padding")
                record += 1
            }
        }
        XCTAssertEqual(record, 3)

        // Again: every shard is kept (resumed) and the files are unchanged.
        let again = try Self.sura(args)
        XCTAssertEqual(again.status, 0, again.err)
        XCTAssertTrue(again.out.contains("already cached"), again.out)
        XCTAssertEqual(try Data(contentsOf: output.appendingPathComponent("features-00000.safetensors")), firstShardBytes)

        // From scratch into another folder: the same bytes (deterministic).
        let other = scratch.appendingPathComponent("features2")
        var otherArgs = args
        otherArgs[otherArgs.firstIndex(of: output.path)!] = other.path
        XCTAssertEqual(try Self.sura(otherArgs).status, 0)
        XCTAssertEqual(try Data(contentsOf: other.appendingPathComponent("features-00000.safetensors")), firstShardBytes)

        // Other settings into the same folder are refused without --overwrite, accepted with it.
        // A negative layer is written --layer=-1 (a bare -1 would read as an option).
        var changed = args + ["--field", "prompt"]
        changed.replaceSubrange(changed.firstIndex(of: "--layer")!...(changed.firstIndex(of: "--layer")! + 1), with: ["--layer=-1"])
        let refused = try Self.sura(changed)
        XCTAssertNotEqual(refused.status, 0)
        XCTAssertTrue(refused.err.contains("--overwrite"), refused.err)
        let replaced = try Self.sura(changed + ["--overwrite"])
        XCTAssertEqual(replaced.status, 0, replaced.err)
        let newIndex = try readJSON(output.appendingPathComponent("index.json"))
        XCTAssertEqual(newIndex["layer"] as? Int, 2)
        XCTAssertEqual(newIndex["field"] as? String, "prompt")
    }

    func testFeaturesRefuseALayerBeyondTheModel() throws {
        let run = try Self.sura(["features", "--model", try fixtureGGUF().path, "--manifest", try writeManifest().path,
                                 "--layer", "3", "--output", scratch.appendingPathComponent("out").path])
        XCTAssertNotEqual(run.status, 0)
        XCTAssertTrue(run.err.contains("--layer 3"), run.err)
        XCTAssertTrue(run.err.contains("2 layers"), run.err)
        XCTAssertFalse(FileManager.default.fileExists(atPath: scratch.appendingPathComponent("out/index.json").path))
    }

    func testFeaturesRefuseABadManifestLineNamingIt() throws {
        let manifest = scratch.appendingPathComponent("metadata.jsonl")
        try "{\"file_name\": \"a.png\", \"text\": \"a shoe\", \"prompt\": \"shoe\"}\n{\"file_name\": \"b.png\", \"text\": 3}\n"
            .write(to: manifest, atomically: true, encoding: .utf8)
        let run = try Self.sura(["features", "--model", try fixtureGGUF().path, "--manifest", manifest.path,
                                 "--layer", "1", "--output", scratch.appendingPathComponent("out").path])
        XCTAssertNotEqual(run.status, 0)
        XCTAssertTrue(run.err.contains("metadata.jsonl:2"), run.err)
    }

    func testConvertWritesALoadableFolder() throws {
        let gguf = try fixtureGGUF()
        let folder = scratch.appendingPathComponent("converted")
        let run = try Self.sura(["convert", gguf.path, folder.path])
        XCTAssertEqual(run.status, 0, run.err)
        XCTAssertTrue(run.out.contains("model.safetensors"), run.out)
        XCTAssertTrue(run.out.contains("tokenizer.json"), run.out)

        let loaded = try LlamaForCausalLM(directory: folder)
        let original = try LlamaForCausalLM(gguf: gguf)
        let ids = try LlamaTokenizerLoader.tokenizer(directory: folder).encode("two bags next to a hat", addSpecialTokens: true)
        XCTAssertEqual(ids, try LlamaTokenizerLoader.tokenizer(for: gguf).encode("two bags next to a hat", addSpecialTokens: true))
        let a = try withoutGrad { try loaded(inputIds: [ids]).logits! }.scalars
        let b = try withoutGrad { try original(inputIds: [ids]).logits! }.scalars
        XCTAssertEqual(a.count, b.count)
        XCTAssertLessThan(zip(a, b).map { abs($0 - $1) }.max() ?? 1, 1e-4)

        let again = try Self.sura(["convert", gguf.path, folder.path])
        XCTAssertNotEqual(again.status, 0)
        XCTAssertTrue(again.err.contains(folder.path) && again.err.contains("--overwrite"), again.err)
        XCTAssertEqual(try Self.sura(["convert", gguf.path, folder.path, "--overwrite"]).status, 0)
    }

    /// The cached SmolLM2 GGUF (DESIGN.md §3), found upwards from this source file, or SURA_SMOLLM2_GGUF.
    private func smolLM2() throws -> URL {
        let fm = FileManager.default
        if let path = ProcessInfo.processInfo.environment["SURA_SMOLLM2_GGUF"], fm.fileExists(atPath: path) {
            return URL(fileURLWithPath: path)
        }
        var dir = URL(fileURLWithPath: #filePath).resolvingSymlinksInPath().deletingLastPathComponent()
        for _ in 0..<4 {
            let candidate = dir.appendingPathComponent("cache/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
            if fm.fileExists(atPath: candidate.path) { return candidate }
            dir = dir.deletingLastPathComponent()
        }
        throw XCTSkip("SmolLM2-135M-Instruct.Q4_1.gguf is not cached (run the setup script)")
    }

    func testCompleteAnswersTheCapitalOfFrance() throws {
        let model = try smolLM2()
        let run = try Self.sura(["complete", "--model", model.path, "--prompt", "What is the capital of France?",
                                 "--max-tokens", "16"], timeout: 120)
        XCTAssertEqual(run.status, 0, run.err)
        XCTAssertTrue(run.out.contains("Paris"), run.out)
        XCTAssertTrue(run.err.contains("new tokens"), run.err)
    }

    func testCompleteRefusesAMissingModel() throws {
        let missing = scratch.appendingPathComponent("nowhere.gguf").path
        let run = try Self.sura(["complete", "--model", missing, "--prompt", "hi"])
        XCTAssertNotEqual(run.status, 0)
        XCTAssertTrue(run.err.contains("nowhere.gguf"), run.err)
    }
}
