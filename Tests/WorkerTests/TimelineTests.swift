import Collective
import Foundation
import SuraTestSupport
import Worker
import XCTest

final class TimelineTests: XCTestCase {
    func testChromeTraceHasCompleteEventsPerRankAndLane() throws {
        let timeline = Timeline(rank: 3)
        timeline.record("forward 0", .forward, start: 0.001, end: 0.004)
        timeline.record("allreduce bucket 0", .allreduce, lane: .communication, start: 0.002, end: 0.006)
        let json = try JSONSerialization.jsonObject(with: Timeline.chromeTrace(timeline.spans)) as! [String: Any]
        let events = json["traceEvents"] as! [[String: Any]]
        let complete = events.filter { $0["ph"] as? String == "X" }
        XCTAssertEqual(complete.count, 2)
        XCTAssertEqual(complete[0]["name"] as? String, "forward 0")
        XCTAssertEqual(complete[0]["ts"] as? Double, 1000)
        XCTAssertEqual(complete[0]["dur"] as? Double, 3000)
        XCTAssertEqual(complete[0]["pid"] as? Int, 3)
        XCTAssertEqual(complete[1]["tid"] as? Int, Timeline.Lane.communication.rawValue)
        XCTAssertEqual(complete[1]["cat"] as? String, "allreduce")
        XCTAssertTrue(events.contains { $0["ph"] as? String == "M" && ($0["args"] as? [String: Any])?["name"] as? String == "rank 3" })
    }

    func testOverlapAndBusyTime() {
        let t = Timeline(rank: 0)
        t.record("backward", .backward, start: 1, end: 5)
        t.record("allreduce bucket 0", .allreduce, lane: .communication, start: 2, end: 3)
        t.record("allreduce bucket 1", .allreduce, lane: .communication, start: 4, end: 7)
        let comm = { (s: Timeline.Span) in s.category == .allreduce }
        XCTAssertEqual(t.busySeconds(where: comm), 4)
        XCTAssertEqual(t.overlapSeconds(of: comm, with: { $0.category == .backward }), 2)
    }

    func testPerRankFileNamesAndMergedWrite() throws {
        let url = URL(fileURLWithPath: NSTemporaryDirectory()).appendingPathComponent("sura-timeline-\(getpid()).json")
        defer { try? FileManager.default.removeItem(at: url) }
        XCTAssertEqual(Timeline.perRankURL(url, rank: 2).lastPathComponent, "sura-timeline-\(getpid()).rank2.json")
        runRanksExpectingSuccess(3) { comm in
            let timeline = Timeline(rank: comm.rank)
            try timeline.synchronizeOrigin(over: comm)
            timeline.measure("work on \(comm.rank)", .forward) { usleep(1000) }
            try timeline.writeMerged(to: url, over: comm)
        }
        let json = try JSONSerialization.jsonObject(with: Data(contentsOf: url)) as! [String: Any]
        let names = (json["traceEvents"] as! [[String: Any]]).filter { $0["ph"] as? String == "X" }.compactMap { $0["name"] as? String }
        XCTAssertEqual(Set(names), ["work on 0", "work on 1", "work on 2"])
    }

    func testUnwritablePathIsNamed() {
        let timeline = Timeline(rank: 0)
        XCTAssertThrowsError(try timeline.write(to: URL(fileURLWithPath: "/nonexistent-dir/trace.json"))) {
            XCTAssertTrue("\($0)".contains("/nonexistent-dir/trace.json"), "\($0)")
        }
    }
}
