import Foundation
import XCTest
import Tensor

/// `parallelFor` on the spinning pool (every chunk once, nested and concurrent callers) and the
/// GEMM/GEMV split over threads against a plain triple loop.
final class ParallelTests: XCTestCase {
    private var savedThreads = 1
    override func setUp() { savedThreads = Threads.count; Threads.count = 2 }
    override func tearDown() { Threads.count = savedThreads }

    func testEveryIndexRunsExactlyOnceOverManyRegions() {
        let total = 1_000
        let hits = UnsafeMutablePointer<Int32>.allocate(capacity: total)
        defer { hits.deallocate() }
        hits.initialize(repeating: 0, count: total)
        // Many short regions back to back: the workers must pick up each generation once.
        for _ in 0..<2_000 {
            parallelFor(total, grain: 1) { s, e in for i in s..<e { hits[i] += 1 } }
        }
        XCTAssertTrue((0..<total).allSatisfy { hits[$0] == 2_000 }, "an index ran a wrong number of times")
    }

    func testNestedLoopsRunInline() {
        let outer = 8, inner = 100
        let out = UnsafeMutablePointer<Int>.allocate(capacity: outer * inner)
        defer { out.deallocate() }
        out.initialize(repeating: 0, count: outer * inner)
        parallelFor(outer, grain: 1) { s, e in
            for o in s..<e {
                parallelFor(inner, grain: 1) { a, b in for i in a..<b { out[o * inner + i] += o * inner + i } }
            }
        }
        XCTAssertEqual((0..<outer * inner).map { out[$0] }, Array(0..<outer * inner))
    }

    func testConcurrentCallersFromSeveralThreads() {
        // Four threads issue loops at once: one gets the pool, the others run inline; all must be exact.
        let callers = 4, total = 10_000
        let sums = UnsafeMutablePointer<Int>.allocate(capacity: callers)
        defer { sums.deallocate() }
        sums.initialize(repeating: 0, count: callers)
        DispatchQueue.concurrentPerform(iterations: callers) { caller in
            for _ in 0..<50 {
                let partial = UnsafeMutablePointer<Int>.allocate(capacity: 2)
                partial.initialize(repeating: 0, count: 2)
                parallelFor(total, grain: 1) { s, e in
                    var acc = 0
                    for i in s..<e { acc += i }
                    partial[s == 0 ? 0 : 1] += acc
                }
                sums[caller] += partial[0] + partial[1]
                partial.deallocate()
            }
        }
        for caller in 0..<callers { XCTAssertEqual(sums[caller], 50 * total * (total - 1) / 2, "caller \(caller)") }
    }

    /// C = alpha·op(A)·op(B) + beta·C in Double, row-major with leading dimensions.
    private func reference(transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float, a: [Float], lda: Int,
                           b: [Float], ldb: Int, beta: Float, c: [Float], ldc: Int) -> [Float] {
        var out = c
        for i in 0..<m {
            for j in 0..<n {
                var acc = 0.0
                for p in 0..<k {
                    let x = transA ? a[p * lda + i] : a[i * lda + p]
                    let y = transB ? b[j * ldb + p] : b[p * ldb + j]
                    acc += Double(x) * Double(y)
                }
                out[i * ldc + j] = Float(Double(alpha) * acc + Double(beta) * Double(c[i * ldc + j]))
            }
        }
        return out
    }

    func testSplitGemmMatchesTripleLoopForEveryTransposeAndShape() {
        var rng = SeededGenerator(seed: 11)
        // Wide (split by columns) and tall (split by rows), sizes not multiples of 16, padded leading dimensions.
        for (m, n, k) in [(70, 301, 64), (301, 70, 64), (33, 1_000, 40), (5, 7, 3)] {
            for transA in [false, true] {
                for transB in [false, true] {
                    for beta: Float in [0, 1] {
                        let lda = (transA ? m : k) + 3, ldb = (transB ? k : n) + 5, ldc = n + 2
                        let a = (0..<(transA ? k : m) * lda).map { _ in Float(rng.nextUniform() * 2 - 1) }
                        let b = (0..<(transB ? n : k) * ldb).map { _ in Float(rng.nextUniform() * 2 - 1) }
                        var c = (0..<m * ldc).map { _ in Float(rng.nextUniform() * 2 - 1) }
                        let expected = reference(transA: transA, transB: transB, m: m, n: n, k: k, alpha: 0.5, a: a, lda: lda,
                                                 b: b, ldb: ldb, beta: beta, c: c, ldc: ldc)
                        c.withUnsafeMutableBufferPointer { cp in
                            parallelSgemm(transA: transA, transB: transB, m: m, n: n, k: k, alpha: 0.5, a, lda: lda, b, ldb: ldb,
                                          beta: beta, cp.baseAddress!, ldc: ldc)
                        }
                        // Padding columns of C (j ≥ n) must be untouched: compare whole buffers.
                        assertClose(c, expected, atol: 1e-4, rtol: 1e-4)
                    }
                }
            }
        }
    }

    func testSplitGemvMatchesTripleLoop() {
        var rng = SeededGenerator(seed: 12)
        let rows = 3_001, cols = 400, ld = cols + 7
        let matrix = (0..<rows * ld).map { _ in Float(rng.nextUniform() * 2 - 1) }
        for transpose in [false, true] {
            let inputs = transpose ? rows : cols, outputs = transpose ? cols : rows
            let x = (0..<inputs).map { _ in Float(rng.nextUniform() * 2 - 1) }
            var y = (0..<outputs).map { _ in Float(rng.nextUniform()) }
            let expected = (0..<outputs).map { o -> Float in
                var acc = 0.0
                for i in 0..<inputs { acc += Double(transpose ? matrix[i * ld + o] : matrix[o * ld + i]) * Double(x[i]) }
                return Float(acc + Double(y[o]))
            }
            y.withUnsafeMutableBufferPointer { yp in
                parallelSgemv(transpose: transpose, rows: rows, cols: cols, matrix, ld: ld, x, incX: 1, beta: 1, yp.baseAddress!)
            }
            assertClose(y, expected, atol: 1e-3, rtol: 1e-4)
        }
    }

    /// The default thread count follows the CPU affinity mask (mpirun binds each rank to a
    /// core): Linux's CPU lists are counted, malformed ones refused.
    func testDefaultThreadsFollowTheAffinityMask() {
        XCTAssertEqual(Threads.processorCount(list: "0"), 1)
        XCTAssertEqual(Threads.processorCount(list: "0-3,8,10-11\n"), 7)
        for bad in ["", "3-1", "a", "0-", "1,,2-x"] { XCTAssertNil(Threads.processorCount(list: bad), bad) }
        let allowed = Threads.allowedProcessorCount
        XCTAssertTrue((1...ProcessInfo.processInfo.activeProcessorCount).contains(allowed))
        #if os(Linux)
        // This process's own mask, from /proc, as the kernel reports it.
        let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8)
        let line = status?.split(separator: "\n").first { $0.hasPrefix("Cpus_allowed_list:") }
        XCTAssertEqual(allowed, line.flatMap { Threads.processorCount(list: $0.split(separator: ":")[1]) })
        #endif
    }
}
