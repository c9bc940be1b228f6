import Foundation
import XCTest
import Tensor

/// Forward values and input gradients of every neural-network op against PyTorch, from the
/// fixtures written by Tests/Reference/make_op_fixtures.py (references computed in float64).
final class NNOpParityTests: XCTestCase {
    struct FixtureTensor: Decodable {
        let shape: [Int]
        let data: [Float]
        var tensor: Tensor { Tensor(shape: shape, data: data) }
    }

    struct OpCase: Decodable {
        let name: String
        let op: String
        let params: [String: [Double]]
        let inputs: [String: FixtureTensor]
        let output: FixtureTensor
        let probe: FixtureTensor
        let grads: [String: FixtureTensor]

        func ints(_ key: String) -> [Int] { (params[key] ?? []).map { Int($0) } }
        func int(_ key: String, _ fallback: Int = 0) -> Int { ints(key).first ?? fallback }
        func float(_ key: String) -> Float? { params[key]?.first.map { Float($0) } }
    }

    struct OpFile: Decodable { let cases: [OpCase] }

    func loadCases(_ family: String) throws -> [OpCase] {
        let root = try XCTUnwrap(Bundle.module.url(forResource: "Fixtures", withExtension: nil), "test bundle has no Fixtures folder")
        let data = try Data(contentsOf: root.appendingPathComponent("ops/\(family).json"))
        return try JSONDecoder().decode(OpFile.self, from: data).cases
    }

    static let reductions: [LossReduction] = [.mean, .sum, .none, .batchMean]

    /// Runs the op a case names, on inputs that require gradients.
    func run(_ c: OpCase, _ x: [String: Tensor]) throws -> Tensor {
        switch c.op {
        case "conv2d":
            let s = c.ints("stride"), p = c.ints("padding"), d = c.ints("dilation")
            return x["x"]!.conv2d(weight: x["weight"]!, bias: x["bias"], stride: (s[0], s[1]), padding: (p[0], p[1]),
                                  dilation: (d[0], d[1]), groups: c.int("groups"))
        case "layer_norm":
            return x["x"]!.layerNorm(normalizedShape: c.ints("normalized_shape"), weight: x["weight"], bias: x["bias"], eps: c.float("eps")!)
        case "group_norm":
            return x["x"]!.groupNorm(groups: c.int("groups"), weight: x["weight"], bias: x["bias"], eps: c.float("eps")!)
        case "rms_norm":
            return x["x"]!.rmsNorm(weight: x["weight"], eps: c.float("eps")!)
        case "softmax":
            return x["x"]!.softmax(axis: c.int("axis"))
        case "log_softmax":
            return x["x"]!.logSoftmax(axis: c.int("axis"))
        case "attention":
            return Tensor.scaledDotProductAttention(query: x["q"]!, key: x["k"]!, value: x["v"]!, mask: x["mask"],
                                                    causal: c.int("causal") == 1, scale: c.float("scale"))
        case "embedding":
            return try x["table"]!.embedding(ids: c.ints("ids"), shape: c.ints("ids_shape"))
        case "upsample_nearest":
            let s = c.ints("scale")
            return x["x"]!.upsampleNearest(scale: (s[0], s[1]))
        case "linear":
            return x["x"]!.linear(weight: x["weight"]!, bias: x["bias"])
        case "mse":
            return Loss.mse(x["prediction"]!, x["target"]!, reduction: Self.reductions[c.int("reduction")])
        case "cross_entropy":
            return try Loss.checkedCrossEntropy(logits: x["logits"]!, targets: c.ints("targets"),
                                                ignoreIndex: c.int("ignore_index"), reduction: Self.reductions[c.int("reduction")])
        case "kl_div":
            return Loss.klDivergence(input: x["input"]!, target: x["target"]!, logTarget: c.int("log_target") == 1,
                                     reduction: Self.reductions[c.int("reduction")])
        default:
            throw TensorError.invalidArgument(op: c.op, reason: "no such op in the parity test")
        }
    }

    /// Output and the gradients of Σ out ⊙ probe must match within 1e-5 (relative, with a 1e-5 floor).
    func checkFamily(_ family: String, tolerance: Float = 1e-5, file: StaticString = #filePath, line: UInt = #line) throws {
        let cases = try loadCases(family)
        XCTAssertFalse(cases.isEmpty, "\(family).json has no cases", file: file, line: line)
        for c in cases {
            var inputs: [String: Tensor] = [:]
            for (name, value) in c.inputs {
                let t = value.tensor
                t.requiresGrad = c.grads[name] != nil
                inputs[name] = t
            }
            let out = try run(c, inputs)
            XCTAssertEqual(out.shape, c.output.shape, "\(family)/\(c.name): output shape", file: file, line: line)
            assertNear(out.scalars, c.output.data, tolerance, "\(family)/\(c.name): output", file: file, line: line)
            (out * c.probe.tensor).sum().backward()
            for (name, expected) in c.grads {
                guard let grad = inputs[name]?.grad else {
                    XCTFail("\(family)/\(c.name): no gradient for \(name)", file: file, line: line)
                    continue
                }
                XCTAssertEqual(grad.shape, expected.shape, "\(family)/\(c.name): d\(name) shape", file: file, line: line)
                assertNear(grad.scalars, expected.data, tolerance, "\(family)/\(c.name): d\(name)", file: file, line: line)
            }
        }
    }

    func assertNear(_ a: [Float], _ b: [Float], _ tol: Float, _ what: String, file: StaticString, line: UInt) {
        guard a.count == b.count else {
            XCTFail("\(what): \(a.count) values, expected \(b.count)", file: file, line: line)
            return
        }
        var worst: Float = 0, at = -1
        for i in 0..<a.count {
            let err = abs(a[i] - b[i]) / max(abs(b[i]), 1)
            if !(err <= worst) { worst = err; at = i }   // also catches NaN
        }
        if at >= 0 && !(worst <= tol) {
            XCTFail("\(what): element \(at) is \(a[at]), PyTorch \(b[at]) (error \(worst))", file: file, line: line)
        }
    }

    func testConv2dMatchesPyTorch() throws { try checkFamily("conv2d") }
    func testNormalizationMatchesPyTorch() throws { try checkFamily("norms") }
    func testSoftmaxMatchesPyTorch() throws { try checkFamily("softmax") }
    func testAttentionMatchesPyTorch() throws { try checkFamily("attention") }
    func testEmbeddingUpsampleLinearMatchPyTorch() throws { try checkFamily("misc") }
    func testLossesMatchPyTorch() throws { try checkFamily("losses") }
}
