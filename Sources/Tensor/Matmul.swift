// Matrix multiplication on cblas_sgemm (through `parallelSgemm`). Transposed views are passed to BLAS as transposed
// operands without copying; only layouts BLAS cannot describe are made contiguous first.

/// How one matrix operand is handed to sgemm.
struct GemmOperand {
    let transpose: Bool
    let ld: Int32

    /// The description of a [rows, cols] view with the given strides, or nil if BLAS cannot read it.
    init?(rows: Int, cols: Int, rowStride: Int, colStride: Int) {
        if colStride == 1 && (rowStride >= Swift.max(1, cols) || rows == 1) {
            transpose = false
            ld = Int32(Swift.max(rowStride, Swift.max(1, cols)))
        } else if rowStride == 1 && (colStride >= Swift.max(1, rows) || cols == 1) {
            transpose = true
            ld = Int32(Swift.max(colStride, Swift.max(1, rows)))
        } else {
            return nil
        }
    }
}

/// C[m, n] = A[m, k] · B[k, n] (row-major), with A and B described by `GemmOperand`s.
/// A single row or column goes to sgemv: OpenBLAS's sgemm repacks the whole other operand on
/// every call, which dominates one-token decoding (m = 1 against a [vocab, hidden] weight).
@inline(__always)
func sgemm(_ a: UnsafePointer<Float>, _ opA: GemmOperand, _ b: UnsafePointer<Float>, _ opB: GemmOperand,
           _ c: UnsafeMutablePointer<Float>, m: Int, n: Int, k: Int, beta: Float = 0) {
    if m == 1 && n > 1 && k > 0 {
        // c[n] = Bᵀ·a. a's k elements sit at stride 1 (row) or lda (stored as a column).
        let incA = opA.transpose ? Int(opA.ld) : 1
        if opB.transpose {  // B stored as [n, k]
            parallelSgemv(transpose: false, rows: n, cols: k, b, ld: Int(opB.ld), a, incX: incA, beta: beta, c)
        } else {            // B stored as [k, n]
            parallelSgemv(transpose: true, rows: k, cols: n, b, ld: Int(opB.ld), a, incX: incA, beta: beta, c)
        }
        return
    }
    if n == 1 && m > 1 && k > 0 {
        // c[m] = A·b. b's k elements sit at stride ldb (stored as a column) or 1 (stored as a row).
        let incB = opB.transpose ? 1 : Int(opB.ld)
        if opA.transpose {  // A stored as [k, m]
            parallelSgemv(transpose: true, rows: k, cols: m, a, ld: Int(opA.ld), b, incX: incB, beta: beta, c)
        } else {            // A stored as [m, k]
            parallelSgemv(transpose: false, rows: m, cols: k, a, ld: Int(opA.ld), b, incX: incB, beta: beta, c)
        }
        return
    }
    parallelSgemm(transA: opA.transpose, transB: opB.transpose, m: m, n: n, k: k,
                  a, lda: Int(opA.ld), b, ldb: Int(opB.ld), beta: beta, c, ldc: n)
}

extension Tensor {
    /// The operand description of the last two dimensions, making a contiguous copy if needed.
    func gemmOperand() -> (Tensor, GemmOperand) {
        let r = rank
        if let op = GemmOperand(rows: shape[r - 2], cols: shape[r - 1], rowStride: strides[r - 2], colStride: strides[r - 1]) {
            return (self, op)
        }
        let c = contiguousCopy()
        return (c, GemmOperand(rows: shape[r - 2], cols: shape[r - 1], rowStride: shape[r - 1], colStride: 1)!)
    }

    /// Matrix product over the last two dimensions, batch dimensions broadcast:
    /// a [..., m, k] · b [..., k, n] → [..., m, n].
    /// Backward: dA = g·Bᵀ, dB = Aᵀ·g (summed over broadcast batch dimensions).
    public func matmul(_ other: Tensor) -> Tensor {
        let a = self, b = other
        precondition(a.rank >= 2 && b.rank >= 2, "matmul needs rank ≥ 2, got \(a.shape) and \(b.shape)")
        let m = a.shape[a.rank - 2], k = a.shape[a.rank - 1]
        let k2 = b.shape[b.rank - 2], n = b.shape[b.rank - 1]
        precondition(k == k2, "matmul: inner dimensions differ, \(a.shape) · \(b.shape)")
        let aBatch = Array(a.shape.dropLast(2)), bBatch = Array(b.shape.dropLast(2))
        guard let batch = Tensor.broadcastShape(aBatch, bBatch) else {
            preconditionFailure("matmul: batch dimensions \(aBatch) and \(bBatch) do not broadcast")
        }
        // sgemm with β = 0 overwrites every element, so the output needs no clearing (unless k = 0).
        let outShape = batch + [m, n]
        let out = k == 0 ? Tensor(zeros: outShape)
            : Tensor(storage: TensorStorage(uninitializedCount: Tensor.count(outShape)), shape: outShape)
        Tensor.matmulForward(a, b, into: out, batch: batch, m: m, n: n, k: k)
        return Tensor.record("matmul", out, [a, b]) { g in
            let ga: Tensor? = a.requiresGrad ? g.matmul(b.transposed(-1, -2)).sumTo(a.shape) : nil
            var gb: Tensor? = nil
            if b.requiresGrad {
                if bBatch.isEmpty && !batch.isEmpty {
                    // A weight shared by every batch entry: one GEMM over the flattened batch,
                    // dB = A_flatᵀ [k, B·m] · g_flat [B·m, n].
                    let af = a.expanded(to: batch + [m, k]).contiguous().reshaped([-1, k])
                    let gf = g.contiguous().reshaped([-1, n])
                    gb = af.transposed(0, 1).matmul(gf)
                } else {
                    gb = a.transposed(-1, -2).matmul(g).sumTo(b.shape)
                }
            }
            return [ga, gb]
        }
    }

    /// Fills `out` [batch..., m, n] with a · b.
    static func matmulForward(_ a: Tensor, _ b: Tensor, into out: Tensor, batch: [Int], m: Int, n: Int, k: Int) {
        let o = out.storage.pointer
        if m == 0 || n == 0 { return }
        if k == 0 { return }
        let batchCount = batch.reduce(1, *)
        let bIs2D = b.rank == 2 || Array(b.shape.dropLast(2)).allSatisfy { $0 == 1 }
        // Fold a's batch into the rows when b is one shared matrix and a's rows are evenly spaced.
        if bIs2D && a.isContiguous && Array(a.shape.dropLast(2)) == batch {
            let b2 = b.rank == 2 ? b : b.reshaped([k, n])
            let (bb, opB) = b2.gemmOperand()
            let opA = GemmOperand(rows: batchCount * m, cols: k, rowStride: k, colStride: 1)!
            sgemm(a.pointer, opA, bb.pointer, opB, o, m: batchCount * m, n: n, k: k)
            return
        }
        let (aa, opA) = a.gemmOperand()
        let (bb, opB) = b.gemmOperand()
        let aStr = aa.broadcastStrides(to: batch + [m, k]).dropLast(2)
        let bStr = bb.broadcastStrides(to: batch + [k, n]).dropLast(2)
        let aS = Array(aStr), bS = Array(bStr)
        let pa = aa.storage.pointer + aa.offset, pb = bb.storage.pointer + bb.offset
        var index = [Int](repeating: 0, count: batch.count)
        for bi in 0..<batchCount {
            var oa = 0, ob = 0
            for d in 0..<batch.count { oa += index[d] * aS[d]; ob += index[d] * bS[d] }
            sgemm(pa + oa, opA, pb + ob, opB, o + bi * m * n, m: m, n: n, k: k)
            var d = batch.count - 1
            while d >= 0 {
                index[d] += 1
                if index[d] < batch[d] { break }
                index[d] = 0
                d -= 1
            }
        }
    }
}
