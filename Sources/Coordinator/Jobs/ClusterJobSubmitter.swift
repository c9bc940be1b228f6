import Foundation

/// Hands a job to Slurm (`sbatch`) or Kubernetes (`kubectl apply`) and records it in a
/// `JobStore`, so `sura jobs list` shows it beside local jobs. Progress after that is the
/// cluster's to report (`squeue`, `kubectl get mpijob`); `cancel` calls `scancel` or
/// `kubectl delete`.
public struct ClusterJobSubmitter {
    public var store: JobStore
    /// Client programs, names on PATH or paths (injectable for tests).
    public var sbatch = "sbatch"
    public var scancel = "scancel"
    public var kubectl = "kubectl"
    /// The training program the Slurm script runs on the compute nodes.
    public var trainProgram: String

    public init(store: JobStore, trainProgram: String = LocalJobLauncher.defaultTrainProgram()) {
        self.store = store
        self.trainProgram = trainProgram
    }

    /// Writes the script or manifest into a new job folder, submits it, and records the result.
    public func submit(_ spec: JobSpec) throws -> JobRecord {
        let submittedAt = JobStore.now()
        _ = try render(spec, folder: nil)  // fail on a bad spec before a folder is made
        let id = try store.makeJobFolder(name: spec.name, at: submittedAt)
        let folder = store.folder(id)
        let (fileName, text) = try render(spec, folder: folder)
        let file = folder.appendingPathComponent(fileName)
        do {
            try text.write(to: file, atomically: true, encoding: .utf8)
            try spec.yaml().write(to: folder.appendingPathComponent("job.yaml"), atomically: true, encoding: .utf8)
        } catch {
            throw JobStoreError("cannot write into \(folder.path): \(error.localizedDescription)")
        }
        let command: [String]
        switch spec.backend {
        case .slurm: command = [sbatch, "--parsable", file.path]
        case .kubernetes: command = [kubectl, "apply", "-f", file.path]
        case .local: throw JobStoreError("job '\(spec.name)': backend local is run by the local launcher")
        }
        let logFile = folder.appendingPathComponent("output.log")
        var record = JobRecord(id: id, spec: spec, submittedAt: submittedAt, command: command, logFile: logFile.path)
        try store.save(record)
        let output: String
        do {
            output = try ClusterJobSubmitter.run(command, hint: spec.backend == .slurm ? "slurm" : "mpijob")
        } catch {
            // Nothing was submitted, so nothing is left to list.
            try? FileManager.default.removeItem(at: folder)
            throw error
        }
        try? output.write(to: logFile, atomically: true, encoding: .utf8)
        switch spec.backend {
        case .slurm:
            // `--parsable` prints "jobid" or "jobid;cluster".
            let job = output.split(separator: "\n").last.map { String($0.split(separator: ";")[0]).trimmingCharacters(in: .whitespaces) }
            record.externalID = job
            // From here on the log is what the ranks print (on a file system the nodes share).
            if let job { record.logFile = folder.appendingPathComponent("slurm-\(job).out").path }
        default:
            let ns = spec.kubernetes.namespace.map { "\($0)/" } ?? ""
            record.externalID = "mpijob/\(ns)\(spec.name)"
        }
        try store.save(record)
        return record
    }

    /// The file to submit: `(name, contents)`. For Kubernetes the training config is read and
    /// embedded in a ConfigMap beside the MPIJob; Slurm's output goes into `folder` when given.
    public func render(_ spec: JobSpec, folder: URL?) throws -> (String, String) {
        switch spec.backend {
        case .slurm:
            var renderer = SlurmScriptRenderer(trainProgram: trainProgram)
            if let folder { renderer.outputPattern = folder.appendingPathComponent("slurm-%j.out").path }
            return ("job.sbatch", renderer.render(spec))
        case .kubernetes:
            let config: String
            do {
                config = try String(contentsOfFile: spec.config, encoding: .utf8)
            } catch {
                throw JobStoreError("job '\(spec.name)': key 'config': cannot read \(spec.config): \(error.localizedDescription)")
            }
            return ("mpijob.yaml", try MPIJobRenderer().render(spec, configText: config))
        case .local:
            throw JobStoreError("job '\(spec.name)': backend local has nothing to render")
        }
    }

    /// Cancels a submitted job through its cluster and marks it cancelled.
    public func cancel(_ id: String) throws -> JobStatus {
        let record = try store.record(id)
        let command: [String]
        switch record.spec.backend {
        case .slurm:
            guard let job = record.externalID, !job.isEmpty else { throw JobStoreError("job '\(id)' has no Slurm job id recorded") }
            command = [scancel, job]
        case .kubernetes:
            command = [kubectl, "delete", "mpijob", record.spec.name]
                + (record.spec.kubernetes.namespace.map { ["-n", $0] } ?? [])
        case .local:
            return try store.cancel(id)
        }
        _ = try ClusterJobSubmitter.run(command, hint: nil)
        let marker = store.folder(id).appendingPathComponent("cancel_requested")
        try? ISO8601DateFormatter().string(from: Date()).write(to: marker, atomically: true, encoding: .utf8)
        return store.status(of: record)
    }

    /// Runs a client program to completion; its standard output, or an error with its output.
    static func run(_ command: [String], hint: String?) throws -> String {
        let process = Process()
        if command[0].contains("/") {
            process.executableURL = URL(fileURLWithPath: command[0])
            process.arguments = Array(command.dropFirst())
        } else {
            process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
            process.arguments = command
        }
        let output = Pipe()
        process.standardOutput = output
        process.standardError = output
        process.standardInput = FileHandle.nullDevice
        do {
            try process.run()
        } catch {
            throw JobStoreError("cannot run \(command[0]): \(error.localizedDescription)")
        }
        let data = output.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        let text = String(decoding: data, as: UTF8.self)
        guard process.terminationStatus == 0 else {
            // env exits 127 when the program is not on PATH.
            if process.terminationStatus == 127, !command[0].contains("/") {
                let alternative = hint.map { "; to see what would be submitted, run 'sura submit JOB.yaml --render \($0)'" } ?? ""
                throw JobStoreError("\(command[0]) is not on PATH\(alternative)")
            }
            throw JobStoreError("\(command.joined(separator: " ")) failed with status \(process.terminationStatus): \(text.trimmingCharacters(in: .whitespacesAndNewlines))")
        }
        return text
    }
}
