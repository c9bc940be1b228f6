import COpenBLAS
import Foundation

/// The one thread setting for Sura's parallel loops and its GEMMs.
///
/// Set it from `--threads` or the `SURA_THREADS` environment variable; it defaults to the
/// processors this process may run on (`allowedProcessorCount`). OpenBLAS itself is kept on one
/// thread: `parallelSgemm` splits each call over these threads instead (see ParallelGemm.swift
/// for why).
public enum Threads {
    nonisolated(unsafe) private static var current: Int = {
        let fromEnv = ProcessInfo.processInfo.environment["SURA_THREADS"].flatMap { Int($0) }
        let n = max(1, fromEnv ?? allowedProcessorCount)
        openblas_set_num_threads(1)
        return n
    }()

    /// Processors in this process's CPU affinity mask, at most the active ones. mpirun binds
    /// each rank to a core by default; a rank that started one spinning thread per machine core
    /// would crowd them all onto its own (15–20% slower than one thread on this 2-vCPU VM).
    public static var allowedProcessorCount: Int {
        let active = ProcessInfo.processInfo.activeProcessorCount
        #if os(Linux)
        // Foundation counts the machine's processors, not the mask; /proc has the mask as a list ("0-3,8").
        if let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8),
           let line = status.split(separator: "\n").first(where: { $0.hasPrefix("Cpus_allowed_list:") }),
           let allowed = processorCount(list: line.dropFirst("Cpus_allowed_list:".count)) {
            return max(1, min(active, allowed))
        }
        #endif
        return max(1, active)
    }

    /// The number of processors in a Linux CPU list such as "0-3,8,10-11"; nil when malformed.
    public static func processorCount<S: StringProtocol>(list: S) -> Int? {
        var count = 0
        for part in list.trimmingCharacters(in: .whitespacesAndNewlines).split(separator: ",") {
            let bounds = part.split(separator: "-", omittingEmptySubsequences: false).map { Int($0) }
            switch bounds.count {
            case 1: guard bounds[0] != nil else { return nil }; count += 1
            case 2:
                guard let low = bounds[0], let high = bounds[1], high >= low else { return nil }
                count += high - low + 1
            default: return nil
            }
        }
        return count > 0 ? count : nil
    }

    /// Number of threads used by `parallelFor` and `parallelSgemm`.
    public static var count: Int {
        get { current }
        set {
            current = max(1, newValue)
        }
    }

    /// Results bitwise independent of `count` (`--deterministic`, or `SURA_DETERMINISTIC=1`).
    ///
    /// OpenBLAS's result for an output element depends on the band of the GEMM call it falls in,
    /// so splitting a GEMM over more threads, or cutting a convolution into tiles sized by the
    /// thread count, changes the last bits. With this set, GEMMs are cut into pieces by their
    /// shape alone (up to `deterministicPieces`, which the threads then share) and convolution
    /// tiles into fixed sizes: one thread pays for the extra calls (a few per cent in GEMM-bound
    /// work), and a run gives the same bits on 1, 2 or 8 cores. Every other parallel loop of
    /// Sura already computes each output element on one thread in a fixed order.
    nonisolated(unsafe) public static var deterministic: Bool =
        ProcessInfo.processInfo.environment["SURA_DETERMINISTIC"].map { $0 == "1" || $0.lowercased() == "true" } ?? false

    /// The most pieces a GEMM is cut into when `deterministic`: as many threads as take part
    /// in one GEMM.
    public static let deterministicPieces = 8
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
