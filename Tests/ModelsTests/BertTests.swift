import Foundation
import Models
import Tensor
import XCTest

/// The text-encoder fixtures written by Tests/Reference/make_text_encoder_fixtures.py, and helpers
/// shared by BertTests and CLIPTextTests.
enum TextEncoderFixtures {
    static let root: URL = {
        if let base = Bundle.module.resourceURL?.appendingPathComponent("Fixtures/text_encoders"),
           FileManager.default.fileExists(atPath: base.path) {
            return base
        }
        return URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures/text_encoders")
    }()

    static func url(_ name: String) -> URL { root.appendingPathComponent(name) }

    static func tensors(_ name: String) throws -> [String: Tensor] {
        try SafeTensorsFile(contentsOf: url(name)).loadAll()
    }

    /// A [B, L] tensor of integral values as rows of Ints.
    static func rows(_ t: Tensor) -> [[Int]] {
        let v = t.scalars, l = t.shape[1]
        return (0..<t.shape[0]).map { r in (0..<l).map { Int(v[r * l + $0]) } }
    }

    /// A fresh empty folder, removed at the end of the test.
    static func temporaryFolder(_ test: XCTestCase) throws -> URL {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("sura-text-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        test.addTeardownBlock { try? FileManager.default.removeItem(at: url) }
        return url
    }

    /// Copies fixture folder `name` into a temporary folder, optionally editing its config
    /// object and its tensors on the way.
    static func copy(_ name: String, into test: XCTestCase, config edit: (inout [String: Any]) -> Void = { _ in },
                     tensors editTensors: (inout [String: Tensor]) -> Void = { _ in }) throws -> URL {
        let dir = try temporaryFolder(test)
        var config = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: url(name).appendingPathComponent("config.json"))) as? [String: Any])
        edit(&config)
        try JSONSerialization.data(withJSONObject: config).write(to: dir.appendingPathComponent("config.json"))
        var tensors = try SafeTensorsFile(contentsOf: url(name).appendingPathComponent("model.safetensors")).loadAll()
        editTensors(&tensors)
        try SafeTensorsWriter.write(tensors, to: dir.appendingPathComponent("model.safetensors"))
        return dir
    }

    /// Runs `body`, which must throw a `TextModelError`, and returns it.
    static func error(_ body: () throws -> Void, file: StaticString = #filePath, line: UInt = #line) -> TextModelError? {
        do {
            try body()
            XCTFail("expected a TextModelError", file: file, line: line)
        } catch let error as TextModelError {
            return error
        } catch {
            XCTFail("expected a TextModelError, got \(error)", file: file, line: line)
        }
        return nil
    }
}

/// BERT (transformers' `BertModel`) against fixtures written by transformers, and the real
/// all-MiniLM-L6-v2 against sentence embeddings computed in Python.
final class BertTests: XCTestCase {
    typealias F = TextEncoderFixtures

    static let minilm = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .appendingPathComponent("../../cache/models/minilm").standardizedFileURL

    private func tinyModel() throws -> BertModel { try BertModel.load(directory: F.url("bert_tiny")) }

    // MARK: Parity

    func testMatchesTransformersOnPaddedBatch() throws {
        let model = try tinyModel()
        XCTAssertNotNil(model.pooler)
        let io = try F.tensors("bert_tiny_io.safetensors")
        let ids = F.rows(io["input_ids"]!), mask = F.rows(io["attention_mask"]!), types = F.rows(io["token_type_ids"]!)
        let out = try withoutGrad {
            try model(inputIds: ids, attentionMask: mask, tokenTypeIds: types, outputHiddenStates: true)
        }
        assertParity(out.lastHiddenState, io["last_hidden_state"], "last_hidden_state")
        assertParity(out.poolerOutput, io["pooler_output"], "pooler_output")
        XCTAssertEqual(out.hiddenStates.count, 3)
        for (i, h) in out.hiddenStates.enumerated() { assertParity(h, io["hidden_states.\(i)"], "hidden_states.\(i)") }

        let mean = try TokenPooling.mean(out.lastHiddenState, attentionMask: mask)
        assertParity(mean, io["mean_pooled"], "mean pooling")
        let encoding = BatchEncoding(ids: ids, attentionMask: mask, tokenTypeIds: types)
        let sentences = try withoutGrad { try model.sentenceEmbeddings(encoding) }
        assertParity(sentences, io["sentence_embedding"], "sentence embedding")

        // No mask and no token types: every position attends, all segments 0.
        let plain = try withoutGrad { try model(inputIds: F.rows(io["unmasked_ids"]!)) }
        assertParity(plain.lastHiddenState, io["unmasked_last_hidden_state"], "unmasked last_hidden_state")
    }

    func testPaddingDoesNotChangeRealTokens() throws {
        let model = try tinyModel()
        let short = try withoutGrad { try model(inputIds: [[2, 7, 9]]).lastHiddenState }
        let padded = try withoutGrad { try model(inputIds: [[2, 7, 9, 0, 0]], attentionMask: [[1, 1, 1, 0, 0]]).lastHiddenState }
        assertParity(padded.sliced(axis: 1, 0, 3).contiguousCopy(), short, "padded row", tolerance: 1e-5)
    }

    // MARK: Loading

    func testLoadsPrefixedTaskCheckpointAndOldBuffers() throws {
        let dir = try F.copy("bert_tiny", into: self, tensors: { tensors in
            var prefixed: [String: Tensor] = [:]
            for (k, v) in tensors { prefixed["bert." + k] = v }
            prefixed["bert.embeddings.position_ids"] = Tensor(shape: [1, 24], data: (0..<24).map(Float.init))
            prefixed["cls.predictions.bias"] = Tensor(zeros: [99])
            tensors = prefixed
        })
        let model = try BertModel.load(directory: dir)
        let io = try F.tensors("bert_tiny_io.safetensors")
        let out = try withoutGrad {
            try model(inputIds: F.rows(io["input_ids"]!), attentionMask: F.rows(io["attention_mask"]!),
                      tokenTypeIds: F.rows(io["token_type_ids"]!))
        }
        assertParity(out.lastHiddenState, io["last_hidden_state"], "prefixed last_hidden_state")
        assertParity(out.poolerOutput, io["pooler_output"], "prefixed pooler_output")
    }

    func testPoolerFollowsTheCheckpoint() throws {
        let dir = try F.copy("bert_tiny", into: self, tensors: { t in t = t.filter { !$0.key.hasPrefix("pooler.") } })
        XCTAssertNil(try BertModel.load(directory: dir).pooler)
        XCTAssertNil(try BertModel.load(directory: F.url("bert_tiny"), addPoolingLayer: false).pooler)
        guard case .weightsDoNotMatch(_, let e)? = F.error({ _ = try BertModel.load(directory: dir, addPoolingLayer: true) }) else {
            return XCTFail("expected weightsDoNotMatch")
        }
        XCTAssertEqual(e.missing.sorted(), ["pooler.dense.bias", "pooler.dense.weight"])
    }

    func testSaveRoundTrip() throws {
        let model = try BertModel(config: BertConfig(vocabSize: 50, hiddenSize: 16, numHiddenLayers: 1,
                                                     numAttentionHeads: 2, intermediateSize: 32,
                                                     maxPositionEmbeddings: 10, hiddenAct: .geluNew), seed: 3)
        let dir = try F.temporaryFolder(self)
        try model.save(to: dir)
        let reloaded = try BertModel.load(directory: dir)
        XCTAssertEqual(reloaded.config, model.config)
        let a = try withoutGrad { try model(inputIds: [[1, 4, 9, 2]]).lastHiddenState }
        let b = try withoutGrad { try reloaded(inputIds: [[1, 4, 9, 2]]).lastHiddenState }
        XCTAssertEqual(a.scalars, b.scalars)
        XCTAssertEqual(Set(model.stateDict().keys), Set(try SafeTensorsFile(contentsOf: dir.appendingPathComponent("model.safetensors")).names))
        XCTAssertNotNil(model.tensor(named: "encoder.layer.0.attention.self.query.weight"))
        XCTAssertNotNil(model.tensor(named: "encoder.layer.0.output.LayerNorm.bias"))
    }

    func testMissingAndWrongFilesAreNamed() throws {
        let empty = try F.temporaryFolder(self)
        XCTAssertEqual(F.error { _ = try BertModel.load(directory: empty) },
                       .missingFile(directory: empty.path, tried: ["config.json"], hint: nil))
        try FileManager.default.copyItem(at: F.url("bert_tiny/config.json"), to: empty.appendingPathComponent("config.json"))
        XCTAssertEqual(F.error { _ = try BertModel.load(directory: empty) },
                       .missingFile(directory: empty.path, tried: ["model.safetensors", "model.safetensors.index.json"], hint: nil))
        try Data([1, 2, 3]).write(to: empty.appendingPathComponent("pytorch_model.bin"))
        guard case .missingFile(_, _, let hint?)? = F.error({ _ = try BertModel.load(directory: empty) }) else {
            return XCTFail("expected a hint about pytorch_model.bin")
        }
        XCTAssertTrue(hint.contains("pytorch_model.bin"), hint)
        // A weights file that is not safetensors names the file.
        try Data("not safetensors".utf8).write(to: empty.appendingPathComponent("model.safetensors"))
        XCTAssertThrowsError(try BertModel.load(directory: empty)) { error in
            XCTAssertTrue("\(error)".contains("model.safetensors"), "\(error)")
        }
        // A config that is not JSON names the file.
        let bad = try F.copy("bert_tiny", into: self)
        try Data("{ hidden".utf8).write(to: bad.appendingPathComponent("config.json"))
        guard case .unreadableConfig(let path, _)? = F.error({ _ = try BertModel.load(directory: bad) }) else {
            return XCTFail("expected unreadableConfig")
        }
        XCTAssertTrue(path.hasSuffix("config.json"))
    }

    // MARK: Bad input

    func testConfigContradictingWeightsNamesTheKey() throws {
        let cases: [(String, Any, String, Int)] = [("hidden_size", 64, "hidden_size", 32),
                                                   ("vocab_size", 120, "vocab_size", 99),
                                                   ("max_position_embeddings", 512, "max_position_embeddings", 24),
                                                   ("intermediate_size", 128, "intermediate_size", 64),
                                                   ("num_hidden_layers", 3, "num_hidden_layers", 2),
                                                   ("type_vocab_size", 1, "type_vocab_size", 2)]
        for (key, value, expectedKey, implied) in cases {
            let dir = try F.copy("bert_tiny", into: self, config: { $0[key] = value })
            let error = F.error { _ = try BertModel.load(directory: dir) }
            guard case .configContradictsWeights(let file, let k, _, let i, let tensor, _)? = error else {
                XCTFail("\(key): expected configContradictsWeights, got \(String(describing: error))")
                continue
            }
            XCTAssertEqual(k, expectedKey)
            XCTAssertEqual(i, implied, key)
            XCTAssertTrue(file.hasSuffix("model.safetensors"))
            XCTAssertTrue(error!.description.contains(tensor), error!.description)
        }
        // Layer count the other way: the config has fewer layers than the weights.
        let fewer = try F.copy("bert_tiny", into: self, config: { $0["num_hidden_layers"] = 1 })
        guard case .configContradictsWeights(_, "num_hidden_layers", 1, 2, _, _)? = F.error({ _ = try BertModel.load(directory: fewer) }) else {
            return XCTFail("expected num_hidden_layers 1 vs 2")
        }
        // A tensor missing with a consistent config: the strict load names it.
        let missing = try F.copy("bert_tiny", into: self, tensors: { $0["encoder.layer.1.output.dense.bias"] = nil })
        guard case .weightsDoNotMatch(_, let e)? = F.error({ _ = try BertModel.load(directory: missing) }) else {
            return XCTFail("expected weightsDoNotMatch")
        }
        XCTAssertEqual(e.missing, ["encoder.layer.1.output.dense.bias"])
    }

    func testConfigKeysAreCheckedByName() throws {
        let base = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: F.url("bert_tiny/config.json"))) as? [String: Any])
        func parse(_ edit: (inout [String: Any]) -> Void) -> TextModelError? {
            var c = base
            edit(&c)
            return F.error { _ = try BertConfig(jsonData: JSONSerialization.data(withJSONObject: c), source: "cfg") }
        }
        for key in BertConfig.requiredKeys {
            XCTAssertEqual(parse { $0[key] = nil }, .missingConfigKey(path: "cfg", key: key))
        }
        XCTAssertEqual(parse { $0["num_attention_heads"] = 5 },
                       .invalidConfigValue(path: "cfg", key: "num_attention_heads", value: "5",
                                           message: "hidden_size = 32 is not divisible into 5 heads"))
        guard case .invalidConfigValue(_, "hidden_size", "\"big\"", _)? = parse({ $0["hidden_size"] = "big" }) else {
            return XCTFail("expected an invalid hidden_size")
        }
        guard case .invalidConfigValue(_, "vocab_size", "0", _)? = parse({ $0["vocab_size"] = 0 }) else {
            return XCTFail("expected an invalid vocab_size")
        }
        guard case .unsupportedConfig(_, "hidden_act", "\"mish\"", let reason)? = parse({ $0["hidden_act"] = "mish" }) else {
            return XCTFail("expected an unsupported hidden_act")
        }
        XCTAssertTrue(reason.contains("\"quick_gelu\""), reason)
        guard case .unsupportedConfig(_, "model_type", _, _)? = parse({ $0["model_type"] = "roberta" }) else {
            return XCTFail("expected an unsupported model_type")
        }
        guard case .unsupportedConfig(_, "position_embedding_type", _, _)? = parse({ $0["position_embedding_type"] = "relative_key" }) else {
            return XCTFail("expected an unsupported position_embedding_type")
        }
        guard case .unsupportedConfig(_, "is_decoder", _, _)? = parse({ $0["is_decoder"] = true }) else {
            return XCTFail("expected an unsupported is_decoder")
        }
        let config = try BertConfig(contentsOf: F.url("bert_tiny/config.json"))
        XCTAssertEqual(config, BertConfig(vocabSize: 99, hiddenSize: 32, numHiddenLayers: 2, numAttentionHeads: 4,
                                          intermediateSize: 64, maxPositionEmbeddings: 24))
        XCTAssertEqual(try BertConfig(jsonData: config.jsonData()), config)
    }

    func testBadInputsThrowNamedErrors() throws {
        let model = try tinyModel()
        let long = [[Int]](repeating: [Int](repeating: 3, count: 25), count: 2)
        let tooLong = F.error { _ = try model(inputIds: long) }
        XCTAssertEqual(tooLong, .sequenceTooLong(length: 25, limit: 24, key: "max_position_embeddings"))
        XCTAssertTrue(tooLong!.description.contains("max_position_embeddings = 24"), tooLong!.description)
        XCTAssertEqual(F.error { _ = try model(inputIds: [[1, 2, 3], [4, 99, 5]]) },
                       .tokenIdOutOfRange(input: "input_ids", id: 99, row: 1, column: 1, limit: 99, key: "vocab_size"))
        XCTAssertEqual(F.error { _ = try model(inputIds: [[1, -1]]) },
                       .tokenIdOutOfRange(input: "input_ids", id: -1, row: 0, column: 1, limit: 99, key: "vocab_size"))
        XCTAssertEqual(F.error { _ = try model(inputIds: [[1, 2], [3]]) },
                       .invalidInput(name: "input_ids", message: "row 1 has 1 tokens but row 0 has 2; pad the rows to one length"))
        guard case .invalidInput("input_ids", _)? = F.error({ _ = try model(inputIds: []) }) else { return XCTFail("empty batch") }
        guard case .invalidInput("attention_mask", _)? = F.error({ _ = try model(inputIds: [[1, 2]], attentionMask: [[1]]) }) else {
            return XCTFail("mask shape")
        }
        guard case .invalidInput("attention_mask", _)? = F.error({ _ = try model(inputIds: [[1, 2]], attentionMask: [[1, 2]]) }) else {
            return XCTFail("mask values")
        }
        XCTAssertEqual(F.error { _ = try model(inputIds: [[1, 2]], tokenTypeIds: [[0, 2]]) },
                       .tokenIdOutOfRange(input: "token_type_ids", id: 2, row: 0, column: 1, limit: 2, key: "type_vocab_size"))
        guard case .invalidInput("inputs_embeds", _)? = F.error({ _ = try model(inputsEmbeds: Tensor(zeros: [1, 3, 31])) }) else {
            return XCTFail("embeds width")
        }
        XCTAssertEqual(F.error { _ = try model(inputsEmbeds: Tensor(zeros: [1, 30, 32])) },
                       .sequenceTooLong(length: 30, limit: 24, key: "max_position_embeddings"))
    }

    // MARK: Gradients

    func testGradientsReachSuppliedEmbeddingsOfAFrozenModel() throws {
        let model = try tinyModel()
        model.freeze()
        XCTAssertEqual(model.trainableParameterCount, 0)
        let words = try model.embeddings.wordEmbeddings([5, 6, 7, 8], shape: [2, 2]).contiguousCopy()
        words.requiresGrad = true
        let out = try model(inputsEmbeds: words, attentionMask: [[1, 1], [1, 0]])
        let loss = (out.lastHiddenState * out.lastHiddenState).sum() + out.poolerOutput!.sum()
        loss.backward()
        let grad = try XCTUnwrap(words.grad)
        XCTAssertEqual(grad.shape, [2, 2, 32])
        XCTAssertGreaterThan(grad.scalars.map(abs).max()!, 0)
        XCTAssertTrue(model.parameters().allSatisfy { $0.grad == nil })

        // Same values through ids: the embeddings path equals the lookup path.
        let byIds = try withoutGrad { try model(inputIds: [[5, 6], [7, 8]], attentionMask: [[1, 1], [1, 0]]) }
        assertParity(out.lastHiddenState.detached(), byIds.lastHiddenState, "inputs_embeds vs ids", tolerance: 1e-6)

        // Unfreezing part of the model sends gradients there only.
        model.unfreeze(prefix: "encoder.layer.1")
        let again = try model(inputIds: [[5, 6], [7, 8]])
        again.lastHiddenState.square().sum().backward()
        XCTAssertNotNil(model.encoder.layers[1].attention.selfAttention.query.weight.grad)
        XCTAssertNil(model.encoder.layers[0].attention.selfAttention.query.weight.grad)
        XCTAssertNil(model.embeddings.wordEmbeddings.weight.grad)
    }

    // MARK: Real weights

    private func requireMiniLM() throws -> (BertModel, WordPieceTokenizer) {
        let dir = Self.minilm
        guard FileManager.default.fileExists(atPath: dir.appendingPathComponent("model.safetensors").path) else {
            throw XCTSkip("all-MiniLM-L6-v2 is not in \(dir.path); the setup script fetches it")
        }
        let model = try BertModel.load(directory: dir)
        model.freeze()
        let tokenizer = try WordPieceTokenizer(tokenizerJSON: dir.appendingPathComponent("tokenizer.json"))
        return (model, tokenizer)
    }

    func testMiniLMSentenceEmbeddingsMatchPythonAndRankMeaning() throws {
        let (model, tokenizer) = try requireMiniLM()
        XCTAssertEqual(model.config.hiddenSize, 384)
        let reference = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: F.url("minilm_sentences.json"))) as? [String: Any])
        let sentences = try XCTUnwrap(reference["sentences"] as? [String])
        let ids = try XCTUnwrap(reference["input_ids"] as? [[Int]])
        let expected = try XCTUnwrap(reference["embeddings"] as? [[Double]])
        XCTAssertEqual(sentences.map { tokenizer.encode($0) }, ids)

        let embeddings = try withoutGrad { try model.sentenceEmbeddings(sentences, tokenizer: tokenizer) }
        XCTAssertEqual(embeddings.shape, [5, 384])
        let values = embeddings.scalars
        var worst: Float = 0
        for (r, row) in expected.enumerated() {
            for (c, e) in row.enumerated() { worst = max(worst, abs(values[r * 384 + c] - Float(e))) }
        }
        XCTAssertLessThan(worst, 1e-4, "largest difference from transformers: \(worst)")

        func cosine(_ a: Int, _ b: Int) -> Float {
            (0..<384).reduce(0) { $0 + values[a * 384 + $1] * values[b * 384 + $1] }
        }
        let similar = cosine(0, 1), different = cosine(0, 2)
        print("MiniLM: cosine(\"\(sentences[0])\", \"\(sentences[1])\") = \(similar), "
              + "cosine(\"\(sentences[0])\", \"\(sentences[2])\") = \(different), largest |Δ| vs Python \(worst)")
        XCTAssertGreaterThan(similar - different, 0.3)
        // Each sentence alone gives the same vector as inside the padded batch.
        let alone = try withoutGrad { try model.sentenceEmbeddings([sentences[2]], tokenizer: tokenizer) }
        assertParity(alone, embeddings.sliced(axis: 0, 2, 3).contiguousCopy(), "unpadded vs padded", tolerance: 1e-5)
    }

    /// Not an assertion on time (DESIGN §4): prints MiniLM's forward time for the benchmark notes.
    func testMiniLMForwardTime() throws {
        let (model, tokenizer) = try requireMiniLM()
        let prompts = (0..<16).map { "a photo of \($0 + 1) red sneakers next to a small leather bag on a wooden table" }
        let encoding = tokenizer.encodeBatch(prompts, maxLength: 18, padding: .fixed(18))
        XCTAssertEqual(encoding.ids.map(\.count), [Int](repeating: 18, count: 16))
        _ = try withoutGrad { try model(encoding) }
        var times: [Double] = []
        for _ in 0..<5 {
            let start = DispatchTime.now().uptimeNanoseconds
            let out = try withoutGrad { try model(encoding) }
            times.append(Double(DispatchTime.now().uptimeNanoseconds - start) / 1e6)
            XCTAssertEqual(out.lastHiddenState.shape, [16, 18, 384])
        }
        times.sort()
        print("MiniLM forward, 16 prompts × 18 tokens, \(Threads.count) threads: median \(times[2]) ms, best \(times[0]) ms")
    }
}
