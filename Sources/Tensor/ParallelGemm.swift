import COpenBLAS

// Every GEMM and GEMV in Sura runs OpenBLAS on one thread and is split over Sura's own
// threads here. With OpenBLAS threaded as well, two pools shared two cores: OpenBLAS's workers
// spin in sched_yield between calls (≈ 20% of a UNet step in a profile) while `parallelFor`'s
// threads wait for the core, and a BLAS call made from inside a parallel loop was serialised
// on OpenBLAS's lock. One pool removes both.
//
// A call is cut along its larger output dimension into at most `Threads.count` contiguous
// pieces (whole multiples of 16 rows or columns, the width of the AVX-512 kernels), each at
// least `minimumPieceWork` multiply-adds, so a small GEMM stays on the calling thread. With
// `Threads.deterministic` the count is `Threads.deterministicPieces` instead, so the pieces (and
// with them every bit of the result) do not depend on the threads.

/// Multiply-adds below which splitting a GEMM costs more (waking a thread, repacking the
/// shared operand per piece) than it saves.
let minimumPieceWork = 1 << 19

/// The same for GEMV, which streams its matrix once (memory-bound): a piece pays off sooner.
let minimumGemvPieceWork = 1 << 15

/// How many pieces `total` output rows or columns of `work` multiply-adds split into.
@inline(__always)
private func pieceCount(_ total: Int, work: Int, minimum: Int = minimumPieceWork) -> Int {
    // Deterministic: the cut depends on the shape only, whatever the threads that share it.
    let threads = Threads.deterministic ? Threads.deterministicPieces : Threads.count
    if threads <= 1 || total < 32 { return 1 }
    return Swift.max(1, Swift.min(threads, work / minimum, total / 16))
}

/// Runs `body(start, end)` over `0..<total` in `pieces` contiguous ranges aligned to 16.
@inline(__always)
private func forEachPiece(_ total: Int, _ pieces: Int, _ body: (Int, Int) -> Void) {
    if pieces <= 1 { body(0, total); return }
    let per = ((total + pieces - 1) / pieces + 15) / 16 * 16
    parallelFor(pieces, grain: 1) { s, e in
        for p in s..<e {
            let start = p * per, end = Swift.min(total, start + per)
            if start < end { body(start, end) }
        }
    }
}

/// C [m, n] = alpha·op(A) [m, k] · op(B) [k, n] + beta·C, row-major with explicit leading
/// dimensions (op(X) = Xᵀ when `transX`), on Sura's threads.
///
/// The output is split by columns when n ≥ m (each piece reads all of A and a column band
/// of B), else by rows (a row band of A, all of B); pieces write disjoint parts of C.
public func parallelSgemm(transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float = 1,
                          _ a: UnsafePointer<Float>, lda: Int, _ b: UnsafePointer<Float>, ldb: Int,
                          beta: Float, _ c: UnsafeMutablePointer<Float>, ldc: Int) {
    let ta = transA ? CblasTrans : CblasNoTrans, tb = transB ? CblasTrans : CblasNoTrans
    if n >= m {
        forEachPiece(n, pieceCount(n, work: m * n * k)) { j0, j1 in
            // Columns j0..<j1 of op(B) start at row j0 of a stored Bᵀ, or column j0 of B.
            cblas_sgemm(CblasRowMajor, ta, tb, Int32(m), Int32(j1 - j0), Int32(k), alpha, a, Int32(lda),
                        b + (transB ? j0 * ldb : j0), Int32(ldb), beta, c + j0, Int32(ldc))
        }
    } else {
        forEachPiece(m, pieceCount(m, work: m * n * k)) { i0, i1 in
            // Rows i0..<i1 of op(A) start at column i0 of a stored Aᵀ, or row i0 of A.
            cblas_sgemm(CblasRowMajor, ta, tb, Int32(i1 - i0), Int32(n), Int32(k), alpha,
                        a + (transA ? i0 : i0 * lda), Int32(lda), b, Int32(ldb), beta, c + i0 * ldc, Int32(ldc))
        }
    }
}

/// y [rows or cols] = op(M) · x + beta·y for a row-major matrix M [rows, cols] with leading
/// dimension `ld` (op(M) = Mᵀ when `transpose`, so y has `cols` entries), on Sura's threads:
/// each piece computes a contiguous range of y.
public func parallelSgemv(transpose: Bool, rows: Int, cols: Int, _ matrix: UnsafePointer<Float>, ld: Int,
                          _ x: UnsafePointer<Float>, incX: Int, beta: Float, _ y: UnsafeMutablePointer<Float>) {
    let outputs = transpose ? cols : rows
    forEachPiece(outputs, pieceCount(outputs, work: rows * cols, minimum: minimumGemvPieceWork)) { s, e in
        if transpose {
            // y[s..<e] = M[:, s..<e]ᵀ · x
            cblas_sgemv(CblasRowMajor, CblasTrans, Int32(rows), Int32(e - s), 1, matrix + s, Int32(ld),
                        x, Int32(incX), beta, y + s, 1)
        } else {
            // y[s..<e] = M[s..<e, :] · x
            cblas_sgemv(CblasRowMajor, CblasNoTrans, Int32(e - s), Int32(cols), 1, matrix + s * ld, Int32(ld),
                        x, Int32(incX), beta, y + s, 1)
        }
    }
}
