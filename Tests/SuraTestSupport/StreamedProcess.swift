import Foundation
import XCTest

/// A child process whose combined output is collected as it arrives, for tests that watch a job
/// while it runs (wait for a line, kill one of its ranks) rather than only its end.
public final class StreamedProcess {
    public let process = Process()
    private let lock = NSLock()
    private var data = Data()

    /// Starts `executable arguments…` with this process's environment plus `environment`, in
    /// `directory` when given.
    public init(_ executable: String, _ arguments: [String], environment: [String: String] = [:],
                directory: URL? = nil) throws {
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        if let directory { process.currentDirectoryURL = directory }
        process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
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

    /// Standard output and error so far, interleaved as written.
    public var output: String {
        lock.lock()
        defer { lock.unlock() }
        return String(decoding: data, as: UTF8.self)
    }

    /// Waits until `condition(output)` holds, the process ends, or `seconds` pass; returns
    /// whether the condition held (or, without one, whether the process ended).
    @discardableResult
    public func wait(upTo seconds: Double, until condition: ((String) -> Bool)? = nil) -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if let condition, condition(output) { return true }
            if !process.isRunning {
                usleep(50_000)    // let the last output arrive
                return condition?(output) ?? true
            }
            usleep(20_000)
        }
        return condition?(output) ?? !process.isRunning
    }

    /// Ends the process if it still runs: SIGTERM, then SIGKILL after 5 s.
    public func stop() {
        guard process.isRunning else { return }
        process.terminate()
        if !wait(upTo: 5) { kill(process.processIdentifier, SIGKILL) }
    }

    /// Waits for the end (after `timeout` s the process is stopped and the test fails) and
    /// returns its status and output.
    public func finish(within timeout: Double) -> (status: Int32, output: String) {
        if !wait(upTo: timeout) {
            stop()
            let command = ([process.executableURL?.path ?? "?"] + (process.arguments ?? [])).joined(separator: " ")
            XCTFail("\(command) did not finish in \(timeout) s:\n\(output)")
        }
        process.waitUntilExit()
        return (process.terminationStatus, output)
    }
}
