import Foundation
import XCTest

/// The package's executables as the tests run them, and the system's `mpirun`.
public enum BuiltProducts {
    /// Flags every test's `mpirun` needs here: tests run as root in containers, and with more
    /// ranks than cores.
    public static let mpiFlags = ["--allow-run-as-root", "--oversubscribe"]

    /// The executable `name` (`sura`, `train`) built beside this test bundle; for `sura`,
    /// `SURA_EXECUTABLE` when set. Skips the test when it is not built.
    public static func executable(_ name: String) throws -> URL {
        if name == "sura", let path = ProcessInfo.processInfo.environment["SURA_EXECUTABLE"], !path.isEmpty {
            return URL(fileURLWithPath: path)
        }
        var dir = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().deletingLastPathComponent()
        // On Linux the test binary is `<products>/SuraPackageTests.xctest`; on macOS it sits inside the bundle.
        for _ in 0 ..< 4 {
            let candidate = dir.appendingPathComponent(name)
            if FileManager.default.isExecutableFile(atPath: candidate.path) { return candidate }
            dir = dir.deletingLastPathComponent()
        }
        throw XCTSkip("\(name) is not built beside the tests (run `swift build -c release` first)")
    }

    /// Open MPI's launcher, or a skip when it is not installed.
    public static func mpirun() throws -> String {
        for path in ["/usr/bin/mpirun", "/usr/local/bin/mpirun"] where FileManager.default.isExecutableFile(atPath: path) {
            return path
        }
        throw XCTSkip("mpirun not installed")
    }
}

/// A child process run to completion under a deadline.
public enum ChildProcess {
    public struct Outcome: Sendable {
        public var status: Int32
        /// Standard output, or both streams interleaved when they were merged.
        public var out: String
        /// Standard error (empty when merged into `out`).
        public var err: String
    }

    /// Runs `executable arguments…`; after `timeout` seconds the child is terminated and the test
    /// fails. Both pipes are drained while it runs, so a chatty child never blocks on a full pipe.
    /// - Parameters:
    ///   - mergingErrors: one pipe for both streams, in the order the child wrote them.
    ///   - environment: added to (and overriding) this process's environment.
    public static func run(_ executable: String, _ arguments: [String], environment: [String: String] = [:],
                           mergingErrors: Bool = false, timeout: Double) throws -> Outcome {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        if !environment.isEmpty {
            process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        }
        let out = Pipe(), err = mergingErrors ? nil : Pipe()
        process.standardOutput = out
        process.standardError = err ?? out
        try process.run()
        let box = OutputBox()
        let group = DispatchGroup()
        DispatchQueue.global().async(group: group) { box.out = out.fileHandleForReading.readDataToEndOfFile() }
        if let err {
            DispatchQueue.global().async(group: group) { box.err = err.fileHandleForReading.readDataToEndOfFile() }
        }
        let deadline = Date().addingTimeInterval(timeout)
        while process.isRunning && Date() < deadline { usleep(20_000) }
        let command = ([executable] + arguments).joined(separator: " ")
        if process.isRunning {
            process.terminate()
            XCTFail("\(command) did not finish within \(timeout) s")
        }
        process.waitUntilExit()
        if group.wait(timeout: .now() + 30) == .timedOut { XCTFail("the output of \(command) never ended") }
        return Outcome(status: process.terminationStatus, out: String(decoding: box.out, as: UTF8.self),
                       err: String(decoding: box.err, as: UTF8.self))
    }

    private final class OutputBox: @unchecked Sendable {
        var out = Data()
        var err = Data()
    }
}
