import Foundation
import XCTest

/// The `sura` executable run as a child process by the command-line tests of this target.
enum SuraProcess {
    /// `SURA_EXECUTABLE` when set, else the `sura` executable built beside this test bundle.
    static func executable() throws -> URL {
        if let path = ProcessInfo.processInfo.environment["SURA_EXECUTABLE"], !path.isEmpty {
            return URL(fileURLWithPath: path)
        }
        var dir = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().deletingLastPathComponent()
        // On Linux the test binary is `<products>/SuraPackageTests.xctest`; on macOS it sits inside the bundle.
        for _ in 0..<4 {
            let candidate = dir.appendingPathComponent("sura")
            if FileManager.default.isExecutableFile(atPath: candidate.path) { return candidate }
            dir = dir.deletingLastPathComponent()
        }
        throw XCTSkip("sura executable not built beside the tests (run `swift build` first)")
    }

    /// Runs `sura arguments…` to completion (at most `timeout` s; then it is stopped and the test
    /// fails), returning its status, stdout and stderr. Both pipes are drained while it runs, so
    /// a chatty child never blocks on a full pipe.
    static func run(_ arguments: [String], timeout: Double) throws -> (status: Int32, out: String, err: String) {
        let process = Process()
        process.executableURL = try executable()
        process.arguments = arguments
        let out = Pipe(), err = Pipe()
        process.standardOutput = out
        process.standardError = err
        try process.run()
        let box = OutputBox()
        let group = DispatchGroup()
        DispatchQueue.global().async(group: group) { box.out = out.fileHandleForReading.readDataToEndOfFile() }
        DispatchQueue.global().async(group: group) { box.err = err.fileHandleForReading.readDataToEndOfFile() }
        let deadline = Date().addingTimeInterval(timeout)
        while process.isRunning && Date() < deadline { usleep(20_000) }
        if process.isRunning {
            process.terminate()
            XCTFail("sura \(arguments.joined(separator: " ")) did not finish within \(timeout) s")
        }
        process.waitUntilExit()
        if group.wait(timeout: .now() + 30) == .timedOut { XCTFail("the output of sura never ended") }
        return (process.terminationStatus, String(decoding: box.out, as: UTF8.self), String(decoding: box.err, as: UTF8.self))
    }

    private final class OutputBox: @unchecked Sendable {
        var out = Data()
        var err = Data()
    }
}
