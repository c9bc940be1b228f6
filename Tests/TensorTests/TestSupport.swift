import XCTest
import Tensor

/// Random test input of `shape` with values in [low, high).
func randomTensor(_ shape: [Int], seed: UInt64 = 7, low: Float = -1, high: Float = 1, requiresGrad: Bool = true) -> Tensor {
    var rng = SeededGenerator(seed: seed)
    let t = Tensor.uniform(shape, low: low, high: high, using: &rng)
    t.requiresGrad = requiresGrad
    return t
}

/// Asserts that `f`'s analytic gradients match finite differences for `inputs`.
func assertGradients(_ inputs: [Tensor], epsilon: Float = 1e-2, atol: Float = 5e-3, rtol: Float = 2e-2,
                     file: StaticString = #filePath, line: UInt = #line, _ f: @escaping ([Tensor]) -> Tensor) {
    let result = GradientChecker.check(inputs, epsilon: epsilon, absoluteTolerance: atol, relativeTolerance: rtol, f)
    XCTAssertTrue(result.passed, result.description, file: file, line: line)
}

/// Asserts elementwise closeness: |a − b| ≤ atol + rtol·|b|.
func assertClose(_ a: [Float], _ b: [Float], atol: Float = 1e-5, rtol: Float = 1e-5,
                 file: StaticString = #filePath, line: UInt = #line) {
    XCTAssertEqual(a.count, b.count, "element count", file: file, line: line)
    var worst: (Int, Float, Float)? = nil
    for i in 0..<min(a.count, b.count) where abs(a[i] - b[i]) > atol + rtol * abs(b[i]) {
        worst = (i, a[i], b[i]); break
    }
    if let (i, x, y) = worst { XCTFail("element \(i): \(x) vs \(y)", file: file, line: line) }
}
