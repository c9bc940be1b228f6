import Collective
import Foundation
import XCTest

/// Rank r's element i: r+1+i (small integers, so every summation order is exact).
func contribution(rank: Int, count: Int) -> [Float] {
    (0 ..< count).map { Float(rank + 1 + $0) }
}

/// Σ_r (r+1+i) over n ranks, or its average.
func expectedReduction(index: Int, size n: Int, op: ReduceOperation) -> Float {
    let sum = Float(n * (n + 1) / 2 + n * index)
    return op == .average ? sum / Float(n) : sum
}

func bits(_ values: [Float]) -> [UInt32] {
    values.map(\.bitPattern)
}

/// Deterministic pseudo-random floats in [−1, 1) for a rank.
func noise(rank: Int, count: Int, salt: UInt64 = 0) -> [Float] {
    var state = UInt64(rank + 1) &* 0x9E37_79B9_7F4A_7C15 &+ salt
    return (0 ..< count).map { _ in
        state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
        return Float(state >> 40) / Float(1 << 24) * 2 - 1
    }
}

/// Thrown from a rank's closure when it sees a wrong value (XCTest assertions belong on the
/// test's own thread).
struct Mismatch: Error, CustomStringConvertible {
    let description: String

    init(_ description: String) {
        self.description = description
    }
}
