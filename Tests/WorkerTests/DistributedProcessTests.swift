import Foundation
import SuraTestSupport
import XCTest

/// Real processes under mpirun: `sura selftest training` with dp = 2 and with pp = 2 must match
/// one process, and a rank killed with SIGKILL mid-run must end the job quickly, never hang.
final class DistributedProcessTests: XCTestCase {
    /// `mpirun -np ranks sura selftest training arguments…`, one thread per rank.
    private func selfTestJob(ranks: Int, _ arguments: [String], environment: [String: String] = [:]) throws -> StreamedProcess {
        try StreamedProcess(try BuiltProducts.mpirun(),
                            BuiltProducts.mpiFlags + ["-np", "\(ranks)", try BuiltProducts.executable("sura").path, "selftest", "training"] + arguments,
                            environment: environment.merging(["SURA_THREADS": "1"]) { $1 })
    }

    private func runSelfTest(ranks: Int, _ arguments: [String]) throws -> (Int32, String) {
        try selfTestJob(ranks: ranks, arguments).finish(within: 180)
    }

    func testDataParallelTwoRanksUnderMPIRun() throws {
        let (status, output) = try runSelfTest(ranks: 2, ["--dp", "2", "--pp", "1"])
        XCTAssertEqual(status, 0, output)
        XCTAssertTrue(output.contains("training selftest passed: dp=2 × pp=1 on 2 ranks (MPI"), output)
    }

    func testPipelineTwoRanksUnderMPIRunWithTimeline() throws {
        let trace = URL(fileURLWithPath: NSTemporaryDirectory()).appendingPathComponent("sura-pp2-\(getpid()).json")
        defer { try? FileManager.default.removeItem(at: trace) }
        let (status, output) = try runSelfTest(ranks: 2, ["--dp", "1", "--pp", "2", "--timeline", trace.path])
        XCTAssertEqual(status, 0, output)
        XCTAssertTrue(output.contains("training selftest passed: dp=1 × pp=2 on 2 ranks (MPI"), output)
        let json = try JSONSerialization.jsonObject(with: Data(contentsOf: trace)) as? [String: Any]
        let events = json?["traceEvents"] as? [[String: Any]] ?? []
        XCTAssertEqual(Set(events.compactMap { $0["pid"] as? Int }), [0, 1], "both ranks in the merged trace")
        for span in ["send of activation", "receive of activation", "send of gradient", "receive of gradient"] {
            XCTAssertTrue(events.contains { ($0["name"] as? String)?.hasPrefix(span) == true }, "a '\(span)' span")
        }
    }

    func testAMismatchedTopologyIsAClearErrorNotAHang() throws {
        let (status, output) = try runSelfTest(ranks: 2, ["--dp", "2", "--pp", "2"])
        XCTAssertNotEqual(status, 0)
        XCTAssertTrue(output.contains("dp=2 × pp=2 = 4 ranks does not match the 2 ranks"), output)
    }

    func testKillingARankMidRunEndsTheJobNamingIt() throws {
        let child = try selfTestJob(ranks: 2, ["--dp", "2", "--soak-steps", "100000000", "--report-pids"])
        defer { child.stop() }
        let started = child.wait(upTo: 120) { $0.contains("soak step 3\n") }
        guard started else { return XCTFail("the job never reached its third soak step:\n\(child.output)") }
        let pidLine = child.output.split(separator: "\n").first { $0.hasPrefix("rank 1 pid ") }
        guard let pidText = pidLine?.split(separator: " ").last, let pid = Int32(pidText) else {
            return XCTFail("rank 1 did not report its pid:\n\(child.output)")
        }
        let killed = Date()
        XCTAssertEqual(kill(pid, SIGKILL), 0)
        child.wait(upTo: 30)
        let elapsed = Date().timeIntervalSince(killed)
        XCTAssertFalse(child.process.isRunning, "the job still runs 30 s after rank 1 was killed:\n\(child.output)")
        XCTAssertLessThan(elapsed, 30)
        child.process.waitUntilExit()
        usleep(100_000)
        XCTAssertNotEqual(child.process.terminationStatus, 0)
        let output = child.output
        // Open MPI: "mpirun noticed that process rank 1 with PID … exited on signal 9 (Killed)."
        XCTAssertTrue(output.contains("rank 1") && (output.contains("signal 9") || output.contains("Killed")), output)
    }

    func testAStalledRankIsNamedByTheOthersWithinTheTimeout() throws {
        // SIGSTOP keeps rank 1 alive but silent: mpirun sees nothing wrong, so rank 0's own stall
        // detector must notice. Over the ring every wait is point to point and names the peer.
        let child = try selfTestJob(ranks: 2, ["--dp", "2", "--algorithm", "ring", "--soak-steps", "100000000", "--report-pids"],
                                    environment: ["SURA_COLLECTIVE_TIMEOUT": "3"])
        defer { child.stop() }
        guard child.wait(upTo: 120, until: { $0.contains("soak step 3\n") }) else {
            return XCTFail("the job never reached its third soak step:\n\(child.output)")
        }
        let pidLine = child.output.split(separator: "\n").first { $0.hasPrefix("rank 1 pid ") }
        guard let pidText = pidLine?.split(separator: " ").last, let pid = Int32(pidText) else {
            return XCTFail("rank 1 did not report its pid:\n\(child.output)")
        }
        XCTAssertEqual(kill(pid, SIGSTOP), 0)
        defer { kill(pid, SIGKILL) }
        child.wait(upTo: 30)
        XCTAssertFalse(child.process.isRunning, "the job still runs 30 s after rank 1 stalled:\n\(child.output)")
        child.process.waitUntilExit()
        usleep(100_000)
        XCTAssertNotEqual(child.process.terminationStatus, 0)
        let output = child.output
        XCTAssertTrue(output.contains("rank 0: ") && output.contains("stalled for 3 s: rank 1 has not arrived"), output)
    }
}
