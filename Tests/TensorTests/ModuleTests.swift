import XCTest
import Tensor

// A module tree shaped like a tiny diffusers UNet, mirrored by this PyTorch model (the expected
// name lists below are what PyTorch prints for it):
//
//   class TinyResnet(nn.Module):         # norm1, conv1, time_emb_proj, conv_shortcut (cin != cout)
//   class TinyDownBlock(nn.Module):      # resnets = ModuleList([2 x TinyResnet]), downsamplers = ModuleList or None
//   class TinyNet(nn.Module):
//       conv_in = Conv2d(3, 4, 3, padding=1); pos_embed = Parameter(zeros(1, 4))
//       down_blocks = ModuleList([TinyDownBlock(4, 4, down=True), TinyDownBlock(4, 8, down=False)])
//       register_buffer("running_scale", ones(4)); register_buffer("cache", zeros(2), persistent=False)
//       mid = Sequential(Linear(8, 8), ReLU(), Linear(8, 8))
//       heads = ModuleDict({"a": Linear(8, 3), "b": Linear(8, 2)})
//       scales = ParameterList([Parameter(ones(2)), Parameter(ones(3))])

final class TinyResnet: Module {
    let norm1: GroupNorm
    let conv1: Conv2d
    @ModuleKey("time_emb_proj") var timeEmbProj: Linear
    @ModuleKey("conv_shortcut") var convShortcut: Conv2d?
    let channels: Int  // not a tensor or module: ignored

    init(_ cin: Int, _ cout: Int, rng: inout SeededGenerator) {
        norm1 = GroupNorm(groups: 2, channels: cin)
        conv1 = Conv2d(cin, cout, kernelSize: 3, padding: 1, rng: &rng)
        _timeEmbProj.wrappedValue = Linear(4, cout, rng: &rng)
        _convShortcut.wrappedValue = cin != cout ? Conv2d(cin, cout, kernelSize: 1, rng: &rng) : nil
        channels = cout
        super.init()
    }
}

final class TinyDownBlock: Module {
    let resnets: [TinyResnet]
    let downsamplers: [Conv2d]?

    init(_ cin: Int, _ cout: Int, down: Bool, rng: inout SeededGenerator) {
        resnets = [TinyResnet(cin, cout, rng: &rng), TinyResnet(cout, cout, rng: &rng)]
        downsamplers = down ? [Conv2d(cout, cout, kernelSize: 3, stride: 2, padding: 1, rng: &rng)] : nil
        super.init()
    }
}

final class TinyNet: Module {
    @ModuleKey("conv_in") var convIn: Conv2d
    // Declared after a child on purpose: PyTorch lists a module's own parameters first.
    @ParameterKey("pos_embed") var posEmbed: Tensor
    @ModuleKey("down_blocks") var downBlocks: [TinyDownBlock]
    @Buffer("running_scale") var runningScale: Tensor = Tensor.ones([4])
    @Buffer(persistent: false) var cache: Tensor = Tensor.zeros([2])
    let mid: Sequential
    let heads: [String: Linear]
    let scales: [Tensor]
    var name = "tiny"

    init(seed: UInt64 = 1) {
        var rng = SeededGenerator(seed: seed)
        _convIn.wrappedValue = Conv2d(3, 4, kernelSize: 3, padding: 1, rng: &rng)
        _posEmbed.wrappedValue = Tensor.zeros([1, 4]).asParameter()
        _downBlocks.wrappedValue = [TinyDownBlock(4, 4, down: true, rng: &rng), TinyDownBlock(4, 8, down: false, rng: &rng)]
        mid = Sequential(Linear(8, 8, rng: &rng), Activation.relu(), Linear(8, 8, rng: &rng))
        heads = ["b": Linear(8, 2, rng: &rng), "a": Linear(8, 3, rng: &rng)]
        scales = [Tensor.ones([2]).asParameter(), Tensor.ones([3]).asParameter()]
        super.init()
    }
}

private func resnetNames(_ p: String, shortcut: Bool) -> [String] {
    var names = ["norm1.weight", "norm1.bias", "conv1.weight", "conv1.bias", "time_emb_proj.weight", "time_emb_proj.bias"]
    if shortcut { names += ["conv_shortcut.weight", "conv_shortcut.bias"] }
    return names.map { p + $0 }
}

/// PyTorch's `named_parameters()` for TinyNet.
private let tinyParameterNames: [String] =
    ["pos_embed", "conv_in.weight", "conv_in.bias"]
    + resnetNames("down_blocks.0.resnets.0.", shortcut: false) + resnetNames("down_blocks.0.resnets.1.", shortcut: false)
    + ["down_blocks.0.downsamplers.0.weight", "down_blocks.0.downsamplers.0.bias"]
    + resnetNames("down_blocks.1.resnets.0.", shortcut: true) + resnetNames("down_blocks.1.resnets.1.", shortcut: false)
    + ["mid.0.weight", "mid.0.bias", "mid.2.weight", "mid.2.bias",
       "heads.a.weight", "heads.a.bias", "heads.b.weight", "heads.b.bias", "scales.0", "scales.1"]

/// Two sibling children whose names share a prefix, for dot-boundary prefix matching.
final class PrefixPair: Module {
    let fc: Linear
    let fc2: Linear
    init(rng: inout SeededGenerator) {
        fc = Linear(2, 2, rng: &rng)
        fc2 = Linear(2, 2, rng: &rng)
        super.init()
    }
}

/// Tied weights: the output layer reuses the embedding table, as language models do.
final class TiedModel: Module {
    @ModuleKey("embed_tokens") var embedTokens: Embedding
    @ModuleKey("lm_head") var lmHead: Linear
    init(rng: inout SeededGenerator) {
        let embedding = Embedding(5, 3, rng: &rng)
        _embedTokens.wrappedValue = embedding
        _lmHead.wrappedValue = Linear(weight: embedding.weight)
        super.init()
    }
}

/// A block that accepts an older checkpoint layout: `proj.w`/`proj.b` instead of `fc.weight`/`fc.bias`.
final class LegacyBlock: Module, CheckpointRemapping {
    let fc: Linear
    init(rng: inout SeededGenerator) {
        fc = Linear(2, 3, rng: &rng)
        super.init()
    }
    func remapCheckpoint(_ weights: [String: Tensor]) throws -> [String: Tensor] {
        var out: [String: Tensor] = [:]
        for (key, value) in weights {
            switch key {
            case "proj.w": out["fc.weight"] = value
            case "proj.b": out["fc.bias"] = value
            default: out[key] = value
            }
        }
        return out
    }
}

final class LegacyHolder: Module {
    let block: LegacyBlock
    init(rng: inout SeededGenerator) {
        block = LegacyBlock(rng: &rng)
        super.init()
    }
}

/// A fresh checkpoint with the same names and shapes as `module`, filled with other values.
private func randomCheckpoint(for module: Module, seed: UInt64) -> [String: Tensor] {
    var rng = SeededGenerator(seed: seed)
    var out: [String: Tensor] = [:]
    for (name, t) in module.namedStateTensors() { out[name] = Tensor.uniform(t.shape, low: -1, high: 1, using: &rng) }
    return out
}

final class ModuleTests: XCTestCase {
    // MARK: Reflection

    func testNamedParametersMatchPyTorchNames() {
        let net = TinyNet()
        XCTAssertEqual(net.namedParameters().map { $0.0 }, tinyParameterNames)
        XCTAssertEqual(net.parameterCount, 1834)  // PyTorch's sum(p.numel()) for the same tree
        // state_dict: own parameters, then own persistent buffers, then children.
        XCTAssertEqual(net.namedStateTensors().map { $0.0 },
                       ["pos_embed", "running_scale"] + tinyParameterNames.dropFirst())
        XCTAssertEqual(net.namedBuffers().map { $0.0 }, ["running_scale", "cache"])
        XCTAssertEqual(Set(net.stateDict().keys), Set(tinyParameterNames + ["running_scale"]))
        XCTAssertFalse(net.runningScale.requiresGrad)
        XCTAssertEqual(net.namedParameters().first { $0.0 == "down_blocks.1.resnets.0.conv_shortcut.weight" }?.1.shape, [8, 4, 1, 1])
    }

    func testNamedModulesAndLookup() {
        let net = TinyNet()
        func resnet(_ p: String, _ shortcut: Bool) -> [String] {
            [p, p + ".norm1", p + ".conv1", p + ".time_emb_proj"] + (shortcut ? [p + ".conv_shortcut"] : [])
        }
        // PyTorch's named_modules() minus its ModuleList/ModuleDict/ParameterList containers.
        let expected = ["", "conv_in", "down_blocks.0"] + resnet("down_blocks.0.resnets.0", false)
            + resnet("down_blocks.0.resnets.1", false) + ["down_blocks.0.downsamplers.0", "down_blocks.1"]
            + resnet("down_blocks.1.resnets.0", true) + resnet("down_blocks.1.resnets.1", false)
            + ["mid", "mid.0", "mid.1", "mid.2", "heads.a", "heads.b"]
        XCTAssertEqual(net.namedModules().map { $0.0 }, expected)
        XCTAssertEqual(net.namedChildren().map { $0.0 },
                       ["conv_in", "down_blocks.0", "down_blocks.1", "mid", "heads.a", "heads.b"])
        XCTAssertTrue(net.module(named: "down_blocks.1.resnets.0.conv_shortcut") === net.downBlocks[1].resnets[0].convShortcut)
        XCTAssertNil(net.module(named: "down_blocks.2"))
        XCTAssertTrue(net.tensor(named: "mid.2.bias") === (net.mid.layers[2] as! Linear).bias)
        XCTAssertTrue(net.tensor(named: "running_scale") === net.runningScale)
        XCTAssertNil(net.tensor(named: "mid.1.weight"))
        XCTAssertNil(net.tensor(named: "cache.x"))
    }

    func testTiedWeightsAppearOnceAsParametersButUnderEveryNameInStateDict() throws {
        var rng = SeededGenerator(seed: 3)
        let model = TiedModel(rng: &rng)
        XCTAssertEqual(model.namedParameters().map { $0.0 }, ["embed_tokens.weight"])
        XCTAssertEqual(model.namedStateTensors().map { $0.0 }, ["embed_tokens.weight", "lm_head.weight"])
        XCTAssertEqual(model.parameterCount, 15)
        // A checkpoint that stores the tied tensor once loads strictly.
        let table = Tensor.uniform([5, 3], using: &rng)
        try model.load(["embed_tokens.weight": table])
        XCTAssertEqual(model.lmHead.weight.scalars, table.scalars)
    }

    // MARK: Freezing, modes, gradients

    func testFreezeAndUnfreezeByPrefix() {
        let net = TinyNet()
        let total = net.parameterCount
        net.freeze(prefix: "down_blocks.0")
        let trainable = net.namedTrainableParameters().map { $0.0 }
        XCTAssertFalse(trainable.contains { $0.hasPrefix("down_blocks.0.") })
        XCTAssertTrue(trainable.contains("down_blocks.1.resnets.0.conv1.weight"))
        let frozenCount = net.namedParameters().filter { $0.0.hasPrefix("down_blocks.0.") }.reduce(0) { $0 + $1.1.count }
        XCTAssertEqual(net.trainableParameterCount, total - frozenCount)
        net.unfreeze(prefix: "down_blocks.0.resnets.1")
        XCTAssertTrue(net.trainableParameters().contains { $0 === net.downBlocks[0].resnets[1].conv1.weight })
        XCTAssertFalse(net.downBlocks[0].resnets[0].conv1.weight.requiresGrad)
        net.freeze()
        XCTAssertEqual(net.trainableParameterCount, 0)
        net.unfreeze()
        XCTAssertEqual(net.trainableParameterCount, total)
        XCTAssertFalse(net.runningScale.requiresGrad, "buffers are never unfrozen")

        // Prefixes match whole dotted parts: "fc" is not a prefix of "fc2".
        var rng = SeededGenerator(seed: 4)
        let pair = PrefixPair(rng: &rng)
        pair.freeze(prefix: "fc")
        XCTAssertEqual(pair.namedTrainableParameters().map { $0.0 }, ["fc2.weight", "fc2.bias"])
    }

    func testFrozenParametersGetNoGradientAndZeroGradClears() {
        var rng = SeededGenerator(seed: 5)
        let mlp = Sequential(Linear(3, 4, rng: &rng), Activation.tanh(), Linear(4, 2, rng: &rng))
        mlp.freeze(prefix: "0")
        let x = Tensor.uniform([2, 3], low: -1, high: 1, using: &rng)
        mlp(x).sum().backward()
        XCTAssertNil((mlp.layers[0] as! Linear).weight.grad)
        XCTAssertNotNil((mlp.layers[2] as! Linear).weight.grad)
        mlp.zeroGrad()
        XCTAssertTrue(mlp.parameters().allSatisfy { $0.grad == nil })
    }

    func testTrainAndEvalPropagateToEveryModule() {
        let net = TinyNet()
        XCTAssertTrue(net.namedModules().allSatisfy { $0.1.training })
        net.eval()
        XCTAssertTrue(net.namedModules().allSatisfy { !$0.1.training })
        net.downBlocks[1].train()
        XCTAssertTrue(net.downBlocks[1].resnets[0].conv1.training)
        XCTAssertFalse(net.downBlocks[0].training)
        net.train()
        XCTAssertTrue(net.namedModules().allSatisfy { $0.1.training })
    }

    // MARK: State dict

    func testLoadCopiesInPlaceAndKeepsIdentity() throws {
        let net = TinyNet()
        let before = net.parameters()
        let checkpoint = randomCheckpoint(for: net, seed: 9)
        let report = try net.load(checkpoint)
        XCTAssertEqual(report.loaded.count, tinyParameterNames.count + 1)
        XCTAssertTrue(report.missing.isEmpty && report.unexpected.isEmpty)
        let after = net.parameters()
        XCTAssertEqual(before.count, after.count)
        for (a, b) in zip(before, after) { XCTAssertTrue(a === b, "load replaced a parameter tensor") }
        for (name, t) in net.namedStateTensors() { XCTAssertEqual(t.scalars, checkpoint[name]!.scalars, name) }
        XCTAssertTrue(net.convIn.weight.requiresGrad, "load keeps requiresGrad")
        // Non-persistent buffers are neither saved nor expected.
        XCTAssertNil(net.stateDict()["cache"])
    }

    func testStrictLoadReportsMissingUnexpectedAndMisShapedTogether() {
        let net = TinyNet()
        let original = net.convIn.weight.scalars
        var checkpoint = randomCheckpoint(for: net, seed: 10)
        checkpoint["mid.2.bias"] = nil
        checkpoint["running_scale"] = nil
        checkpoint["mid.3.weight"] = Tensor.zeros([8, 8])
        checkpoint["heads.a.weight"] = Tensor.zeros([8, 3])
        checkpoint["down_blocks.0.resnets.0.conv1.weight"] = Tensor.zeros([4, 4, 1, 1])
        XCTAssertThrowsError(try net.load(checkpoint)) { error in
            guard let e = error as? StateDictError else { return XCTFail("unexpected error \(error)") }
            XCTAssertEqual(e.missing, ["running_scale", "mid.2.bias"])
            XCTAssertEqual(e.unexpected, ["mid.3.weight"])
            XCTAssertEqual(e.mismatched, [
                ShapeMismatch(name: "down_blocks.0.resnets.0.conv1.weight", expected: [4, 4, 3, 3], found: [4, 4, 1, 1]),
                ShapeMismatch(name: "heads.a.weight", expected: [3, 8], found: [8, 3]),
            ])
            let text = e.description
            for name in ["running_scale", "mid.2.bias", "mid.3.weight", "heads.a.weight", "[4, 4, 3, 3]", "[4, 4, 1, 1]"] {
                XCTAssertTrue(text.contains(name), "description lacks \(name): \(text)")
            }
        }
        XCTAssertEqual(net.convIn.weight.scalars, original, "a failed load must not copy anything")
    }

    func testNonStrictLoadToleratesMissingAndUnexpectedButNotShapes() throws {
        let net = TinyNet()
        var checkpoint = randomCheckpoint(for: net, seed: 11)
        checkpoint["pos_embed"] = nil
        checkpoint["extra"] = Tensor.zeros([1])
        let report = try net.load(checkpoint, strict: false)
        XCTAssertEqual(report.missing, ["pos_embed"])
        XCTAssertEqual(report.unexpected, ["extra"])
        XCTAssertEqual(net.midFirst.weight.scalars, checkpoint["mid.0.weight"]!.scalars)
        checkpoint["pos_embed"] = Tensor.zeros([4])
        XCTAssertThrowsError(try net.load(checkpoint, strict: false)) { error in
            XCTAssertEqual((error as? StateDictError)?.mismatched.map { $0.name }, ["pos_embed"])
        }
    }

    func testPrefixLoadsASubModuleFromALargerCheckpoint() throws {
        var rng = SeededGenerator(seed: 12)
        let block = TinyDownBlock(4, 8, down: false, rng: &rng)
        var checkpoint: [String: Tensor] = ["other.weight": Tensor.zeros([3])]
        for (name, t) in randomCheckpoint(for: block, seed: 13) { checkpoint["down_blocks.1." + name] = t }
        checkpoint["down_blocks.10.resnets.0.conv1.weight"] = Tensor.zeros([1])  // not under "down_blocks.1."
        try block.load(checkpoint, prefix: "down_blocks.1")
        XCTAssertEqual(block.resnets[0].convShortcut!.weight.scalars, checkpoint["down_blocks.1.resnets.0.conv_shortcut.weight"]!.scalars)
        try block.load(checkpoint, prefix: "down_blocks.1.")  // a trailing dot is accepted

        checkpoint["down_blocks.1.resnets.1.norm1.bias"] = nil
        checkpoint["down_blocks.1.resnets.9.x"] = Tensor.zeros([1])
        XCTAssertThrowsError(try block.load(checkpoint, prefix: "down_blocks.1")) { error in
            let e = error as? StateDictError
            XCTAssertEqual(e?.missing, ["down_blocks.1.resnets.1.norm1.bias"], "errors name checkpoint keys")
            XCTAssertEqual(e?.unexpected, ["down_blocks.1.resnets.9.x"])
            XCTAssertEqual(e?.prefix, "down_blocks.1")
        }
    }

    func testRemappingHookRenamesKeysOfItsOwnSubtree() throws {
        var rng = SeededGenerator(seed: 14)
        let holder = LegacyHolder(rng: &rng)
        let w = Tensor.uniform([3, 2], using: &rng), b = Tensor.uniform([3], using: &rng)
        try holder.load(["block.proj.w": w, "block.proj.b": b])
        XCTAssertEqual(holder.block.fc.weight.scalars, w.scalars)
        XCTAssertEqual(holder.block.fc.bias!.scalars, b.scalars)
        try holder.load(["block.fc.weight": w, "block.fc.bias": b])  // the current names still work
        XCTAssertThrowsError(try holder.load(["block.proj.w": w])) { error in
            XCTAssertEqual((error as? StateDictError)?.missing, ["block.fc.bias"])
        }
    }

    // MARK: Layers against the functional ops

    func testLayersMatchFunctionalOps() throws {
        var rng = SeededGenerator(seed: 20)
        let x2 = Tensor.uniform([2, 3, 6], low: -1, high: 1, using: &rng)
        let linear = Linear(6, 4, rng: &rng)
        XCTAssertEqual(linear(x2).scalars, x2.linear(weight: linear.weight, bias: linear.bias).scalars)
        XCTAssertEqual(linear.namedParameters().map { $0.0 }, ["weight", "bias"])
        XCTAssertEqual(Linear(6, 4, bias: false, rng: &rng).namedParameters().map { $0.0 }, ["weight"])

        let image = Tensor.uniform([2, 4, 7, 6], low: -1, high: 1, using: &rng)
        let conv = Conv2d(4, 6, kernelSize: (3, 2), stride: (2, 1), padding: (1, 0), dilation: (1, 2), groups: 2, rng: &rng)
        XCTAssertEqual(conv.weight.shape, [6, 2, 3, 2])
        XCTAssertEqual(conv(image).scalars, image.conv2d(weight: conv.weight, bias: conv.bias, stride: (2, 1),
                                                        padding: (1, 0), dilation: (1, 2), groups: 2).scalars)

        let layerNorm = LayerNorm(6, eps: 1e-4)
        layerNorm.weight!.assign(Tensor.uniform([6], using: &rng))
        XCTAssertEqual(layerNorm(x2).scalars,
                       x2.layerNorm(normalizedShape: [6], weight: layerNorm.weight, bias: layerNorm.bias, eps: 1e-4).scalars)
        let layerNorm2 = LayerNorm([3, 6], elementwiseAffine: false)
        XCTAssertTrue(layerNorm2.namedParameters().isEmpty)
        XCTAssertEqual(layerNorm2(x2).scalars, x2.layerNorm(normalizedShape: [3, 6], weight: nil, bias: nil).scalars)
        XCTAssertEqual(LayerNorm(6, bias: false).namedParameters().map { $0.0 }, ["weight"])

        let groupNorm = GroupNorm(groups: 2, channels: 4, eps: 1e-6)
        groupNorm.bias!.assign(Tensor.uniform([4], using: &rng))
        XCTAssertEqual(groupNorm(image).scalars,
                       image.groupNorm(groups: 2, weight: groupNorm.weight, bias: groupNorm.bias, eps: 1e-6).scalars)

        let rmsNorm = RMSNorm(6, eps: 1e-5)
        rmsNorm.weight!.assign(Tensor.uniform([6], using: &rng))
        XCTAssertEqual(rmsNorm(x2).scalars, x2.rmsNorm(weight: rmsNorm.weight, eps: 1e-5).scalars)

        let embedding = Embedding(10, 3, rng: &rng)
        let ids = [3, 0, 9, 3]
        XCTAssertEqual(try embedding(ids, shape: [2, 2]).shape, [2, 2, 3])
        XCTAssertEqual(try embedding(ids).scalars, try embedding.weight.embedding(ids: ids, shape: [4]).scalars)
        XCTAssertThrowsError(try embedding([1, 10])) { error in
            XCTAssertTrue("\(error)".contains("10"), "\(error)")
        }

        let dropout = Dropout(0.4, seed: 77)
        var reference = SeededGenerator(seed: 77)
        XCTAssertEqual(dropout(x2).scalars, x2.dropout(p: 0.4, training: true, using: &reference).scalars)
        dropout.eval()
        XCTAssertEqual(dropout(x2).scalars, x2.scalars)

        let mlp = Sequential(Linear(6, 5, rng: &rng), Activation.gelu(), Linear(5, 2, rng: &rng))
        let l0 = mlp.layers[0] as! Linear, l2 = mlp.layers[2] as! Linear
        XCTAssertEqual(mlp(x2).scalars, l2(l0(x2).gelu()).scalars)
        XCTAssertEqual(mlp.namedParameters().map { $0.0 }, ["0.weight", "0.bias", "2.weight", "2.bias"])
    }

    func testDefaultInitialisationFollowsPyTorch() {
        var rng = SeededGenerator(seed: 30)
        let linear = Linear(16, 64, rng: &rng)
        let bound: Float = 1 / 4  // 1/√16
        XCTAssertTrue(linear.weight.scalars.allSatisfy { abs($0) <= bound })
        XCTAssertGreaterThan(linear.weight.scalars.map { abs($0) }.max()!, 0.9 * bound)
        XCTAssertTrue(linear.bias!.scalars.allSatisfy { abs($0) <= bound })
        XCTAssertTrue(linear.weight.requiresGrad && linear.bias!.requiresGrad)

        let conv = Conv2d(8, 4, kernelSize: 3, groups: 2, rng: &rng)  // fanIn = 4·9 = 36
        XCTAssertTrue(conv.weight.scalars.allSatisfy { abs($0) <= 1 / 6 })
        XCTAssertGreaterThan(conv.weight.scalars.map { abs($0) }.max()!, 0.8 / 6)

        let embedding = Embedding(100, 50, paddingIndex: 2, rng: &rng)
        let values = embedding.weight.scalars
        let mean = values.reduce(0, +) / Float(values.count)
        let variance = values.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Float(values.count)
        XCTAssertEqual(mean, 0, accuracy: 0.05)
        XCTAssertEqual(variance, 1, accuracy: 0.08)
        XCTAssertEqual(Array(values[100..<150]), [Float](repeating: 0, count: 50))

        XCTAssertEqual(LayerNorm(3).weight!.scalars, [1, 1, 1])
        XCTAssertEqual(LayerNorm(3).bias!.scalars, [0, 0, 0])
        XCTAssertEqual(GroupNorm(groups: 1, channels: 2).weight!.scalars, [1, 1])
        XCTAssertEqual(RMSNorm(2).weight!.scalars, [1, 1])

        let mha = MultiHeadAttention(embedDim: 8, numHeads: 2, rng: &rng)
        XCTAssertEqual(mha.outProj.bias!.scalars, [Float](repeating: 0, count: 8))
        XCTAssertEqual(mha.inProjBias!.scalars, [Float](repeating: 0, count: 24))
        let xavier = (6 / Float(8 + 24)).squareRoot()
        XCTAssertTrue(mha.inProjWeight!.scalars.allSatisfy { abs($0) <= xavier })

        // The same seed gives the same weights.
        var a = SeededGenerator(seed: 31), b = SeededGenerator(seed: 31)
        XCTAssertEqual(tinyNetWeights(&a), tinyNetWeights(&b))
    }

    // MARK: MultiHeadAttention against PyTorch

    func testMultiHeadAttentionMatchesPyTorch() throws {
        let fixture = try ModuleFixture.load("multihead_attention")
        let cases = try XCTUnwrap(fixture["cases"] as? [[String: Any]])
        XCTAssertEqual(cases.count, 3)
        for c in cases {
            let name = c["name"] as! String
            var rng = SeededGenerator(seed: 0)
            let e = c["embed_dim"] as! Int, kd = c["kdim"] as! Int, vd = c["vdim"] as! Int
            let mha = MultiHeadAttention(embedDim: e, numHeads: c["num_heads"] as! Int, bias: c["bias"] as! Bool,
                                         kdim: kd, vdim: vd, batchFirst: c["batch_first"] as! Bool, rng: &rng)
            XCTAssertEqual(mha.namedParameters().map { $0.0 }, c["parameter_names"] as! [String], name)
            let parameters = try (c["parameters"] as! [String: Any]).mapValues(ModuleFixture.tensor)
            try mha.load(parameters)
            mha.eval()

            let query = try ModuleFixture.tensor(c["query"]!), key = try ModuleFixture.tensor(c["key"]!)
            let value = try ModuleFixture.tensor(c["value"]!)
            query.requiresGrad = true
            key.requiresGrad = true
            value.requiresGrad = true
            let paddingMask = try ModuleFixture.mask(c["key_padding_mask"])
            let attentionMask = try ModuleFixture.mask(c["attn_mask"])
            let average = c["average_weights"] as! Bool
            let (output, weights) = mha.attentionWithWeights(query, key, value, keyPaddingMask: paddingMask,
                                                             attentionMask: attentionMask, averageWeights: average)
            let expectedOutput = try ModuleFixture.tensor(c["output"]!)
            XCTAssertEqual(output.shape, expectedOutput.shape, name)
            assertClose(output.scalars, expectedOutput.scalars, atol: 1e-5, rtol: 1e-4)
            let expectedWeights = try ModuleFixture.tensor(c["weights"]!)
            XCTAssertEqual(weights.shape, expectedWeights.shape, name)
            assertClose(weights.scalars, expectedWeights.scalars, atol: 1e-6, rtol: 1e-4)

            // The path without weights (scaledDotProductAttention) gives the same output.
            let fast = mha(query, key, value, keyPaddingMask: paddingMask, attentionMask: attentionMask)
            assertClose(fast.scalars, expectedOutput.scalars, atol: 1e-5, rtol: 1e-4)

            let probe = try ModuleFixture.tensor(c["probe"]!)
            (fast * probe).sum().backward()
            let grads = c["grads"] as! [String: Any]
            for (pname, p) in mha.namedParameters() {
                let expected = try ModuleFixture.tensor(grads[pname]!)
                assertClose(try XCTUnwrap(p.grad, "\(name): no gradient for \(pname)").scalars, expected.scalars, atol: 1e-5, rtol: 1e-3)
            }
            for (input, label) in [(query, "query"), (key, "key"), (value, "value")] {
                assertClose(try XCTUnwrap(input.grad, "\(name): \(label)").scalars,
                            try ModuleFixture.tensor(grads[label]!).scalars, atol: 1e-5, rtol: 1e-3)
            }
        }
    }

    func testMultiHeadAttentionCausalFlagEqualsExplicitMask() {
        var rng = SeededGenerator(seed: 40)
        let mha = MultiHeadAttention(embedDim: 6, numHeads: 2, batchFirst: true, rng: &rng)
        let x = Tensor.uniform([2, 4, 6], low: -1, high: 1, using: &rng)
        var blocked = [Float](repeating: 0, count: 16)
        for i in 0..<4 { for j in 0..<4 where j > i { blocked[i * 4 + j] = 1 } }
        let explicit = mha(x, x, x, attentionMask: .blocked(Tensor(shape: [4, 4], data: blocked)))
        assertClose(mha(x, x, x, causal: true).scalars, explicit.scalars, atol: 1e-6)
        assertClose(mha.attentionWithWeights(x, x, x, causal: true).output.scalars, explicit.scalars, atol: 1e-6)
    }

    func testMultiHeadAttentionDropoutOnlyInTrainingMode() throws {
        var rng = SeededGenerator(seed: 41)
        let mha = MultiHeadAttention(embedDim: 4, numHeads: 2, dropout: 0.5, batchFirst: true, rng: &rng)
        let x = Tensor.uniform([1, 5, 4], low: -1, high: 1, using: &rng)
        let trained = mha(x, x, x)
        mha.eval()
        let evaluated = mha(x, x, x)
        XCTAssertNotEqual(trained.scalars, evaluated.scalars)
        XCTAssertEqual(mha(x, x, x).scalars, evaluated.scalars)
        let twin = MultiHeadAttention(embedDim: 4, numHeads: 2, batchFirst: true, rng: &rng)
        try twin.load(mha.stateDict())
        assertClose(twin(x, x, x).scalars, evaluated.scalars, atol: 1e-6)
    }

    func testParameterSummaryNamesShapesAndKinds() {
        let net = TinyNet()
        net.freeze(prefix: "mid")
        let summary = net.parameterSummary
        XCTAssertTrue(summary.contains("conv_in.weight [4, 3, 3, 3] trainable"), summary)
        XCTAssertTrue(summary.contains("mid.0.bias [8] frozen"), summary)
        XCTAssertTrue(summary.contains("running_scale [4] buffer"), summary)
        XCTAssertFalse(summary.contains("cache"), summary)
        XCTAssertTrue(summary.hasSuffix("parameters: 1834 (trainable 1690)"), summary)
    }

    // MARK: Gradients through a module

    func testFiniteDifferenceGradientsThroughTwoLayerMLP() {
        var rng = SeededGenerator(seed: 50)
        let mlp = Sequential(Linear(3, 5, rng: &rng), Activation.tanh(), Linear(5, 2, rng: &rng))
        let x = Tensor.uniform([4, 3], low: -1, high: 1, using: &rng)
        x.requiresGrad = true
        let probe = Tensor.uniform([4, 2], low: -1, high: 1, using: &rng)
        func loss() -> Tensor { (mlp(x) * probe).sum() }
        loss().backward()

        let epsilon: Float = 1e-2
        for (name, t) in mlp.namedParameters() + [("x", x)] {
            let analytic = t.grad!.scalars
            for i in 0..<t.count {
                let original = t.pointer[i]
                t.pointer[i] = original + epsilon
                let plus = withoutGrad { loss().item }
                t.pointer[i] = original - epsilon
                let minus = withoutGrad { loss().item }
                t.pointer[i] = original
                let numeric = (plus - minus) / (2 * epsilon)
                XCTAssertEqual(analytic[i], numeric, accuracy: 2e-3 + 2e-2 * abs(numeric), "\(name)[\(i)]")
            }
        }
    }
}

private extension TinyNet {
    var midFirst: Linear { mid.layers[0] as! Linear }
}

/// All weights of a TinyNet built from `rng`'s next seed, for determinism checks.
private func tinyNetWeights(_ rng: inout SeededGenerator) -> [Float] {
    TinyNet(seed: rng.next()).parameters().flatMap { $0.scalars }
}

/// Reads the JSON fixtures written by Tests/Reference/make_module_fixtures.py.
enum ModuleFixture {
    struct FormatError: Error, CustomStringConvertible {
        let description: String
    }

    static func load(_ name: String) throws -> [String: Any] {
        guard let url = Bundle.module.url(forResource: name, withExtension: "json", subdirectory: "Fixtures/modules") else {
            throw FormatError(description: "fixture Fixtures/modules/\(name).json is missing")
        }
        guard let object = try JSONSerialization.jsonObject(with: Data(contentsOf: url)) as? [String: Any] else {
            throw FormatError(description: "\(name).json is not a JSON object")
        }
        return object
    }

    static func tensor(_ value: Any) throws -> Tensor {
        guard let dict = value as? [String: Any], let shape = dict["shape"] as? [Int],
              let data = (dict["data"] as? [NSNumber])?.map({ $0.floatValue }), data.count == shape.reduce(1, *) else {
            throw FormatError(description: "malformed tensor entry in a module fixture")
        }
        return Tensor(shape: shape, data: data)
    }

    static func mask(_ value: Any?) throws -> AttentionMask? {
        guard let dict = value as? [String: Any] else { return nil }
        let t = try tensor(dict)
        return (dict["kind"] as? String) == "blocked" ? .blocked(t) : .additive(t)
    }
}
