import Foundation
import Models
import Tensor
import XCTest

/// CLIP text encoders (transformers' `CLIPTextModel`, `CLIPTextModelWithProjection`) against
/// fixtures written by transformers: a Stable Diffusion-style `text_encoder/` folder tokenized by
/// the tiny CLIP tokenizer, and a modern-eos model with projection.
final class CLIPTextTests: XCTestCase {
    typealias F = TextEncoderFixtures

    private func tokenizer() throws -> CLIPTokenizer {
        let dir = F.root.deletingLastPathComponent().appendingPathComponent("tokenizers")
        return try CLIPTokenizer(vocabJSON: dir.appendingPathComponent("clip-vocab.json"),
                                 mergesTxt: dir.appendingPathComponent("clip-merges.txt"))
    }

    private func prompts() throws -> [String] {
        let json = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: F.url("clip_sd_prompts.json"))) as? [String: Any])
        return try XCTUnwrap(json["prompts"] as? [String])
    }

    private func assertOutputs(_ out: CLIPTextModelOutput, _ io: [String: Tensor], prefix: String, layers: Int = 2,
                               file: StaticString = #filePath, line: UInt = #line) {
        assertParity(out.lastHiddenState, io[prefix + "last_hidden_state"], prefix + "last_hidden_state", file: file, line: line)
        assertParity(out.poolerOutput, io[prefix + "pooler_output"], prefix + "pooler_output", file: file, line: line)
        XCTAssertEqual(out.hiddenStates.count, layers + 1, file: file, line: line)
        for (i, h) in out.hiddenStates.enumerated() {
            assertParity(h, io[prefix + "hidden_states.\(i)"], prefix + "hidden_states.\(i)", file: file, line: line)
        }
    }

    // MARK: Parity

    /// The SD 1.x layout (`text_model.` keys, old `position_ids` buffer, eos_token_id 2) with
    /// prompts tokenized in Swift, both as Stable Diffusion calls it (77 tokens, no mask) and
    /// padded to the longest with a mask.
    func testStableDiffusionFolderMatchesTransformersWithSwiftTokenizer() throws {
        let model = try CLIPTextModel.load(directory: F.url("clip_sd"))
        XCTAssertEqual(model.config.eosTokenId, 2)
        XCTAssertTrue(model.config.usesLegacyEOSPooling)
        XCTAssertEqual(model.config.hiddenAct, .quickGelu)
        let io = try F.tensors("clip_sd_io.safetensors")
        let tok = try tokenizer()
        let texts = try prompts()

        let fixed = tok.encodeForTextEncoder(texts)
        XCTAssertEqual(fixed.ids, F.rows(io["fixed_ids"]!))
        let a = try withoutGrad { try model(fixed, useAttentionMask: false, outputHiddenStates: true) }
        assertOutputs(a, io, prefix: "fixed.")

        let longest = tok.encodeBatch(texts, padding: .longest, padId: tok.specialTokens.eos)
        XCTAssertEqual(longest.ids, F.rows(io["ids"]!))
        XCTAssertEqual(longest.attentionMask, F.rows(io["attention_mask"]!))
        let b = try withoutGrad { try model(longest, outputHiddenStates: true) }
        assertOutputs(b, io, prefix: "masked.")
    }

    /// eos_token_id 5: pooling reads the first eos, not the largest id; gelu; text projection.
    func testProjectionModelWithModernEOSMatchesTransformers() throws {
        let model = try CLIPTextModelWithProjection.load(directory: F.url("clip_proj"))
        XCTAssertEqual(model.config.hiddenAct, .gelu)
        XCTAssertFalse(model.config.usesLegacyEOSPooling)
        let io = try F.tensors("clip_proj_io.safetensors")
        let ids = F.rows(io["input_ids"]!), mask = F.rows(io["attention_mask"]!)
        XCTAssertEqual(CLIPTextTransformer.poolingPositions(inputIds: ids, eosTokenId: 5), [4, 3, 2])
        XCTAssertEqual(CLIPTextTransformer.poolingPositions(inputIds: ids, eosTokenId: 2), [3, 2, 4])
        let out = try withoutGrad { try model(inputIds: ids, attentionMask: mask, outputHiddenStates: true) }
        assertOutputs(out, io, prefix: "")
        assertParity(out.textEmbeds, io["text_embeds"], "text_embeds")

        // The same folder as a CLIPTextModel: the projection is ignored.
        let plain = try CLIPTextModel.load(directory: F.url("clip_proj"))
        let p = try withoutGrad { try plain(inputIds: ids, attentionMask: mask) }
        assertParity(p.poolerOutput, io["pooler_output"], "CLIPTextModel pooler_output")
        XCTAssertNil(p.textEmbeds)
    }

    func testCausalAttention() throws {
        let model = try CLIPTextModel.load(directory: F.url("clip_proj"))
        let a = try withoutGrad { try model(inputIds: [[0, 7, 8, 9, 5, 1]]).lastHiddenState }
        let b = try withoutGrad { try model(inputIds: [[0, 7, 8, 40, 41, 42]]).lastHiddenState }
        assertParity(a.sliced(axis: 1, 0, 3).contiguousCopy(), b.sliced(axis: 1, 0, 3).contiguousCopy(), "prefix", tolerance: 1e-6)
        XCTAssertGreaterThan(relativeError(a.sliced(axis: 1, 3, 4).contiguousCopy(), b.sliced(axis: 1, 3, 4).contiguousCopy()), 1e-3)
    }

    // MARK: Layouts

    func testLoadsEveryCheckpointLayout() throws {
        let io = try F.tensors("clip_proj_io.safetensors")
        let ids = F.rows(io["input_ids"]!), mask = F.rows(io["attention_mask"]!)

        // transformers 5 `CLIPTextModel.save_pretrained`: no `text_model.` prefix.
        let bare = try F.copy("clip_proj", into: self, config: { $0["architectures"] = ["CLIPTextModel"] }, tensors: { t in
            var out: [String: Tensor] = [:]
            for (k, v) in t where k.hasPrefix("text_model.") { out[String(k.dropFirst("text_model.".count))] = v }
            t = out
        })
        let a = try withoutGrad { try CLIPTextModel.load(directory: bare)(inputIds: ids, attentionMask: mask) }
        assertParity(a.poolerOutput, io["pooler_output"], "unprefixed pooler_output")

        // A full CLIPModel folder: text_config nested, vision tower and logit_scale ignored.
        let full = try F.copy("clip_proj", into: self, config: { c in
            let text = c
            c = ["model_type": "clip", "projection_dim": 24, "text_config": text, "vision_config": ["hidden_size": 8]]
        }, tensors: { t in
            t["vision_model.embeddings.class_embedding"] = Tensor(zeros: [8])
            t["visual_projection.weight"] = Tensor(zeros: [24, 8])
            t["logit_scale"] = Tensor(scalar: 2.6592)
        })
        let b = try withoutGrad { try CLIPTextModelWithProjection.load(directory: full)(inputIds: ids, attentionMask: mask) }
        assertParity(b.textEmbeds, io["text_embeds"], "CLIPModel text_embeds")
    }

    func testSaveRoundTrip() throws {
        let config = CLIPTextConfig(vocabSize: 40, hiddenSize: 16, intermediateSize: 32, numHiddenLayers: 1,
                                    numAttentionHeads: 2, maxPositionEmbeddings: 8, eosTokenId: 39, projectionDim: 12)
        let model = try CLIPTextModelWithProjection(config: config, seed: 5)
        let dir = try F.temporaryFolder(self)
        try model.save(to: dir)
        let reloaded = try CLIPTextModelWithProjection.load(directory: dir)
        XCTAssertEqual(reloaded.config, config)
        let x = try withoutGrad { try model(inputIds: [[38, 3, 4, 39]]).textEmbeds! }
        let y = try withoutGrad { try reloaded(inputIds: [[38, 3, 4, 39]]).textEmbeds! }
        XCTAssertEqual(x.scalars, y.scalars)
        let names = try SafeTensorsFile(contentsOf: dir.appendingPathComponent("model.safetensors")).names
        XCTAssertTrue(names.contains("text_model.encoder.layers.0.self_attn.q_proj.weight"))
        XCTAssertTrue(names.contains("text_model.final_layer_norm.bias"))
        XCTAssertTrue(names.contains("text_projection.weight"))
    }

    // MARK: Bad input

    func testConfigContradictingWeightsNamesTheKey() throws {
        let cases: [(String, Any, Int)] = [("hidden_size", 64, 32), ("vocab_size", 49408, 2814),
                                           ("max_position_embeddings", 76, 77), ("intermediate_size", 3072, 64),
                                           ("num_hidden_layers", 12, 2)]
        for (key, value, implied) in cases {
            let dir = try F.copy("clip_sd", into: self, config: { $0[key] = value })
            let error = F.error { _ = try CLIPTextModel.load(directory: dir) }
            guard case .configContradictsWeights(_, let k, _, let i, _, _)? = error else {
                XCTFail("\(key): expected configContradictsWeights, got \(String(describing: error))")
                continue
            }
            XCTAssertEqual(k, key)
            XCTAssertEqual(i, implied, key)
        }
        let proj = try F.copy("clip_proj", into: self, config: { $0["projection_dim"] = 768 })
        guard case .configContradictsWeights(_, "projection_dim", 768, 24, "text_projection.weight", [24, 48])? =
                F.error({ _ = try CLIPTextModelWithProjection.load(directory: proj) }) else {
            return XCTFail("expected projection_dim 768 vs 24")
        }
        let stray = try F.copy("clip_sd", into: self, tensors: { $0["text_model.encoder.layers.0.extra"] = Tensor(zeros: [1]) })
        guard case .weightsDoNotMatch(_, let e)? = F.error({ _ = try CLIPTextModel.load(directory: stray) }) else {
            return XCTFail("expected weightsDoNotMatch")
        }
        XCTAssertEqual(e.unexpected, ["text_model.encoder.layers.0.extra"])
    }

    func testConfigKeysAreCheckedByName() throws {
        let base = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: F.url("clip_sd/config.json"))) as? [String: Any])
        func parse(_ edit: (inout [String: Any]) -> Void) -> TextModelError? {
            var c = base
            edit(&c)
            return F.error { _ = try CLIPTextConfig(jsonData: JSONSerialization.data(withJSONObject: c), source: "cfg") }
        }
        for key in CLIPTextConfig.requiredKeys {
            XCTAssertEqual(parse { $0[key] = nil }, .missingConfigKey(path: "cfg", key: key))
        }
        guard case .unsupportedConfig(_, "hidden_act", "\"tanh\"", _)? = parse({ $0["hidden_act"] = "tanh" }) else {
            return XCTFail("expected an unsupported hidden_act")
        }
        guard case .unsupportedConfig(_, "model_type", _, _)? = parse({ $0["model_type"] = "clip_vision_model" }) else {
            return XCTFail("expected an unsupported model_type")
        }
        guard case .invalidConfigValue(_, "num_attention_heads", _, _)? = parse({ $0["num_attention_heads"] = 3 }) else {
            return XCTFail("expected heads that do not divide hidden_size")
        }
        XCTAssertEqual(parse { $0 = ["model_type": "clip"] }, .missingConfigKey(path: "cfg", key: "text_config"))
        // Absent ids take transformers' defaults; null means none.
        let defaults = try CLIPTextConfig(jsonData: JSONSerialization.data(withJSONObject: base.filter {
            !["eos_token_id", "bos_token_id", "pad_token_id", "hidden_act"].contains($0.key)
        }.merging(["pad_token_id": NSNull()]) { $1 }))
        XCTAssertEqual(defaults.eosTokenId, 49407)
        XCTAssertEqual(defaults.bosTokenId, 49406)
        XCTAssertNil(defaults.padTokenId)
        XCTAssertEqual(defaults.hiddenAct, .quickGelu)
    }

    func testBadInputsThrowNamedErrors() throws {
        let model = try CLIPTextModel.load(directory: F.url("clip_sd"))
        let tooLong = F.error { _ = try model(inputIds: [[Int]](repeating: [Int](repeating: 5, count: 78), count: 1)) }
        XCTAssertEqual(tooLong, .sequenceTooLong(length: 78, limit: 77, key: "max_position_embeddings"))
        XCTAssertEqual(F.error { _ = try model(inputIds: [[0, 2814]]) },
                       .tokenIdOutOfRange(input: "input_ids", id: 2814, row: 0, column: 1, limit: 2814, key: "vocab_size"))
        guard case .invalidInput("attention_mask", _)? = F.error({ _ = try model(inputIds: [[0, 1]], attentionMask: [[1, 1], [1, 1]]) }) else {
            return XCTFail("mask rows")
        }
        guard case .invalidInput("inputs_embeds", _)? = F.error({ _ = try model(inputIds: [[0, 1]], inputsEmbeds: Tensor(zeros: [1, 3, 32])) }) else {
            return XCTFail("embeds shape")
        }
        let empty = try F.temporaryFolder(self)
        XCTAssertEqual(F.error { _ = try CLIPTextModel.load(directory: empty) },
                       .missingFile(directory: empty.path, tried: ["config.json"], hint: nil))
    }

    // MARK: Gradients

    func testGradientsReachSuppliedEmbeddingsOfAFrozenModel() throws {
        let model = try CLIPTextModelWithProjection.load(directory: F.url("clip_proj"))
        model.freeze()
        XCTAssertEqual(model.trainableParameterCount, 0)
        let ids = [[0, 9, 33, 5]]
        let embeds = try model.textModel.embeddings.tokenEmbedding(ids[0], shape: [1, 4]).contiguousCopy()
        embeds.requiresGrad = true
        let out = try model(inputIds: ids, inputsEmbeds: embeds)
        (out.textEmbeds!.sum() + out.lastHiddenState.square().sum()).backward()
        let grad = try XCTUnwrap(embeds.grad)
        XCTAssertEqual(grad.shape, [1, 4, 48])
        XCTAssertGreaterThan(grad.scalars.map(abs).max()!, 0)
        XCTAssertTrue(model.parameters().allSatisfy { $0.grad == nil })
        let byIds = try withoutGrad { try model(inputIds: ids) }
        assertParity(out.textEmbeds!.detached(), byIds.textEmbeds, "inputs_embeds vs ids", tolerance: 1e-6)

        model.unfreeze(prefix: "text_projection")
        let again = try model(inputIds: ids)
        again.textEmbeds!.sum().backward()
        XCTAssertNotNil(model.textProjection.weight.grad)
        XCTAssertNil(model.textModel.finalLayerNorm.weight!.grad)
    }
}
