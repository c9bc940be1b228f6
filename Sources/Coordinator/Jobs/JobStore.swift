import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// What was recorded when a job was submitted (`<jobs>/<id>/job.json`).
public struct JobRecord: Codable, Equatable, Sendable {
    public var id: String
    public var spec: JobSpec
    public var submittedAt: Date
    /// The command that was run (local) or the submission command (Slurm, Kubernetes).
    public var command: [String]
    /// The wrapper that waits for the command and records its exit status (local jobs).
    public var pid: Int32?
    /// The wrapper's start time in clock ticks since boot, to tell it from a later process that
    /// reused the pid.
    public var pidStartTicks: UInt64?
    /// The session (and process group) every process of the job belongs to.
    public var session: Int32?
    /// Combined standard output and error.
    public var logFile: String
    /// The Slurm job id or Kubernetes object the job was submitted as (non-local backends).
    public var externalID: String?

    public init(id: String, spec: JobSpec, submittedAt: Date, command: [String], logFile: String) {
        self.id = id
        self.spec = spec
        self.submittedAt = submittedAt
        self.command = command
        self.logFile = logFile
    }

    enum CodingKeys: String, CodingKey {
        case id, spec, command, pid, session
        case submittedAt = "submitted_at"
        case pidStartTicks = "pid_start_ticks"
        case logFile = "log_file"
        case externalID = "external_id"
    }
}

/// Where a job is in its life.
public enum JobState: String, Codable, CaseIterable, Sendable {
    case running, succeeded, failed, cancelled
    /// Handed to Slurm or Kubernetes; their own tools report further progress.
    case submitted
}

/// A job's state with the facts behind it.
public struct JobStatus: Equatable, Sendable, CustomStringConvertible {
    public var state: JobState
    /// The command's exit status when the wrapper recorded one (128 + N after signal N).
    public var exitCode: Int32?
    public var finishedAt: Date?
    /// One line for people: why the state is what it is.
    public var detail: String

    public var description: String { detail.isEmpty ? state.rawValue : "\(state.rawValue) (\(detail))" }
}

/// A problem with the jobs directory or a job id, naming both.
public struct JobStoreError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// The jobs directory: one folder per job with its record, log and exit status.
///
/// Layout of `<directory>/<id>/`: `job.json` (the `JobRecord`), `job.yaml` (the spec as
/// submitted), `output.log`, `hostfile` (when the job listed hosts), `exit_status` (written by
/// the wrapper when the command ends), `cancel_requested` (written by `cancel`).
public struct JobStore: Sendable {
    public let directory: URL

    public init(directory: URL) {
        self.directory = directory
    }

    /// `$SURA_JOBS_DIR`, else `~/.sura/jobs`.
    public static func defaultDirectory(environment: [String: String] = ProcessInfo.processInfo.environment) -> URL {
        if let path = environment["SURA_JOBS_DIR"], !path.isEmpty {
            return URL(fileURLWithPath: (path as NSString).expandingTildeInPath, isDirectory: true)
        }
        let home = environment["HOME"].flatMap { $0.isEmpty ? nil : $0 } ?? NSHomeDirectory()
        return URL(fileURLWithPath: home, isDirectory: true).appendingPathComponent(".sura/jobs", isDirectory: true)
    }

    /// The folder of job `id`.
    public func folder(_ id: String) -> URL { directory.appendingPathComponent(id, isDirectory: true) }

    /// Creates a new, empty job folder named `<name>-<yyMMdd-HHmmss>` (with `-2`, `-3`, … when
    /// that exists) and returns its id. `mkdir` is atomic, so two submissions never share one.
    public func makeJobFolder(name: String, at date: Date = Date()) throws -> String {
        do {
            try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        } catch {
            throw JobStoreError("cannot create the jobs directory \(directory.path): \(error.localizedDescription)")
        }
        let formatter = DateFormatter()
        formatter.locale = Locale(identifier: "en_US_POSIX")
        formatter.dateFormat = "yyMMdd-HHmmss"
        let stem = "\(name)-\(formatter.string(from: date))"
        for attempt in 1...1000 {
            let id = attempt == 1 ? stem : "\(stem)-\(attempt)"
            if mkdir(folder(id).path, 0o755) == 0 { return id }
            guard errno == EEXIST else {
                throw JobStoreError("cannot create \(folder(id).path): \(String(cString: strerror(errno)))")
            }
        }
        throw JobStoreError("more than 1000 jobs named '\(stem)' in \(directory.path)")
    }

    /// Writes (or rewrites) a job's record atomically.
    public func save(_ record: JobRecord) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        encoder.dateEncodingStrategy = .custom { date, encoder in
            var container = encoder.singleValueContainer()
            try container.encode(JobStore.timestampFormatter().string(from: date))
        }
        let url = folder(record.id).appendingPathComponent("job.json")
        do {
            try encoder.encode(record).write(to: url, options: .atomic)
        } catch {
            throw JobStoreError("cannot write \(url.path): \(error.localizedDescription)")
        }
    }

    /// The record of job `id`.
    public func record(_ id: String) throws -> JobRecord {
        guard JobStore.isValidID(id) else {
            throw JobStoreError("'\(id)' is not a job id (ids look like 'name-yyMMdd-HHmmss'; see 'sura jobs list')")
        }
        let url = folder(id).appendingPathComponent("job.json")
        guard let data = FileManager.default.contents(atPath: url.path) else {
            throw JobStoreError("no job '\(id)' in \(directory.path) (see 'sura jobs list')")
        }
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .custom { decoder in
            let text = try decoder.singleValueContainer().decode(String.self)
            guard let date = JobStore.timestampFormatter().date(from: text) else {
                throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: "not an ISO 8601 time: '\(text)'"))
            }
            return date
        }
        do {
            return try decoder.decode(JobRecord.self, from: data)
        } catch {
            throw JobStoreError("\(url.path) is not a readable job record: \(error)")
        }
    }

    /// Every job with a readable record, oldest first. Folders without a record (a submission
    /// that failed half way) are skipped.
    public func list() throws -> [JobRecord] {
        guard FileManager.default.fileExists(atPath: directory.path) else { return [] }
        let names: [String]
        do {
            names = try FileManager.default.contentsOfDirectory(atPath: directory.path)
        } catch {
            throw JobStoreError("cannot list \(directory.path): \(error.localizedDescription)")
        }
        return names.filter(JobStore.isValidID).compactMap { try? record($0) }
            .sorted { ($0.submittedAt, $0.id) < ($1.submittedAt, $1.id) }
    }

    /// ISO 8601 with milliseconds, so jobs submitted within one second still sort in order.
    static func timestampFormatter() -> ISO8601DateFormatter {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        return formatter
    }

    /// Now, to the millisecond a record keeps (so a returned record equals the stored one).
    public static func now() -> Date {
        Date(timeIntervalSince1970: (Date().timeIntervalSince1970 * 1000).rounded(.down) / 1000)
    }

    /// Job ids are single path components of safe characters.
    static func isValidID(_ id: String) -> Bool {
        !id.isEmpty && id.count <= 128 && !id.hasPrefix(".")
            && id.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" || $0 == ".") }
    }

    // MARK: - Status

    /// The job's state, from the exit status its wrapper recorded, the cancel marker, and
    /// whether the wrapper process is still running.
    public func status(_ id: String) throws -> JobStatus {
        status(of: try record(id))
    }

    public func status(of record: JobRecord) -> JobStatus {
        let dir = folder(record.id)
        let cancelled = FileManager.default.fileExists(atPath: dir.appendingPathComponent("cancel_requested").path)
        if record.spec.backend != .local {
            if cancelled { return JobStatus(state: .cancelled, detail: "cancelled through \(record.spec.backend.rawValue)") }
            let external = record.externalID.map { " as \($0)" } ?? ""
            return JobStatus(state: .submitted, detail: "handed to \(record.spec.backend.rawValue)\(external); \(JobStore.externalHint(record))")
        }
        if let exit = readExitStatus(dir) { return finished(exit, cancelled: cancelled) }
        guard record.pid != nil else {
            return JobStatus(state: .failed, detail: "the launch did not complete (no process was recorded)")
        }
        if let pid = record.pid, ProcessTable.isRunning(pid, startTicks: record.pidStartTicks) {
            return JobStatus(state: .running, detail: cancelled ? "cancel requested, pid \(pid)" : "pid \(pid)")
        }
        // The wrapper may have written its status between the two looks.
        if let exit = readExitStatus(dir) { return finished(exit, cancelled: cancelled) }
        if cancelled { return JobStatus(state: .cancelled, detail: "killed before it recorded an exit status") }
        return JobStatus(state: .failed, detail: "the job's processes are gone without an exit status (killed, or the machine restarted)")
    }

    private func finished(_ exit: (code: Int32, at: Date?), cancelled: Bool) -> JobStatus {
        if exit.code == 0 && !cancelled { return JobStatus(state: .succeeded, exitCode: 0, finishedAt: exit.at, detail: "exit status 0") }
        if cancelled { return JobStatus(state: .cancelled, exitCode: exit.code, finishedAt: exit.at, detail: "exit status \(exit.code) after cancel") }
        let signal = exit.code > 128 ? ", signal \(exit.code - 128)" : ""
        return JobStatus(state: .failed, exitCode: exit.code, finishedAt: exit.at, detail: "exit status \(exit.code)\(signal)")
    }

    private func readExitStatus(_ dir: URL) -> (code: Int32, at: Date?)? {
        let path = dir.appendingPathComponent("exit_status").path
        guard let text = try? String(contentsOfFile: path, encoding: .utf8),
              let code = Int32(text.trimmingCharacters(in: .whitespacesAndNewlines)) else { return nil }
        let date = (try? FileManager.default.attributesOfItem(atPath: path))?[.modificationDate] as? Date
        return (code, date)
    }

    static func externalHint(_ record: JobRecord) -> String {
        switch record.spec.backend {
        case .slurm: return "follow it with 'squeue -j \(record.externalID ?? "ID")'"
        case .kubernetes:
            let ns = record.spec.kubernetes.namespace.map { " -n \($0)" } ?? ""
            return "follow it with 'kubectl get mpijob \(record.spec.name)\(ns)'"
        case .local: return ""
        }
    }

    /// Polls until the job is no longer running or `timeout` seconds pass; returns the last status.
    public func wait(_ id: String, timeout: TimeInterval, poll: TimeInterval = 0.05) throws -> JobStatus {
        let record = try record(id)
        let deadline = Date().addingTimeInterval(timeout)
        var current = status(of: record)
        while current.state == .running && Date() < deadline {
            Thread.sleep(forTimeInterval: poll)
            current = status(of: record)
        }
        return current
    }

    // MARK: - Logs

    /// The last `lines` lines of the job's output (all of it when `lines` is nil). Reads only the
    /// end of a large log.
    public func logs(_ id: String, lines: Int? = 50) throws -> String {
        try logTail(id, lines: lines).text
    }

    /// Like `logs`, with the byte offset the text ends at, from which a follower continues
    /// (bytes appended while the tail was read are left for it, never printed twice).
    public func logTail(_ id: String, lines: Int?) throws -> (text: String, endOffset: UInt64) {
        let record = try record(id)
        // No log yet: the job has not written anything (or, on a cluster, not to a shared disk).
        guard let handle = FileHandle(forReadingAtPath: record.logFile) else { return ("", 0) }
        defer { try? handle.close() }
        let size = handle.seekToEndOfFile()
        func read(from start: UInt64) -> Data {
            handle.seek(toFileOffset: start)
            return handle.readData(ofLength: Int(size - start))
        }
        guard let lines else { return (String(decoding: read(from: 0), as: UTF8.self), size) }
        guard lines > 0 else { return ("", size) }
        var chunk: UInt64 = 64 * 1024
        while true {
            let start = size > chunk ? size - chunk : 0
            let data = read(from: start)
            let body = data.last == UInt8(ascii: "\n") ? data.dropLast() : data[...]
            let newlines = body.lazy.filter { $0 == UInt8(ascii: "\n") }.count
            if newlines >= lines || start == 0 {
                var parts = body.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false)
                if start > 0 || parts.count > lines { parts = Array(parts.suffix(lines)) }
                let text = parts.map { String(decoding: $0, as: UTF8.self) }.joined(separator: "\n") + (body.isEmpty ? "" : "\n")
                return (text, size)
            }
            chunk *= 4
        }
    }

    // MARK: - Cancel

    /// Cancels a local job: marks it cancelled, sends SIGTERM to every process of its session,
    /// waits up to `grace` seconds, then sends SIGKILL. A job that already finished keeps its
    /// state. Returns the state afterwards.
    public func cancel(_ id: String, grace: TimeInterval = 10) throws -> JobStatus {
        let record = try record(id)
        let before = status(of: record)
        guard before.state == .running else { return before }
        let marker = folder(id).appendingPathComponent("cancel_requested")
        try? ISO8601DateFormatter().string(from: Date()).write(to: marker, atomically: true, encoding: .utf8)
        guard let session = record.session else { return status(of: record) }
        ProcessTable.signal(session: session, SIGTERM)
        if !waitForSession(session, timeout: grace) {
            ProcessTable.signal(session: session, SIGKILL)
            _ = waitForSession(session, timeout: 5)
        }
        return status(of: record)
    }

    /// True when no process of `session` is running any more.
    private func waitForSession(_ session: pid_t, timeout: TimeInterval) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while true {
            if ProcessTable.runningMembers(ofSession: session).isEmpty { return true }
            if Date() >= deadline { return false }
            Thread.sleep(forTimeInterval: 0.05)
        }
    }
}
