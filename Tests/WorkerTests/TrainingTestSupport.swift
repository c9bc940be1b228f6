import Collective
import Foundation
import Tensor
import Worker
import XCTest

/// Runs `body` on every rank of a fresh in-process group (one thread per rank) and fails the
/// test, instead of hanging it, if the ranks have not all returned within `limit` seconds.
/// Returns the error of the lowest failing rank, if any (not a test failure by itself).
@discardableResult
func runRanks(_ size: Int, timeout: Double = 20, limit: Double = 120,
              file: StaticString = #filePath, line: UInt = #line,
              _ body: @escaping (Communicator) throws -> Void) -> Error? {
    let group: InProcessGroup
    do {
        group = try InProcessGroup(size: size, timeout: timeout)
    } catch {
        XCTFail("\(error)", file: file, line: line)
        return error
    }
    let done = DispatchSemaphore(value: 0)
    let outcome = PerRank<Error>(size: 1)
    let runner = Thread {
        do {
            try group.run(body)
        } catch {
            outcome[0] = error
        }
        done.signal()
    }
    runner.stackSize = 8 << 20
    runner.start()
    if done.wait(timeout: .now() + limit) == .timedOut {
        XCTFail("group of \(size) ranks did not finish within \(limit) s", file: file, line: line)
        return nil
    }
    return outcome[0]
}

/// `runRanks` that fails the test when a rank throws.
func runRanksExpectingSuccess(_ size: Int, timeout: Double = 20, file: StaticString = #filePath, line: UInt = #line,
                              _ body: @escaping (Communicator) throws -> Void) {
    if let error = runRanks(size, timeout: timeout, file: file, line: line, body) {
        XCTFail("group of \(size) ranks threw: \(error)", file: file, line: line)
    }
}

/// One slot per rank for values the rank threads produce, read by the test afterwards.
final class PerRank<Value> {
    private let lock = NSLock()
    private var values: [Value?]

    init(size: Int) {
        values = Array(repeating: nil, count: size)
    }

    subscript(rank: Int) -> Value? {
        get { lock.lock(); defer { lock.unlock() }; return values[rank] }
        set { lock.lock(); values[rank] = newValue; lock.unlock() }
    }
}

/// Largest |a − b| over two equally long arrays (∞ when the lengths differ).
func maxDifference(_ a: [Float], _ b: [Float]) -> Float {
    guard a.count == b.count else { return .infinity }
    return zip(a, b).map { abs($0 - $1) }.max() ?? 0
}

func bitPatterns(_ t: Tensor) -> [UInt32] { t.scalars.map(\.bitPattern) }

/// Runs the test body with one compute thread (ranks are threads already) and restores the setting.
class SingleThreadedTestCase: XCTestCase {
    private var savedThreads = 1

    override func setUp() {
        super.setUp()
        savedThreads = Threads.count
        Threads.count = 1
    }

    override func tearDown() {
        Threads.count = savedThreads
        super.tearDown()
    }
}

/// y = sleep(x·w): forward sleeps `forward` ms, backward `backward` ms; w keeps it trainable.
final class SleepyLayer: Module, UnaryLayer {
    let w = Tensor(shape: [1], data: [1]).asParameter()
    let forwardMicros: UInt32, backwardMicros: UInt32

    init(forward: UInt32, backward: UInt32) {
        forwardMicros = forward * 1000
        backwardMicros = backward * 1000
        super.init()
    }

    func callAsFunction(_ x: Tensor) -> Tensor {
        let scaled = x * w
        usleep(forwardMicros)
        let pause = backwardMicros
        return Tensor.record("sleep", scaled.contiguousCopy(), [scaled]) { g in
            usleep(pause)
            return [g]
        }
    }
}
