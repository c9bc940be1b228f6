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
        try Self.child(executable, arguments).finish(within: timeout)
    }

    /// Starts `executable` in the repository folder with one thread per process.
    static func child(_ executable: String, _ arguments: [String]) throws -> StreamedProcess {
        try StreamedProcess(executable, arguments, environment: ["SURA_THREADS": "1"], directory: repository)
    }
}
