import Foundation
import XCTest
import Models
import Tensor

/// The diffusion fixture folder written by Tests/Reference/make_diffusion_fixtures.py.
private func diffusionFixtures() throws -> URL {
    let root = try XCTUnwrap(Bundle.module.url(forResource: "Fixtures", withExtension: nil), "test bundle has no Fixtures folder")
    return root.appendingPathComponent("diffusion")
}

private func fixtureTensors(_ name: String) throws -> [String: Tensor] {
    try SafeTensorsFile(contentsOf: diffusionFixtures().appendingPathComponent(name)).loadAll()
}

/// A leaf copy of `t` that requires a gradient.
private func leaf(_ t: Tensor) -> Tensor {
    let c = t.contiguousCopy()
    c.requiresGrad = true
    return c
}

/// Runs `body`, which must throw a `DiffusionConfigError`, and returns that error.
private func configError(_ body: () throws -> Void, file: StaticString = #filePath, line: UInt = #line) -> DiffusionConfigError? {
    do {
        try body()
        XCTFail("expected a DiffusionConfigError", file: file, line: line)
    } catch let error as DiffusionConfigError {
        return error
    } catch {
        XCTFail("expected a DiffusionConfigError, got \(error)", file: file, line: line)
    }
    return nil
}

/// The small test config of the fixtures, built in Swift.
private func smallConfig() -> UNet2DConditionConfig {
    var config = UNet2DConditionConfig()
    config.sampleSize = .single(16)
    config.blockOutChannels = [32, 64]
    config.layersPerBlock = .single(1)
    config.crossAttentionDim = .single(32)
    config.attentionHeadDim = .single(8)
    config.normNumGroups = 8
    config.downBlockTypes = ["CrossAttnDownBlock2D", "DownBlock2D"]
    config.upBlockTypes = ["UpBlock2D", "CrossAttnUpBlock2D"]
    return config
}

final class UNetTests: XCTestCase {
    // MARK: Parity with diffusers

    /// Output and input gradients of the (32, 64) UNet for conditioning of length 7 and 77.
    func testSmallUNetMatchesDiffusers() throws {
        let unet = try UNet2DConditionModel.load(directory: diffusionFixtures().appendingPathComponent("unet_small"))
        unet.eval()
        let io = try fixtureTensors("unet_small_io.safetensors")
        let timesteps = io["timesteps"]!.scalars
        for i in 0..<2 {
            let sample = leaf(io["sample"]!), ehs = leaf(io["ehs_\(i)"]!)
            let out = try unet.forward(sample: sample, timesteps: timesteps, encoderHiddenStates: ehs)
            assertParity(out, io["out_\(i)"]!, "unet_small output (L = \(ehs.shape[1]))")
            (out * io["w_\(i)"]!).sum().backward()
            assertParity(try XCTUnwrap(sample.grad), io["grad_sample_\(i)"]!, "unet_small d/d sample (L = \(ehs.shape[1]))")
            assertParity(try XCTUnwrap(ehs.grad), io["grad_ehs_\(i)"]!, "unet_small d/d encoder_hidden_states (L = \(ehs.shape[1]))")
        }
        // Parameter gradients (from the first case; the second accumulated on top, so compare
        // a fresh run) for training the UNet itself.
        unet.zeroGrad()
        let out = try unet.forward(sample: io["sample"]!, timesteps: timesteps, encoderHiddenStates: io["ehs_0"]!)
        (out * io["w_0"]!).sum().backward()
        try assertParameterGradients(unet, io, "unet_small")
    }

    func testEncoderAttentionMaskMatchesDiffusers() throws {
        let unet = try UNet2DConditionModel.load(directory: diffusionFixtures().appendingPathComponent("unet_small"))
        let io = try fixtureTensors("unet_small_io.safetensors")
        let out = try withoutGrad {
            try unet.forward(sample: io["sample"]!, timesteps: io["timesteps"]!.scalars, encoderHiddenStates: io["ehs_0"]!,
                             encoderAttentionMask: io["mask"]!)
        }
        assertParity(out, io["out_masked"]!, "unet_small output with encoder_attention_mask")
    }

    func testSharedTimestepBroadcastsOverBatch() throws {
        let unet = try UNet2DConditionModel.load(directory: diffusionFixtures().appendingPathComponent("unet_small"))
        let io = try fixtureTensors("unet_small_io.safetensors")
        let t = io["timesteps"]!.scalars[0]
        let out = try withoutGrad { try unet(io["sample"]!, timestep: t, encoderHiddenStates: io["ehs_0"]!) }
        assertParity(out, io["out_shared_t"]!, "unet_small output with one shared timestep")
        let viaTensor = try withoutGrad {
            try unet.forward(sample: io["sample"]!, timestep: Tensor(scalar: t), encoderHiddenStates: io["ehs_0"]!)
        }
        XCTAssertEqual(viaTensor.scalars, out.scalars)
    }

    /// Linear projections, per-block head counts, two transformer layers and layers_per_block 2,
    /// with the sin/cos order and frequency shift flipped from the defaults.
    func testLinearProjectionUNetMatchesDiffusers() throws {
        let unet = try UNet2DConditionModel.load(directory: diffusionFixtures().appendingPathComponent("unet_linear"))
        XCTAssertTrue(unet.config.useLinearProjection)
        XCTAssertEqual(unet.config.attentionHeadDim, .list([2, 4, 4]))
        let io = try fixtureTensors("unet_linear_io.safetensors")
        let sample = leaf(io["sample"]!), ehs = leaf(io["ehs_0"]!)
        let out = try unet.forward(sample: sample, timestep: io["timesteps"]!, encoderHiddenStates: ehs)
        assertParity(out, io["out_0"]!, "unet_linear output")
        (out * io["w_0"]!).sum().backward()
        assertParity(try XCTUnwrap(sample.grad), io["grad_sample_0"]!, "unet_linear d/d sample")
        assertParity(try XCTUnwrap(ehs.grad), io["grad_ehs_0"]!, "unet_linear d/d encoder_hidden_states")
        let shared = try withoutGrad {
            try unet(io["sample"]!, timestep: io["timesteps"]!.scalars[0], encoderHiddenStates: io["ehs_0"]!)
        }
        assertParity(shared, io["out_shared_t"]!, "unet_linear output with one shared timestep")
        try assertParameterGradients(unet, io, "unet_linear")
    }

    private func assertParameterGradients(_ unet: UNet2DConditionModel, _ io: [String: Tensor], _ model: String,
                                          file: StaticString = #filePath, line: UInt = #line) throws {
        let names = io.keys.filter { $0.hasPrefix("param_grad.") }.sorted()
        XCTAssertFalse(names.isEmpty, file: file, line: line)
        for key in names {
            let name = String(key.dropFirst("param_grad.".count))
            let grad = try XCTUnwrap(unet.tensor(named: name)?.grad, "\(name) has no gradient", file: file, line: line)
            assertParity(grad, io[key]!, "\(model) d/d \(name)", file: file, line: line)
        }
    }

    /// Training backpropagates through a frozen UNet into the conditioning: the conditioning's
    /// gradient is exact and no parameter accumulates one.
    func testFrozenUNetPassesGradientOnlyToConditioning() throws {
        let unet = try UNet2DConditionModel.load(directory: diffusionFixtures().appendingPathComponent("unet_small"))
        unet.freeze()
        XCTAssertEqual(unet.trainableParameterCount, 0)
        let io = try fixtureTensors("unet_small_io.safetensors")
        let ehs = leaf(io["ehs_1"]!)
        let out = try unet.forward(sample: io["sample"]!, timesteps: io["timesteps"]!.scalars, encoderHiddenStates: ehs)
        (out * io["w_1"]!).sum().backward()
        assertParity(try XCTUnwrap(ehs.grad), io["grad_ehs_1"]!, "frozen unet_small d/d encoder_hidden_states")
        let withGrad = unet.namedParameters().filter { $0.1.grad != nil }.map(\.0)
        XCTAssertEqual(withGrad, [], "frozen parameters received gradients")
    }

    /// Evaluation touches no shared mutable state: two threads running one model get the
    /// serial result.
    func testConcurrentInferenceMatchesSerial() throws {
        let unet = try UNet2DConditionModel.load(directory: diffusionFixtures().appendingPathComponent("unet_small"))
        unet.eval()
        let io = try fixtureTensors("unet_small_io.safetensors")
        let run = { try withoutGrad { try unet.forward(sample: io["sample"]!, timesteps: io["timesteps"]!.scalars,
                                                       encoderHiddenStates: io["ehs_1"]!) } }
        let serial = try run().scalars
        var results = [[Float]](repeating: [], count: 2)
        let lock = NSLock()
        DispatchQueue.concurrentPerform(iterations: 2) { i in
            let values = (try? run().scalars) ?? []
            lock.lock(); results[i] = values; lock.unlock()
        }
        XCTAssertEqual(results[0], serial)
        XCTAssertEqual(results[1], serial)
    }

    // MARK: Structure and names

    /// With `Threads.deterministic` the UNet's output, input gradients and every parameter
    /// gradient are bitwise the same on 1 and 2 threads (without it the GEMM splits and
    /// convolution tiles follow the thread count, and the last bits move).
    func testDeterministicThreadsGiveTheSameBits() throws {
        let savedCount = Threads.count, savedDeterministic = Threads.deterministic
        defer { Threads.count = savedCount; Threads.deterministic = savedDeterministic }
        Threads.deterministic = true
        var rng = SeededGenerator(seed: 21)
        let unet = try UNet2DConditionModel(config: smallConfig(), rng: &rng)
        let sample = Tensor.randn([2, 4, 16, 16], using: &rng), ehs = Tensor.randn([2, 7, 32], using: &rng)
        func run(threads: Int) throws -> [UInt32] {
            Threads.count = threads
            unet.zeroGrad()
            let x = leaf(sample), c = leaf(ehs)
            let out = try unet.forward(sample: x, timesteps: [10, 500], encoderHiddenStates: c)
            (out * out).sum().backward()
            var values = out.scalars + (try XCTUnwrap(x.grad)).scalars + (try XCTUnwrap(c.grad)).scalars
            for (_, p) in unet.namedParameters() { values += (try XCTUnwrap(p.grad)).scalars }
            return values.map(\.bitPattern)
        }
        let one = try run(threads: 1), two = try run(threads: 2)
        XCTAssertEqual(one.count, two.count)
        XCTAssertTrue(one == two, "\(zip(one, two).filter { $0 != $1 }.count) of \(one.count) values differ between 1 and 2 threads")
    }

    func testParameterNamesFollowDiffusers() throws {
        let unet = try UNet2DConditionModel(config: smallConfig())
        let names = Set(unet.stateDict().keys)
        let expected = try SafeTensorsFile(contentsOf: diffusionFixtures().appendingPathComponent("unet_small/diffusion_pytorch_model.safetensors")).names
        XCTAssertEqual(names, Set(expected))
        XCTAssertTrue(names.contains("down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"))
        XCTAssertTrue(names.contains("down_blocks.0.attentions.0.transformer_blocks.0.ff.net.0.proj.weight"))
        XCTAssertTrue(names.contains("down_blocks.0.attentions.0.transformer_blocks.0.ff.net.2.bias"))
        XCTAssertTrue(names.contains("up_blocks.1.attentions.1.transformer_blocks.0.attn1.to_out.0.weight"))
        XCTAssertTrue(names.contains("down_blocks.0.downsamplers.0.conv.weight"))
        XCTAssertTrue(names.contains("up_blocks.0.upsamplers.0.conv.weight"))
        XCTAssertEqual(unet.tensor(named: "down_blocks.0.attentions.0.proj_in.weight")?.shape, [32, 32, 1, 1])
    }

    /// diffusers' legacy naming: `attention_head_dim` is the number of heads unless
    /// `num_attention_heads` is given.
    func testAttentionHeadDimIsTheHeadCount() throws {
        var config = smallConfig()
        let unet = try UNet2DConditionModel(config: config)
        let block = try XCTUnwrap(unet.downBlocks[0] as? CrossAttnDownBlock2D)
        XCTAssertEqual(block.attentions[0].transformerBlocks[0].attn1.heads, 8)
        XCTAssertEqual(block.attentions[0].transformerBlocks[0].attn1.headDim, 4)
        config.numAttentionHeads = .single(2)
        let other = try UNet2DConditionModel(config: config)
        let attn = try XCTUnwrap(other.downBlocks[0] as? CrossAttnDownBlock2D).attentions[0].transformerBlocks[0].attn2
        XCTAssertEqual(attn.heads, 2)
        XCTAssertEqual(attn.headDim, 16)
    }

    func testSaveAndLoadRoundTrip() throws {
        var rng = SeededGenerator(seed: 11)
        var config = smallConfig()
        config.useLinearProjection = true
        config.midBlockType = nil
        let unet = try UNet2DConditionModel(config: config, rng: &rng)
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("sura-unet-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: dir) }
        try unet.save(to: dir)
        let loaded = try UNet2DConditionModel.load(directory: dir)
        XCTAssertEqual(loaded.config, unet.config)
        XCTAssertNil(loaded.midBlock)
        let sample = Tensor.randn([1, 4, 8, 8], using: &rng), ehs = Tensor.randn([1, 3, 32], using: &rng)
        let a = try withoutGrad { try unet(sample, timestep: 10, encoderHiddenStates: ehs) }
        let b = try withoutGrad { try loaded(sample, timestep: 10, encoderHiddenStates: ehs) }
        XCTAssertEqual(a.scalars, b.scalars)
    }

    func testConfigReadsDiffusersJSONAndRoundTrips() throws {
        let url = try diffusionFixtures().appendingPathComponent("unet_small/config.json")
        let config = try UNet2DConditionConfig(contentsOf: url)
        XCTAssertEqual(config.blockOutChannels, [32, 64])
        XCTAssertEqual(config.crossAttentionDim, .single(32))
        XCTAssertEqual(config.heads(block: 1), 8)
        XCTAssertEqual(config.timeEmbedDim, 128)
        XCTAssertEqual(try UNet2DConditionConfig(jsonData: config.jsonData()), config)
    }

    // MARK: Errors

    func testConfigErrorsNameTheKey() throws {
        var config = smallConfig()
        config.downBlockTypes[1] = "SkipDownBlock2D"
        if case let .unknownBlockType(key, value, _)? = configError({ _ = try UNet2DConditionModel(config: config) }) {
            XCTAssertEqual(key, "down_block_types[1]")
            XCTAssertEqual(value, "SkipDownBlock2D")
        } else { XCTFail("unknown block type not reported") }

        config = smallConfig()
        config.blockOutChannels = [30, 64]
        if case let .channelsNotDivisible(key, channels, groups)? = configError({ try config.validate() }) {
            XCTAssertEqual(key, "block_out_channels[0]")
            XCTAssertEqual(channels, 30)
            XCTAssertEqual(groups, 8)
        } else { XCTFail("indivisible channels not reported") }

        config = smallConfig()
        config.attentionHeadDim = .list([8, 8, 8])
        XCTAssertTrue(configError({ try config.validate() })?.description.contains("attention_head_dim") ?? false)

        config = smallConfig()
        config.upBlockTypes = ["UpBlock2D"]
        XCTAssertTrue(configError({ try config.validate() })?.description.contains("up_block_types") ?? false)
    }

    func testConfigJSONErrorsNameTheKey() throws {
        func decode(_ json: String) -> DiffusionConfigError? {
            configError { _ = try UNet2DConditionConfig(jsonData: Data(json.utf8), path: "unet/config.json") }
        }
        if case let .unsupported(key, _, _)? = decode(#"{"class_embed_type": "timestep"}"#) {
            XCTAssertEqual(key, "class_embed_type")
        } else { XCTFail("class_embed_type not rejected") }
        if case let .invalidValue(key, value, _)? = decode(#"{"block_out_channels": "wide"}"#) {
            XCTAssertEqual(key, "block_out_channels")
            XCTAssertEqual(value, "\"wide\"")
        } else { XCTFail("wrong type not reported") }
        if case let .unsupported(key, _, _)? = decode(#"{"only_cross_attention": [true, false, false, false]}"#) {
            XCTAssertEqual(key, "only_cross_attention")
        } else { XCTFail("only_cross_attention not rejected") }
        if case let .invalidValue(key, _, _)? = decode(#"{"act_fn": "mish"}"#) {
            XCTAssertEqual(key, "act_fn")
        } else { XCTFail("unknown activation not reported") }
        if case let .unreadableConfig(path, _)? = decode("{not json") {
            XCTAssertEqual(path, "unet/config.json")
        } else { XCTFail("invalid JSON not reported") }
        if case .unsupported? = decode(#"{"norm_num_groups": null}"#) {} else { XCTFail("null norm_num_groups accepted") }
        // Unknown keys are ignored; null mid_block_type means no mid block.
        let config = try UNet2DConditionConfig(jsonData: Data(#"{"some_future_key": 1, "mid_block_type": null}"#.utf8))
        XCTAssertNil(config.midBlockType)
    }

    func testInputErrorsNameTheTensor() throws {
        let unet = try UNet2DConditionModel(config: smallConfig())
        let sample = Tensor(zeros: [2, 4, 8, 8])
        if case let .conditioningWidthMismatch(tensor, expected, got, _)? = configError({
            _ = try unet(sample, timestep: 1, encoderHiddenStates: Tensor(zeros: [2, 5, 16]))
        }) {
            XCTAssertEqual(tensor, "encoder_hidden_states")
            XCTAssertEqual(expected, 32)
            XCTAssertEqual(got, 16)
        } else { XCTFail("conditioning width not checked") }
        let ehs = Tensor(zeros: [2, 5, 32])
        let cases: [(String, () throws -> Void)] = [
            ("sample", { _ = try unet(Tensor(zeros: [2, 3, 8, 8]), timestep: 1, encoderHiddenStates: ehs) }),
            ("sample", { _ = try unet(Tensor(zeros: [2, 4, 7, 8]), timestep: 1, encoderHiddenStates: ehs) }),
            ("timestep", { _ = try unet(sample, timesteps: [1, 2, 3], encoderHiddenStates: ehs) }),
            ("encoder_hidden_states", { _ = try unet(sample, timestep: 1, encoderHiddenStates: Tensor(zeros: [1, 5, 32])) }),
            ("encoder_attention_mask", {
                _ = try unet(sample, timestep: 1, encoderHiddenStates: ehs, encoderAttentionMask: Tensor(zeros: [2, 4]))
            }),
        ]
        for (tensor, body) in cases {
            if case let .invalidInput(name, _, _)? = configError(body) {
                XCTAssertEqual(name, tensor)
            } else { XCTFail("bad \(tensor) not reported") }
        }
    }

    func testStrictLoadNamesMismatchedWeights() throws {
        let dir = try diffusionFixtures().appendingPathComponent("unet_small")
        var weights = try SafeTensorsFile(contentsOf: dir.appendingPathComponent("diffusion_pytorch_model.safetensors")).loadAll()
        weights["conv_in.bias"] = nil
        weights["down_blocks.0.attentions.0.extra.weight"] = Tensor(zeros: [1])
        weights["conv_out.weight"] = Tensor(zeros: [4, 32, 1, 1])
        let unet = try UNet2DConditionModel(config: UNet2DConditionConfig(contentsOf: dir.appendingPathComponent("config.json")))
        if case let .weightsDoNotMatch(file, error)? = configError({ try unet.loadWeights(weights, file: "unet.safetensors") }) {
            XCTAssertEqual(file, "unet.safetensors")
            XCTAssertEqual(error.missing, ["conv_in.bias"])
            XCTAssertEqual(error.unexpected, ["down_blocks.0.attentions.0.extra.weight"])
            XCTAssertEqual(error.mismatched.map(\.name), ["conv_out.weight"])
        } else { XCTFail("mismatched weights not reported") }
        // A folder without weights names what it looked for.
        let empty = FileManager.default.temporaryDirectory.appendingPathComponent("sura-empty-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: empty, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: empty) }
        try FileManager.default.copyItem(at: dir.appendingPathComponent("config.json"), to: empty.appendingPathComponent("config.json"))
        if case let .missingWeights(_, tried)? = configError({ _ = try UNet2DConditionModel.load(directory: empty) }) {
            XCTAssertTrue(tried.contains("diffusion_pytorch_model.safetensors"))
        } else { XCTFail("missing weights not reported") }
        // A VAE folder is not a UNet.
        let vae = try diffusionFixtures().appendingPathComponent("vae")
        XCTAssertNotNil(configError({ _ = try UNet2DConditionModel.load(directory: vae) }))
    }

    // MARK: Pieces

    func testTimestepEmbeddingMatchesFormula() {
        let e = sinusoidalTimestepEmbedding(timesteps: [0, 10], dim: 6, flipSinToCos: true, downscaleFreqShift: 0)
        XCTAssertEqual(e.shape, [2, 6])
        // half = 3, frequencies exp(−ln(10⁴)·i/3); flip puts cos first.
        for (i, f) in [Float(1), Foundation.exp(-Foundation.log(10_000) / 3), Foundation.exp(-2 * Foundation.log(10_000) / 3)].enumerated() {
            XCTAssertEqual(e[1, i], Foundation.cos(10 * f), accuracy: 1e-5)
            XCTAssertEqual(e[1, 3 + i], Foundation.sin(10 * f), accuracy: 1e-5)
            XCTAssertEqual(e[0, i], 1)
            XCTAssertEqual(e[0, 3 + i], 0)
        }
        XCTAssertEqual(sinusoidalTimestepEmbedding(timesteps: [5], dim: 5).scalars.last, 0, "odd width pads one zero")
    }

    func testFusedOpsGradients() {
        var rng = SeededGenerator(seed: 5)
        let x = leaf(Tensor.randn([2, 3, 8], using: &rng))
        let r1 = GradientChecker.check([x], epsilon: 1e-2, absoluteTolerance: 5e-3, relativeTolerance: 2e-2) { $0[0].gegluGate().square().sum() }
        XCTAssertTrue(r1.passed, r1.description)
        let a = leaf(Tensor.randn([2, 2, 3, 3], using: &rng)), b = leaf(Tensor.randn([2, 3, 3, 3], using: &rng))
        let w = Tensor.randn([2, 5, 3, 3], using: &rng)
        let r2 = GradientChecker.check([a, b], epsilon: 1e-2, absoluteTolerance: 5e-3, relativeTolerance: 2e-2) {
            (Tensor.concatChannels($0[0], $0[1]) * w).sum()
        }
        XCTAssertTrue(r2.passed, r2.description)
        XCTAssertEqual(Tensor.concatChannels(a, b).scalars, Tensor.concat([a, b], axis: 1).scalars)
        let p = leaf(Tensor.randn([1, 2, 3, 4], using: &rng))
        let padded = p.padBottomRight()
        XCTAssertEqual(padded.shape, [1, 2, 4, 5])
        XCTAssertEqual(padded[0, 1, 3, 4], 0)
        XCTAssertEqual(padded[0, 1, 2, 3], p[0, 1, 2, 3])
        let r3 = GradientChecker.check([p], epsilon: 1e-2, absoluteTolerance: 5e-3, relativeTolerance: 2e-2) { $0[0].padBottomRight().square().sum() }
        XCTAssertTrue(r3.passed, r3.description)
    }
}

/// The attention kernels against `Tensor.scaledDotProductAttention` composed by hand.
final class DiffusionAttentionTests: XCTestCase {
    private func reference(_ attn: DiffusionAttention, _ x: Tensor, _ context: Tensor?, mask: Tensor?) -> Tensor {
        let c = context ?? x
        let n = x.shape[0], lq = x.shape[1], lk = c.shape[1], h = attn.heads, d = attn.headDim
        let q = x.linear(weight: attn.toQ.weight, bias: nil).reshaped([n, lq, h, d]).permuted([0, 2, 1, 3])
        let k = c.linear(weight: attn.toK.weight, bias: nil).reshaped([n, lk, h, d]).permuted([0, 2, 1, 3])
        let v = c.linear(weight: attn.toV.weight, bias: nil).reshaped([n, lk, h, d]).permuted([0, 2, 1, 3])
        let o = Tensor.scaledDotProductAttention(query: q, key: k, value: v, mask: mask)
        return o.permuted([0, 2, 1, 3]).reshaped([n, lq, h * d]).linear(weight: attn.toOut[0].weight, bias: attn.toOut[0].bias)
    }

    func testFusedAndWideHeadsMatchComposedAttention() throws {
        var rng = SeededGenerator(seed: 9)
        for (heads, headDim, lq, lk) in [(8, 4, 19, 7), (2, 16, 33, 33), (1, 64, 5, 21), (2, 72, 6, 9), (3, 8, 1, 1)] {
            let attn = DiffusionAttention(queryDim: 24, crossAttentionDim: 12, heads: heads, headDim: headDim, rng: &rng)
            let x = leaf(Tensor.randn([2, lq, 24], using: &rng)), c = leaf(Tensor.randn([2, lk, 12], using: &rng))
            let keep = Tensor(shape: [2, 1, 1, lk], data: (0..<(2 * lk)).map { $0 % 3 == 1 && $0 % lk != 0 ? -10_000 : 0 })
            let out = attn(x, context: c, mask: keep)
            let g = Tensor.randn(out.shape, using: &rng)
            (out * g).sum().backward()
            let gx = try XCTUnwrap(x.grad), gc = try XCTUnwrap(c.grad)
            x.zeroGrad(); c.zeroGrad()
            let ref = reference(attn, x, c, mask: keep)
            (ref * g).sum().backward()
            let what = "heads \(heads) × \(headDim), Lq \(lq), Lk \(lk)"
            // Errors relative to the reference's scale, floored at 1: with a single key the input
            // gradient is zero in exact arithmetic and both sides hold only rounding noise.
            func error(_ a: Tensor, _ b: Tensor) -> Float {
                relativeError(a, b) * max(b.abs().max().item, 1e-30) / max(b.abs().max().item, 1)
            }
            XCTAssertLessThan(error(out, ref), 2e-6, what)
            XCTAssertLessThan(error(gx, try XCTUnwrap(x.grad)), 2e-5, "d/dx " + what)
            XCTAssertLessThan(error(gc, try XCTUnwrap(c.grad)), 2e-5, "d/dcontext " + what)
        }
        let selfAttn = DiffusionAttention(queryDim: 16, heads: 4, headDim: 4, rng: &rng)
        let x = leaf(Tensor.randn([3, 40, 16], using: &rng))
        let r = GradientChecker.check([x], epsilon: 1e-2, absoluteTolerance: 5e-3, relativeTolerance: 2e-2) {
            selfAttn($0[0]).square().sum()
        }
        XCTAssertTrue(r.passed, r.description)
        XCTAssertLessThan(relativeError(withoutGrad { selfAttn(x) }, withoutGrad { reference(selfAttn, x, nil, mask: nil) }), 2e-6)
    }
}
