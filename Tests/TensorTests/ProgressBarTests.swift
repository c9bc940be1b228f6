import Foundation
import XCTest
import Tensor

final class ProgressBarTests: XCTestCase {
    private func bar(total: Int) throws -> ProgressBar {
        let sink = try FileHandle(forWritingTo: URL(fileURLWithPath: "/dev/null"))
        return ProgressBar(total: total, label: "work", unit: "it", output: sink)
    }

    func testRateAndETAFromElapsedTime() throws {
        let bar = try bar(total: 100)
        // 25 of 100 after 10 s: 2.5 it/s, 30 s to go.
        let line = bar.render(25, status: "loss 1.0", now: bar.start + 10)
        XCTAssertEqual(line, "work [######------------------] 25/100 2.50 it/s elapsed 0:10 eta 0:30 loss 1.0\n")
    }

    func testNoRateInTheFirstInstants() throws {
        let bar = try bar(total: 2755)
        // 32 units a microsecond after start (a cache hit) must not read as 32 million per second.
        let early = bar.render(32, status: "", now: bar.start + 1e-6)
        XCTAssertTrue(early.contains("32/2755 ? it/s"), early)
        XCTAssertTrue(early.contains("eta ?"), early)
        // A finished bar always shows its rate, however quick.
        let done = bar.render(2755, status: "", now: bar.start + 0.5)
        XCTAssertTrue(done.contains("5510.00 it/s"), done)
        XCTAssertTrue(done.contains("eta 0:00"), done)
    }

    func testClockFormats() {
        XCTAssertEqual(ProgressBar.clock(59.4), "0:59")
        XCTAssertEqual(ProgressBar.clock(3725), "1:02:05")
        XCTAssertEqual(ProgressBar.clock(.infinity), "?")
    }
}
