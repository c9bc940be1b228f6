import COpenBLAS
import Foundation

/// `sura bench tensor`: Tensor's kernels next to raw BLAS, measured in the same run.
///
/// Matmul GFLOP/s = 2n³ / t for Tensor.matmul and for a bare cblas_sgemm on preallocated buffers,
/// at 1 thread and at all cores, with their ratio; conv2d and attention GFLOP/s; elementwise GB/s
/// counting bytes read and written.
public enum TensorBenchmark {
    public static func run(sizes: [Int] = [256, 512, 1024, 2048], threadCounts: [Int]? = nil,
                           minSeconds: Double = 0.3, log: (String) -> Void = { print($0) }) -> String {
        let saved = Threads.count
        defer { Threads.count = saved }
        let all = ProcessInfo.processInfo.activeProcessorCount
        let counts = threadCounts ?? Array(Set([1, all])).sorted()
        var out: [String] = []
        out.append(BLASKernels.header(cores: all))

        var mm = TextTable(header: ["matmul n", "threads", "sgemm GFLOP/s", "Tensor GFLOP/s", "ratio"])
        for threads in counts {
            Threads.count = threads
            for n in sizes {
                var rng = SeededGenerator(seed: UInt64(n))
                let a = Tensor.randn([n, n], using: &rng), b = Tensor.randn([n, n], using: &rng)
                let c = Tensor(zeros: [n, n])
                let flops = 2 * Double(n) * Double(n) * Double(n)
                // The peer is OpenBLAS threading its own call; Sura keeps OpenBLAS on one thread
                // and splits the call itself (ParallelGemm.swift).
                openblas_set_num_threads(Int32(threads))
                let raw = BenchmarkTimer.best(minSeconds: minSeconds) {
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(n), Int32(n), Int32(n), 1,
                                a.pointer, Int32(n), b.pointer, Int32(n), 0, c.pointer, Int32(n))
                }
                openblas_set_num_threads(1)
                let tensor = BenchmarkTimer.best(minSeconds: minSeconds) { _ = withoutGrad { a.matmul(b) } }
                let row = ["\(n)", "\(threads)", fmt(flops / raw / 1e9), fmt(flops / tensor / 1e9), fmt(raw / tensor, 3)]
                mm.add(row)
                log(row.joined(separator: "  "))
            }
        }
        out.append(mm.render())

        var other = TextTable(header: ["kernel", "threads", "shape", "ms", "rate"])
        for threads in counts {
            Threads.count = threads
            var rng = SeededGenerator(seed: 5)
            // conv2d: [4, 64, 32, 32] * [64, 64, 3, 3], padding 1.
            let x = Tensor.randn([4, 64, 32, 32], using: &rng), w = Tensor.randn([64, 64, 3, 3], using: &rng)
            let convFlops = 2.0 * 4 * 64 * 32 * 32 * 64 * 9
            let tc = BenchmarkTimer.best(minSeconds: minSeconds) {
                _ = withoutGrad { x.conv2d(weight: w, bias: nil, padding: (1, 1)) }
            }
            other.add(["conv2d 3x3", "\(threads)", "4x64x32x32 -> 64", fmt(tc * 1e3, 3), fmt(convFlops / tc / 1e9) + " GFLOP/s"])
            // attention: batch 4, 8 heads, 256 tokens, head dim 64.
            let q = Tensor.randn([4, 8, 256, 64], using: &rng), k = Tensor.randn([4, 8, 256, 64], using: &rng)
            let v = Tensor.randn([4, 8, 256, 64], using: &rng)
            let attnFlops = 2.0 * 2 * 4 * 8 * 256 * 256 * 64
            let ta = BenchmarkTimer.best(minSeconds: minSeconds) {
                _ = withoutGrad { Tensor.scaledDotProductAttention(query: q, key: k, value: v) }
            }
            other.add(["attention", "\(threads)", "4x8x256x64", fmt(ta * 1e3, 3), fmt(attnFlops / ta / 1e9) + " GFLOP/s"])
            // elementwise: add of two 16M-element tensors (read 2, write 1).
            let e1 = Tensor.randn([1 << 24], using: &rng), e2 = Tensor.randn([1 << 24], using: &rng)
            let te = BenchmarkTimer.best(minSeconds: minSeconds) { _ = withoutGrad { e1 + e2 } }
            other.add(["add", "\(threads)", "16M", fmt(te * 1e3, 3), fmt(3.0 * 4 * Double(1 << 24) / te / 1e9) + " GB/s"])
            let tg = BenchmarkTimer.best(minSeconds: minSeconds) { _ = withoutGrad { e1.gelu() } }
            other.add(["gelu", "\(threads)", "16M", fmt(tg * 1e3, 3), fmt(2.0 * 4 * Double(1 << 24) / tg / 1e9) + " GB/s"])
            let ts = BenchmarkTimer.best(minSeconds: minSeconds) { _ = withoutGrad { e1.sum() } }
            other.add(["sum", "\(threads)", "16M", fmt(ts * 1e3, 3), fmt(4.0 * Double(1 << 24) / ts / 1e9) + " GB/s"])
        }
        out.append(other.render())
        return out.joined(separator: "\n\n")
    }

    static func fmt(_ x: Double, _ digits: Int = 1) -> String { String(format: "%.\(digits)f", x) }
}
