import Foundation
import Models
import Tensor
import XCTest

/// The adapter fixtures written by Tests/Reference/make_adapter_fixtures_voken_ella.py and
/// Tests/Reference/make_adapter_fixtures_sur_cam.py.
enum AdapterFixtures {
    static let root: URL = {
        if let base = Bundle.module.resourceURL?.appendingPathComponent("Fixtures/adapters"),
           FileManager.default.fileExists(atPath: base.path) {
            return base
        }
        return URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures/adapters")
    }()

    static func tensors(_ name: String) throws -> [String: Tensor] {
        try SafeTensorsFile(contentsOf: root.appendingPathComponent(name)).loadAll()
    }

    static func config<C: Decodable>(_ name: String, as type: C.Type) throws -> C {
        try JSONDecoder().decode(C.self, from: Data(contentsOf: root.appendingPathComponent(name)))
    }

    /// `assertParity` comparing value counts only: the references keep some batch axes Sura drops.
    static func assertParity(_ a: Tensor?, _ b: Tensor?, _ what: String, tolerance: Float = 1e-4,
                             file: StaticString = #filePath, line: UInt = #line) {
        ModelsTests.assertParity(a, b, what, tolerance: tolerance, sameShape: false, file: file, line: line)
    }

    /// Compares every parameter gradient with `io["<prefix>.<name>"]`; parameters without a
    /// reference gradient must have none (they cannot influence the output).
    static func assertParameterGradients(_ module: Module, _ io: [String: Tensor], prefix: String,
                                         file: StaticString = #filePath, line: UInt = #line) {
        var compared = 0
        for (name, p) in module.namedParameters() {
            if let expected = io["\(prefix).\(name)"] {
                if expected.scalars.allSatisfy({ abs($0) < 1e-9 }) {
                    // Zero in exact arithmetic (a key bias shifts every score of a softmax row
                    // equally): only rounding remains on either side, so compare absolutely.
                    let largest = p.grad?.scalars.map(abs).max() ?? 0
                    XCTAssertLessThan(largest, 1e-5, "gradient of \(name) should vanish", file: file, line: line)
                } else {
                    assertParity(p.grad, expected, "gradient of \(name)", file: file, line: line)
                }
                compared += 1
            } else {
                XCTAssertNil(p.grad, "\(name) has a gradient the reference does not have", file: file, line: line)
            }
        }
        XCTAssertEqual(compared, io.keys.filter { $0.hasPrefix(prefix + ".") }.count, "every reference gradient compared",
                       file: file, line: line)
    }

    /// Runs `body`, which must throw an `AdapterError`, and returns it.
    static func error(_ body: () throws -> Void, file: StaticString = #filePath, line: UInt = #line) -> AdapterError? {
        do {
            try body()
            XCTFail("expected an AdapterError", file: file, line: line)
        } catch let error as AdapterError {
            return error
        } catch {
            XCTFail("expected an AdapterError, got \(error)", file: file, line: line)
        }
        return nil
    }

    /// The config key an `invalidConfig` names, the input a `missingInput`/`inputShape` names.
    static func subject(_ error: AdapterError?) -> String? {
        switch error {
        case let .invalidConfig(key, _, _)?: return key
        case let .missingInput(_, input)?: return input
        case let .inputShape(_, input, _, _)?: return input
        case nil: return nil
        }
    }

    static func leaf(_ t: Tensor) -> Tensor {
        let copy = t.contiguousCopy()
        copy.requiresGrad = true
        return copy
    }
}

/// The four conditioning adapters against their PyTorch restatements: outputs, input gradients
/// and every parameter gradient of a scalar loss, loaded by checkpoint key.
final class AdapterParityTests: XCTestCase {
    typealias F = AdapterFixtures

    // MARK: MiniGPT-5 voken mapper

    func testVokenMapperMatchesPyTorch() throws {
        let config = try F.config("voken_config.json", as: VokenMapperConfig.self)
        var rng = SeededGenerator(seed: 1)
        let mapper = try VokenMapper(config: config, rng: &rng)
        try mapper.load(F.tensors("voken_weights.safetensors"))
        let io = try F.tensors("voken_io.safetensors")
        XCTAssertEqual(mapper.outputWidth, 32)
        XCTAssertEqual(mapper.requirements, [.llmHidden])

        let hidden = F.leaf(io["hidden"]!)
        let out = try mapper.conditioning(AdapterInputs(llmHidden: hidden))
        XCTAssertEqual(out.shape, [3, 6, 32])
        F.assertParity(out, io["out_0"], "voken out")
        (out * io["r_0"]!).sum().backward()
        F.assertParity(hidden.grad, io["grad_hidden_0"], "voken input gradient")
        F.assertParameterGradients(mapper, io, prefix: "param_grad_0")

        let negative = try withoutGrad { try mapper.negativeConditioning(batchSize: 2) }
        XCTAssertEqual(negative.shape, [2, 6, 32])
        F.assertParity(negative.sliced(axis: 0, 1, 2).contiguousCopy(), io["negative"], "negative conditioning")
    }

    func testVokenDropZeroesWholeSamples() throws {
        var config = VokenMapperConfig()
        (config.inputDim, config.fcHiddenDim, config.outputDim, config.numQueries, config.heads) = (8, 8, 8, 3, 2)
        (config.numEncoderLayers, config.numDecoderLayers) = (1, 1)
        var rng = SeededGenerator(seed: 2)
        let mapper = try VokenMapper(config: config, rng: &rng)
        let vokens = Tensor.randn([4, 8, 8], using: &rng)
        let all = try mapper.dropVokens(vokens, probability: 1, using: &rng)
        XCTAssertEqual(all.dropped, [true, true, true, true])
        XCTAssertEqual(all.vokens.scalars.allSatisfy { $0 == 0 }, true)
        let none = try mapper.dropVokens(vokens, probability: 0, using: &rng)
        XCTAssertEqual(none.vokens.scalars, vokens.scalars)
        XCTAssertEqual(F.subject(F.error { _ = try mapper.dropVokens(vokens, probability: 2, using: &rng) }), "cfg_drop_probability")
    }

    // MARK: ELLA

    func testELLAConnectorMatchesPyTorch() throws {
        for prefix in ["ella", "ella_plain"] {
            let config = try F.config("\(prefix)_config.json", as: ELLAConnectorConfig.self)
            var rng = SeededGenerator(seed: 3)
            let ella = try ELLAConnector(config: config, rng: &rng)
            try ella.load(F.tensors("\(prefix)_weights.safetensors"))
            let io = try F.tensors("\(prefix)_io.safetensors")
            XCTAssertEqual(ella.outputWidth, prefix == "ella" ? 24 : 32)
            XCTAssertEqual(ella.requirements, [.llmHidden, .timesteps])
            XCTAssertEqual(ella.connector.projOut == nil, prefix == "ella_plain")

            for c in ["0", "1"] {
                ella.zeroGrad()
                let hidden = F.leaf(io["hidden"]!)
                let out = try ella.conditioning(AdapterInputs(llmHidden: hidden, timesteps: io["timesteps_\(c)"]!.scalars))
                XCTAssertEqual(out.shape, [2, 8, ella.outputWidth])
                F.assertParity(out, io["out_\(c)"], "\(prefix) out \(c)")
                (out * io["r_\(c)"]!).sum().backward()
                F.assertParity(hidden.grad, io["grad_hidden_\(c)"], "\(prefix) input gradient \(c)")
                F.assertParameterGradients(ella, io, prefix: "param_grad_\(c)")
            }
            let shared = try withoutGrad { try ella(io["hidden"]!, timesteps: [250]) }
            F.assertParity(shared, io["out_shared_t"], "\(prefix) shared timestep")
        }
    }

    func testELLAMaskIgnoresPadding() throws {
        var config = ELLAConnectorConfig()
        (config.width, config.layers, config.heads, config.numLatents, config.inputDim) = (16, 2, 2, 4, 12)
        (config.outputDim, config.timeChannel, config.timeEmbeddingDim) = (8, 8, 16)
        var rng = SeededGenerator(seed: 4)
        let ella = try ELLAConnector(config: config, rng: &rng)
        // Give the zero-initialised modulations values, so the mask is tested through them too.
        for (name, p) in ella.namedParameters() where name.hasSuffix(".linear.weight") { p.assign(Tensor.randn(p.shape, using: &rng) * 0.1) }
        let real = Tensor.randn([1, 3, 12], using: &rng)
        let padded = Tensor.concat([real, Tensor.randn([1, 2, 12], using: &rng) * 10], axis: 1)
        let mask = Tensor(shape: [1, 5], data: [1, 1, 1, 0, 0])
        let expected = try withoutGrad { try ella(real, timesteps: [300]) }
        let masked = try withoutGrad { try ella(padded, timesteps: [300], mask: mask) }
        F.assertParity(masked, expected, "masked padding", tolerance: 1e-5)
        let unmasked = try withoutGrad { try ella(padded, timesteps: [300]) }
        XCTAssertGreaterThan(relativeError(unmasked, expected), 1e-3, "padding matters without a mask")
    }

    func testELLAInitialisationStartsAsPlainLayerNorm() throws {
        var rng = SeededGenerator(seed: 5)
        let ella = try ELLAConnector(rng: &rng)
        XCTAssertEqual(ella.outputWidth, 384)
        for (name, p) in ella.namedParameters() where name.contains(".ln_") {
            XCTAssertTrue(p.scalars.allSatisfy { $0 == 0 }, "\(name) starts at zero")
        }
        XCTAssertEqual(ella.connector.latents.shape, [64, 384])
        XCTAssertEqual(ella.connector.perceiverBlocks.count, 6)
    }

    // MARK: SUR-adapter

    func testSURAdapterMatchesPyTorchWithAndWithoutTheSlip() throws {
        for prefix in ["sur", "sur_slip"] {
            let config = try F.config("\(prefix)_config.json", as: SURAdapterConfig.self)
            XCTAssertEqual(config.referenceBatchFirstSlip, prefix == "sur_slip")
            var rng = SeededGenerator(seed: 6)
            let adapter = try SURAdapter(config: config, rng: &rng)
            try adapter.load(F.tensors("\(prefix)_weights.safetensors"))
            let io = try F.tensors("\(prefix)_io.safetensors")
            XCTAssertEqual(adapter.outputWidth, 32)
            XCTAssertEqual(adapter.requirements, [.textTokens])

            let text = F.leaf(io["text"]!), complex = F.leaf(io["complex"]!), llm = F.leaf(io["llm_hidden"]!)
            let result = try adapter.forward(text)
            F.assertParity(result.output, io["out"], "\(prefix) out")
            F.assertParity(result.encoderOutput, io["encoder_out"], "\(prefix) encoder out")
            F.assertParity(result.fcOutput, io["fc_out"], "\(prefix) fc out")
            F.assertParity(try withoutGrad { try adapter.conditioning(AdapterInputs(textTokens: io["text"]!)) }, io["out"],
                           "\(prefix) conditioning")

            let feature = try adapter.projectedLLMFeature(llm, mask: io["llm_mask"]!)
            XCTAssertEqual(feature.shape, [3, 1, 32])
            F.assertParity(feature, io["llm_feature"], "\(prefix) projected LLM feature")
            let terms = try SURAdapterLoss()(result, projectedLLM: feature, complexPrompt: complex)
            F.assertParity(terms.llm, io["llm_loss"], "\(prefix) llm_loss")
            F.assertParity(terms.prompt, io["prompt_loss"], "\(prefix) prompt_loss")
            XCTAssertEqual(terms.weighted.item, 1e-5 * (terms.llm.item + terms.prompt.item), accuracy: 1e-9)

            ((result.output * io["r"]!).sum() + terms.llm + terms.prompt).backward()
            F.assertParity(text.grad, io["grad_text"], "\(prefix) text gradient")
            F.assertParity(complex.grad, io["grad_complex"], "\(prefix) complex-prompt gradient")
            F.assertParity(llm.grad, io["grad_llm_hidden"], "\(prefix) LLM gradient")
            F.assertParameterGradients(adapter, io, prefix: "param_grad")
        }
    }

    func testSURAdapterLoadsTheReferenceStateDictStrictly() throws {
        // The reference's `adapter.pt` has no llm_resize: `llm_dim: null` gives exactly its keys.
        var config = try F.config("sur_slip_config.json", as: SURAdapterConfig.self)
        config.llmDim = nil
        var rng = SeededGenerator(seed: 7)
        let adapter = try SURAdapter(config: config, rng: &rng)
        let weights = try F.tensors("sur_slip_weights.safetensors").filter { !$0.key.hasPrefix("llm_resize.") }
        try adapter.load(weights)
        XCTAssertEqual(Set(adapter.stateDict().keys), Set(weights.keys))
        let io = try F.tensors("sur_slip_io.safetensors")
        F.assertParity(try withoutGrad { try adapter.forward(io["text"]!).output }, io["out"], "reference keys only")
        XCTAssertEqual(F.subject(F.error { _ = try adapter.projectedLLMFeature(io["llm_hidden"]!) }), "llm_dim")
    }

    func testSURAdapterInitialisationAndFrozenParts() throws {
        var rng = SeededGenerator(seed: 8)
        let adapter = try SURAdapter(rng: &rng)
        XCTAssertEqual(adapter.outputWidth, 384)
        XCTAssertTrue(adapter.fc.weight.scalars.allSatisfy { $0 == 0 }, "fc.weight starts at zero")
        XCTAssertEqual(adapter.transformerEncoder.layers.count, 2)
        XCTAssertEqual(adapter.transformerEncoder.layers[1].linear1.weight.scalars, adapter.encoderLayer.linear1.weight.scalars,
                       "layers start as copies of the template")
        XCTAssertEqual(adapter.encoderLayer.linear1.weight.shape, [2048, 384])
        let frozen = adapter.namedParameters().filter { !$0.1.requiresGrad }.map(\.0)
        XCTAssertTrue(frozen.allSatisfy { $0.hasPrefix("encoder_layer.") || $0.hasPrefix("attention.value_layer.") || $0.hasPrefix("llm_resize.") })
        XCTAssertTrue(frozen.contains("llm_resize.fc.weight"))
        XCTAssertEqual(adapter.llmResize?.fc.weight.shape, [384, 576])
        for (name, _) in adapter.namedTrainableParameters() {
            XCTAssertTrue(name.hasPrefix("transformer_encoder.") || name.hasPrefix("attention.") || name.hasPrefix("fc."), name)
            XCTAssertFalse(name.hasPrefix("attention.value_layer."), name)
        }
    }

    func testBatchFirstSlipMixesPromptsOnlyWhenAskedFor() throws {
        for slip in [false, true] {
            var config = SURAdapterConfig()
            (config.outputDim, config.heads, config.dimFeedforward, config.dropout, config.llmDim) = (8, 2, 16, 0, nil)
            config.referenceBatchFirstSlip = slip
            var rng = SeededGenerator(seed: 9)
            let adapter = try SURAdapter(config: config, rng: &rng)
            let batch = Tensor.randn([2, 3, 8], using: &rng)
            let alone = try withoutGrad { try adapter.forward(batch.sliced(axis: 0, 0, 1).contiguousCopy()).encoderOutput }
            let together = try withoutGrad { try adapter.forward(batch).encoderOutput.sliced(axis: 0, 0, 1).contiguousCopy() }
            let err = relativeError(together, alone)
            if slip { XCTAssertGreaterThan(err, 1e-3, "the slip lets batch-mates interact") } else { XCTAssertLessThan(err, 1e-5) }
        }
    }

    func testDistillationGradientsMatchFiniteDifferences() throws {
        var rng = SeededGenerator(seed: 10)
        for (xLength, temperature) in [(1, Float(1)), (3, Float(2))] {
            let x = F.leaf(Tensor.randn([2, xLength, 5], using: &rng))
            let y = F.leaf(Tensor.randn([2, 3, 5], using: &rng))
            let result = GradientChecker.check([x, y]) { t in
                try! SURAdapterLoss.distillation(t[0], t[1], temperature: temperature)
            }
            XCTAssertTrue(result.passed, "x length \(xLength), T \(temperature): \(result)")
        }
        // KL(p ‖ p) = 0 and KL ≥ 0.
        let y = Tensor.randn([2, 3, 5], using: &rng)
        XCTAssertEqual(try SURAdapterLoss.distillation(y, y).item, 0, accuracy: 1e-6)
        XCTAssertGreaterThan(try SURAdapterLoss.distillation(Tensor.randn([2, 1, 5], using: &rng), y).item, 0)
        let shapeError = F.error { _ = try SURAdapterLoss().promptTerm(complexPrompt: Tensor(zeros: [2, 4, 5]), adapterOutput: y) }
        XCTAssertEqual(F.subject(shapeError), "complexPrompt")
        XCTAssertEqual(F.subject(F.error { _ = try SURAdapterLoss.distillation(y, y, temperature: 0) }), "temperature")
    }

    // MARK: LLM4GEN Cross-Adapter Module

    func testCrossAdapterModuleMatchesPyTorch() throws {
        let config = try F.config("cam_config.json", as: CrossAdapterModuleConfig.self)
        var rng = SeededGenerator(seed: 11)
        let cam = try CrossAdapterModule(config: config, rng: &rng)
        try cam.load(F.tensors("cam_weights.safetensors"))
        let io = try F.tensors("cam_io.safetensors")
        XCTAssertEqual(cam.outputWidth, 32)
        XCTAssertEqual(cam.requirements, [.textTokens, .llmHidden])
        for (c, mask) in [("0", nil), ("1", io["llm_mask"])] {
            cam.zeroGrad()
            let text = F.leaf(io["text"]!), llm = F.leaf(io["llm"]!)
            let out = try cam.conditioning(AdapterInputs(textTokens: text, llmHidden: llm, llmMask: mask))
            XCTAssertEqual(out.shape, [2, 11, 32])
            F.assertParity(out, io["out_\(c)"], "cam out \(c)")
            (out * io["r_\(c)"]!).sum().backward()
            F.assertParity(text.grad, io["grad_text_\(c)"], "cam text gradient \(c)")
            F.assertParity(llm.grad, io["grad_llm_\(c)"], "cam LLM gradient \(c)")
            F.assertParameterGradients(cam, io, prefix: "param_grad_\(c)")
        }
        let inputs = AdapterInputs(textTokens: io["text"]!, llmHidden: io["llm"]!, llmMask: io["llm_mask"]!)
        let mask = try XCTUnwrap(try cam.conditioningMask(inputs))
        XCTAssertEqual(mask.shape, [2, 11])
        XCTAssertEqual(Array(mask.scalars[11..<22]), [1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0])
        XCTAssertNil(try cam.conditioningMask(AdapterInputs(textTokens: io["text"]!, llmHidden: io["llm"]!)))
    }

    // MARK: Errors

    func testBadConfigsNameTheKey() throws {
        var rng = SeededGenerator(seed: 12)
        var sur = SURAdapterConfig(); sur.heads = 5
        XCTAssertEqual(F.subject(F.error { _ = try SURAdapter(config: sur, rng: &rng) }), "heads")
        sur = SURAdapterConfig(); sur.dropout = 1
        XCTAssertEqual(F.subject(F.error { _ = try SURAdapter(config: sur, rng: &rng) }), "dropout")
        sur = SURAdapterConfig(); sur.adapterWeight = 1.5
        XCTAssertEqual(F.subject(F.error { _ = try SURAdapter(config: sur, rng: &rng) }), "adapter_weight")
        sur = SURAdapterConfig(); sur.llmDim = 0
        XCTAssertEqual(F.subject(F.error { _ = try SURAdapter(config: sur, rng: &rng) }), "llm_dim")

        var cam = CrossAdapterModuleConfig(); cam.heads = 7
        XCTAssertEqual(F.subject(F.error { _ = try CrossAdapterModule(config: cam, rng: &rng) }), "heads")
        cam = CrossAdapterModuleConfig(); cam.llmDim = 0
        XCTAssertEqual(F.subject(F.error { _ = try CrossAdapterModule(config: cam, rng: &rng) }), "llm_dim")

        var ella = ELLAConnectorConfig(); ella.heads = 5
        XCTAssertEqual(F.subject(F.error { _ = try ELLAConnector(config: ella, rng: &rng) }), "heads")
        ella = ELLAConnectorConfig(); ella.actFn = "tanh"
        XCTAssertEqual(F.subject(F.error { _ = try ELLAConnector(config: ella, rng: &rng) }), "act_fn")
        ella = ELLAConnectorConfig(); ella.numLatents = 0
        XCTAssertEqual(F.subject(F.error { _ = try ELLAConnector(config: ella, rng: &rng) }), "num_latents")

        var voken = VokenMapperConfig(); voken.heads = 5
        XCTAssertEqual(F.subject(F.error { _ = try VokenMapper(config: voken, rng: &rng) }), "heads")
        voken = VokenMapperConfig(); voken.dimFeedforward = 0
        XCTAssertEqual(F.subject(F.error { _ = try VokenMapper(config: voken, rng: &rng) }), "dim_feedforward")
    }

    func testConfigsDecodeSnakeCaseAndRoundTrip() throws {
        let ella = try JSONDecoder().decode(ELLAConnectorConfig.self, from: Data(#"{"output_dim": null, "num_latents": 16}"#.utf8))
        XCTAssertNil(ella.outputDim)
        XCTAssertEqual(ella.numLatents, 16)
        XCTAssertEqual(ella.width, 384)
        XCTAssertEqual(try JSONDecoder().decode(ELLAConnectorConfig.self, from: JSONEncoder().encode(ella)), ella)

        let sur = try JSONDecoder().decode(SURAdapterConfig.self,
                                           from: Data(#"{"reference_batch_first_slip": true, "adapter_weight": 0.2, "llm_dim": null}"#.utf8))
        XCTAssertTrue(sur.referenceBatchFirstSlip)
        XCTAssertEqual(sur.adapterWeight, 0.2)
        XCTAssertNil(sur.llmDim)
        XCTAssertEqual(sur.dimFeedforward, 2048)
        XCTAssertEqual(try JSONDecoder().decode(SURAdapterConfig.self, from: JSONEncoder().encode(sur)), sur)
        XCTAssertEqual(SURAdapterConfig().adapterWeight, 0.1)
        XCTAssertFalse(SURAdapterConfig().referenceBatchFirstSlip)

        let cam = try JSONDecoder().decode(CrossAdapterModuleConfig.self, from: Data(#"{"llm_dim": 64}"#.utf8))
        XCTAssertEqual([cam.llmDim, cam.outputDim, cam.heads], [64, 384, 8])
        XCTAssertEqual(try JSONDecoder().decode(CrossAdapterModuleConfig.self, from: JSONEncoder().encode(cam)), cam)

        let voken = try F.config("voken_config.json", as: VokenMapperConfig.self)
        XCTAssertEqual(voken.dimFeedforward, 128)
        XCTAssertEqual(try JSONDecoder().decode(VokenMapperConfig.self, from: JSONEncoder().encode(VokenMapperConfig())), VokenMapperConfig())
    }

    func testMissingInputsNameTheInput() throws {
        var rng = SeededGenerator(seed: 13)
        let adapters: [(any ConditioningAdapter, AdapterInputs, String)] = [
            (try SURAdapter(config: smallSUR(), rng: &rng), AdapterInputs(llmHidden: Tensor(zeros: [1, 2, 8])), "textTokens"),
            (try CrossAdapterModule(config: smallCAM(), rng: &rng), AdapterInputs(llmHidden: Tensor(zeros: [1, 2, 12])), "textTokens"),
            (try CrossAdapterModule(config: smallCAM(), rng: &rng), AdapterInputs(textTokens: Tensor(zeros: [1, 2, 8])), "llmHidden"),
            (try ELLAConnector(config: smallELLA(), rng: &rng), AdapterInputs(timesteps: [1]), "llmHidden"),
            (try ELLAConnector(config: smallELLA(), rng: &rng), AdapterInputs(llmHidden: Tensor(zeros: [1, 2, 12])), "timesteps"),
            (try VokenMapper(config: smallVoken(), rng: &rng), AdapterInputs(textTokens: Tensor(zeros: [1, 2, 8])), "llmHidden"),
        ]
        for (adapter, inputs, name) in adapters {
            let error = F.error { _ = try adapter.conditioning(inputs) }
            guard case .missingInput(let who, let input)? = error else { XCTFail("\(type(of: adapter)): \(String(describing: error))"); continue }
            XCTAssertEqual(input, name)
            XCTAssertEqual(who, type(of: adapter).typeName)
        }
    }

    func testMisShapedInputsNameTheInput() throws {
        var rng = SeededGenerator(seed: 14)
        let sur = try SURAdapter(config: smallSUR(), rng: &rng)
        let cam = try CrossAdapterModule(config: smallCAM(), rng: &rng)
        let ella = try ELLAConnector(config: smallELLA(), rng: &rng)
        let voken = try VokenMapper(config: smallVoken(), rng: &rng)
        let text = Tensor(zeros: [2, 3, 8]), llm = Tensor(zeros: [2, 4, 12])
        let cases: [(String, () throws -> Void)] = [
            ("textTokens", { _ = try sur.conditioning(AdapterInputs(textTokens: Tensor(zeros: [2, 3, 9]))) }),
            ("textTokens", { _ = try sur.conditioning(AdapterInputs(textTokens: Tensor(zeros: [3, 8]))) }),
            ("llmHidden", { _ = try sur.projectedLLMFeature(Tensor(zeros: [2, 4, 11])) }),
            ("llmMask", { _ = try sur.projectedLLMFeature(llm, mask: Tensor(zeros: [2, 3])) }),
            ("textTokens", { _ = try cam.conditioning(AdapterInputs(textTokens: Tensor(zeros: [2, 3, 7]), llmHidden: llm)) }),
            ("llmHidden", { _ = try cam.conditioning(AdapterInputs(textTokens: text, llmHidden: Tensor(zeros: [1, 4, 12]))) }),
            ("llmHidden", { _ = try cam.conditioning(AdapterInputs(textTokens: text, llmHidden: Tensor(zeros: [2, 4, 8]))) }),
            ("llmMask", { _ = try cam.conditioning(AdapterInputs(textTokens: text, llmHidden: llm, llmMask: Tensor(zeros: [2, 5]))) }),
            ("llmHidden", { _ = try ella.conditioning(AdapterInputs(llmHidden: Tensor(zeros: [2, 4, 8]), timesteps: [1, 2])) }),
            ("timesteps", { _ = try ella.conditioning(AdapterInputs(llmHidden: llm, timesteps: [1, 2, 3])) }),
            ("llmMask", { _ = try ella.conditioning(AdapterInputs(llmHidden: llm, llmMask: Tensor(zeros: [4, 2]), timesteps: [1])) }),
            ("llmHidden", { _ = try voken.conditioning(AdapterInputs(llmHidden: Tensor(zeros: [2, 3, 12]))) }),
        ]
        for (i, (name, body)) in cases.enumerated() {
            let error = F.error(body)
            guard case .inputShape? = error else { XCTFail("case \(i): \(String(describing: error))"); continue }
            XCTAssertEqual(F.subject(error), name, "case \(i)")
        }
    }

    // MARK: Small configs for the error tests

    private func smallSUR() -> SURAdapterConfig {
        var c = SURAdapterConfig()
        (c.outputDim, c.heads, c.dimFeedforward, c.llmDim) = (8, 2, 16, 12)
        return c
    }

    private func smallCAM() -> CrossAdapterModuleConfig {
        var c = CrossAdapterModuleConfig()
        (c.outputDim, c.llmDim, c.heads) = (8, 12, 2)
        return c
    }

    private func smallELLA() -> ELLAConnectorConfig {
        var c = ELLAConnectorConfig()
        (c.width, c.layers, c.heads, c.numLatents, c.inputDim, c.outputDim, c.timeChannel, c.timeEmbeddingDim) = (8, 1, 2, 4, 12, 8, 8, 8)
        return c
    }

    private func smallVoken() -> VokenMapperConfig {
        var c = VokenMapperConfig()
        (c.inputDim, c.fcHiddenDim, c.outputDim, c.numQueries, c.heads, c.numEncoderLayers, c.numDecoderLayers) = (12, 8, 8, 3, 2, 1, 1)
        return c
    }
}
