import Coordinator
import Foundation
import SuraTestSupport
import XCTest
#if canImport(Glibc)
import Glibc
#endif

/// The built `sura` executable and the cluster/ scripts, run as a user would: `sura submit` and
/// `sura jobs`, `local-cluster.sh` on loopback, and `netns-cluster.sh --check` inside network
/// namespaces it creates and removes (root only). Each run is bounded by a timeout; tests skip
/// when `sura` is not built.
final class ClusterScriptTests: XCTestCase {
    /// `sura` beside the test bundle (`swift build` puts every product in one folder).
    private func suraExecutable() throws -> URL { try BuiltProducts.executable("sura") }

    /// Runs a program to completion or until `timeout` seconds (then SIGKILL); status and output.
    private func run(_ program: String, _ arguments: [String], timeout: TimeInterval,
                     environment: [String: String]? = nil) throws -> (status: Int32, output: String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: program)
        process.arguments = arguments
        if let environment { process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 } }
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        process.standardInput = FileHandle.nullDevice
        try process.run()
        let collected = OutputCollector()
        let reader = Thread { collected.data = pipe.fileHandleForReading.readDataToEndOfFile(); collected.done.signal() }
        reader.start()
        let deadline = Date().addingTimeInterval(timeout)
        while process.isRunning && Date() < deadline { Thread.sleep(forTimeInterval: 0.05) }
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            XCTFail("\(program) \(arguments.joined(separator: " ")) did not finish within \(timeout) s")
        }
        process.waitUntilExit()
        _ = collected.done.wait(timeout: .now() + 10)
        return (process.terminationStatus, String(decoding: collected.data, as: UTF8.self))
    }

    private final class OutputCollector: @unchecked Sendable {
        var data = Data()
        let done = DispatchSemaphore(value: 0)
    }

    private func temporaryFolder() throws -> URL {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("sura-cluster-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(at: folder) }
        return folder
    }

    /// A port pair unlikely to be taken, different per test process.
    private var basePort: Int { 20_000 + Int(getpid() % 2000) * 10 }

    func testSubmitAndJobsCommands() throws {
        let sura = try suraExecutable().path
        let folder = try temporaryFolder()
        let train = folder.appendingPathComponent("train")
        try "#!/bin/sh\nexec /bin/sh \"$2\"\n".write(to: train, atomically: true, encoding: .utf8)
        chmod(train.path, 0o755)
        try "echo hello from the job; sleep 30\n".write(to: folder.appendingPathComponent("cfg.sh"), atomically: true, encoding: .utf8)
        try "name: cli\nconfig: cfg.sh\nranks: 1\n".write(to: folder.appendingPathComponent("job.yaml"), atomically: true, encoding: .utf8)
        let jobs = ["--jobs-dir", folder.appendingPathComponent("jobs").path]
        let mpirun = try BuiltProducts.mpirun()

        let dry = try run(sura, ["submit", folder.appendingPathComponent("job.yaml").path, "--dry-run", "--train", train.path, "--mpirun", mpirun] + jobs, timeout: 30)
        XCTAssertEqual(dry.status, 0, dry.output)
        XCTAssertTrue(dry.output.contains("-np 1 \(train.path) --config \(folder.path)/cfg.sh"), dry.output)

        let submitted = try run(sura, ["submit", folder.appendingPathComponent("job.yaml").path, "--train", train.path, "--mpirun", mpirun] + jobs, timeout: 30)
        XCTAssertEqual(submitted.status, 0, submitted.output)
        let id = try XCTUnwrap(submitted.output.split(separator: " ").dropFirst().first.map(String.init), submitted.output)
        defer { _ = try? run(sura, ["jobs", "cancel", id, "--grace", "1"] + jobs, timeout: 30) }

        var logs = ""
        for _ in 0..<100 where !logs.contains("hello from the job") {
            logs = try run(sura, ["jobs", "logs", id] + jobs, timeout: 30).output
            Thread.sleep(forTimeInterval: 0.1)
        }
        XCTAssertEqual(logs, "hello from the job\n")
        let list = try run(sura, ["jobs", "list"] + jobs, timeout: 30)
        XCTAssertTrue(list.output.contains(id) && list.output.contains("running"), list.output)
        let cancelled = try run(sura, ["jobs", "cancel", id, "--grace", "5"] + jobs, timeout: 30)
        XCTAssertEqual(cancelled.status, 0, cancelled.output)
        XCTAssertTrue(cancelled.output.contains("cancelled"), cancelled.output)
        let status = try run(sura, ["jobs", "status", id] + jobs, timeout: 30)
        XCTAssertTrue(status.output.contains("state:     cancelled"), status.output)

        let missing = try run(sura, ["jobs", "logs", "no-such-job"] + jobs, timeout: 30)
        XCTAssertEqual(missing.status, 1)
        XCTAssertTrue(missing.output.contains("no job 'no-such-job'"), missing.output)
        try "name: cli\nconfig: cfg.sh\nrnaks: 1\n".write(to: folder.appendingPathComponent("bad.yaml"), atomically: true, encoding: .utf8)
        let bad = try run(sura, ["submit", folder.appendingPathComponent("bad.yaml").path] + jobs, timeout: 30)
        XCTAssertEqual(bad.status, 1)
        XCTAssertTrue(bad.output.contains("bad.yaml:3: key 'rnaks'"), bad.output)
    }

    func testLocalClusterStartsWorkersAndStopsThem() throws {
        let sura = try suraExecutable().path
        let logs = try temporaryFolder()
        let result = try run("/bin/bash", [RepositoryPaths.cluster.appendingPathComponent("local-cluster.sh").path,
                                           "--workers", "2", "--duration", "1", "--port", "\(basePort)", "--http-port", "\(basePort + 2)",
                                           "--logs", logs.path, "--sura", sura], timeout: 90)
        XCTAssertEqual(result.status, 0, result.output)
        XCTAssertTrue(result.output.contains("\"workers\":2"), result.output)
        XCTAssertTrue(result.output.contains("local-cluster: stopped"), result.output)
        let schedulerLog = try String(contentsOf: logs.appendingPathComponent("scheduler.log"), encoding: .utf8)
        XCTAssertTrue(schedulerLog.contains("stopped"), schedulerLog)
        XCTAssertTrue(try String(contentsOf: logs.appendingPathComponent("worker-1.log"), encoding: .utf8).contains("left"))
    }

    func testNetnsClusterServesARequestAcrossNamespaces() throws {
        guard geteuid() == 0 else { throw XCTSkip("network namespaces need root") }
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/curl"),
              ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip"].contains(where: FileManager.default.isExecutableFile(atPath:)) else {
            throw XCTSkip("needs iproute2 and curl")
        }
        let sura = try suraExecutable().path
        let logs = try temporaryFolder()
        let before = Set(try run("/bin/sh", ["-c", "ip netns list"], timeout: 10).output.split(separator: "\n"))
        // A /24 that differs per test process, so parallel runs never share one.
        let subnet = "10.213.\(Int(getpid() % 200) + 20)"
        let result = try run("/bin/bash", [RepositoryPaths.cluster.appendingPathComponent("netns-cluster.sh").path,
                                           "--workers", "2", "--check", "--subnet", subnet, "--logs", logs.path, "--sura", sura],
                             timeout: 120)
        if result.output.contains("Operation not permitted") || result.output.contains("Cannot create namespace") {
            throw XCTSkip("this machine does not allow network namespaces: \(result.output)")
        }
        XCTAssertEqual(result.status, 0, result.output)
        XCTAssertTrue(result.output.contains("check passed: 2 worker(s)"), result.output)
        XCTAssertTrue(result.output.contains("removed 4 namespace(s)"), result.output)
        let after = Set(try run("/bin/sh", ["-c", "ip netns list"], timeout: 10).output.split(separator: "\n"))
        XCTAssertEqual(after.subtracting(before), [], "namespaces left behind")
    }
}
