import COpenBLAS
import Foundation
import Tensor

// Multi-head attention as one fused op on the [N, L, H·d] token layout that the projections
// produce, for the shapes of diffusion UNets (head width d ≤ 64, up to a few thousand keys).
//
// The composed form (permute to [N, H, L, d], batched GEMMs around a softmax, merge the heads)
// materialises all N·H·Lq·Lk scores in memory, twice more for the backward, and copies the
// heads apart and back together. Here one work item is one (sample, head): its queries are
// taken in blocks of B rows, and for each block the scores S [B, Lk] = scale·Q·Kᵀ, their
// softmax and O = P·V stay in a cache-sized buffer. Q, K, V and O are read and written in place
// through their row stride H·d, so nothing is packed or merged.
//
// OpenBLAS runs on one thread in Sura (Tensor's ParallelGemm.swift), so each of these small GEMMs
// (B·Lk·d < 2¹⁸ multiply-adds) runs on the calling thread; the (sample, head) items are spread
// over `parallelFor`.
//
// Backward recomputes the probabilities from the saved log-sum-exp, as FlashAttention does:
//   P = exp(S − lse),  dP = dO·Vᵀ,  dS = P ⊙ (dP − rowsum(dO ⊙ O)),
//   dQ = scale·dS·K,  dK += scale·dSᵀ·Q,  dV += Pᵀ·dO.
// Each item owns the columns of its head in dQ, dK and dV, so no two threads write the same memory.

/// Whether the fused kernel takes attention of this shape (else the GEMM-based composition does).
func fusedAttentionApplies(headDim d: Int, keys lk: Int) -> Bool {
    d >= 1 && d <= 64 && lk >= 1 && fusedAttentionBlockRows(headDim: d, keys: lk) >= 8
}

/// Query rows per block: the score block stays under 64 K floats (256 KB, in L2) and each GEMM
/// under 2¹⁸ multiply-adds.
private func fusedAttentionBlockRows(headDim d: Int, keys lk: Int) -> Int {
    Swift.min(65_536 / lk, 262_143 / (lk * d), 256)
}

/// e^x for x ≤ 0 (softmax terms after the shift), in a form that loops vectorise:
/// x = n·ln2 + r with n = round(x/ln2) (rounded by adding 1.5·2²³, which also leaves n in the
/// low mantissa bits), e^r from its degree-6 Taylor polynomial (relative error below 2e-7 for
/// |r| ≤ ln2/2), and 2ⁿ assembled from exponent bits. Inputs below −87 give e^−87 ≈ 1.6e-38,
/// which is zero for every sum it enters; NaN stays NaN.
@inline(__always)
func fastNegativeExp(_ x: Float) -> Float {
    let xc = x < -87 ? -87 : x
    let t = xc * 1.442_695_04 + 12_582_912
    let n = t - 12_582_912
    let r = (xc - n * 0.693_359_375) + n * 2.121_944_4e-4
    var p: Float = 1.0 / 720
    p = p * r + 1.0 / 120
    p = p * r + 1.0 / 24
    p = p * r + 1.0 / 6
    p = p * r + 0.5
    p = p * r + 1
    p = p * r + 1
    let exponent = Int32(bitPattern: t.bitPattern) &- 0x4B40_0000
    return p * Float(bitPattern: UInt32(bitPattern: (exponent &+ 127) &<< 23))
}

/// C [m, n] = alpha·op(A)·op(B) + beta·C, row-major with explicit leading dimensions.
@inline(__always)
private func gemm(_ transA: Bool, _ transB: Bool, _ m: Int, _ n: Int, _ k: Int, _ alpha: Float,
                  _ a: UnsafePointer<Float>, _ lda: Int, _ b: UnsafePointer<Float>, _ ldb: Int,
                  _ beta: Float, _ c: UnsafeMutablePointer<Float>, _ ldc: Int) {
    cblas_sgemm(CblasRowMajor, transA ? CblasTrans : CblasNoTrans, transB ? CblasTrans : CblasNoTrans,
                Int32(m), Int32(n), Int32(k), alpha, a, Int32(lda), b, Int32(ldb), beta, c, Int32(ldc))
}

/// `fastNegativeExp` on 16 lanes at once. Written on SIMD16 rather than left to the loop
/// vectoriser, which packed the scalar form four lanes wide (half of AVX2) and made the softmax
/// the largest single cost of a small UNet's forward.
@inline(__always)
func fastNegativeExp(_ x: SIMD16<Float>) -> SIMD16<Float> {
    let xc = x.replacing(with: -87, where: x .< -87)
    let t = xc * 1.442_695_04 + 12_582_912
    let n = t - 12_582_912
    let r = (xc - n * 0.693_359_375) + n * 2.121_944_4e-4
    var p = SIMD16<Float>(repeating: 1.0 / 720)
    p = p * r + 1.0 / 120
    p = p * r + 1.0 / 24
    p = p * r + 1.0 / 6
    p = p * r + 0.5
    p = p * r + 1
    p = p * r + 1
    let exponent = unsafeBitCast(t, to: SIMD16<Int32>.self) &- 0x4B40_0000
    return p * unsafeBitCast((exponent &+ 127) &<< 23, to: SIMD16<Float>.self)
}

/// Row i of `s` [rows, lk] becomes exp(s + bias − shift_i). With `shifts` nil the shift is the
/// row maximum, and the maxima and row sums are written to `maxima` and `sums` (forward);
/// otherwise `shifts` holds the saved log-sum-exp (backward). Sixteen columns at a time, the
/// last lk mod 16 one by one.
@inline(__always)
private func exponentiateRows(_ s: UnsafeMutablePointer<Float>, rows: Int, lk: Int, bias: UnsafePointer<Float>?,
                              shifts: UnsafePointer<Float>?, sums: UnsafeMutablePointer<Float>?,
                              maxima: UnsafeMutablePointer<Float>?) {
    typealias V = SIMD16<Float>
    let vectorEnd = lk & ~15
    for i in 0..<rows {
        let row = s + i &* lk
        let raw = UnsafeMutableRawPointer(row)
        if let bias { for j in 0..<lk { row[j] += bias[j] } }
        let shift: Float
        if let shifts {
            shift = shifts[i]
        } else {
            // Comparisons written as selects (not Swift.max, which must order NaNs) so they vectorise.
            var m = V(repeating: row[0])
            var j = 0
            while j < vectorEnd {
                let v = raw.loadUnaligned(fromByteOffset: j &* 4, as: V.self)
                m = m.replacing(with: v, where: v .> m)
                j &+= 16
            }
            var best = m.max()
            while j < lk { best = best > row[j] ? best : row[j]; j &+= 1 }
            shift = best
        }
        let sv = V(repeating: shift)
        var acc = V()
        var j = 0
        while j < vectorEnd {
            let e = fastNegativeExp(raw.loadUnaligned(fromByteOffset: j &* 4, as: V.self) - sv)
            raw.storeBytes(of: e, toByteOffset: j &* 4, as: V.self)
            acc += e
            j &+= 16
        }
        var tail: Float = 0
        while j < lk { let e = fastNegativeExp(row[j] - shift); row[j] = e; tail += e; j &+= 1 }
        if let sums, let maxima {
            sums[i] = acc.sum() + tail
            maxima[i] = shift
        }
    }
}

/// Multi-head softmax attention on token layouts, fused (see the file comment).
///
/// - query: [N, Lq, H·d]; key, value: [N, Lk, H·d]; the shape must satisfy `fusedAttentionApplies`.
/// - keyBias: additive bias [N, Lk] on the scores of each key (padding masks); no gradient.
/// - Returns: [N, Lq, H·d] = softmax(q·kᵀ/√d + bias)·v per head, heads side by side.
func fusedMultiHeadAttention(query: Tensor, key: Tensor, value: Tensor, heads: Int, keyBias: Tensor?) -> Tensor {
    let n = query.shape[0], lq = query.shape[1], inner = query.shape[2], lk = key.shape[1]
    let d = inner / heads
    precondition(key.shape == [n, lk, inner] && value.shape == [n, lk, inner] && d * heads == inner
                 && fusedAttentionApplies(headDim: d, keys: lk),
                 "fusedMultiHeadAttention: query \(query.shape), key \(key.shape), value \(value.shape), \(heads) heads")
    let scale = 1 / Float(d).squareRoot()
    let q = query.isContiguous ? query : query.contiguousCopy()
    let k = key.isContiguous ? key : key.contiguousCopy()
    let v = value.isContiguous ? value : value.contiguousCopy()
    let bias = keyBias.map { $0.isContiguous ? $0 : $0.contiguousCopy() }
    if let bias { precondition(bias.count == n * lk, "fusedMultiHeadAttention: key bias \(bias.shape) for [\(n), \(lk)]") }

    let pairs = n * heads
    let blockRows = Swift.min(fusedAttentionBlockRows(headDim: d, keys: lk), lq)
    let out = Tensor.uninitialized([n, lq, inner])
    // The backward reads the output through its storage: capturing `out` itself would tie it to
    // its own graph node.
    let outStorage = out.storage
    let lse = Tensor.uninitialized([pairs, lq])

    do {
        let pq = q.pointer, pk = k.pointer, pv = v.pointer, po = out.pointer, plse = lse.pointer
        let pbias = bias?.pointer
        parallelFor(pairs, grain: 1) { first, last in
            let s = UnsafeMutablePointer<Float>.allocate(capacity: blockRows * lk)
            let sums = UnsafeMutablePointer<Float>.allocate(capacity: blockRows)
            let maxima = UnsafeMutablePointer<Float>.allocate(capacity: blockRows)
            defer { s.deallocate(); sums.deallocate(); maxima.deallocate() }
            for pair in first..<last {
                let b = pair / heads, column = (pair % heads) * d
                let kp = pk + b * lk * inner + column, vp = pv + b * lk * inner + column
                var i0 = 0
                while i0 < lq {
                    let rows = Swift.min(blockRows, lq - i0)
                    let qp = pq + (b * lq + i0) * inner + column, op = po + (b * lq + i0) * inner + column
                    gemm(false, true, rows, lk, d, scale, qp, inner, kp, inner, 0, s, lk)          // S = scale·Q·Kᵀ
                    exponentiateRows(s, rows: rows, lk: lk, bias: pbias.map { $0 + b * lk }, shifts: nil,
                                     sums: sums, maxima: maxima)
                    gemm(false, false, rows, d, lk, 1, s, lk, vp, inner, 0, op, inner)            // O = exp(S)·V
                    for i in 0..<rows {
                        let inv = 1 / sums[i], orow = op + i * inner
                        for c in 0..<d { orow[c] *= inv }
                        plse[pair * lq + i0 + i] = maxima[i] + Foundation.log(sums[i])
                    }
                    i0 += rows
                }
            }
        }
    }

    return Tensor.record("fused_attention", out, [query, key, value]) { g in
        let go = g.isContiguous ? g : g.contiguousCopy()
        let needQ = query.requiresGrad, needK = key.requiresGrad, needV = value.requiresGrad
        let dq = needQ ? Tensor.uninitialized([n, lq, inner]) : nil
        let dk = needK ? Tensor(zeros: [n, lk, inner]) : nil
        let dv = needV ? Tensor(zeros: [n, lk, inner]) : nil
        let pg = go.pointer, pq = q.pointer, pk = k.pointer, pv = v.pointer
        let po = outStorage.pointer, plse = lse.pointer, pbias = bias?.pointer
        let pdq = dq?.pointer, pdk = dk?.pointer, pdv = dv?.pointer
        parallelFor(pairs, grain: 1) { first, last in
            let p = UnsafeMutablePointer<Float>.allocate(capacity: blockRows * lk)
            let ds = UnsafeMutablePointer<Float>.allocate(capacity: blockRows * lk)
            defer { p.deallocate(); ds.deallocate() }
            for pair in first..<last {
                let b = pair / heads, column = (pair % heads) * d
                let kvOffset = b * lk * inner + column
                var i0 = 0
                while i0 < lq {
                    let rows = Swift.min(blockRows, lq - i0)
                    let offset = (b * lq + i0) * inner + column
                    let qp = pq + offset, gp = pg + offset, op = po + offset
                    gemm(false, true, rows, lk, d, scale, qp, inner, pk + kvOffset, inner, 0, p, lk)
                    exponentiateRows(p, rows: rows, lk: lk, bias: pbias.map { $0 + b * lk },
                                     shifts: plse + pair * lq + i0, sums: nil, maxima: nil)
                    gemm(false, true, rows, lk, d, 1, gp, inner, pv + kvOffset, inner, 0, ds, lk)   // dP = dO·Vᵀ
                    for i in 0..<rows {
                        var rowDot: Float = 0
                        for c in 0..<d { rowDot += gp[i * inner + c] * op[i * inner + c] }
                        let pr = p + i * lk, dr = ds + i * lk
                        for j in 0..<lk { dr[j] = pr[j] * (dr[j] - rowDot) }
                    }
                    if let pdq { gemm(false, false, rows, d, lk, scale, ds, lk, pk + kvOffset, inner, 0, pdq + offset, inner) }
                    if let pdk { gemm(true, false, lk, d, rows, scale, ds, lk, qp, inner, 1, pdk + kvOffset, inner) }
                    if let pdv { gemm(true, false, lk, d, rows, 1, p, lk, gp, inner, 1, pdv + kvOffset, inner) }
                    i0 += rows
                }
            }
        }
        return [dq, dk, dv]
    }
}
