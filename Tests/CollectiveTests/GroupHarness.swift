import Collective
import Foundation
import XCTest

/// Runs `body` on every rank of a fresh in-process group (one thread per rank) and fails the
/// test, instead of hanging it, if the ranks have not all returned within `limit` seconds.
/// Results a rank wants to hand back go through `Collected`.
func runGroup(size: Int, timeout: Double = 20, limit: Double = 120,
              file: StaticString = #filePath, line: UInt = #line,
              _ body: @escaping (Communicator) throws -> Void) {
    let group: InProcessGroup
    do {
        group = try InProcessGroup(size: size, timeout: timeout)
    } catch {
        return XCTFail("\(error)", file: file, line: line)
    }
    let done = DispatchSemaphore(value: 0)
    let outcome = Collected<Error?>(size: 1)
    let runner = Thread {
        do {
            try group.run(body)
        } catch {
            outcome[0] = error
        }
        done.signal()
    }
    runner.stackSize = 4 << 20
    runner.start()
    if done.wait(timeout: .now() + limit) == .timedOut {
        XCTFail("group of \(size) ranks did not finish within \(limit) s", file: file, line: line)
        return
    }
    if let error = outcome[0] ?? nil {
        XCTFail("group of \(size) ranks threw: \(error)", file: file, line: line)
    }
}

/// One slot per rank for values the rank threads produce, read by the test afterwards.
final class Collected<Value> {
    private let lock = NSLock()
    private var values: [Value?]

    init(size: Int) {
        values = Array(repeating: nil, count: size)
    }

    subscript(rank: Int) -> Value? {
        get { lock.lock(); defer { lock.unlock() }; return values[rank] }
        set { lock.lock(); values[rank] = newValue; lock.unlock() }
    }

    var all: [Value?] {
        lock.lock()
        defer { lock.unlock() }
        return values
    }
}

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
