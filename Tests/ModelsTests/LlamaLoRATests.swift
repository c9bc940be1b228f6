import Foundation
import Models
import Tensor
import XCTest

/// LoRA on a Llama decoder: names as PEFT writes them, the model unchanged until B moves,
/// gradients through the decoder into A and B, and loading that names what does not fit.
final class LlamaLoRATests: XCTestCase {
    func tinyModel() throws -> LlamaForCausalLM {
        let config = LlamaConfig(vocabSize: 40, hiddenSize: 16, intermediateSize: 24, numHiddenLayers: 3,
                                 numAttentionHeads: 4, numKeyValueHeads: 2)
        let model = try LlamaForCausalLM(config: config, seed: 5)
        model.freeze()
        return model
    }

    let ids = [[3, 7, 9, 11], [5, 2, 8, 1]]

    func testNamesAndAStartThatLeavesTheModelUnchanged() throws {
        let model = try tinyModel()
        let before = try model(inputIds: ids, logits: .none).lastHiddenState.scalars
        try LlamaLoRA.apply(LlamaLoRAConfig(rank: 2, alpha: 4, targets: ["v_proj", "q_proj", "down_proj"]), to: model, layers: 0 ..< 2, seed: 1)
        let names = LlamaLoRA.tensors(of: model).map(\.name)
        XCTAssertEqual(names.count, 2 * 3 * 2)
        XCTAssertTrue(names.contains("model.layers.0.self_attn.q_proj.lora_A.weight"), "\(names)")
        XCTAssertTrue(names.contains("model.layers.1.mlp.down_proj.lora_B.weight"), "\(names)")
        XCTAssertFalse(names.contains { $0.hasPrefix("model.layers.2.") }, "layer 2 was not asked for")
        XCTAssertEqual(Set(model.namedTrainableParameters().map(\.0)), Set(names), "only LoRA trains")
        XCTAssertEqual(try model(inputIds: ids, logits: .none).lastHiddenState.scalars, before)
        XCTAssertEqual(LlamaLoRA.layerIndex(of: "model.layers.12.self_attn.q_proj.lora_A.weight"), 12)
        XCTAssertThrowsError(try LlamaLoRA.apply(LlamaLoRAConfig(rank: 2), to: model, layers: 0 ..< 1, seed: 1)) { error in
            XCTAssertTrue("\(error)".contains("already carries LoRA"), "\(error)")
        }
    }

    /// Each layer draws its A from its own stream: wrapping layer 1 alone gives the A that
    /// wrapping layers 0 and 1 gives it (what a pipeline stage relies on).
    func testEachLayerDrawsItsOwnStream() throws {
        let whole = try tinyModel(), part = try tinyModel()
        try LlamaLoRA.apply(LlamaLoRAConfig(rank: 2), to: whole, layers: 0 ..< 2, seed: 9)
        try LlamaLoRA.apply(LlamaLoRAConfig(rank: 2), to: part, layers: 1 ..< 2, seed: 9)
        let a = Dictionary(uniqueKeysWithValues: LlamaLoRA.tensors(of: whole).map { ($0.name, $0.tensor.scalars) })
        for (name, tensor) in LlamaLoRA.tensors(of: part) { XCTAssertEqual(a[name], tensor.scalars, name) }
    }

    func testGradientsReachTheLoRATensorsThroughTheDecoder() throws {
        let model = try tinyModel()
        try LlamaLoRA.apply(LlamaLoRAConfig(rank: 2, alpha: 2, targets: ["q_proj", "v_proj"]), to: model, layers: 0 ..< 3, seed: 3)
        // Move B off zero so that A's gradient is not zero too.
        for (name, tensor) in LlamaLoRA.tensors(of: model) where name.hasSuffix("lora_B.weight") {
            var rng = SeededGenerator(seed: UInt64(name.count))
            tensor.assign(Tensor.uniform(tensor.shape, low: -0.3, high: 0.3, using: &rng))
        }
        let q = model.model.layers[1].selfAttention.qProj as! LoRALinear
        let v = model.model.layers[0].selfAttention.vProj as! LoRALinear
        var rng = SeededGenerator(seed: 4)
        let target = Tensor.uniform([2, 4, 16], low: -1, high: 1, using: &rng)
        let result = GradientChecker.check([q.loraA.weight, v.loraB.weight], epsilon: 1e-2, absoluteTolerance: 5e-3,
                                           relativeTolerance: 3e-2) { inputs in
            let saved = (q.loraA.weight, v.loraB.weight)
            q.loraA.weight = inputs[0]
            v.loraB.weight = inputs[1]
            defer { (q.loraA.weight, v.loraB.weight) = saved }
            let h = try! model(inputIds: self.ids, logits: .none).lastHiddenState
            let d = h - target
            return (d * d).sum()
        }
        XCTAssertTrue(result.passed, result.description)
    }

    func testLoadingNamesWhatDoesNotFit() throws {
        let model = try tinyModel()
        let config = LlamaLoRAConfig(rank: 2, alpha: 8, targets: ["q_proj"])
        XCTAssertEqual(try LlamaLoRAConfig(json: try config.json()), config)
        try LlamaLoRA.apply(config, to: model, layers: 0 ..< 1, seed: 2)
        var tensors = Dictionary(uniqueKeysWithValues: LlamaLoRA.tensors(of: model).map { ($0.name, $0.tensor.contiguousCopy()) })
        try LlamaLoRA.load(tensors, into: model, source: "a.safetensors")
        tensors["model.layers.0.self_attn.q_proj.lora_B.weight"] = Tensor(zeros: [3, 3])
        XCTAssertThrowsError(try LlamaLoRA.load(tensors, into: model, source: "a.safetensors")) { error in
            XCTAssertTrue("\(error)".contains("lora_B.weight") && "\(error)".contains("[3, 3]"), "\(error)")
        }
        tensors.removeValue(forKey: "model.layers.0.self_attn.q_proj.lora_B.weight")
        XCTAssertThrowsError(try LlamaLoRA.load(tensors, into: model, source: "a.safetensors")) { error in
            XCTAssertTrue("\(error)".contains("lacks"), "\(error)")
        }
        XCTAssertThrowsError(try LlamaLoRAConfig(json: #"{"rank": 2, "alpha": 1, "targets": ["w_proj"]}"#)) { error in
            XCTAssertTrue("\(error)".contains("w_proj"), "\(error)")
        }
        XCTAssertThrowsError(try LlamaLoRAConfig(json: "not json")) { error in
            XCTAssertTrue("\(error)".contains("llm_lora"), "\(error)")
        }
    }
}
