import Foundation
import XCTest
import Tensor

/// Optimizers, gradient clipping and learning-rate schedules against values written by PyTorch,
/// diffusers and transformers (Tests/Reference/make_optimizer_fixtures.py).
final class OptimizerTests: XCTestCase {

    // MARK: Fixtures

    struct OptimizerFixture: Decodable {
        struct Settings: Decodable {
            let lrs: [Double]
            let betas: [Double]?
            let eps: Double?
            let weight_decay: Double
            let no_decay: [String]?
            let momentum: Double?
            let dampening: Double?
            let nesterov: Bool?
        }
        struct Parameter: Decodable { let name: String; let shape: [Int]; let data: [Float] }
        struct Step: Decodable { let lr: Double; let grads: [String: [Float]]; let params_after: [String: [Float]] }
        struct Case: Decodable {
            let name: String
            let optimizer: String
            let settings: Settings
            let params: [Parameter]
            let steps: [Step]
            let final_state: [String: [Float]]
        }
        let cases: [Case]
    }

    struct ClipFixture: Decodable {
        struct Case: Decodable {
            let max_norm: Float; let shapes: [[Int]]; let grads: [[Float]]; let total_norm: Float; let clipped: [[Float]]
        }
        let cases: [Case]
    }

    struct ScheduleFixture: Decodable {
        struct Case: Decodable { let config: LearningRateSchedule; let values: [Double] }
        let steps: [Int]
        let cases: [Case]
    }

    func loadFixture<T: Decodable>(_ name: String, as type: T.Type) throws -> T {
        let url = try XCTUnwrap(Bundle.module.url(forResource: name, withExtension: "json", subdirectory: "Fixtures/optim"),
                                "missing fixture \(name).json")
        return try JSONDecoder().decode(T.self, from: Data(contentsOf: url))
    }

    /// Fresh parameters from a fixture case, in its order.
    func makeParameters(_ c: OptimizerFixture.Case) -> [(name: String, tensor: Tensor)] {
        c.params.map { (name: $0.name, tensor: Tensor(shape: $0.shape, data: $0.data).asParameter()) }
    }

    func makeOptimizer(_ c: OptimizerFixture.Case, _ params: [(name: String, tensor: Tensor)]) throws -> Optimizer {
        let s = c.settings
        let exempt = Set(s.no_decay ?? [])
        if c.optimizer == "adamw" {
            let betas = try XCTUnwrap(s.betas)
            return try AdamW(parameters: params, learningRate: s.lrs[0], betas: (betas[0], betas[1]),
                             epsilon: try XCTUnwrap(s.eps), weightDecay: s.weight_decay,
                             exemptFromWeightDecay: { name, _ in exempt.contains(name) })
        }
        return try SGD(parameters: params, learningRate: s.lrs[0], momentum: s.momentum ?? 0,
                       dampening: s.dampening ?? 0, nesterov: s.nesterov ?? false, weightDecay: s.weight_decay,
                       exemptFromWeightDecay: { name, _ in exempt.contains(name) })
    }

    /// Runs fixture steps `range` on `optimizer`, setting the fixture's gradients and learning rates.
    func run(_ c: OptimizerFixture.Case, _ optimizer: Optimizer, steps range: Range<Int>,
             check: Bool, file: StaticString = #filePath, line: UInt = #line) throws {
        for k in range {
            let step = c.steps[k]
            optimizer.zeroGrad()
            for p in optimizer.parameters {
                if let g = step.grads[p.name] { p.tensor.grad = Tensor(shape: p.tensor.shape, data: g) }
            }
            optimizer.learningRate = step.lr
            try optimizer.step()
            guard check else { continue }
            for p in optimizer.parameters {
                let expected = try XCTUnwrap(step.params_after[p.name])
                // SGD's arithmetic is PyTorch's exactly; AdamW's differs only through PyTorch's
                // vectorised square root, which is not always correctly rounded.
                assertRelative(p.tensor.scalars, expected, "\(c.name) step \(k) \(p.name)",
                               tolerance: c.optimizer == "sgd" ? 0 : 1e-6, file: file, line: line)
            }
        }
    }

    /// |a − b| ≤ tolerance·(|b| + 0.1) elementwise: relative, except for values near 0.
    func assertRelative(_ a: [Float], _ b: [Float], _ what: String, tolerance: Float = 1e-6,
                        file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(a.count, b.count, "\(what): element count", file: file, line: line)
        for i in 0..<min(a.count, b.count) where abs(a[i] - b[i]) > tolerance * (abs(b[i]) + 0.1) {
            XCTFail("\(what) element \(i): \(a[i]) vs torch \(b[i])", file: file, line: line)
            return
        }
    }

    // MARK: Optimizers against PyTorch

    func testOptimizersMatchPyTorch() throws {
        let fixture = try loadFixture("optimizers", as: OptimizerFixture.self)
        XCTAssertEqual(fixture.cases.count, 6)
        for c in fixture.cases {
            let params = makeParameters(c)
            let optimizer = try makeOptimizer(c, params)
            try run(c, optimizer, steps: 0..<c.steps.count, check: true)
            XCTAssertEqual(optimizer.stepCount, c.steps.count, c.name)
            // The state matches torch's per-parameter state, key for key.
            let state = optimizer.stateDict()
            XCTAssertEqual(Set(state.keys), Set(c.final_state.keys).union(["step"]), c.name)
            for (key, expected) in c.final_state {
                assertRelative(try XCTUnwrap(state[key]).scalars, expected, "\(c.name) state \(key)",
                               tolerance: c.optimizer == "sgd" ? 0 : 1e-6)
            }
            XCTAssertEqual(state["step"]?.shape, [1])
            XCTAssertEqual(state["step"]?.item, Float(c.steps.count))
        }
    }

    func testWeightDecayExemptions() throws {
        let w = Tensor.ones([2, 2]).asParameter(), b = Tensor.ones([2]).asParameter()
        let adam = try AdamW(parameters: [("w", w), ("b", b)], exemptFromWeightDecay: AdamW.exemptBiasesAndNorms)
        XCTAssertTrue(adam.decaysWeight(of: "w"))
        XCTAssertFalse(adam.decaysWeight(of: "b"))
        XCTAssertFalse(adam.decaysWeight(of: "nope"))
        // Unlabelled pairs, as `Module.namedParameters()` returns them, are accepted too.
        let pairs: [(String, Tensor)] = [("w", w), ("b", b)]
        XCTAssertEqual(try SGD(parameters: pairs).parameters.map(\.name), ["w", "b"])
        // With a zero gradient only decay moves a weight: w shrinks by exactly 1 − lr·λ, b stays.
        let adamw = try AdamW(parameters: [("w", w), ("b", b)], learningRate: 0.1, weightDecay: 0.5,
                              exemptFromWeightDecay: AdamW.exemptBiasesAndNorms)
        w.grad = Tensor.zeros([2, 2]); b.grad = Tensor.zeros([2])
        try adamw.step()
        XCTAssertEqual(w.scalars, [Float](repeating: 0.95, count: 4))
        XCTAssertEqual(b.scalars, [1, 1])
    }

    func testParametersWithoutGradientsAreLeftAlone() throws {
        let a = Tensor(shape: [3], data: [1, 2, 3]).asParameter(), b = Tensor(shape: [2], data: [4, 5]).asParameter()
        let opt = try AdamW(parameters: [("a", a), ("b", b)], learningRate: 0.1)
        a.grad = Tensor(shape: [3], data: [1, 1, 1])
        try opt.step()
        XCTAssertEqual(b.scalars, [4, 5])
        XCTAssertNotEqual(a.scalars, [1, 2, 3])
        XCTAssertEqual(Set(opt.stateDict().keys), ["step", "exp_avg.a", "exp_avg_sq.a", "step.a"])
        opt.zeroGrad()
        XCTAssertNil(a.grad)
    }

    func testLargeParametersUseTheSameArithmeticAsSmallOnes() throws {
        // A parameter big enough for parallelFor must give, per element, what a tiny one gives.
        let n = 100_003
        let big = Tensor(shape: [n], data: (0..<n).map { Float($0 % 97) / 50 - 1 }).asParameter()
        let small = Tensor(shape: [3], data: [big.scalars[0], big.scalars[1], big.scalars[n - 1]]).asParameter()
        let opt = try AdamW(parameters: [("big", big), ("small", small)], learningRate: 0.01, weightDecay: 0.1)
        let sgd = try SGD(parameters: [("big", big), ("small", small)], learningRate: 0.01, momentum: 0.9, nesterov: true)
        for k in 0..<3 {
            let g = (0..<n).map { Float(($0 * (k + 3)) % 89) / 40 - 1 }
            big.grad = Tensor(shape: [n], data: g)
            small.grad = Tensor(shape: [3], data: [g[0], g[1], g[n - 1]])
            try opt.step()
            try sgd.step()
        }
        let s = big.scalars
        XCTAssertEqual([s[0], s[1], s[n - 1]], small.scalars)
    }

    // MARK: State dictionaries

    func testStateDictRoundTripContinuesIdentically() throws {
        let fixture = try loadFixture("optimizers", as: OptimizerFixture.self)
        for c in fixture.cases {
            let total = c.steps.count, split = total / 2
            let straight = makeParameters(c)
            try run(c, try makeOptimizer(c, straight), steps: 0..<total, check: false)

            let first = makeParameters(c)
            let before = try makeOptimizer(c, first)
            try run(c, before, steps: 0..<split, check: false)
            let state = before.stateDict()
            // A resumed run: new parameter objects with the saved values and a new optimizer.
            let resumed = first.map { (name: $0.name, tensor: $0.tensor.contiguousCopy().asParameter()) }
            let after = try makeOptimizer(c, resumed)
            try after.loadStateDict(state)
            XCTAssertEqual(after.stepCount, split)
            try run(c, after, steps: split..<total, check: false)
            for (x, y) in zip(straight, resumed) {
                XCTAssertEqual(x.tensor.scalars, y.tensor.scalars, "\(c.name) \(x.name) after resume")
            }
        }
    }

    func testStateDictIsACopy() throws {
        let p = Tensor(shape: [2], data: [1, 2]).asParameter()
        let opt = try SGD(parameters: [("p", p)], learningRate: 0.1, momentum: 0.9)
        p.grad = Tensor(shape: [2], data: [1, 1])
        try opt.step()
        let saved = opt.stateDict()
        try opt.step()
        XCTAssertEqual(saved["momentum_buffer.p"]?.scalars, [1, 1])
        XCTAssertEqual(saved["step"]?.scalars, [1])
    }

    func assertLoadError(_ optimizer: Optimizer, _ state: [String: Tensor], _ expected: OptimizerError,
                         file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try optimizer.loadStateDict(state), file: file, line: line) { error in
            XCTAssertEqual(error as? OptimizerError, expected, file: file, line: line)
        }
    }

    func testLoadStateDictErrorsNameTheKey() throws {
        let w = Tensor.ones([2, 3]).asParameter(), b = Tensor.ones([3]).asParameter()
        let adam = try AdamW(parameters: [("layer.weight", w), ("layer.bias", b)])
        w.grad = Tensor.ones([2, 3]); b.grad = Tensor.ones([3])
        try adam.step()
        let good = adam.stateDict()
        let stepOne = Tensor(shape: [1], data: [1])

        var s = good; s["exp_avg.layer.weight"] = Tensor.zeros([3, 2])
        assertLoadError(adam, s, .stateShapeMismatch(key: "exp_avg.layer.weight", expected: [2, 3], got: [3, 2]))
        s = good; s["exp_avg.other.weight"] = Tensor.zeros([2, 3])
        assertLoadError(adam, s, .unexpectedStateKey("exp_avg.other.weight"))
        s = good; s["momentum_buffer.layer.bias"] = Tensor.zeros([3])
        assertLoadError(adam, s, .unexpectedStateKey("momentum_buffer.layer.bias"))
        s = good; s["exp_avg_sq.layer.bias"] = nil
        assertLoadError(adam, s, .missingStateKey("exp_avg_sq.layer.bias"))
        s = good; s["step"] = nil
        assertLoadError(adam, s, .missingStateKey("step"))
        s = good; s["step"] = Tensor(shape: [1], data: [1.5])
        assertLoadError(adam, s, .invalidStateValue(key: "step", reason: "expected a whole number ≥ 0, got 1.5"))
        s = good; s["step"] = Tensor.zeros([2])
        assertLoadError(adam, s, .stateShapeMismatch(key: "step", expected: [1], got: [2]))
        s = good; s["exp_avg_sq.layer.bias"] = Tensor(shape: [3], data: [0, -1, 0])
        assertLoadError(adam, s, .invalidStateValue(key: "exp_avg_sq.layer.bias",
                                                     reason: "element 1 is -1.0; expected a finite, non-negative value"))
        s = good; s["exp_avg.layer.bias"] = Tensor(shape: [3], data: [0, 0, .nan])
        assertLoadError(adam, s, .invalidStateValue(key: "exp_avg.layer.bias",
                                                     reason: "element 2 is nan; expected a finite value"))
        s = good; s["step.layer.bias"] = Tensor(shape: [1], data: [2])
        assertLoadError(adam, s, .invalidStateValue(key: "step.layer.bias",
                                                     reason: "2 updates exceed the optimizer's 1 steps"))

        // A failed load changes nothing.
        let before = adam.stateDict()
        XCTAssertEqual(Set(before.keys), Set(good.keys))
        XCTAssertEqual(before["exp_avg.layer.weight"]?.scalars, good["exp_avg.layer.weight"]?.scalars)

        // SGD without momentum keeps no buffers, so a buffer key is unexpected.
        let sgd = try SGD(parameters: [("layer.weight", w)], learningRate: 0.1)
        assertLoadError(sgd, ["step": stepOne, "momentum_buffer.layer.weight": Tensor.zeros([2, 3])],
                        .unexpectedStateKey("momentum_buffer.layer.weight"))
        let sgdm = try SGD(parameters: [("layer.weight", w)], learningRate: 0.1, momentum: 0.9)
        assertLoadError(sgdm, ["step": stepOne, "momentum_buffer.layer.weight": Tensor.zeros([6])],
                        .stateShapeMismatch(key: "momentum_buffer.layer.weight", expected: [2, 3], got: [6]))
        XCTAssertNoThrow(try sgdm.loadStateDict(["step": Tensor(scalar: 4)]))
        XCTAssertEqual(sgdm.stepCount, 4)

        // The message names the key.
        let message = "\(OptimizerError.unexpectedStateKey("exp_avg.other.weight"))"
        XCTAssertTrue(message.contains("exp_avg.other.weight"), message)
    }

    // MARK: Construction and stepping errors

    func testInvalidSettingsAndParametersThrow() {
        let p = Tensor.ones([2]).asParameter()
        XCTAssertThrowsError(try AdamW(parameters: [("p", p)], learningRate: -1)) {
            XCTAssertEqual($0 as? OptimizerError, .invalidSetting(name: "learning_rate", value: -1, allowed: "≥ 0"))
        }
        XCTAssertThrowsError(try AdamW(parameters: [("p", p)], betas: (0.9, 1.0))) {
            XCTAssertEqual($0 as? OptimizerError, .invalidSetting(name: "beta2", value: 1, allowed: "[0, 1)"))
        }
        XCTAssertThrowsError(try AdamW(parameters: [("p", p)], epsilon: .nan)) {
            guard case .invalidSetting(name: "epsilon", _, _)? = $0 as? OptimizerError else { return XCTFail("\($0)") }
        }
        XCTAssertThrowsError(try SGD(parameters: [("p", p)], learningRate: 0.1, nesterov: true)) {
            XCTAssertEqual($0 as? OptimizerError, .invalidSetting(name: "momentum", value: 0, allowed: "> 0 with nesterov"))
        }
        XCTAssertThrowsError(try SGD(parameters: [("p", p)], learningRate: 0.1, momentum: 0.9, dampening: 0.1, nesterov: true)) {
            XCTAssertEqual($0 as? OptimizerError, .invalidSetting(name: "dampening", value: 0.1, allowed: "0 with nesterov"))
        }
        XCTAssertThrowsError(try SGD(parameters: [("p", p), ("p", Tensor.ones([2]))], learningRate: 0.1)) {
            XCTAssertEqual($0 as? OptimizerError, .duplicateParameterName("p"))
        }
        XCTAssertThrowsError(try SGD(parameters: [("p", p), ("q", p)], learningRate: 0.1)) {
            XCTAssertEqual($0 as? OptimizerError, .sharedParameter(name: "q", alsoNamed: "p"))
        }
        let view = Tensor.ones([2, 3]).asParameter().transposed(0, 1)
        XCTAssertThrowsError(try SGD(parameters: [("v", view)], learningRate: 0.1)) {
            XCTAssertEqual($0 as? OptimizerError, .nonContiguousParameter("v"))
        }
    }

    func testGradientShapeMismatchThrowsBeforeAnyUpdate() throws {
        let a = Tensor(shape: [2], data: [1, 2]).asParameter(), b = Tensor(shape: [2], data: [3, 4]).asParameter()
        let opt = try AdamW(parameters: [("a", a), ("b", b)], learningRate: 0.1)
        a.grad = Tensor.ones([2])
        b.grad = Tensor.ones([3])
        XCTAssertThrowsError(try opt.step()) {
            XCTAssertEqual($0 as? OptimizerError, .gradientShapeMismatch(parameter: "b", expected: [2], got: [3]))
        }
        XCTAssertEqual(a.scalars, [1, 2])
        XCTAssertEqual(opt.stepCount, 0)
        b.grad = Tensor.ones([2])
        opt.learningRate = .nan
        XCTAssertThrowsError(try opt.step()) {
            guard case .invalidSetting(name: "learning_rate", _, _)? = $0 as? OptimizerError else { return XCTFail("\($0)") }
        }
        XCTAssertEqual(a.scalars, [1, 2])
    }

    // MARK: Gradient clipping

    func testClipGradientNormMatchesPyTorch() throws {
        let fixture = try loadFixture("clip_grad_norm", as: ClipFixture.self)
        for c in fixture.cases {
            let params = zip(c.shapes, c.grads).enumerated().map { i, sg -> (name: String, tensor: Tensor) in
                let p = Tensor(zeros: sg.0).asParameter()
                p.grad = Tensor(shape: sg.0, data: sg.1)
                return (name: "p\(i)", tensor: p)
            }
            let total = clipGradientNorm(params, maxNorm: c.max_norm)
            assertRelative([total], [c.total_norm], "total norm (max \(c.max_norm))")
            for (p, expected) in zip(params, c.clipped) {
                assertRelative(try XCTUnwrap(p.tensor.grad).scalars, expected, "clipped \(p.name) (max \(c.max_norm))")
            }
        }
    }

    func testClipGradientNormEdgeCases() {
        XCTAssertEqual(clipGradientNorm([Tensor](), maxNorm: 1), 0)
        let noGrad = Tensor.ones([2]).asParameter()
        XCTAssertEqual(clipGradientNorm([noGrad], maxNorm: 1), 0)

        // A non-finite norm leaves the gradients as they were, for the caller to skip the step.
        let p = Tensor.ones([2]).asParameter()
        p.grad = Tensor(shape: [2], data: [.infinity, 1])
        XCTAssertEqual(clipGradientNorm([p], maxNorm: 1), .infinity)
        XCTAssertEqual(p.grad?.scalars, [.infinity, 1])

        // A gradient shared by two parameters is scaled once.
        let shared = Tensor(shape: [2], data: [3, 4])
        let q = Tensor.ones([2]).asParameter(), r = Tensor.ones([2]).asParameter()
        q.grad = shared; r.grad = shared
        XCTAssertEqual(clipGradientNorm([q, r], maxNorm: 1), 5)
        assertRelative(shared.scalars, [3 / (5 + 1e-6), 4 / (5 + 1e-6)], "shared gradient")

        // A non-contiguous gradient is replaced by a scaled contiguous copy.
        let s = Tensor.ones([2, 2]).asParameter()
        s.grad = Tensor(shape: [2, 2], data: [1, 2, 3, 4]).transposed(0, 1)
        _ = clipGradientNorm([s], maxNorm: 0.5)
        XCTAssertEqual(s.grad?.isContiguous, true)
        let k = 0.5 / (Float(30).squareRoot() + 1e-6)
        assertRelative(s.grad!.scalars, [1 * k, 3 * k, 2 * k, 4 * k], "transposed gradient")

        // The norm of a tensor larger than one summation block.
        let big = Tensor.full([200_000], 0.5)
        assertRelative([globalNorm([big, Tensor(shape: [1], data: [2])])], [(Float(50_000) + 4).squareRoot()], "big norm")
    }

    // MARK: Learning-rate schedules

    func testSchedulesMatchDiffusers() throws {
        let fixture = try loadFixture("schedules", as: ScheduleFixture.self)
        XCTAssertEqual(fixture.cases.count, 7)
        for c in fixture.cases {
            for (step, expected) in zip(fixture.steps, c.values) {
                let got = c.config.learningRate(base: 1, atStep: step)
                XCTAssertEqual(got, expected, accuracy: 1e-12, "\(c.config) at step \(step)")
            }
        }
        XCTAssertEqual(LearningRateSchedule.constantWithWarmup(warmupSteps: 10).multiplier(atStep: -3), 0)
        XCTAssertEqual(LearningRateSchedule.cosineWithWarmup(warmupSteps: 0, totalSteps: 10)
            .learningRate(base: 3e-4, atStep: 0), 3e-4)
    }

    func testScheduleConfigCoding() throws {
        let schedules: [LearningRateSchedule] = [
            .constant, .constantWithWarmup(warmupSteps: 5),
            .cosineWithWarmup(warmupSteps: 10, totalSteps: 100, cycles: 1, floor: 0.1),
            .linearWithWarmup(warmupSteps: 0, totalSteps: 7, floor: 0),
        ]
        for s in schedules {
            let data = try JSONEncoder().encode(s)
            XCTAssertEqual(try JSONDecoder().decode(LearningRateSchedule.self, from: data), s)
        }
        let cosine = try JSONDecoder().decode(LearningRateSchedule.self,
                                              from: Data(#"{"name":"cosine","warmup_steps":3,"total_steps":9}"#.utf8))
        XCTAssertEqual(cosine, .cosineWithWarmup(warmupSteps: 3, totalSteps: 9, cycles: 0.5, floor: 0))

        func decodeError(_ json: String) -> String {
            do {
                _ = try JSONDecoder().decode(LearningRateSchedule.self, from: Data(json.utf8))
                return "no error"
            } catch let DecodingError.dataCorrupted(context) {
                return context.codingPath.map(\.stringValue).joined(separator: ".") + ": " + context.debugDescription
            } catch let DecodingError.keyNotFound(key, _) {
                return "missing \(key.stringValue)"
            } catch {
                return "\(error)"
            }
        }
        XCTAssertTrue(decodeError(#"{"name":"cosin"}"#).contains("unknown learning-rate schedule 'cosin'"))
        XCTAssertTrue(decodeError(#"{"name":"cosin"}"#).contains("constant_with_warmup"))
        let unknown = decodeError(#"{"name":"linear","total_steps":9,"num_cycles":2}"#)
        XCTAssertTrue(unknown.hasPrefix("num_cycles: unknown key 'num_cycles'"), unknown)
        let negative = decodeError(#"{"name":"constant_with_warmup","warmup_steps":-1}"#)
        XCTAssertTrue(negative.hasPrefix("warmup_steps:"), negative)
        let floor = decodeError(#"{"name":"cosine","total_steps":9,"min_lr_ratio":1.5}"#)
        XCTAssertTrue(floor.hasPrefix("min_lr_ratio:") && floor.contains("[0, 1]"), floor)
        let short = decodeError(#"{"name":"linear","warmup_steps":10,"total_steps":9}"#)
        XCTAssertTrue(short.hasPrefix("total_steps:"), short)
        XCTAssertEqual(decodeError(#"{"name":"cosine"}"#), "missing total_steps")
    }
}
