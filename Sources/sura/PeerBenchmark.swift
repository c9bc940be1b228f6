import Foundation

/// Files of the Sura repository that commands use at run time (peer scripts, fixture configs),
/// found from the working directory or from where the `sura` executable sits
/// (`<repo>/.build/<config>/sura`).
enum RepositoryFiles {
    /// The first existing `<ancestor>/relativePath`, searching upwards from the working directory,
    /// then from the executable's directory; nil when none exists.
    static func locate(_ relativePath: String) -> URL? {
        let fm = FileManager.default
        let starts = [URL(fileURLWithPath: fm.currentDirectoryPath),
                      URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().deletingLastPathComponent()]
        for start in starts {
            var dir = start.standardizedFileURL
            for _ in 0..<8 {
                let candidate = dir.appendingPathComponent(relativePath)
                if fm.fileExists(atPath: candidate.path) { return candidate }
                let parent = dir.deletingLastPathComponent()
                if parent.path == dir.path { break }
                dir = parent
            }
        }
        return nil
    }
}

/// Runs a Python peer benchmark (`bench/peers/*.py`) and reads the one JSON object it prints.
///
/// Peers are optional: when the interpreter is missing, the script cannot be found, its imports
/// fail (it then prints `{"error": …}`), it exits non-zero, prints no JSON or runs past
/// `timeout`, the outcome is `.unavailable` with a one-line reason, and the benchmark prints its
/// own figures without a ratio.
struct PeerBenchmark {
    enum Outcome {
        case measured([String: Any])
        case unavailable(String)

        /// A number the peer reported, when it ran.
        func number(_ key: String) -> Double? {
            guard case .measured(let json) = self else { return nil }
            return (json[key] as? NSNumber)?.doubleValue
        }
    }

    /// The interpreter: a path, or a name looked up on PATH (`python3`).
    let python: String
    /// The script, relative to the repository root (`bench/peers/unet_torch_bench.py`).
    let script: String
    /// Seconds before the peer is stopped.
    var timeout: Double = 900

    /// Runs `python script arguments…`; `environment` entries are added to this process's environment.
    func run(_ arguments: [String], environment: [String: String] = [:]) -> Outcome {
        guard let scriptURL = RepositoryFiles.locate(script) else {
            return .unavailable("peer script \(script) not found (run from the Sura repository)")
        }
        let process = Process()
        if python.contains("/") {
            guard FileManager.default.isExecutableFile(atPath: python) else {
                return .unavailable("peer interpreter \(python) does not exist or is not executable")
            }
            process.executableURL = URL(fileURLWithPath: python)
            process.arguments = [scriptURL.path] + arguments
        } else {
            process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
            process.arguments = [python, scriptURL.path] + arguments
        }
        process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        let out = Pipe(), err = Pipe()
        process.standardOutput = out
        process.standardError = err
        do {
            try process.run()
        } catch {
            return .unavailable("cannot start \(python): \(error.localizedDescription)")
        }
        // Read both pipes while the peer runs, so a chatty peer cannot block on a full pipe.
        let stdoutBox = CollectedOutput(), stderrBox = CollectedOutput()
        let group = DispatchGroup()
        DispatchQueue.global().async(group: group) { stdoutBox.data = out.fileHandleForReading.readDataToEndOfFile() }
        DispatchQueue.global().async(group: group) { stderrBox.data = err.fileHandleForReading.readDataToEndOfFile() }
        let deadline = Date().addingTimeInterval(timeout)
        while process.isRunning && Date() < deadline { usleep(20_000) }
        if process.isRunning {
            process.terminate()
            process.waitUntilExit()
            group.wait()
            return .unavailable("peer \(script) did not finish within \(Int(timeout)) s and was stopped")
        }
        process.waitUntilExit()
        group.wait()
        let stdout = stdoutBox.data, stderr = stderrBox.data
        let text = String(decoding: stdout, as: UTF8.self)
        if process.terminationStatus != 0 {
            if process.terminationStatus == 127 && !python.contains("/") {
                return .unavailable("\(python) not found on PATH (pass --peer-python PATH)")
            }
            let lastLine = String(decoding: stderr, as: UTF8.self).split(separator: "\n").last.map(String.init) ?? "no message"
            return .unavailable("peer exited with status \(process.terminationStatus): \(lastLine)")
        }
        // The JSON object is the last line that parses as one (libraries may print warnings first).
        for line in text.split(separator: "\n").reversed() {
            guard let data = line.data(using: .utf8),
                  let json = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else { continue }
            if let error = json["error"] as? String { return .unavailable("peer: \(error)") }
            return .measured(json)
        }
        return .unavailable("peer printed no JSON result")
    }

    /// One pipe's bytes, written by its reader before `group.wait()` returns and read only after.
    private final class CollectedOutput: @unchecked Sendable {
        var data = Data()
    }
}
