import Foundation
import Tensor
import XCTest

/// The steal figure the benchmarks print next to tail latencies and scaling.
final class CPUTimeSampleTests: XCTestCase {
    func testParsesTheCPULineAndComputesTheStolenShare() throws {
        let before = try XCTUnwrap(CPUTimeSample(statLine: "cpu  3905005 1394 557439 7190901 28751 0 14331 89774 0 0"))
        XCTAssertEqual(before.steal, 89774)
        XCTAssertEqual(before.total, 3905005 + 1394 + 557439 + 7190901 + 28751 + 14331 + 89774)
        let after = try XCTUnwrap(CPUTimeSample(statLine: "cpu  3905671 1394 557705 7192999 28751 0 14409 89834 0 0"))
        // 666 + 266 + 2098 + 78 + 60 ticks passed, 60 of them stolen.
        XCTAssertEqual(try XCTUnwrap(after.stealShare(since: before)), 60.0 / 3168.0, accuracy: 1e-12)
        XCTAssertNil(before.stealShare(since: after), "counters that went backwards give no figure")
        XCTAssertNil(before.stealShare(since: before), "no ticks passed")
    }

    func testRefusesOtherLines() {
        XCTAssertNil(CPUTimeSample(statLine: "cpu0 1 2 3 4 5 6 7 8"))
        XCTAssertNil(CPUTimeSample(statLine: "cpu  1 2 3"))
        XCTAssertNil(CPUTimeSample(statLine: "cpu  1 2 3 4 5 6 7 x"))
        XCTAssertNil(CPUTimeSample(statLine: ""))
    }

    func testReadsThisMachine() throws {
        #if os(Linux)
        let sample = try XCTUnwrap(CPUTimeSample.now(), "/proc/stat has a cpu line on Linux")
        XCTAssertGreaterThan(sample.total, 0)
        #endif
    }
}
