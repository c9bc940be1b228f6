import Foundation
import XCTest

/// Real processes under mpirun: `sura selftest collective` with 2, 3 and 4 ranks exercises every
/// collective over Open MPI, including the ring allreduce's byte count and bitwise agreement.
final class MPIProcessTests: XCTestCase {
    /// The `sura` executable built beside this test bundle.
    static func suraExecutable() throws -> URL {
        let testBinary = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath()
        var dir = testBinary.deletingLastPathComponent()
        // On Linux the test binary is `<products>/SuraPackageTests.xctest`; on macOS it sits inside the bundle.
        for _ in 0..<4 {
            let candidate = dir.appendingPathComponent("sura")
            if FileManager.default.isExecutableFile(atPath: candidate.path) { return candidate }
            dir = dir.deletingLastPathComponent()
        }
        throw XCTSkip("sura executable not built beside the tests (run `swift build` first)")
    }

    static func mpirun() throws -> String {
        for path in ["/usr/bin/mpirun", "/usr/local/bin/mpirun"] where FileManager.default.isExecutableFile(atPath: path) {
            return path
        }
        throw XCTSkip("mpirun not installed")
    }

    /// Runs a process to completion with a deadline, returning (status, stdout+stderr).
    static func run(_ executable: String, _ arguments: [String], timeout: Double = 120) throws -> (Int32, String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        try process.run()
        let deadline = Date().addingTimeInterval(timeout)
        // The reader signals when it has the whole output: checking `isExecuting` instead could
        // look before the thread had started and return nothing.
        let output = OutputBox()
        let done = DispatchSemaphore(value: 0)
        let reader = Thread {
            output.data = pipe.fileHandleForReading.readDataToEndOfFile()
            done.signal()
        }
        reader.start()
        while process.isRunning && Date() < deadline { usleep(50_000) }
        if process.isRunning {
            process.terminate()
            XCTFail("\(executable) \(arguments.joined(separator: " ")) did not finish within \(timeout) s")
        }
        process.waitUntilExit()
        if done.wait(timeout: .now() + 30) == .timedOut { XCTFail("the output of \(executable) never ended") }
        return (process.terminationStatus, String(decoding: output.data, as: UTF8.self))
    }

    func testSelfTestUnderMPIRunWithTwoThreeAndFourRanks() throws {
        let sura = try Self.suraExecutable(), mpirun = try Self.mpirun()
        for ranks in [2, 3, 4] {
            let (status, output) = try Self.run(mpirun, ["--allow-run-as-root", "--oversubscribe", "-np", "\(ranks)",
                                                         sura.path, "selftest", "collective"])
            XCTAssertEqual(status, 0, output)
            XCTAssertTrue(output.contains("collective selftest passed: \(ranks) ranks"), output)
        }
    }

    func testSelfTestWithoutMPIRunIsAWorldOfOne() throws {
        let sura = try Self.suraExecutable()
        let (status, output) = try Self.run(sura.path, ["selftest", "collective"])
        XCTAssertEqual(status, 0, output)
        XCTAssertTrue(output.contains("passed: 1 rank"), output)
    }
}

/// A child's output, written by the reader thread and read after it signalled.
private final class OutputBox: @unchecked Sendable {
    var data = Data()
}
