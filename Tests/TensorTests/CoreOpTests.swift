import XCTest
import Tensor

/// Forward values and finite-difference gradients of the elementwise, reduction, shape and matmul primitives.
final class CoreOpTests: XCTestCase {
    func testBroadcastArithmeticValues() {
        let a = Tensor(shape: [2, 3], data: [1, 2, 3, 4, 5, 6])
        let b = Tensor(shape: [3], data: [10, 20, 30])
        XCTAssertEqual((a + b).scalars, [11, 22, 33, 14, 25, 36])
        XCTAssertEqual((a * Tensor(shape: [2, 1], data: [2, 3])).scalars, [2, 4, 6, 12, 15, 18])
        XCTAssertEqual((b - a).shape, [2, 3])
        XCTAssertEqual((a / 2).scalars, [0.5, 1, 1.5, 2, 2.5, 3])
        XCTAssertEqual(Tensor.broadcastShape([4, 1, 3], [5, 1]), [4, 5, 3])
        XCTAssertNil(Tensor.broadcastShape([2, 3], [4]))
    }

    func testBinaryGradients() {
        let a = randomTensor([2, 3, 4], seed: 1), b = randomTensor([3, 1], seed: 2)
        assertGradients([a, b]) { $0[0] + $0[1] }
        assertGradients([a, b]) { $0[0] - $0[1] }
        assertGradients([a, b]) { $0[0] * $0[1] }
        let pos = randomTensor([3, 1], seed: 3, low: 0.5, high: 2)
        assertGradients([a, pos]) { $0[0] / $0[1] }
        assertGradients([a, randomTensor([4], seed: 4)]) { Tensor.maximum($0[0], $0[1]) }
        assertGradients([a]) { ($0[0] * 3 + 1) - 2 }
        assertGradients([a]) { 1 - $0[0] }
        assertGradients([a]) { -$0[0] }
    }

    func testUnaryGradients() {
        let x = randomTensor([3, 5], seed: 5)
        let pos = randomTensor([3, 5], seed: 6, low: 0.5, high: 2)
        assertGradients([x]) { $0[0].exp() }
        assertGradients([pos]) { $0[0].log() }
        assertGradients([pos]) { $0[0].sqrt() }
        assertGradients([pos]) { $0[0].pow(1.5) }
        assertGradients([x]) { $0[0].square() }
        assertGradients([x]) { $0[0].sin() }
        assertGradients([x]) { $0[0].cos() }
        // Values sit away from the kinks at ±0.5, where a finite difference straddles both sides.
        let spread = Tensor(shape: [6], data: [-0.9, -0.7, -0.2, 0.1, 0.35, 0.8])
        spread.requiresGrad = true
        assertGradients([spread]) { $0[0].clamp(min: -0.5, max: 0.5) }
        assertGradients([pos]) { $0[0].abs() }
    }

    func testActivationGradients() {
        let x = randomTensor([4, 6], seed: 8, low: -3, high: 3)
        assertGradients([x]) { $0[0].relu() }
        assertGradients([x]) { $0[0].sigmoid() }
        assertGradients([x]) { $0[0].tanh() }
        assertGradients([x]) { $0[0].silu() }
        assertGradients([x]) { $0[0].gelu() }
        assertGradients([x]) { $0[0].gelu(approximateTanh: true) }
        assertGradients([x]) { $0[0].quickGelu() }
    }

    func testActivationValuesMatchPyTorch() {
        // torch.nn.functional values at x = [-2, -0.5, 0, 0.5, 2].
        let x = Tensor(shape: [5], data: [-2, -0.5, 0, 0.5, 2])
        assertClose(x.gelu().scalars, [-0.04550027, -0.15426877, 0, 0.34573123, 1.9544997], atol: 1e-6)
        assertClose(x.gelu(approximateTanh: true).scalars, [-0.04540231, -0.15428599, 0, 0.34571401, 1.9545977], atol: 1e-6)
        assertClose(x.silu().scalars, [-0.23840584, -0.18877034, 0, 0.31122968, 1.7615942], atol: 1e-6)
        assertClose(x.quickGelu().scalars, [-0.06434137, -0.14961156, 0, 0.35038844, 1.9356586], atol: 1e-6)
    }

    func testReductions() {
        let x = Tensor(shape: [2, 3, 2], data: (0..<12).map(Float.init))
        XCTAssertEqual(x.sum().item, 66)
        XCTAssertEqual(x.sum(axes: [1]).scalars, [6, 9, 24, 27])
        XCTAssertEqual(x.sum(axes: [0, 2]).scalars, [14, 22, 30])
        XCTAssertEqual(x.sum(axes: [0], keepDims: true).shape, [1, 3, 2])
        XCTAssertEqual(x.mean(axes: [-1]).scalars, [0.5, 2.5, 4.5, 6.5, 8.5, 10.5])
        XCTAssertEqual(x.max(axes: [1]).scalars, [4, 5, 10, 11])
        XCTAssertEqual(x.max().item, 11)
        assertClose(x.variance(axes: [2]).scalars, [0.25, 0.25, 0.25, 0.25, 0.25, 0.25])
        assertClose(x.variance(axes: [0, 1, 2], unbiased: true).scalars, [13])
        XCTAssertEqual(x.argmax(axis: 1), [2, 2, 2, 2])
    }

    func testReductionGradients() {
        let x = randomTensor([3, 4, 5], seed: 9)
        assertGradients([x]) { $0[0].sum(axes: [1]) }
        assertGradients([x]) { $0[0].sum(axes: [0, 2], keepDims: true) }
        assertGradients([x]) { $0[0].sum() }
        assertGradients([x]) { $0[0].mean(axes: [-1]) }
        assertGradients([x]) { $0[0].variance(axes: [1, 2]) }
        assertGradients([x]) { $0[0].max(axes: [2]) }
        assertGradients([x]) { $0[0].max(axes: [0, 1]) }
    }

    func testShapeOpsValuesAndGradients() {
        let x = randomTensor([2, 3, 4], seed: 10)
        XCTAssertEqual(x.permuted([2, 0, 1]).shape, [4, 2, 3])
        XCTAssertEqual(x.transposed(0, 2).contiguous()[3, 1, 0], x[0, 1, 3])
        XCTAssertEqual(x.sliced(axis: 2, 1, 3).shape, [2, 3, 2])
        XCTAssertEqual(x.sliced(axis: 2, 1, 3)[1, 2, 0], x[1, 2, 1])
        XCTAssertEqual(x.reshaped([6, -1]).shape, [6, 4])
        XCTAssertEqual(x.unsqueezed(1).shape, [2, 1, 3, 4])
        XCTAssertEqual(x.flattened(from: 1).shape, [2, 12])
        let parts = x.split([1, 3], axis: 2)
        XCTAssertEqual(Tensor.concat(parts, axis: 2).scalars, x.scalars)
        XCTAssertEqual(x.chunked(3, axis: 1).map(\.shape), [[2, 1, 4], [2, 1, 4], [2, 1, 4]])

        assertGradients([x]) { $0[0].permuted([2, 0, 1]) }
        assertGradients([x]) { $0[0].transposed(0, 1).reshaped([3, 8]) }
        assertGradients([x]) { $0[0].sliced(axis: 1, 1, 3) }
        assertGradients([x]) { $0[0].sliced(axis: 2, 0, 1).expanded(to: [2, 3, 5]) }
        let y = randomTensor([2, 2, 4], seed: 11)
        assertGradients([x, y]) { Tensor.concat([$0[0], $0[1]], axis: 1) }
        assertGradients([x]) { $0[0].split([1, 3], axis: 2)[1] * 2 }
    }

    /// Transposed matrices are copied in tiles: every element must land where the strides say,
    /// for sizes around the 32-wide tile, leading dimensions, offsets and permutations that keep
    /// the second-to-last dimension at stride 1.
    func testCopyOfTransposedViewsMatchesElementwiseIndexing() {
        func check(_ view: Tensor, _ label: String) {
            let copy = view.contiguousCopy()
            XCTAssertTrue(copy.isContiguous)
            var expected: [Float] = []
            var index = [Int](repeating: 0, count: view.rank)
            for _ in 0 ..< view.count {
                var o = view.offset
                for d in 0 ..< view.rank { o += index[d] * view.strides[d] }
                expected.append(view.storage.pointer[o])
                var d = view.rank - 1
                while d >= 0 {
                    index[d] += 1
                    if index[d] < view.shape[d] { break }
                    index[d] = 0
                    d -= 1
                }
            }
            XCTAssertEqual(copy.scalars, expected, label)
        }
        for (rows, cols) in [(2, 1), (1, 5), (5, 7), (31, 33), (32, 64), (70, 45)] {
            check(randomTensor([rows, cols], seed: 3).transposed(0, 1), "[\(rows), \(cols)]ᵀ")
        }
        let batch = randomTensor([3, 40, 37], seed: 4)
        check(batch.transposed(-1, -2), "batched transpose")
        check(batch.sliced(axis: 1, 5, 38).transposed(-1, -2), "transpose of a slice (offset)")
        check(batch.sliced(axis: 0, 1, 3).transposed(-1, -2), "transpose of a batch slice")
        check(randomTensor([2, 3, 33, 34], seed: 5).permuted([1, 0, 3, 2]), "permuted leading dimensions")
    }

    func testMatmulMatchesNaiveLoops() {
        for (m, k, n) in [(1, 1, 1), (3, 5, 4), (17, 9, 33)] {
            let a = randomTensor([m, k], seed: 12, requiresGrad: false)
            let b = randomTensor([k, n], seed: 13, requiresGrad: false)
            let c = a.matmul(b)
            var expected = [Float](repeating: 0, count: m * n)
            for i in 0..<m { for j in 0..<n { for p in 0..<k { expected[i * n + j] += a[i, p] * b[p, j] } } }
            assertClose(c.scalars, expected, atol: 1e-5, rtol: 1e-5)
            // Transposed views go to BLAS without copies and give the same product.
            let ct = b.transposed().contiguous().transposed()
            assertClose(a.matmul(ct).scalars, expected, atol: 1e-5, rtol: 1e-5)
        }
    }

    func testBatchedMatmulBroadcastAndGradients() {
        let a = randomTensor([2, 3, 4, 5], seed: 14)
        let b = randomTensor([3, 5, 2], seed: 15)
        let c = a.matmul(b)
        XCTAssertEqual(c.shape, [2, 3, 4, 2])
        var expected: Float = 0
        for p in 0..<5 { expected += a[1, 2, 3, p] * b[2, p, 1] }
        XCTAssertEqual(c[1, 2, 3, 1], expected, accuracy: 1e-5)
        assertGradients([a, b]) { $0[0].matmul($0[1]) }
        let w = randomTensor([5, 3], seed: 16)
        assertGradients([a, w]) { $0[0].matmul($0[1]) }
        assertGradients([a, randomTensor([2, 3, 2, 5], seed: 17)]) { $0[0].matmul($0[1].transposed()) }
    }

    func testGradientsAccumulateAndNoGradScope() {
        let x = Tensor(shape: [2], data: [1, 2]).asParameter()
        (x * 3).sum().backward()
        (x * x).sum().backward()
        XCTAssertEqual(x.grad?.scalars, [5, 7])
        x.zeroGrad()
        XCTAssertNil(x.grad)
        let y = withoutGrad { x * 2 }
        XCTAssertFalse(y.requiresGrad)
        XCTAssertTrue(GradMode.isEnabled)
    }

    func testAGradientBufferReceivesTheFirstAccumulationAndThenAccumulates() {
        let w = Tensor(shape: [2, 2], data: [1, 2, 3, 4]).asParameter()
        let home = Tensor(storage: TensorStorage([9, 9, 9, 9, 9, 9]), shape: [2, 2], offset: 1)
        w.gradientBuffer = home
        let x = Tensor(shape: [1, 2], data: [1, 2])
        // d/dw sum(x·w) arrives as a transposed view; it is written into the window in row order.
        x.matmul(w).sum().backward()
        XCTAssertTrue(w.grad === home)
        XCTAssertEqual(home.storage.pointer[0], 9)
        XCTAssertEqual(home.scalars, [1, 1, 2, 2])
        XCTAssertEqual(home.storage.pointer[5], 9, "nothing written past the window")
        x.matmul(w).sum().backward()
        XCTAssertEqual(home.scalars, [2, 2, 4, 4])
        w.zeroGrad()
        (w * 3).sum().backward()
        XCTAssertTrue(w.grad === home)
        XCTAssertEqual(home.scalars, [3, 3, 3, 3], "after zeroGrad the window is overwritten, not added to")
        w.gradientBuffer = nil
        w.zeroGrad()
        (w * 3).sum().backward()
        XCTAssertFalse(w.grad === home)
        XCTAssertEqual(home.scalars, [3, 3, 3, 3])
    }

    func testGradientCheckerRejectsAWrongGradient() {
        // d/dx x² is 2x; an op that claims x must be caught.
        func wrongSquare(_ x: Tensor) -> Tensor {
            let out = withoutGrad { x * x }
            return Tensor.record("wrong_square", out, [x]) { g in [g * x] }
        }
        let x = randomTensor([4], seed: 18, low: 0.5, high: 1.5)
        let result = GradientChecker.check([x]) { wrongSquare($0[0]) }
        XCTAssertFalse(result.passed, "the checker accepted a wrong gradient: \(result)")
        func rightSquare(_ x: Tensor) -> Tensor {
            let out = withoutGrad { x * x }
            return Tensor.record("square", out, [x]) { g in [g * x * 2] }
        }
        XCTAssertTrue(GradientChecker.check([x]) { rightSquare($0[0]) }.passed)
    }

    func testSeededGeneratorIsReproducible() {
        var g1 = SeededGenerator(seed: 42), g2 = SeededGenerator(seed: 42)
        XCTAssertEqual(Tensor.randn([10], using: &g1).scalars, Tensor.randn([10], using: &g2).scalars)
        let restored = SeededGenerator(state: g1.state)
        var a = g1, b = restored
        XCTAssertEqual(a.next(), b.next())
        var g = SeededGenerator(seed: 3)
        let n = Tensor.randn([20000], using: &g)
        XCTAssertEqual(n.mean().item, 0, accuracy: 0.03)
        XCTAssertEqual(n.variance(axes: [0]).item, 1, accuracy: 0.05)
    }
}

/// Single-row and single-column products take the sgemv path; every operand layout must agree
/// with the naive product.
final class MatrixVectorTests: XCTestCase {
    func naive(_ a: Tensor, _ b: Tensor) -> [Float] {
        let m = a.shape[0], k = a.shape[1], n = b.shape[1]
        var out = [Float](repeating: 0, count: m * n)
        for i in 0..<m { for j in 0..<n { for p in 0..<k { out[i * n + j] += a[i, p] * b[p, j] } } }
        return out
    }

    func testRowAndColumnProductsInEveryLayout() {
        for (m, k, n) in [(1, 7, 5), (6, 7, 1), (1, 1, 4), (3, 1, 1)] {
            let a = randomTensor([m, k], seed: 21, requiresGrad: false)
            let b = randomTensor([k, n], seed: 22, requiresGrad: false)
            let aT = a.transposed().contiguous().transposed()  // same values, column-major storage
            let bT = b.transposed().contiguous().transposed()
            let expected = naive(a, b)
            for (x, y) in [(a, b), (aT, b), (a, bT), (aT, bT)] {
                assertClose(x.matmul(y).scalars, expected, atol: 1e-5, rtol: 1e-5)
            }
        }
        let a = randomTensor([1, 6], seed: 23), w = randomTensor([4, 6], seed: 24)
        assertGradients([a, w]) { $0[0].matmul($0[1].transposed()) }
    }
}
