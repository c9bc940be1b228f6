import Foundation
import XCTest
import Tensor

/// Neural-network ops: finite-difference gradients for every op and input, naive-loop references
/// for convolution and attention, and the errors that user data can trigger.
final class NNOpTests: XCTestCase {
    // MARK: Convolution

    /// Direct 7-loop convolution over [N, C, H, W] with stride, padding, dilation and groups.
    func naiveConv2d(_ x: Tensor, _ w: Tensor, _ b: Tensor?, stride: (Int, Int), padding: (Int, Int),
                     dilation: (Int, Int), groups: Int) -> (shape: [Int], data: [Float]) {
        let (n, c, h, wd) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3])
        let (o, cg, kh, kw) = (w.shape[0], w.shape[1], w.shape[2], w.shape[3])
        let ho = (h + 2 * padding.0 - dilation.0 * (kh - 1) - 1) / stride.0 + 1
        let wo = (wd + 2 * padding.1 - dilation.1 * (kw - 1) - 1) / stride.1 + 1
        let xs = x.scalars, ws = w.scalars, bs = b?.scalars
        let og = o / groups
        var out = [Float](repeating: 0, count: n * o * ho * wo)
        for ni in 0..<n {
            for oc in 0..<o {
                let g = oc / og
                for i in 0..<ho {
                    for j in 0..<wo {
                        var acc: Float = bs?[oc] ?? 0
                        for ci in 0..<cg {
                            let ch = g * cg + ci
                            for ki in 0..<kh {
                                for kj in 0..<kw {
                                    let ih = i * stride.0 - padding.0 + ki * dilation.0
                                    let iw = j * stride.1 - padding.1 + kj * dilation.1
                                    guard ih >= 0, ih < h, iw >= 0, iw < wd else { continue }
                                    acc += xs[((ni * c + ch) * h + ih) * wd + iw] * ws[((oc * cg + ci) * kh + ki) * kw + kj]
                                }
                            }
                        }
                        out[((ni * o + oc) * ho + i) * wo + j] = acc
                    }
                }
            }
        }
        return ([n, o, ho, wo], out)
    }

    func testConv2dMatchesNaiveLoops() {
        let configs: [([Int], [Int], Bool, (Int, Int), (Int, Int), (Int, Int), Int)] = [
            ([2, 3, 6, 7], [4, 3, 3, 3], true, (1, 1), (1, 1), (1, 1), 1),
            ([2, 4, 9, 8], [6, 2, 3, 3], true, (2, 2), (1, 1), (2, 2), 2),
            ([1, 3, 5, 7], [5, 3, 2, 4], false, (3, 2), (2, 1), (1, 2), 1),
            ([3, 4, 4, 4], [8, 4, 1, 1], true, (1, 1), (0, 0), (1, 1), 1),
            ([2, 6, 4, 5], [6, 2, 1, 1], false, (1, 1), (0, 0), (1, 1), 3),
            ([2, 3, 5, 5], [2, 3, 1, 1], true, (2, 2), (1, 1), (1, 1), 1),
            ([1, 2, 3, 3], [1, 2, 3, 3], true, (1, 1), (0, 0), (1, 1), 1),
        ]
        for (k, (xs, ws, hasBias, stride, padding, dilation, groups)) in configs.enumerated() {
            let x = randomTensor(xs, seed: UInt64(100 + k), requiresGrad: false)
            let w = randomTensor(ws, seed: UInt64(200 + k), requiresGrad: false)
            let b = hasBias ? randomTensor([ws[0]], seed: UInt64(300 + k), requiresGrad: false) : nil
            let out = x.conv2d(weight: w, bias: b, stride: stride, padding: padding, dilation: dilation, groups: groups)
            let ref = naiveConv2d(x, w, b, stride: stride, padding: padding, dilation: dilation, groups: groups)
            XCTAssertEqual(out.shape, ref.shape, "config \(k)")
            assertClose(out.scalars, ref.data, atol: 1e-5, rtol: 1e-5)
        }
    }

    /// dL/dx and dL/dw of the direct convolution for an output gradient g, by the same loops.
    func naiveConv2dBackward(_ x: Tensor, _ w: Tensor, _ g: Tensor, padding: (Int, Int)) -> (dx: [Float], dw: [Float]) {
        let (n, c, h, wd) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3])
        let (o, kh, kw) = (w.shape[0], w.shape[2], w.shape[3])
        let (ho, wo) = (g.shape[2], g.shape[3])
        let xs = x.scalars, ws = w.scalars, gs = g.scalars
        var dx = [Float](repeating: 0, count: xs.count), dw = [Double](repeating: 0, count: ws.count)
        for ni in 0..<n {
            for oc in 0..<o {
                for i in 0..<ho {
                    for j in 0..<wo {
                        let gv = gs[((ni * o + oc) * ho + i) * wo + j]
                        for ch in 0..<c {
                            for ki in 0..<kh {
                                for kj in 0..<kw {
                                    let ih = i - padding.0 + ki, iw = j - padding.1 + kj
                                    guard ih >= 0, ih < h, iw >= 0, iw < wd else { continue }
                                    let xi = ((ni * c + ch) * h + ih) * wd + iw, wi = ((oc * c + ch) * kh + ki) * kw + kj
                                    dx[xi] += gv * ws[wi]
                                    dw[wi] += Double(gv * xs[xi])
                                }
                            }
                        }
                    }
                }
            }
        }
        return (dx, dw.map { Float($0) })
    }

    func testConv2dTilingMatchesNaiveLoops() {
        // The column budget is 2²⁰ floats. [3, 16, 56, 56]: 0.45 M column floats per sample, so the
        // batch is unfolded as a tile of two samples and a tile of one. [2, 16, 90, 90]: 1.17 M per
        // sample, more than the budget, so each sample is cut into bands of 80 and 10 output rows.
        for (k, shape) in [[3, 16, 56, 56], [2, 16, 90, 90]].enumerated() {
            let x = randomTensor(shape, seed: UInt64(20 + k))
            let w = randomTensor([2, 16, 3, 3], seed: 22)
            let b = randomTensor([2], seed: 23)
            let out = x.conv2d(weight: w, bias: b, padding: (1, 1))
            let ref = naiveConv2d(x, w, b, stride: (1, 1), padding: (1, 1), dilation: (1, 1), groups: 1)
            assertClose(out.scalars, ref.data, atol: 1e-4, rtol: 1e-4)
            let g = randomTensor(out.shape, seed: 24, requiresGrad: false)
            out.backward(g)
            let grads = naiveConv2dBackward(x, w, g, padding: (1, 1))
            assertClose(x.grad!.scalars, grads.dx, atol: 1e-4, rtol: 1e-4)
            assertClose(w.grad!.scalars, grads.dw, atol: 1e-2, rtol: 1e-4)
            let gs = g.scalars, plane = out.shape[2] * out.shape[3]
            for oc in 0..<2 {
                var total: Double = 0
                for ni in 0..<shape[0] { for i in 0..<plane { total += Double(gs[(ni * 2 + oc) * plane + i]) } }
                XCTAssertEqual(b.grad![oc], Float(total), accuracy: 1e-2)
            }
        }
    }

    func testConv2dReadsStridedViews() {
        // A non-contiguous input (a permuted view) gives the same result as its copy.
        let base = randomTensor([2, 5, 6, 3], seed: 25, requiresGrad: false)
        let view = base.permuted([0, 3, 1, 2])                   // [2, 3, 5, 6]
        let w2 = randomTensor([4, 3, 3, 3], seed: 26, requiresGrad: false)
        XCTAssertEqual(view.conv2d(weight: w2, bias: nil, padding: (1, 1)).scalars,
                       view.contiguousCopy().conv2d(weight: w2, bias: nil, padding: (1, 1)).scalars)
        assertGradients([base, w2.asParameter()]) { $0[0].permuted([0, 3, 1, 2]).conv2d(weight: $0[1], bias: nil, padding: (1, 1)) }
    }

    func testConv2dGradients() {
        let x = randomTensor([2, 4, 7, 6], seed: 30), w = randomTensor([6, 2, 3, 3], seed: 31), b = randomTensor([6], seed: 32)
        assertGradients([x, w, b]) {
            $0[0].conv2d(weight: $0[1], bias: $0[2], stride: (2, 2), padding: (1, 1), dilation: (2, 2), groups: 2)
        }
        let x2 = randomTensor([2, 3, 5, 5], seed: 33), w2 = randomTensor([4, 3, 3, 2], seed: 34), b2 = randomTensor([4], seed: 35)
        assertGradients([x2, w2, b2]) { $0[0].conv2d(weight: $0[1], bias: $0[2], stride: (1, 2), padding: (1, 0)) }
        let w3 = randomTensor([5, 3, 1, 1], seed: 36)
        assertGradients([x2, w3]) { $0[0].conv2d(weight: $0[1], bias: nil) }
        assertGradients([x2, randomTensor([4, 3, 1, 1], seed: 37)]) { $0[0].conv2d(weight: $0[1], bias: nil, stride: (2, 2)) }
    }

    // MARK: Normalisation

    func testNormalizationGradients() {
        let x = randomTensor([3, 4, 5], seed: 40, low: -2, high: 2)
        let g5 = randomTensor([5], seed: 41), b5 = randomTensor([5], seed: 42)
        assertGradients([x, g5, b5]) { $0[0].layerNorm(normalizedShape: [5], weight: $0[1], bias: $0[2]) }
        let g45 = randomTensor([4, 5], seed: 43)
        assertGradients([x, g45]) { $0[0].layerNorm(normalizedShape: [4, 5], weight: $0[1], bias: nil) }
        assertGradients([x]) { $0[0].layerNorm(normalizedShape: [5], weight: nil, bias: nil) }

        let y = randomTensor([2, 6, 3, 2], seed: 44, low: -2, high: 2)
        let gc = randomTensor([6], seed: 45), bc = randomTensor([6], seed: 46)
        assertGradients([y, gc, bc]) { $0[0].groupNorm(groups: 3, weight: $0[1], bias: $0[2]) }
        assertGradients([y]) { $0[0].groupNorm(groups: 2, weight: nil, bias: nil) }
        assertGradients([y, bc]) { $0[0].groupNorm(groups: 6, weight: nil, bias: $0[1]) }

        let r = randomTensor([4, 6], seed: 47, low: -2, high: 2)
        assertGradients([r, randomTensor([6], seed: 48)]) { $0[0].rmsNorm(weight: $0[1]) }
        assertGradients([r]) { $0[0].rmsNorm(weight: nil, eps: 1e-5) }
    }

    func testNormalizationStatistics() {
        // Rows far from zero: a one-pass float variance would lose most digits here.
        let x = Tensor(shape: [2, 4], data: [1000, 1001, 1002, 1003, -5, -5, -5, -5])
        let y = x.layerNorm(normalizedShape: [4], weight: nil, bias: nil, eps: 0)
        let s = 1 / Float(1.25).squareRoot()
        assertClose(Array(y.scalars.prefix(4)), [-1.5 * s, -0.5 * s, 0.5 * s, 1.5 * s], atol: 1e-5)
        XCTAssertEqual(Array(y.scalars.suffix(4)).map { $0.isNaN }, [true, true, true, true], "0/0 with eps 0, as in PyTorch")
        let r = Tensor(shape: [1, 2], data: [3, 4]).rmsNorm(weight: nil, eps: 0)
        assertClose(r.scalars, [3 / Float(12.5).squareRoot(), 4 / Float(12.5).squareRoot()], atol: 1e-6)
    }

    // MARK: Softmax

    func testSoftmaxGradientsAndStability() {
        let x = randomTensor([3, 4, 5], seed: 50, low: -2, high: 2)
        for axis in [-1, 1, 0] {
            assertGradients([x]) { $0[0].softmax(axis: axis) }
            assertGradients([x]) { $0[0].logSoftmax(axis: axis) }
        }
        // A transposed view goes through the same kernels.
        assertGradients([x]) { $0[0].transposed(0, 2).softmax(axis: -1) }
        let big = Tensor(shape: [1, 3], data: [1000, 1001, 1002])
        let s = big.softmax().scalars
        XCTAssertFalse(s.contains { $0.isNaN })
        XCTAssertEqual(s.reduce(0, +), 1, accuracy: 1e-6)
        XCTAssertEqual(big.logSoftmax().scalars[2], -0.40760596, accuracy: 1e-5)
        let columns = x.softmax(axis: 1).sum(axes: [1]).scalars
        assertClose(columns, [Float](repeating: 1, count: columns.count), atol: 1e-6)
    }

    // MARK: Attention

    /// softmax(q·kᵀ·scale + mask)·v with explicit loops over [B, Lq, d], [B, Lk, d], [B, Lk, dv].
    func naiveAttention(_ q: Tensor, _ k: Tensor, _ v: Tensor, mask: [Float]?, causal: Bool, scale: Float) -> [Float] {
        let (b, lq, d) = (q.shape[0], q.shape[1], q.shape[2])
        let (lk, dv) = (k.shape[1], v.shape[2])
        let qs = q.scalars, ks = k.scalars, vs = v.scalars
        var out = [Float](repeating: 0, count: b * lq * dv)
        for bi in 0..<b {
            for i in 0..<lq {
                var scores = [Double](repeating: 0, count: lk)
                for j in 0..<lk {
                    var dot: Double = 0
                    for p in 0..<d { dot += Double(qs[(bi * lq + i) * d + p]) * Double(ks[(bi * lk + j) * d + p]) }
                    scores[j] = dot * Double(scale) + Double(mask?[i * lk + j] ?? 0)
                    if causal && j > i + (lk - lq) { scores[j] = -.infinity }
                }
                let m = scores.max()!
                let e = scores.map { Foundation.exp($0 - m) }
                let total = e.reduce(0, +)
                for t in 0..<dv {
                    var acc: Double = 0
                    for j in 0..<lk { acc += e[j] / total * Double(vs[(bi * lk + j) * dv + t]) }
                    out[(bi * lq + i) * dv + t] = Float(acc)
                }
            }
        }
        return out
    }

    func testAttentionMatchesNaiveLoops() {
        let q = randomTensor([2, 4, 6], seed: 60, requiresGrad: false)
        let k = randomTensor([2, 7, 6], seed: 61, requiresGrad: false)
        let v = randomTensor([2, 7, 3], seed: 62, requiresGrad: false)
        let mask = randomTensor([4, 7], seed: 63, requiresGrad: false)
        let scale = 1 / Float(6).squareRoot()
        assertClose(Tensor.scaledDotProductAttention(query: q, key: k, value: v).scalars,
                    naiveAttention(q, k, v, mask: nil, causal: false, scale: scale))
        assertClose(Tensor.scaledDotProductAttention(query: q, key: k, value: v, mask: mask).scalars,
                    naiveAttention(q, k, v, mask: mask.scalars, causal: false, scale: scale))
        assertClose(Tensor.scaledDotProductAttention(query: q, key: k, value: v, causal: true, scale: 0.5).scalars,
                    naiveAttention(q, k, v, mask: nil, causal: true, scale: 0.5))
        // Heads as a permuted view [B, L, H, d] → [B, H, L, d]: no copy is needed and the values agree.
        let packed = randomTensor([2, 5, 3, 4], seed: 64, requiresGrad: false)
        let heads = packed.permuted([0, 2, 1, 3])
        let viaView = Tensor.scaledDotProductAttention(query: heads, key: heads, value: heads, causal: true)
        let viaCopy = Tensor.scaledDotProductAttention(query: heads.contiguousCopy(), key: heads.contiguousCopy(),
                                                       value: heads.contiguousCopy(), causal: true)
        assertClose(viaView.scalars, viaCopy.scalars, atol: 1e-6)
        XCTAssertEqual(viaView.shape, [2, 3, 5, 4])
    }

    func testAttentionGradients() {
        let q = randomTensor([2, 3, 4], seed: 70), k = randomTensor([2, 5, 4], seed: 71), v = randomTensor([2, 5, 3], seed: 72)
        let mask = randomTensor([3, 5], seed: 73)
        assertGradients([q, k, v, mask]) {
            Tensor.scaledDotProductAttention(query: $0[0], key: $0[1], value: $0[2], mask: $0[3])
        }
        assertGradients([q, k, v]) { Tensor.scaledDotProductAttention(query: $0[0], key: $0[1], value: $0[2], causal: true) }
        let qs = randomTensor([2, 5, 4], seed: 74)
        assertGradients([qs, k, v, randomTensor([2, 1, 5], seed: 75)]) {
            Tensor.scaledDotProductAttention(query: $0[0], key: $0[1], value: $0[2], mask: $0[3], causal: true, scale: 0.7)
        }
    }

    // MARK: Embedding, upsampling, dropout, linear

    func testEmbeddingValuesGradientsAndErrors() throws {
        let table = randomTensor([6, 3], seed: 80)
        let out = try table.embedding(ids: [5, 0, 5, 2], shape: [2, 2])
        XCTAssertEqual(out.shape, [2, 2, 3])
        XCTAssertEqual(Array(out.scalars[0..<3]), Array(table.scalars[15..<18]))
        assertGradients([table]) { try! $0[0].embedding(ids: [5, 0, 5, 2, 5], shape: [5]) }

        XCTAssertThrowsError(try table.embedding(ids: [1, 6], shape: [2])) { error in
            XCTAssertEqual(error as? TensorError, .idOutOfVocabulary(id: 6, position: 1, vocabularySize: 6))
            XCTAssertTrue("\(error)".contains("id 6") && "\(error)".contains("6 rows"), "\(error)")
        }
        XCTAssertThrowsError(try table.embedding(ids: [-1], shape: [1])) { error in
            XCTAssertEqual(error as? TensorError, .idOutOfVocabulary(id: -1, position: 0, vocabularySize: 6))
        }
        XCTAssertThrowsError(try table.embedding(ids: [1, 2, 3], shape: [2, 2])) { error in
            XCTAssertEqual(error as? TensorError, .countMismatch(op: "embedding", what: "id shape [2, 2]", expected: 4, actual: 3))
        }
        XCTAssertThrowsError(try table.embedding(ids: [], shape: [-1, 0]))
        XCTAssertEqual(try table.embedding(ids: [], shape: [0]).shape, [0, 3])
    }

    func testUpsampleNearest() {
        let x = Tensor(shape: [1, 1, 2, 2], data: [1, 2, 3, 4])
        XCTAssertEqual(x.upsampleNearest().scalars, [1, 1, 2, 2, 1, 1, 2, 2, 3, 3, 4, 4, 3, 3, 4, 4])
        XCTAssertEqual(x.upsampleNearest(scale: (1, 3)).shape, [1, 1, 2, 6])
        assertGradients([randomTensor([2, 3, 2, 3], seed: 90)]) { $0[0].upsampleNearest(scale: (2, 3)) }
        assertGradients([randomTensor([1, 2, 3, 2], seed: 91)]) { $0[0].upsampleNearest(scale: (3, 1)) }
    }

    func testDropout() {
        let x = Tensor.ones([1000])
        var rng1 = SeededGenerator(seed: 5), rng2 = SeededGenerator(seed: 5)
        let a = x.dropout(p: 0.3, training: true, using: &rng1)
        let b = x.dropout(p: 0.3, training: true, using: &rng2)
        XCTAssertEqual(a.scalars, b.scalars, "same seed, same mask")
        let kept = a.scalars.filter { $0 != 0 }
        XCTAssertTrue(kept.allSatisfy { abs($0 - 1 / 0.7) < 1e-6 })
        XCTAssertEqual(Double(kept.count) / 1000, 0.7, accuracy: 0.05)
        XCTAssertTrue(x.dropout(p: 0.3, training: false, using: &rng1) === x)
        XCTAssertTrue(x.dropout(p: 0, training: true, using: &rng1) === x)
        XCTAssertEqual(x.dropout(p: 1, training: true, using: &rng1).scalars, [Float](repeating: 0, count: 1000))
        assertGradients([randomTensor([4, 5], seed: 92)]) {
            var rng = SeededGenerator(seed: 9)
            return $0[0].dropout(p: 0.4, training: true, using: &rng)
        }
    }

    func testLinearValuesAndGradients() {
        let x = randomTensor([2, 3, 5], seed: 100), w = randomTensor([4, 5], seed: 101), b = randomTensor([4], seed: 102)
        let y = x.linear(weight: w, bias: b)
        XCTAssertEqual(y.shape, [2, 3, 4])
        var expected: Float = b[2]
        for p in 0..<5 { expected += x[1, 2, p] * w[2, p] }
        XCTAssertEqual(y[1, 2, 2], expected, accuracy: 1e-5)
        assertGradients([x, w, b]) { $0[0].linear(weight: $0[1], bias: $0[2]) }
        assertGradients([randomTensor([6, 5], seed: 103), w]) { $0[0].linear(weight: $0[1], bias: nil) }
        assertGradients([randomTensor([5], seed: 104), w, b]) { $0[0].linear(weight: $0[1], bias: $0[2]) }
        // The shared weight's gradient over a batch equals the sum of per-sample gradients.
        let xs = randomTensor([3, 2, 5], seed: 105, requiresGrad: false)
        let wp = w.asParameter()
        xs.linear(weight: wp, bias: nil).sum().backward()
        let batched = wp.grad!.scalars
        wp.zeroGrad()
        for i in 0..<3 { xs.sliced(axis: 0, i, i + 1).reshaped([2, 5]).linear(weight: wp, bias: nil).sum().backward() }
        assertClose(batched, wp.grad!.scalars, atol: 1e-5)
    }

    // MARK: Losses

    func testLossGradients() {
        let p = randomTensor([3, 4], seed: 110), t = randomTensor([3, 4], seed: 111)
        for reduction in [LossReduction.mean, .sum, .none, .batchMean] {
            assertGradients([p, t]) { Loss.mse($0[0], $0[1], reduction: reduction) }
        }
        let logits = randomTensor([5, 6], seed: 112, low: -2, high: 2)
        for reduction in [LossReduction.mean, .sum, .none, .batchMean] {
            assertGradients([logits]) { Loss.crossEntropy(logits: $0[0], targets: [1, -100, 5, 0, 1], reduction: reduction) }
        }
        assertGradients([logits]) { Loss.crossEntropy(logits: $0[0], targets: [1, 3, 5, 0, 3], ignoreIndex: 3) }
        let q = randomTensor([3, 5], seed: 113).logSoftmax().detached()
        q.requiresGrad = true
        let target = randomTensor([3, 5], seed: 114).softmax().detached()
        target.requiresGrad = true
        for reduction in [LossReduction.mean, .sum, .none, .batchMean] {
            assertGradients([q, target], epsilon: 1e-3) { Loss.klDivergence(input: $0[0], target: $0[1], reduction: reduction) }
        }
        let logTarget = randomTensor([3, 5], seed: 115, low: -3, high: 0)
        assertGradients([q, logTarget]) { Loss.klDivergence(input: $0[0], target: $0[1], logTarget: true) }
    }

    func testLossValuesAndErrors() throws {
        let logits = Tensor(shape: [2, 3], data: [0, 0, 0, 1, 2, 3])
        let lse: Float = 3 + Foundation.log(1 + Foundation.exp(-1) + Foundation.exp(-2))
        XCTAssertEqual(Loss.crossEntropy(logits: logits, targets: [0, 2]).item, (Foundation.log(3) + lse - 3) / 2, accuracy: 1e-6)
        XCTAssertEqual(Loss.crossEntropy(logits: logits, targets: [-100, 2]).item, lse - 3, accuracy: 1e-6)
        XCTAssertTrue(Loss.crossEntropy(logits: logits, targets: [-100, -100]).item.isNaN, "mean over no targets is NaN, as in PyTorch")
        XCTAssertEqual(Loss.crossEntropy(logits: logits, targets: [-100, -100], reduction: .sum).item, 0)

        XCTAssertThrowsError(try Loss.checkedCrossEntropy(logits: logits, targets: [0, 3])) { error in
            XCTAssertEqual(error as? TensorError, .targetOutOfRange(target: 3, position: 1, classCount: 3, ignoreIndex: -100))
            XCTAssertTrue("\(error)".contains("target 3 at position 1"), "\(error)")
        }
        XCTAssertThrowsError(try Loss.checkedCrossEntropy(logits: logits, targets: [0])) { error in
            XCTAssertEqual(error as? TensorError,
                           .countMismatch(op: "crossEntropy", what: "targets for logits [2, 3]", expected: 2, actual: 1))
        }
        XCTAssertThrowsError(try Loss.checkedCrossEntropy(logits: logits, targets: [-1, 0]))

        let mse = Loss.mse(Tensor(shape: [2, 2], data: [1, 2, 3, 4]), Tensor(shape: [2, 2], data: [0, 0, 0, 0]), reduction: .batchMean)
        XCTAssertEqual(mse.item, 15)
        // KL of a distribution with itself is 0; zero target entries contribute 0.
        let p = Tensor(shape: [1, 3], data: [0.5, 0.5, 0])
        let logQ = Tensor(shape: [1, 3], data: [Foundation.log(0.5), Foundation.log(0.5), -7])
        XCTAssertEqual(Loss.klDivergence(input: logQ, target: p).item, 0, accuracy: 1e-7)
    }
}
