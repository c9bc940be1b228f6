import Foundation
import XCTest
import Tensor
import Data
import Coordinator

/// `LLMFeatureShards`, the reader behind `adapter.llm_features`, on a hand-written folder of the
/// `sura features` layout (2 shards, D = 2): rows are found by prompt text across shards and cut
/// to the tokens training keeps; prompts the folder lacks, or holds with fewer tokens, go to the
/// encoder; a changed manifest, another layer or model, and a damaged index are refused naming
/// the file and key.
final class LLMFeatureShardsTests: XCTestCase {
    private var folder: URL!
    private let d = 2
    private let texts = ["a cat", "a dog", "a red hat", "a cat"]

    override func setUpWithError() throws {
        folder = FileManager.default.temporaryDirectory.appendingPathComponent("sura-llm-features-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        try writeManifest(texts)
        // Record r, token t, channel c holds 100·r + 10·t + c; record r has r + 2 tokens (shard 0: records 0, 1; shard 1: 2, 3).
        try writeShard("features-00000.safetensors", records: [0, 1])
        try writeShard("features-00001.safetensors", records: [2, 3])
        try writeIndex()
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: folder)
    }

    private var manifestURL: URL { folder.appendingPathComponent("data/metadata.jsonl") }
    private var model: URL { folder.appendingPathComponent("model.gguf") }

    private func writeManifest(_ texts: [String]) throws {
        try FileManager.default.createDirectory(at: manifestURL.deletingLastPathComponent(), withIntermediateDirectories: true)
        try DatasetManifest.write(texts.enumerated().map { i, text in
            ["file_name": .string("\(i).png"), "text": .string(text), "prompt": .string(text + ", detailed")]
        }, to: manifestURL)
    }

    private func tokens(_ record: Int) -> Int { record + 2 }

    private func writeShard(_ name: String, records: [Int]) throws {
        let length = records.map(tokens).max()!
        var hidden = [Float](repeating: 0, count: records.count * length * d)
        var mask = [Float](repeating: 0, count: records.count * length)
        for (row, r) in records.enumerated() {
            for t in 0 ..< tokens(r) {
                mask[row * length + t] = 1
                for c in 0 ..< d { hidden[(row * length + t) * d + c] = Float(100 * r + 10 * t + c) }
            }
        }
        try SafeTensorsWriter.write([("hidden_states", Tensor(shape: [records.count, length, d], data: hidden)),
                                     ("attention_mask", Tensor(shape: [records.count, length], data: mask))],
                                    metadata: ["format": LLMFeatureShards.format, "layer": "3", "field": "text"],
                                    to: folder.appendingPathComponent(name))
    }

    private func writeIndex(_ change: (inout [String: Any]) -> Void = { _ in }) throws {
        var index: [String: Any] = [
            "format": LLMFeatureShards.format, "version": 1, "model": model.path, "manifest": manifestURL.path, "layer": 3,
            "num_hidden_layers": 4, "field": "text", "count": 4, "hidden_size": d, "max_length": 64, "shard_size": 2,
            "truncated": 0, "prompts_fnv1a": LLMFeatureShards.promptsFingerprint(texts),
            "shards": [["file": "features-00000.safetensors", "count": 2, "first_record": 0, "max_length": 3],
                       ["file": "features-00001.safetensors", "count": 2, "first_record": 2, "max_length": 5]],
        ]
        change(&index)
        try JSONSerialization.data(withJSONObject: index).write(to: folder.appendingPathComponent("index.json"))
    }

    func testRowsAreFoundByTextCutToTheKeptTokensAndTheRestEncoded() throws {
        let shards = try LLMFeatureShards(directory: folder)
        try shards.check(model: model, layer: 3, field: "text", hiddenSize: d)
        // "a red hat" is record 2 (4 tokens stored) and keeps 3; "a dog" (3 stored) wants 4, so it is
        // encoded; "a cat" is records 0 and 3: the first serves; "" and "a bird" are not stored.
        let prompts = ["a red hat", "", "a cat", "a dog", "a bird"]
        var asked: [String] = []
        let (table, computed) = try shards.table(prompts: prompts, tokenCounts: [3, 1, 2, 4, 2], maxLength: 5) { missing in
            asked = missing
            return Tensor(shape: [missing.count, 5, d + 1], data: [Float](repeating: -1, count: missing.count * 5 * (d + 1)))
        }
        XCTAssertEqual(asked, ["", "a dog", "a bird"])
        XCTAssertEqual(computed, 3)
        let rows = try table.features(prompts).scalars
        let row = 5 * (d + 1)
        func expected(record: Int, keep: Int) -> [Float] {
            (0 ..< 5).flatMap { t -> [Float] in
                t < keep ? [Float(100 * record + 10 * t), Float(100 * record + 10 * t + 1), 1] : [0, 0, 0]
            }
        }
        XCTAssertEqual(Array(rows[0 ..< row]), expected(record: 2, keep: 3))
        XCTAssertEqual(Array(rows[2 * row ..< 3 * row]), expected(record: 0, keep: 2))
        for i in [1, 3, 4] { XCTAssertEqual(Array(rows[i * row ..< (i + 1) * row]), [Float](repeating: -1, count: row)) }
    }

    func testAChangedManifestIsRefused() throws {
        try writeManifest(["a cat", "a dog", "a blue hat", "a cat"])
        let shards = try LLMFeatureShards(directory: folder)
        XCTAssertThrowsError(try shards.table(prompts: ["a cat"], tokenCounts: [2], maxLength: 4) { _ in XCTFail("not reached"); return Tensor(zeros: [1]) }) {
            XCTAssertTrue("\($0)".contains("has changed since the features were computed"), "\($0)")
            XCTAssertTrue("\($0)".contains(self.manifestURL.path), "\($0)")
        }
    }

    func testAnotherLayerModelFieldOrWidthIsRefused() throws {
        let shards = try LLMFeatureShards(directory: folder)
        let cases: [(URL, Int, String, Int, String)] = [
            (model, 2, "text", d, "layer 3, adapter.llm_layer resolves to 2"),
            (folder.appendingPathComponent("other.gguf"), 3, "text", d, "training uses"),
            (model, 3, "prompt", d, "adapter.prompt_field is 'prompt'"),
            (model, 3, "text", 576, "the LLM's is 576"),
        ]
        for (url, layer, field, width, message) in cases {
            XCTAssertThrowsError(try shards.check(model: url, layer: layer, field: field, hiddenSize: width)) {
                XCTAssertTrue("\($0)".contains(message) && "\($0)".contains("index.json"), "\($0)")
            }
        }
    }

    func testADamagedIndexOrShardNamesWhatIsWrong() throws {
        let cases: [((inout [String: Any]) -> Void, String)] = [
            ({ $0["format"] = "sura-feature-tables" }, "key 'format'"),
            ({ $0.removeValue(forKey: "prompts_fnv1a") }, "run it again"),
            ({ $0["count"] = 5 }, "'count' says 5"),
            ({ $0["layer"] = "three" }, "key 'layer'"),
            ({ $0["shards"] = [["file": "../x.safetensors", "count": 4, "first_record": 0]] }, "shards[0]"),
            ({ $0["shards"] = [["file": "features-00001.safetensors", "count": 2, "first_record": 2]] }, "shards[0].first_record"),
        ]
        for (change, message) in cases {
            try writeIndex(change)
            XCTAssertThrowsError(try LLMFeatureShards(directory: folder)) {
                XCTAssertTrue("\($0)".contains(message) && "\($0)".contains("index.json"), "\(message): \($0)")
            }
        }
        try FileManager.default.removeItem(at: folder.appendingPathComponent("index.json"))
        XCTAssertThrowsError(try LLMFeatureShards(directory: folder)) { XCTAssertTrue("\($0)".contains("sura features --output"), "\($0)") }

        // A shard cut short on disk: its error names the shard file.
        try writeIndex()
        let shard = folder.appendingPathComponent("features-00001.safetensors")
        let bytes = try Data(contentsOf: shard)
        try bytes.prefix(bytes.count / 2).write(to: shard)
        let shards = try LLMFeatureShards(directory: folder)
        XCTAssertThrowsError(try shards.table(prompts: ["a red hat"], tokenCounts: [2], maxLength: 4) { _ in Tensor(zeros: [1]) }) {
            XCTAssertTrue("\($0)".contains(shard.path), "\($0)")
        }
    }
}
