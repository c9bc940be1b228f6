import Foundation
import Models
import Tensor
import XCTest

/// Fixtures written by Tests/Reference/make_llama_fixtures.py (see its header for the layout).
enum LlamaFixtures {
    static let root: URL = {
        if let base = Bundle.module.resourceURL?.appendingPathComponent("Fixtures/llama"),
           FileManager.default.fileExists(atPath: base.path) {
            return base
        }
        return URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures/llama")
    }()

    static func url(_ name: String) -> URL { root.appendingPathComponent(name) }

    static let io: [String: Tensor] = (try? SafeTensorsFile(contentsOf: url("llama_io.safetensors")).loadAll()) ?? [:]

    static func json(_ name: String) throws -> [String: Any] {
        try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: url(name))) as? [String: Any])
    }

    /// A [B, L] tensor of integral values as rows of Ints.
    static func rows(_ t: Tensor) -> [[Int]] {
        let v = t.scalars, l = t.shape[1]
        return (0..<t.shape[0]).map { r in (0..<l).map { Int(v[r * l + $0]) } }
    }

    static func temporaryFolder(_ test: XCTestCase) throws -> URL {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("sura-llama-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        test.addTeardownBlock { try? FileManager.default.removeItem(at: url) }
        return url
    }

    /// Copies fixture folder `name`, editing its config object and tensors on the way.
    static func copy(_ name: String, into test: XCTestCase, config edit: (inout [String: Any]) -> Void = { _ in },
                     tensors editTensors: (inout [String: Tensor]) -> Void = { _ in }) throws -> URL {
        let dir = try temporaryFolder(test)
        var config = try json("\(name)/config.json")
        edit(&config)
        try JSONSerialization.data(withJSONObject: config).write(to: dir.appendingPathComponent("config.json"))
        var tensors = try SafeTensorsFile(contentsOf: url(name).appendingPathComponent("model.safetensors")).loadAll()
        editTensors(&tensors)
        try SafeTensorsWriter.write(tensors, to: dir.appendingPathComponent("model.safetensors"))
        return dir
    }

    /// The rows of `t` ([B, L, …]) at the positions whose mask is 1, concatenated: [tokens, …].
    static func realTokens(_ t: Tensor, mask: [[Int]]) -> Tensor {
        var pieces: [Tensor] = []
        for (b, row) in mask.enumerated() {
            for (i, m) in row.enumerated() where m == 1 {
                pieces.append(t.sliced(axis: 0, b, b + 1).sliced(axis: 1, i, i + 1).reshaped([1, -1]))
            }
        }
        return Tensor.concat(pieces, axis: 0)
    }

    static func assertClose(_ a: Tensor, _ b: Tensor, _ what: String, tolerance: Float = 1e-4,
                            file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(a.shape, b.shape, "\(what) shape", file: file, line: line)
        guard a.shape == b.shape else { return }
        let err = relativeError(a, b)
        if ProcessInfo.processInfo.environment["LLAMA_TEST_VERBOSE"] != nil { print("parity \(what): \(err)") }
        XCTAssertLessThan(err, tolerance, "\(what): relative error \(err)", file: file, line: line)
    }

    /// The `LlamaError` `body` throws (a failure when it throws nothing or something else).
    static func error(_ body: () throws -> Void, file: StaticString = #filePath, line: UInt = #line) -> LlamaError? {
        do {
            try body()
            XCTFail("expected a LlamaError", file: file, line: line)
        } catch let e as LlamaError {
            return e
        } catch {
            XCTFail("expected a LlamaError, got \(error)", file: file, line: line)
        }
        return nil
    }

    static let smolLM2 = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .appendingPathComponent("../../cache/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf").standardizedFileURL
}

final class LlamaTests: XCTestCase {
    typealias F = LlamaFixtures

    // MARK: Config

    func testConfigReadsTransformersKeysAndRoundTrips() throws {
        let config = try LlamaConfig(contentsOf: F.url("tied/config.json"))
        XCTAssertEqual(config.hiddenSize, 48)
        XCTAssertEqual(config.numHiddenLayers, 3)
        XCTAssertEqual(config.numAttentionHeads, 6)
        XCTAssertEqual(config.numKeyValueHeads, 2)
        XCTAssertEqual(config.headDim, 8)
        XCTAssertEqual(config.ropeTheta, 1e5)   // from transformers 5's rope_parameters
        XCTAssertEqual(config.rmsNormEps, 1e-6)
        XCTAssertTrue(config.tieWordEmbeddings)
        XCTAssertTrue(config.attentionBias)
        XCTAssertEqual(config.eosTokenIds, [2])
        XCTAssertEqual(try LlamaConfig(jsonData: config.jsonData()), config)
        // transformers 4 spelling, eos as a list, defaults for the optional keys.
        let old = #"{"model_type": "llama", "vocab_size": 10, "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "rope_theta": 500000.0, "rope_scaling": null, "eos_token_id": [2, 7]}"#
        let c = try LlamaConfig(jsonData: Data(old.utf8))
        XCTAssertEqual(c.ropeTheta, 5e5)
        XCTAssertEqual(c.eosTokenIds, [2, 7])
        XCTAssertEqual(c.numKeyValueHeads, 2)
        XCTAssertEqual(c.headDim, 4)
        XCTAssertFalse(c.tieWordEmbeddings)
    }

    func testGGUFConfigMatchesFolderConfig() throws {
        for name in ["untied", "tied"] {
            let folder = try LlamaConfig(contentsOf: F.url("\(name)/config.json"))
            let gguf = try LlamaConfig(gguf: GGUFFile(contentsOf: F.url("\(name).gguf")))
            XCTAssertEqual(gguf, folder, name)
        }
    }

    // MARK: Rotary embedding

    func testRotaryLayoutsGiveTheSameScoresAndInvert() throws {
        var rng = SeededGenerator(seed: 3)
        let heads = 3, d = 8, tokens = 5
        let positions = [0, 1, 4, 9, 30]
        let q = Tensor.randn([tokens, heads * d], using: &rng), k = Tensor.randn([tokens, heads * d], using: &rng)
        let half = RotaryEmbedding(headDim: d, base: 1e4, layout: .rotateHalf)
        let pairs = RotaryEmbedding(headDim: d, base: 1e4, layout: .adjacentPairs)
        // Moving the coordinates of every head to the adjacent-pair layout (what the GGUF converter
        // does to the rows of q_proj and k_proj) leaves q·k unchanged.
        func toPairs(_ t: Tensor) -> Tensor {
            RotaryLayout.rotateHalf.convertRows(t.transposed(0, 1).contiguous(), heads: heads, to: .adjacentPairs).transposed(0, 1).contiguous()
        }
        let s1 = half(q, positions: positions).reshaped([tokens, heads, d]).permuted([1, 0, 2])
            .matmul(half(k, positions: positions).reshaped([tokens, heads, d]).permuted([1, 2, 0]))
        let s2 = pairs(toPairs(q), positions: positions).reshaped([tokens, heads, d]).permuted([1, 0, 2])
            .matmul(pairs(toPairs(k), positions: positions).reshaped([tokens, heads, d]).permuted([1, 2, 0]))
        F.assertClose(s2, s1, "scores", tolerance: 1e-5)
        // Rows converted there and back are unchanged.
        XCTAssertEqual(RotaryLayout.adjacentPairs.convertRows(toPairs(q).transposed(0, 1).contiguous(), heads: heads, to: .rotateHalf).scalars,
                       q.transposed(0, 1).contiguous().scalars)
        // Position 0 is the identity; a rotation keeps each pair's norm.
        let r = half(q, positions: positions)
        XCTAssertEqual(Array(r.scalars[0..<(heads * d)]), Array(q.scalars[0..<(heads * d)]))
        XCTAssertEqual(r.square().sum().item, q.square().sum().item, accuracy: 1e-3)
    }

    func testRotaryGradientIsTheInverseRotation() throws {
        var rng = SeededGenerator(seed: 4)
        for layout in RotaryLayout.allCases {
            let rope = RotaryEmbedding(headDim: 6, base: 100, layout: layout)
            let x = Tensor.randn([2, 3, 12], using: &rng)
            x.requiresGrad = true
            let result = GradientChecker.check([x]) { rope($0[0], positions: [0, 2, 5, 1, 7, 3]) }
            XCTAssertTrue(result.passed, "\(layout): \(result)")
        }
    }

    // MARK: Parity with transformers

    func testMatchesTransformersOnPaddedBatches() throws {
        for name in ["untied", "tied"] {
            let model = try LlamaForCausalLM(directory: F.url(name))
            try assertMatchesFixture(model, name)
        }
    }

    func testGGUFInBothLayoutsMatchesTransformers() throws {
        for name in ["untied", "tied"] {
            for layout in RotaryLayout.allCases {
                let model = try LlamaForCausalLM(gguf: F.url("\(name).gguf"), ropeLayout: layout)
                XCTAssertEqual(model.ropeLayout, layout)
                try assertMatchesFixture(model, "\(name).gguf/\(layout)")
            }
            // Un-permuted on load, the weights are exactly transformers'.
            let hf = try SafeTensorsFile(contentsOf: F.url("\(name)/model.safetensors")).loadAll()
            let loaded = try LlamaForCausalLM(gguf: F.url("\(name).gguf")).stateDict(in: .rotateHalf)
            XCTAssertEqual(Set(loaded.keys), Set(hf.keys))
            for (key, t) in hf { XCTAssertEqual(loaded[key]?.scalars, t.scalars, key) }
        }
    }

    private func assertMatchesFixture(_ model: LlamaForCausalLM, _ what: String, file: StaticString = #filePath, line: UInt = #line) throws {
        let name = what.hasPrefix("tied") ? "tied" : "untied"
        for side in ["left", "right"] {
            let key = "\(name).\(side)"
            let ids = F.rows(try XCTUnwrap(F.io["\(key).input_ids"]))
            let mask = F.rows(try XCTUnwrap(F.io["\(key).attention_mask"]))
            let positions = F.rows(try XCTUnwrap(F.io["\(key).position_ids"]))
            for explicit in [true, false] {
                let out = try withoutGrad {
                    try model(inputIds: ids, attentionMask: mask, positionIds: explicit ? positions : nil, outputHiddenStates: true)
                }
                XCTAssertEqual(out.hiddenStates.count, model.config.numHiddenLayers + 1)
                for (i, h) in out.hiddenStates.enumerated() {
                    let expected = try XCTUnwrap(F.io["\(key).hidden_states.\(i)"])
                    F.assertClose(F.realTokens(h, mask: mask), F.realTokens(expected, mask: mask),
                                  "\(what) \(side) hidden_states[\(i)]", file: file, line: line)
                }
                F.assertClose(F.realTokens(try XCTUnwrap(out.logits), mask: mask),
                              F.realTokens(try XCTUnwrap(F.io["\(key).logits"]), mask: mask), "\(what) \(side) logits",
                              file: file, line: line)
            }
        }
    }

    // MARK: Batching and the key/value cache

    func testBatchedPromptsEqualPromptsAlone() throws {
        let model = try LlamaForCausalLM(directory: F.url("untied"))
        let prompts = [[1, 17, 200, 45, 99, 3, 250], [1, 80, 81, 82], [1, 299]]
        try withoutGrad {
            let alone = try prompts.map { try model(inputIds: [$0]).logits! }
            for side in ["left", "right"] {
                let l = 7
                let ids = prompts.map { p in side == "left" ? [Int](repeating: 2, count: l - p.count) + p : p + [Int](repeating: 2, count: l - p.count) }
                let mask = prompts.map { p in side == "left" ? [Int](repeating: 0, count: l - p.count) + [Int](repeating: 1, count: p.count)
                                                              : [Int](repeating: 1, count: p.count) + [Int](repeating: 0, count: l - p.count) }
                let batched = try model(inputIds: ids, attentionMask: mask).logits!
                for (r, p) in prompts.enumerated() {
                    let rowMask = [mask[r]]
                    F.assertClose(F.realTokens(batched.sliced(axis: 0, r, r + 1), mask: rowMask),
                                  alone[r].reshaped([p.count, -1]), "\(side) row \(r)", tolerance: 1e-5)
                }
                // Last-token logits pick each row's last real position.
                let last = try model(inputIds: ids, attentionMask: mask, logits: .lastToken).logits!
                for r in 0..<prompts.count {
                    F.assertClose(last.sliced(axis: 0, r, r + 1).reshaped([-1]),
                                  alone[r].sliced(axis: 1, prompts[r].count - 1, prompts[r].count).reshaped([-1]),
                                  "last token row \(r)", tolerance: 1e-5)
                }
            }
        }
    }

    func testCachedDecodingMatchesFullForward() throws {
        let model = try LlamaForCausalLM(gguf: F.url("tied.gguf"), ropeLayout: .adjacentPairs)
        let full = [[5, 9, 200, 31, 64, 7, 7, 120, 3], [2, 2, 2, 40, 41, 42, 43, 44, 45]]
        let mask = [[1, 1, 1, 1, 1, 1, 1, 1, 1], [0, 0, 0, 1, 1, 1, 1, 1, 1]]
        try withoutGrad {
            let reference = try model(inputIds: full, attentionMask: mask).logits!      // [2, 9, V]
            let cache = model.makeCache(batch: 2, capacity: 2)                           // grows on the way
            let prefill = 5
            let first = try model(inputIds: full.map { Array($0[0..<prefill]) },
                                  attentionMask: mask.map { Array($0[0..<prefill]) }, cache: cache).logits!
            F.assertClose(F.realTokens(first, mask: mask.map { Array($0[0..<prefill]) }),
                          F.realTokens(reference.sliced(axis: 1, 0, prefill), mask: mask.map { Array($0[0..<prefill]) }),
                          "prefill", tolerance: 1e-5)
            for t in prefill..<9 {
                let step = try model(inputIds: full.map { [$0[t]] }, cache: cache, logits: .lastToken).logits!
                F.assertClose(step, reference.sliced(axis: 1, t, t + 1).reshaped([2, -1]), "step \(t)", tolerance: 1e-5)
            }
            XCTAssertEqual(cache.length, 9)
            XCTAssertEqual(cache.nextPositions, [9, 6])
        }
    }

    // MARK: Generation

    func testGreedyGenerationMatchesTransformers() throws {
        let generation = try F.json("generation.json")
        for name in ["untied", "tied"] {
            let model = try LlamaForCausalLM(directory: F.url(name))
            let cases = try XCTUnwrap(generation[name] as? [[String: Any]])
            for penalty in [1.0, 1.3] {
                let selected = cases.filter { ($0["repetition_penalty"] as? Double) == penalty }
                let prompts = selected.map { $0["prompt"] as! [Int] }
                let config = LlamaGenerationConfig(maxNewTokens: 8, repetitionPenalty: Float(penalty), eosTokenIds: [])
                let batched = try model.generate(prompts: prompts, config: config)   // one left-padded batch
                for (i, c) in selected.enumerated() {
                    XCTAssertEqual(batched[i].tokens, c["new_tokens"] as? [Int], "\(name) penalty \(penalty) prompt \(i)")
                    XCTAssertEqual(batched[i].finishReason, .maxNewTokens)
                }
            }
        }
    }

    func testLogitsProcessorsMatchTransformers() throws {
        let cases = try XCTUnwrap(F.json("generation.json")["processors"] as? [[String: Any]])
        for (n, c) in cases.enumerated() {
            let config = LlamaGenerationConfig(doSample: true, temperature: Float(c["temperature"] as! Double),
                                               topK: c["top_k"] as! Int, topP: Float(c["top_p"] as! Double),
                                               repetitionPenalty: Float(c["penalty"] as! Double))
            let scores = (c["scores"] as! [Double]).map(Float.init)
            let got = LlamaLogitsProcessor(config: config).process(scores, previous: c["previous"] as! [Int])
            let expected = c["processed"] as! [Any]
            for (i, e) in expected.enumerated() {
                if let v = e as? Double {
                    XCTAssertEqual(got[i], Float(v), accuracy: 1e-5, "case \(n) token \(i)")
                } else {
                    XCTAssertEqual(got[i], -.infinity, "case \(n) token \(i) should be removed")
                }
            }
        }
    }

    func testSamplingIsSeededAndStopsAtEndOfSequence() throws {
        let model = try LlamaForCausalLM(directory: F.url("tied"))
        let prompt = [[1, 80, 81, 82]]
        let sampling = LlamaGenerationConfig(maxNewTokens: 6, doSample: true, temperature: 0.9, topK: 20, topP: 0.9, eosTokenIds: [], seed: 7)
        let a = try model.generate(prompts: prompt, config: sampling)
        let b = try model.generate(prompts: prompt, config: sampling)
        XCTAssertEqual(a, b)
        XCTAssertEqual(a[0].tokens.count, 6)
        var streamed: [Int] = []
        let greedy = try model.generate(prompts: prompt, config: .greedy(maxNewTokens: 4)) { _, token in streamed.append(token) }
        XCTAssertEqual(streamed, greedy[0].tokens)
        // The first greedy token declared end-of-sequence: nothing is produced.
        var stop = LlamaGenerationConfig.greedy(maxNewTokens: 4)
        stop.eosTokenIds = [greedy[0].tokens[0]]
        let stopped = try model.generate(prompts: prompt + [[1, 299]], config: stop)
        XCTAssertEqual(stopped[0], LlamaGeneration(tokens: [], finishReason: .endOfSequence))
        // Near the position limit (64) generation ends with .contextLimit.
        let long = try model.generate(prompts: [[Int](repeating: 5, count: 62)], config: LlamaGenerationConfig(maxNewTokens: 10, eosTokenIds: []))
        XCTAssertEqual(long[0].finishReason, .contextLimit)
        XCTAssertEqual(long[0].tokens.count, 3)
    }

    // MARK: Features, gradients, saving, conversion

    func testHiddenStatesStopAfterTheRequestedLayer() throws {
        let model = try LlamaForCausalLM(directory: F.url("tied"))
        let ids = [[1, 17, 200, 45], [2, 1, 80, 81]], mask = [[1, 1, 1, 1], [0, 1, 1, 1]]
        try withoutGrad {
            let all = try model(inputIds: ids, attentionMask: mask, outputHiddenStates: true).hiddenStates
            let picked = try model.hiddenStates(inputIds: ids, attentionMask: mask, layers: [1, 0, -1, 2])
            XCTAssertEqual(picked[0].scalars, all[1].scalars)
            XCTAssertEqual(picked[1].scalars, all[0].scalars)
            XCTAssertEqual(picked[2].scalars, all[3].scalars)
            XCTAssertEqual(picked[3].scalars, all[2].scalars)
            XCTAssertEqual(try model.hiddenState(inputIds: ids, attentionMask: mask, layer: 2).shape, [2, 4, 48])
        }
        let e = F.error { _ = try model.hiddenState(inputIds: ids, layer: 4) }
        XCTAssertEqual(e, .invalidInput(name: "layer", message: "4 is outside -4...3 (0 = embeddings, 3 = after the final norm)"))
    }

    func testGradientsFlowThroughTheDecoder() throws {
        let config = LlamaConfig(vocabSize: 11, hiddenSize: 8, intermediateSize: 12, numHiddenLayers: 1,
                                 numAttentionHeads: 2, numKeyValueHeads: 1, ropeTheta: 100, maxPositionEmbeddings: 16,
                                 initializerRange: 0.5)
        let model = try LlamaForCausalLM(config: config, seed: 9)
        var rng = SeededGenerator(seed: 1)
        let embeds = Tensor.randn([2, 3, 8], using: &rng)
        embeds.requiresGrad = true
        let result = GradientChecker.check([embeds]) { inputs in
            try! model(inputsEmbeds: inputs[0], attentionMask: [[1, 1, 1], [0, 1, 1]]).logits!
                .sliced(axis: 1, 1, 3)
        }
        XCTAssertTrue(result.passed, "\(result)")
        let loss = try model(inputIds: [[1, 2, 3]]).logits!.square().mean()
        loss.backward()
        XCTAssertNotNil(model.model.layers[0].selfAttention.qProj.weight.grad)
        XCTAssertNotNil(model.model.embedTokens.weight.grad)
    }

    func testSaveWritesATransformersFolder() throws {
        let dir = try F.temporaryFolder(self)
        let model = try LlamaForCausalLM(gguf: F.url("tied.gguf"), ropeLayout: .adjacentPairs)
        try model.save(to: dir)
        let names = try SafeTensorsFile(contentsOf: dir.appendingPathComponent("model.safetensors")).names
        XCTAssertFalse(names.contains("lm_head.weight"))
        let reloaded = try LlamaForCausalLM(directory: dir)
        XCTAssertEqual(reloaded.config, model.config)
        try assertMatchesFixture(reloaded, "tied (saved)")
        XCTAssertEqual(model.parameterCount, reloaded.parameterCount)
    }

    func testConvertGGUFToTransformersFolder() throws {
        let dir = try F.temporaryFolder(self)
        let report = try LlamaConversion.convert(gguf: F.url("tied.gguf"), to: dir)
        XCTAssertNil(report.tokenizerSkipped)
        XCTAssertEqual(Set(report.files), ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                                           "special_tokens_map.json", "generation_config.json"])
        try assertMatchesFixture(LlamaForCausalLM(directory: dir), "tied (converted)")
        // The written tokenizer.json tokenizes like the tokenizer the GGUF was made from.
        let expected = try F.json("tokenizer_expected.json")
        let texts = expected["texts"] as! [String], ids = expected["ids"] as! [[Int]]
        let fromJSON = try LlamaTokenizerLoader.tokenizer(directory: dir)
        let fromGGUF = try LlamaTokenizerLoader.tokenizer(gguf: GGUFFile(contentsOf: F.url("tied.gguf")))
        for (text, want) in zip(texts, ids) {
            XCTAssertEqual(fromJSON.encode(text), want, text)
            XCTAssertEqual(fromGGUF.encode(text), want, text)
            XCTAssertEqual(fromJSON.decode(want), text)
        }
        XCTAssertEqual(fromJSON.specialTokens.eos, 2)
        let tokenizerConfig = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: dir.appendingPathComponent("tokenizer_config.json"))) as? [String: Any])
        XCTAssertEqual(tokenizerConfig["eos_token"] as? String, "<|im_end|>")
        XCTAssertNotNil(tokenizerConfig["chat_template"] as? String)
        // A second conversion into the same folder needs overwrite.
        XCTAssertEqual(F.error { try LlamaConversion.convert(gguf: F.url("tied.gguf"), to: dir) }, .outputExists(path: dir.path))
        XCTAssertNoThrow(try LlamaConversion.convert(gguf: F.url("tied.gguf"), to: dir, overwrite: true))
    }

    // MARK: Bad input

    func testBadGGUFFilesAreNamed() throws {
        let arch = F.error { _ = try LlamaForCausalLM(gguf: F.url("bad_architecture.gguf")) }
        XCTAssertEqual(arch, .unsupportedArchitecture(source: F.url("bad_architecture.gguf").path, key: "general.architecture", value: "\"gpt2\""))
        let ffn = F.error { _ = try LlamaForCausalLM(gguf: F.url("bad_ffn.gguf")) }
        XCTAssertEqual(ffn, .configContradictsWeights(file: F.url("bad_ffn.gguf").path, key: "llama.feed_forward_length",
                                                      configValue: 40, impliedValue: 32, tensor: "blk.0.ffn_gate.weight", shape: [32, 16]))
        let missing = F.error { _ = try LlamaForCausalLM(gguf: F.url("bad_missing_key.gguf")) }
        XCTAssertEqual(missing, .missingConfigKey(source: F.url("bad_missing_key.gguf").path, key: "llama.block_count"))
        XCTAssertThrowsError(try LlamaForCausalLM(gguf: F.url("no_such.gguf")))
        let dir = try F.temporaryFolder(self)
        XCTAssertThrowsError(try LlamaConversion.convert(gguf: F.url("bad_ffn.gguf"), to: dir))
        XCTAssertTrue(arch!.description.contains("general.architecture = \"gpt2\""))
    }

    func testBadFoldersAreNamed() throws {
        let empty = try F.temporaryFolder(self)
        XCTAssertEqual(F.error { _ = try LlamaForCausalLM(directory: empty) },
                       .missingFile(directory: empty.path, tried: ["config.json"], hint: nil))
        try FileManager.default.copyItem(at: F.url("untied/config.json"), to: empty.appendingPathComponent("config.json"))
        XCTAssertEqual(F.error { _ = try LlamaForCausalLM(directory: empty) },
                       .missingFile(directory: empty.path, tried: ["model.safetensors", "model.safetensors.index.json"], hint: nil))

        func loadError(config edit: @escaping (inout [String: Any]) -> Void = { _ in },
                       tensors editTensors: @escaping (inout [String: Tensor]) -> Void = { _ in }) throws -> (LlamaError?, URL) {
            let dir = try F.copy("untied", into: self, config: edit, tensors: editTensors)
            return (F.error { _ = try LlamaForCausalLM(directory: dir) }, dir)
        }
        var (e, dir) = try loadError(config: { $0["architectures"] = ["BertModel"] })
        XCTAssertEqual(e, .unsupportedArchitecture(source: dir.appendingPathComponent("config.json").path, key: "architectures", value: "[\"BertModel\"]"))
        (e, dir) = try loadError(config: { $0["model_type"] = "gpt2" })
        XCTAssertEqual(e, .unsupportedArchitecture(source: dir.appendingPathComponent("config.json").path, key: "model_type", value: "\"gpt2\""))
        (e, dir) = try loadError(config: { $0["hidden_act"] = "gelu" })
        XCTAssertEqual(e, .unsupportedConfig(source: dir.appendingPathComponent("config.json").path, key: "hidden_act",
                                             value: "\"gelu\"", reason: "Llama's MLP is SwiGLU with \"silu\""))
        (e, dir) = try loadError(config: { $0["vocab_size"] = nil })
        XCTAssertEqual(e, .missingConfigKey(source: dir.appendingPathComponent("config.json").path, key: "vocab_size"))
        (e, dir) = try loadError(config: { $0["rope_parameters"] = ["rope_type": "yarn", "rope_theta": 1e5] })
        guard case .unsupportedConfig(_, "rope_parameters.rope_type", _, _) = e else { return XCTFail("\(String(describing: e))") }
        (e, dir) = try loadError(config: { $0["intermediate_size"] = 100 })
        XCTAssertEqual(e, .configContradictsWeights(file: dir.appendingPathComponent("model.safetensors").path, key: "intermediate_size",
                                                    configValue: 100, impliedValue: 96, tensor: "model.layers.0.mlp.gate_proj.weight", shape: [96, 64]))
        (e, dir) = try loadError(config: { $0["num_key_value_heads"] = 4 })
        XCTAssertEqual(e, .configContradictsWeights(file: dir.appendingPathComponent("model.safetensors").path, key: "num_key_value_heads",
                                                    configValue: 4, impliedValue: 2, tensor: "model.layers.0.self_attn.k_proj.weight", shape: [32, 64]))
        (e, dir) = try loadError(config: { $0["num_hidden_layers"] = 3 })
        guard case .configContradictsWeights(_, "num_hidden_layers", 3, 2, _, _) = e else { return XCTFail("\(String(describing: e))") }
        (e, dir) = try loadError(tensors: { $0["model.layers.1.mlp.up_proj.weight"] = nil; $0["extra.weight"] = Tensor(zeros: [1]) })
        guard case .weightsDoNotMatch(_, let stateError) = e else { return XCTFail("\(String(describing: e))") }
        XCTAssertEqual(stateError.missing, ["model.layers.1.mlp.up_proj.weight"])
        XCTAssertEqual(stateError.unexpected, ["extra.weight"])
    }

    func testBadInputsThrowNamedErrors() throws {
        let model = try LlamaForCausalLM(directory: F.url("untied"))
        let tooLong = [[Int](repeating: 5, count: 65)]
        XCTAssertEqual(F.error { _ = try model(inputIds: tooLong) }, .sequenceTooLong(length: 65, limit: 64, key: "max_position_embeddings"))
        XCTAssertEqual(F.error { _ = try model.generate(prompts: tooLong) }, .sequenceTooLong(length: 65, limit: 64, key: "max_position_embeddings"))
        XCTAssertTrue(LlamaError.sequenceTooLong(length: 65, limit: 64, key: "max_position_embeddings").description
            .contains("max_position_embeddings = 64"))
        let cache = model.makeCache(batch: 1)
        _ = try withoutGrad { try model(inputIds: [[Int](repeating: 5, count: 60)], cache: cache) }
        XCTAssertEqual(F.error { _ = try model(inputIds: [[1, 2, 3, 4, 5]], cache: cache) },
                       .sequenceTooLong(length: 65, limit: 64, key: "max_position_embeddings"))
        XCTAssertEqual(F.error { _ = try model(inputIds: [[1, 300]]) },
                       .tokenIdOutOfRange(input: "input_ids", id: 300, row: 0, column: 1, limit: 300))
        XCTAssertEqual(F.error { _ = try model(inputIds: [[1, 2], [3]]) },
                       .invalidInput(name: "input_ids", message: "row 1 has 1 tokens but row 0 has 2; pad the rows to one length"))
        XCTAssertEqual(F.error { _ = try model(inputIds: [[1, 2]], attentionMask: [[1, 2]]) },
                       .invalidInput(name: "attention_mask", message: "[0][1] = 2; a mask holds 1 for tokens and 0 for padding"))
        XCTAssertNotNil(F.error { _ = try model(inputIds: [[1, 2]], attentionMask: [[1]]) })
        XCTAssertNotNil(F.error { _ = try model(inputIds: [[1, 2]], cache: model.makeCache(batch: 2)) })
        XCTAssertNotNil(F.error { _ = try model.generate(prompts: [[]]) })
        XCTAssertNotNil(F.error { _ = try model.generate(prompts: [[1]], config: LlamaGenerationConfig(topP: 0)) })
    }

    // MARK: Real weights

    func testSmolLM2AnswersTheCapitalOfFrance() throws {
        let url = F.smolLM2
        guard FileManager.default.fileExists(atPath: url.path) else {
            throw XCTSkip("SmolLM2-135M-Instruct is not in \(url.path); scripts/setup fetches it")
        }
        let file = try GGUFFile(contentsOf: url)
        let model = try LlamaForCausalLM(gguf: file)
        model.freeze()
        XCTAssertEqual(model.config, LlamaConfig.smolLM2_135M)
        let tokenizer = try LlamaTokenizerLoader.tokenizer(gguf: file)
        let template = LlamaTokenizerLoader.chatTemplate(gguf: file) ?? .smolLM2
        let answer = try model.complete([.user("What is the capital of France?")], tokenizer: tokenizer, template: template,
                                        config: .greedy(maxNewTokens: 24))
        XCTAssertTrue(answer.contains("Paris"), answer)
        if ProcessInfo.processInfo.environment["LLAMA_TEST_VERBOSE"] != nil { print("SmolLM2 answer: \(answer)") }

        // GGML's adjacent-pair layout on the stored rows gives the same logits.
        let ids = tokenizer.encodeChat([.user("Name a colour.")], template: template)
        let pairs = try LlamaForCausalLM(gguf: file, ropeLayout: .adjacentPairs)
        try withoutGrad {
            let a = try model(inputIds: [ids], logits: .lastToken).logits!
            let b = try pairs(inputIds: [ids], logits: .lastToken).logits!
            F.assertClose(b, a, "adjacent pairs vs rotate half", tolerance: 1e-4)
        }
    }
}
