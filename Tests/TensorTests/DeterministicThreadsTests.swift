import Foundation
import Tensor
import XCTest

/// `Threads.deterministic`: GEMMs (every transpose, both split directions) and a convolution's
/// forward and backward give the same bits on 1, 2 and 3 threads.
final class DeterministicThreadsTests: XCTestCase {
    private var savedCount = 1, savedDeterministic = false

    override func setUp() {
        savedCount = Threads.count
        savedDeterministic = Threads.deterministic
        Threads.deterministic = true
    }

    override func tearDown() {
        Threads.count = savedCount
        Threads.deterministic = savedDeterministic
    }

    private let threadCounts = [1, 2, 3]

    /// Fails unless `body` gives the same bits on every one of `threadCounts`.
    private func assertSameBitsAcrossThreadCounts(_ what: String, _ body: () throws -> [Float]) rethrows {
        var reference: [UInt32]?
        for count in threadCounts {
            Threads.count = count
            let bits = try body().map(\.bitPattern)
            if let reference {
                XCTAssertTrue(bits == reference, "\(what): \(count) threads differ from \(threadCounts[0])")
            } else {
                reference = bits
            }
        }
    }

    func testGemmBitsDoNotDependOnTheThreads() {
        var rng = SeededGenerator(seed: 5)
        // Shapes whose bits changed with the split before: wide, tall and uneven.
        for (m, n, k) in [(64, 1_024, 288), (1_024, 64, 288), (77, 1_000, 129)] {
            for transA in [false, true] {
                for transB in [false, true] {
                    let a = (0 ..< m * k).map { _ in Float(rng.nextUniform() - 0.5) }
                    let b = (0 ..< k * n).map { _ in Float(rng.nextUniform() - 0.5) }
                    assertSameBitsAcrossThreadCounts("\(m)×\(n)×\(k) transA \(transA) transB \(transB)") {
                        var c = [Float](repeating: 0, count: m * n)
                        c.withUnsafeMutableBufferPointer { cp in
                            parallelSgemm(transA: transA, transB: transB, m: m, n: n, k: k, a, lda: transA ? m : k,
                                          b, ldb: transB ? k : n, beta: 0, cp.baseAddress!, ldc: n)
                        }
                        return c
                    }
                }
            }
        }
    }

    func testConvolutionForwardAndBackwardBitsDoNotDependOnTheThreads() throws {
        var rng = SeededGenerator(seed: 6)
        // 64×64 maps of 16 channels: more than one thread's share of columns per sample, so
        // tiles followed the thread count before.
        let x0 = Tensor.randn([3, 16, 64, 64], using: &rng)
        let w0 = Tensor.randn([8, 16, 3, 3], using: &rng) * 0.1
        let b0 = Tensor.randn([8], using: &rng)
        try assertSameBitsAcrossThreadCounts("conv2d") {
            let x = x0.contiguousCopy(), w = w0.contiguousCopy(), b = b0.contiguousCopy()
            for t in [x, w, b] { t.requiresGrad = true }
            let y = x.conv2d(weight: w, bias: b, padding: (1, 1))
            (y * y).sum().backward()
            return y.scalars + (try XCTUnwrap(x.grad)).scalars + (try XCTUnwrap(w.grad)).scalars + (try XCTUnwrap(b.grad)).scalars
        }
    }
}
