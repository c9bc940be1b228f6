import ArgumentParser
import Coordinator
import Foundation

/// Where job records live: `--jobs-dir`, else `$SURA_JOBS_DIR`, else `~/.sura/jobs`.
struct JobsDirectoryOptions: ParsableArguments {
    @Option(name: .customLong("jobs-dir"), help: "Jobs directory (default: SURA_JOBS_DIR, else ~/.sura/jobs).")
    var jobsDirectory: String?

    var store: JobStore {
        JobStore(directory: jobsDirectory.map { URL(fileURLWithPath: ($0 as NSString).expandingTildeInPath, isDirectory: true) }
                 ?? JobStore.defaultDirectory())
    }
}

/// What `sura submit --render` prints.
enum RenderFormat: String, ExpressibleByArgument, CaseIterable {
    case mpijob, slurm
}

/// `sura submit job.yaml`: starts a training job locally, on Slurm or on Kubernetes, or prints
/// what would be submitted.
struct SubmitCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "submit",
        abstract: "Submit a training job described by a job.yaml (local mpirun, Slurm, or a Kubernetes MPIJob).",
        discussion: """
        The job file's keys are described in docs/operations.md. backend: local starts \
        'mpirun -np N train --config C' in the background and records it under the jobs directory \
        (see 'sura jobs'); backend: slurm runs sbatch on a generated script; backend: kubernetes \
        applies a generated MPIJob and ConfigMap with kubectl. --render prints the Slurm script or \
        the MPIJob manifest for any job without submitting; --dry-run prints what would run.
        """)

    @Argument(help: "The job file (YAML).")
    var job: String
    @Option(help: "Print the job as a Kubeflow MPIJob manifest or a Slurm batch script instead of submitting it.")
    var render: RenderFormat?
    @Flag(help: "Print the command (and hostfile, script or manifest) without running anything.")
    var dryRun = false
    @Option(help: "The training program the ranks run (default: 'train' beside this sura, else on PATH).")
    var train: String?
    @Option(help: "The mpirun program for local jobs.")
    var mpirun = "mpirun"
    @OptionGroup var directory: JobsDirectoryOptions

    func run() throws {
        let spec: JobSpec
        do {
            spec = try JobSpec.load(contentsOf: URL(fileURLWithPath: job))
        } catch {
            throw CommandFailure("\(error)")
        }
        let trainProgram = train ?? LocalJobLauncher.defaultTrainProgram()
        do {
            if let render {
                print(try rendered(spec, as: render, trainProgram: trainProgram), terminator: "")
                return
            }
            switch spec.backend {
            case .local:
                let launcher = LocalJobLauncher(store: directory.store, mpirun: mpirun, trainProgram: trainProgram)
                if dryRun {
                    let plan = try launcher.plan(spec)
                    if let hostfile = plan.hostfile { print("# hostfile\n\(hostfile)", terminator: "") }
                    print(plan.command.map(SlurmScriptRenderer.shellQuoted).joined(separator: " "))
                    return
                }
                let record = try launcher.launch(spec)
                print("submitted \(record.id) (\(spec.ranks) rank\(spec.ranks == 1 ? "" : "s"), pid \(record.pid.map(String.init) ?? "?"))")
                print("follow it with: sura jobs logs \(record.id) --follow")
            case .slurm, .kubernetes:
                let submitter = ClusterJobSubmitter(store: directory.store, trainProgram: trainProgram)
                if dryRun {
                    let (name, text) = try submitter.render(spec, folder: nil)
                    let command = spec.backend == .slurm ? "sbatch \(name)" : "kubectl apply -f \(name)"
                    print("# \(command)\n\(text)", terminator: "")
                    return
                }
                let record = try submitter.submit(spec)
                print("submitted \(record.id) to \(spec.backend.rawValue) as \(record.externalID ?? "?")")
            }
        } catch let error as CommandFailure {
            throw error
        } catch {
            throw CommandFailure("\(error)")
        }
    }

    private func rendered(_ spec: JobSpec, as format: RenderFormat, trainProgram: String) throws -> String {
        switch format {
        case .slurm:
            return SlurmScriptRenderer(trainProgram: train ?? "train").render(spec)
        case .mpijob:
            guard spec.image != nil else {
                throw CommandFailure("\(job): key 'image': is required to render an MPIJob (the image holding 'sura' and 'train')")
            }
            // With kubernetes.config_map the ConfigMap already exists; otherwise it is made from the config file.
            var configText: String?
            if spec.kubernetes.configMap == nil {
                do {
                    configText = try String(contentsOfFile: spec.config, encoding: .utf8)
                } catch {
                    throw CommandFailure("\(job): key 'config': cannot read \(spec.config) to put it in the ConfigMap (or name an existing one with kubernetes.config_map)")
                }
            }
            return try MPIJobRenderer().render(spec, configText: configText)
        }
    }
}

/// `sura jobs list|status|logs|cancel`: the jobs `sura submit` recorded.
struct JobsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "jobs",
        abstract: "List submitted jobs, show their status and logs, cancel them.",
        subcommands: [JobsListCommand.self, JobsStatusCommand.self, JobsLogsCommand.self, JobsCancelCommand.self])
}

/// Runs `body`, turning library errors into one-line command failures.
private func reporting<T>(_ body: () throws -> T) throws -> T {
    do {
        return try body()
    } catch let error as CommandFailure {
        throw error
    } catch {
        throw CommandFailure("\(error)")
    }
}

struct JobsListCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "list", abstract: "List jobs, oldest first.")
    @OptionGroup var directory: JobsDirectoryOptions

    func run() throws {
        let store = directory.store
        let records = try reporting { try store.list() }
        guard !records.isEmpty else {
            print("no jobs in \(store.directory.path)")
            return
        }
        let formatter = DateFormatter()
        formatter.dateFormat = "yyyy-MM-dd HH:mm:ss"
        let rows = records.map { record -> [String] in
            [record.id, record.spec.backend.rawValue, "\(record.spec.ranks)", store.status(of: record).state.rawValue,
             formatter.string(from: record.submittedAt)]
        }
        let header = ["ID", "BACKEND", "RANKS", "STATE", "SUBMITTED"]
        let widths = header.indices.map { column in ([header] + rows).map { $0[column].count }.max() ?? 0 }
        for row in [header] + rows {
            let padded = zip(row, widths).map { $0.padding(toLength: $1, withPad: " ", startingAt: 0) }
            print(padded.joined(separator: "  ").replacingOccurrences(of: "\\s+$", with: "", options: .regularExpression))
        }
    }
}

struct JobsStatusCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "status", abstract: "Show one job's state, command and files.")
    @Argument(help: "The job id (see 'sura jobs list').")
    var id: String
    @OptionGroup var directory: JobsDirectoryOptions

    func run() throws {
        let store = directory.store
        let record = try reporting { try store.record(id) }
        let status = store.status(of: record)
        print("id:        \(record.id)")
        print("state:     \(status.state.rawValue)\(status.detail.isEmpty ? "" : " (\(status.detail))")")
        if let finished = status.finishedAt { print("finished:  \(finished)") }
        print("submitted: \(record.submittedAt)")
        print("backend:   \(record.spec.backend.rawValue), \(record.spec.ranks) rank(s) × \(record.spec.threadsPerRank) thread(s)")
        print("config:    \(record.spec.config)")
        print("command:   \(record.command.map(SlurmScriptRenderer.shellQuoted).joined(separator: " "))")
        print("log:       \(record.logFile)")
        print("folder:    \(store.folder(record.id).path)")
    }
}

struct JobsLogsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "logs", abstract: "Print the end of a job's output.")
    @Argument(help: "The job id (see 'sura jobs list').")
    var id: String
    @Option(name: [.customShort("n"), .long], help: "Lines from the end.")
    var lines = 50
    @Flag(help: "Print the whole log.")
    var all = false
    @Flag(name: [.customShort("f"), .long], help: "Keep printing new output until the job ends.")
    var follow = false
    @OptionGroup var directory: JobsDirectoryOptions

    func validate() throws {
        guard lines >= 0 else { throw ValidationError("--lines must be 0 or more, got \(lines)") }
    }

    func run() throws {
        let store = directory.store
        let record = try reporting { try store.record(id) }
        let (text, end) = try reporting { try store.logTail(id, lines: all ? nil : lines) }
        FileHandle.standardOutput.write(Data(text.utf8))
        guard follow else { return }
        // Print whatever is appended after the tail, until the job ends.
        var offset = end
        while true {
            let running = store.status(of: record).state == .running
            if let handle = FileHandle(forReadingAtPath: record.logFile) {
                handle.seek(toFileOffset: offset)
                let data = handle.readDataToEndOfFile()
                try? handle.close()
                offset += UInt64(data.count)
                if !data.isEmpty { FileHandle.standardOutput.write(data) }
            }
            if !running { break }
            Thread.sleep(forTimeInterval: 0.5)
        }
        print("[\(store.status(of: record))]")
    }
}

struct JobsCancelCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cancel",
        abstract: "Cancel a job: SIGTERM to its processes, SIGKILL after the grace period (local); scancel or kubectl delete otherwise.")
    @Argument(help: "The job id (see 'sura jobs list').")
    var id: String
    @Option(help: "Seconds between SIGTERM and SIGKILL (local jobs).")
    var grace = 10.0
    @OptionGroup var directory: JobsDirectoryOptions

    func validate() throws {
        guard grace >= 0, grace <= 3600 else { throw ValidationError("--grace must be 0…3600 seconds, got \(grace)") }
    }

    func run() throws {
        let store = directory.store
        let record = try reporting { try store.record(id) }
        let status = try reporting { () -> JobStatus in
            switch record.spec.backend {
            case .local: return try store.cancel(id, grace: grace)
            case .slurm, .kubernetes: return try ClusterJobSubmitter(store: store).cancel(id)
            }
        }
        print("\(id): \(status)")
    }
}
