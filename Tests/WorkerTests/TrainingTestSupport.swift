import Collective
import Foundation
import Tensor
import Worker
import XCTest

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
