import COpenBLAS
import Foundation

/// The one thread setting for Sura's parallel loops and its GEMMs.
///
/// Set it from `--threads` or the `SURA_THREADS` environment variable; it defaults to the
/// number of active processors. OpenBLAS itself is kept on one thread: `parallelSgemm` splits
/// each call over these threads instead (see ParallelGemm.swift for why).
public enum Threads {
    nonisolated(unsafe) private static var current: Int = {
        let fromEnv = ProcessInfo.processInfo.environment["SURA_THREADS"].flatMap { Int($0) }
        let n = max(1, fromEnv ?? ProcessInfo.processInfo.activeProcessorCount)
        openblas_set_num_threads(1)
        return n
    }()

    /// Number of threads used by `parallelFor` and `parallelSgemm`.
    public static var count: Int {
        get { current }
        set {
            current = max(1, newValue)
        }
    }
}

/// Runs `body(start, end)` over `0..<total` split into at most `Threads.count` contiguous chunks.
///
/// Work smaller than `grain` items per chunk runs inline, so tiny tensors pay no dispatch cost.
/// The chunks run on `SpinningThreadPool`; a call made inside another parallel region runs inline.
@inline(__always)
public func parallelFor(_ total: Int, grain: Int = 32_768, _ body: (Int, Int) -> Void) {
    let threads = Threads.count
    if total <= 0 { return }
    let chunks = min(threads, max(1, total / max(grain, 1)))
    if chunks <= 1 {
        body(0, total)
        return
    }
    let per = (total + chunks - 1) / chunks
    SpinningThreadPool.shared.run(chunks: chunks, threads: threads) { c in
        let start = c * per
        let end = min(total, start + per)
        if start < end { body(start, end) }
    }
}
