import Foundation
import SuraTestSupport
import XCTest

/// Running the built executables (`sura`, `train`) and mpirun from process tests.
extension TrainProcessTests {
    static let mpiFlags = ["--allow-run-as-root", "--oversubscribe", "--bind-to", "none"]

    /// An executable built beside this test bundle; a missing one fails the test (CI builds them).
    static func executable(_ name: String) throws -> String {
        do {
            return try BuiltProducts.executable(name).path
        } catch {
            XCTFail("\(name) is not built beside the tests: run `swift build -c release` first")
            throw error
        }
    }

    /// step → loss from a run folder's metrics.jsonl.
    static func losses(inRun directory: String) throws -> [Int: Double] {
        let text = try String(contentsOfFile: directory + "/metrics.jsonl", encoding: .utf8)
        var result: [Int: Double] = [:]
        for line in text.split(separator: "\n") {
            let object = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
            result[try XCTUnwrap(object["step"] as? Int)] = try XCTUnwrap(object["loss"] as? Double)
        }
        return result
    }

    /// Every line of a run folder's metrics.jsonl, in order.
    static func metrics(inRun directory: String) throws -> [[String: Any]] {
        let text = try String(contentsOfFile: directory + "/metrics.jsonl", encoding: .utf8)
        return try text.split(separator: "\n").map { line in
            try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
        }
    }

    static func mpirun() throws -> String {
        do {
            return try BuiltProducts.mpirun()
        } catch {
            XCTFail("mpirun is not installed: run scripts/setup")
            throw error
        }
    }

    /// Process ids whose command line contains `text`.
    static func pids(matching text: String) throws -> [Int32] {
        try FileManager.default.contentsOfDirectory(atPath: "/proc").compactMap { entry -> Int32? in
            guard let pid = Int32(entry), pid != getpid(),
                  let raw = FileManager.default.contents(atPath: "/proc/\(entry)/cmdline") else { return nil }
            let command = String(decoding: raw.map { $0 == 0 ? 32 : $0 }, as: UTF8.self)
            return command.contains(text) && command.contains("train") && !command.contains("mpirun") ? pid : nil
        }
    }

    /// Runs to completion (killed after `timeout` s) in the repository folder, one thread per process.
    func run(_ executable: String, _ arguments: [String], timeout: Double = 180) throws -> (status: Int32, output: String) {
        let child = try Child(executable, arguments)
        if !child.wait(upTo: timeout) {
            child.stop()
            XCTFail("\(executable) \(arguments.joined(separator: " ")) did not finish in \(timeout) s:\n\(child.output)")
        }
        child.process.waitUntilExit()
        return (child.process.terminationStatus, child.output)
    }

    /// A child process whose combined output is collected as it arrives.
    final class Child {
        let process = Process()
        private let lock = NSLock()
        private var data = Data()

        init(_ executable: String, _ arguments: [String]) throws {
            process.executableURL = URL(fileURLWithPath: executable)
            process.arguments = arguments
            process.currentDirectoryURL = TrainProcessTests.repository
            var environment = ProcessInfo.processInfo.environment
            environment["SURA_THREADS"] = "1"
            process.environment = environment
            let pipe = Pipe()
            process.standardOutput = pipe
            process.standardError = pipe
            pipe.fileHandleForReading.readabilityHandler = { [weak self] handle in
                let chunk = handle.availableData
                guard let self, !chunk.isEmpty else { return }
                self.lock.lock()
                self.data.append(chunk)
                self.lock.unlock()
            }
            try process.run()
        }

        var output: String {
            lock.lock()
            defer { lock.unlock() }
            return String(decoding: data, as: UTF8.self)
        }

        /// Waits until `condition(output)` holds, the process ends, or `seconds` pass; returns
        /// whether the condition held (or, without one, whether the process ended).
        @discardableResult
        func wait(upTo seconds: Double, until condition: ((String) -> Bool)? = nil) -> Bool {
            let deadline = Date().addingTimeInterval(seconds)
            while Date() < deadline {
                if let condition, condition(output) { return true }
                if !process.isRunning {
                    usleep(50_000)
                    return condition?(output) ?? true
                }
                usleep(20_000)
            }
            return condition?(output) ?? !process.isRunning
        }

        func stop() {
            guard process.isRunning else { return }
            process.terminate()
            if !wait(upTo: 5) { kill(process.processIdentifier, SIGKILL) }
        }
    }
}
