import Coordinator
import Foundation
import SuraTestSupport
import XCTest

/// A `sura` process started by a test: output captured line by line, killed at the end.
final class SuraProcess {
    let process = Process()
    let output = LogCapture()
    let name: String
    private var readers: [Thread] = []

    /// The `sura` executable built beside this test bundle.
    static func executable() throws -> URL { try BuiltProducts.executable("sura") }

    init(_ arguments: [String], name: String) throws {
        self.name = name
        process.executableURL = try Self.executable()
        process.arguments = arguments
        let out = Pipe(), err = Pipe()
        process.standardOutput = out
        process.standardError = err
        try process.run()
        for pipe in [out, err] {
            let output = self.output
            let handle = pipe.fileHandleForReading
            let thread = Thread {
                var pending = Data()
                while true {
                    let chunk = handle.availableData
                    if chunk.isEmpty { break }
                    pending += chunk
                    while let newline = pending.firstIndex(of: 10) {
                        output.append(String(decoding: pending[pending.startIndex..<newline], as: UTF8.self))
                        pending = Data(pending[(newline + 1)...])
                    }
                }
                if !pending.isEmpty { output.append(String(decoding: pending, as: UTF8.self)) }
            }
            thread.start()
            readers.append(thread)
        }
    }

    var pid: Int32 { process.processIdentifier }

    /// The first output line containing `text`, waiting up to `timeout` seconds.
    func line(containing text: String, timeout: TimeInterval) -> String? {
        var found: String?
        _ = eventually(timeout: timeout) {
            found = output.all.first { $0.contains(text) }
            return found != nil || !process.isRunning
        }
        return found ?? output.all.first { $0.contains(text) }
    }

    func signal(_ number: Int32) { kill(pid, number) }

    /// Waits for exit; returns the status, or nil if still running after `timeout`.
    func waitForExit(timeout: TimeInterval) -> Int32? {
        guard eventually(timeout: timeout, { !process.isRunning }) else { return nil }
        process.waitUntilExit()
        return process.terminationStatus
    }

    func stop() {
        if process.isRunning {
            kill(pid, SIGKILL)
            process.waitUntilExit()
        }
    }

    var transcript: String { "--- \(name) ---\n" + output.all.joined(separator: "\n") }
}

/// `sura serve` on free loopback ports, with its endpoints read from its first line.
final class ServeProcess {
    let serve: SuraProcess
    let frontend: String
    let backend: String
    let httpPort: Int?

    init(_ extra: [String], http: Bool = false) throws {
        var arguments = ["serve", "--frontend", "tcp://127.0.0.1:*", "--backend", "tcp://127.0.0.1:*", "--heartbeat-ms", "100", "--liveness", "5"]
        arguments += http ? ["--http-port", "0"] : ["--no-http"]
        serve = try SuraProcess(arguments + extra, name: "serve")
        guard let line = serve.line(containing: "sura serve: frontend=", timeout: 30) else {
            serve.stop()
            throw RawHTTP.Failure(description: "sura serve did not start:\n\(serve.transcript)")
        }
        func field(_ key: String) -> String? {
            line.split(separator: " ").first { $0.hasPrefix(key + "=") }.map { String($0.dropFirst(key.count + 1)) }
        }
        frontend = field("frontend") ?? ""
        backend = field("backend") ?? ""
        httpPort = field("http").flatMap { URL(string: $0)?.port }
    }

    func worker(_ name: String, _ extra: [String] = []) throws -> SuraProcess {
        try SuraProcess(["worker", "--scheduler", backend, "--name", name, "--heartbeat-ms", "100", "--liveness", "5"] + extra, name: name)
    }
}
