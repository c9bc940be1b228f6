import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Starts a job's `mpirun` on this machine as a detached session that outlives `sura submit`,
/// and records it in a `JobStore`.
///
/// The command is
/// `mpirun [--allow-run-as-root] [--oversubscribe] [--bind-to none] [mpirun_args] -x VAR=… -np N [--hostfile F] train --config C`:
/// `--allow-run-as-root` only when running as root, `--oversubscribe` only when the ranks
/// outnumber the slots (the listed slots, or this machine's cores when no hosts are given), and
/// `--bind-to none` when a rank runs several threads (Open MPI otherwise pins each rank to one
/// core, so its threads would share it).
///
/// A small `sh` wrapper runs the command with output to `output.log`, waits for it and writes its
/// exit status to `exit_status`; `JobStore` reads that back.
public struct LocalJobLauncher {
    public var store: JobStore
    /// The `mpirun` program (a path or a name looked up on PATH).
    public var mpirun: String
    /// The training program each rank runs.
    public var trainProgram: String
    /// Cores on this machine, for the `--oversubscribe` decision.
    public var cores: Int
    /// Whether the launcher runs as root (Open MPI refuses root without `--allow-run-as-root`).
    public var isRoot: Bool

    public init(store: JobStore, mpirun: String = "mpirun", trainProgram: String = LocalJobLauncher.defaultTrainProgram(),
                cores: Int = ProcessInfo.processInfo.activeProcessorCount, isRoot: Bool = geteuid() == 0) {
        self.store = store
        self.mpirun = mpirun
        self.trainProgram = trainProgram
        self.cores = cores
        self.isRoot = isRoot
    }

    /// `train` beside the running executable (a build folder or an install prefix), else `train`
    /// on PATH.
    public static func defaultTrainProgram() -> String {
        if let executable = Bundle.main.executableURL {
            let sibling = executable.resolvingSymlinksInPath().deletingLastPathComponent().appendingPathComponent("train")
            if FileManager.default.isExecutableFile(atPath: sibling.path) { return sibling.path }
        }
        return "train"
    }

    /// Slots the ranks may fill without oversubscribing, or nil when unknown (a hostfile entry
    /// without `slots=` lets Open MPI count that host's cores).
    public func availableSlots(_ spec: JobSpec, hostfileText: String?) -> Int? {
        if !spec.hosts.isEmpty {
            let slots = spec.hosts.map(\.slots)
            return slots.contains(where: { $0 == nil }) ? nil : slots.reduce(0) { $0 + $1! }
        }
        if let hostfileText {
            var total = 0
            for raw in hostfileText.split(separator: "\n") {
                let line = raw.split(separator: "#", maxSplits: 1, omittingEmptySubsequences: false)[0]
                    .trimmingCharacters(in: .whitespaces)
                if line.isEmpty { continue }
                guard let field = line.split(separator: " ").first(where: { $0.hasPrefix("slots=") }),
                      let slots = Int(field.dropFirst("slots=".count)) else { return nil }
                total += slots
            }
            return total > 0 ? total : nil
        }
        return cores
    }

    /// The `mpirun` command line for `spec`, with `hostfile` the path mpirun should read.
    public func command(for spec: JobSpec, hostfile: String?, hostfileText: String? = nil) -> [String] {
        var argv = [mpirun]
        if isRoot { argv.append("--allow-run-as-root") }
        if let slots = availableSlots(spec, hostfileText: hostfileText), spec.ranks > slots { argv.append("--oversubscribe") }
        if spec.threadsPerRank > 1 { argv += ["--bind-to", "none"] }
        argv += spec.mpirunArgs
        for (name, value) in spec.rankEnvironment { argv += ["-x", "\(name)=\(value)"] }
        argv += ["-np", "\(spec.ranks)"]
        if let hostfile { argv += ["--hostfile", hostfile] }
        // As the MPIJob and Slurm renderings do: submitting the job again continues its run.
        argv += [trainProgram, "--config", spec.config, "--resume-if-present"]
        return argv
    }

    /// The hostfile text for `hosts` (`node slots=N` lines).
    public static func hostfileText(_ hosts: [JobSpec.Host]) -> String {
        hosts.map { host in host.slots.map { "\(host.name) slots=\($0)" } ?? host.name }.joined(separator: "\n") + "\n"
    }

    /// What `launch` would run, without running it: the command and the hostfile it would write.
    public func plan(_ spec: JobSpec, jobFolder: URL? = nil) throws -> (command: [String], hostfile: String?) {
        try checkFiles(spec)
        if !spec.hosts.isEmpty {
            let path = (jobFolder ?? store.directory.appendingPathComponent("<id>")).appendingPathComponent("hostfile").path
            return (command(for: spec, hostfile: path, hostfileText: nil), LocalJobLauncher.hostfileText(spec.hosts))
        }
        if let hostfile = spec.hostfile {
            let text = try? String(contentsOfFile: hostfile, encoding: .utf8)
            return (command(for: spec, hostfile: hostfile, hostfileText: text), nil)
        }
        return (command(for: spec, hostfile: nil), nil)
    }

    private func checkFiles(_ spec: JobSpec) throws {
        guard spec.backend == .local else {
            throw JobStoreError("job '\(spec.name)': backend is \(spec.backend.rawValue); the local launcher runs only backend: local")
        }
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: spec.config, isDirectory: &isDirectory), !isDirectory.boolValue else {
            throw JobStoreError("job '\(spec.name)': key 'config': no file at \(spec.config)")
        }
        if let hostfile = spec.hostfile, !FileManager.default.fileExists(atPath: hostfile) {
            throw JobStoreError("job '\(spec.name)': key 'hostfile': no file at \(hostfile)")
        }
        guard LocalJobLauncher.findExecutable(mpirun) != nil else {
            throw JobStoreError("'\(mpirun)' is not an executable program (on Debian: apt-get install openmpi-bin)")
        }
        // Remote hosts have their own copy of train; only a purely local job can be checked here.
        if spec.hosts.isEmpty && spec.hostfile == nil && LocalJobLauncher.findExecutable(trainProgram) == nil {
            throw JobStoreError("the training program '\(trainProgram)' is not an executable program (build it with 'swift build -c release --product train', or pass its path)")
        }
    }

    /// The path `program` runs as: itself when it holds a '/', else the first match on PATH.
    static func findExecutable(_ program: String) -> String? {
        if program.contains("/") { return FileManager.default.isExecutableFile(atPath: program) ? program : nil }
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/local/bin:/usr/bin:/bin"
        for folder in path.split(separator: ":") where !folder.isEmpty {
            let candidate = "\(folder)/\(program)"
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
        }
        return nil
    }

    /// Starts the job and returns its record once the wrapper is running (or already done).
    public func launch(_ spec: JobSpec) throws -> JobRecord {
        try checkFiles(spec)
        let submittedAt = JobStore.now()
        let id = try store.makeJobFolder(name: spec.name, at: submittedAt)
        let folder = store.folder(id)
        let (argv, hostfileText) = try plan(spec, jobFolder: folder)
        if let hostfileText {
            try write(hostfileText, to: folder.appendingPathComponent("hostfile"))
        }
        try write(try spec.yaml(), to: folder.appendingPathComponent("job.yaml"))
        var record = JobRecord(id: id, spec: spec, submittedAt: submittedAt, command: argv,
                               logFile: folder.appendingPathComponent("output.log").path)
        try store.save(record)

        var environment = ProcessInfo.processInfo.environment
        for (name, value) in spec.rankEnvironment { environment[name] = value }
        let session = try LocalJobLauncher.spawnDetached(folder: folder, argv: argv, environment: environment)
        let pidFile = folder.appendingPathComponent("wrapper.pid").path
        guard let text = try? String(contentsOfFile: pidFile, encoding: .utf8),
              let pid = pid_t(text.trimmingCharacters(in: .whitespacesAndNewlines)) else {
            throw JobStoreError("job '\(id)': the wrapper did not start (no pid in \(pidFile))")
        }
        record.pid = pid
        record.session = session
        record.pidStartTicks = ProcessTable.entry(pid)?.startTicks
        try store.save(record)
        return record
    }

    private func write(_ text: String, to url: URL) throws {
        do {
            try text.write(to: url, atomically: true, encoding: .utf8)
        } catch {
            throw JobStoreError("cannot write \(url.path): \(error.localizedDescription)")
        }
    }

    /// The wrapper. `$1` is the job folder, the rest the command. The outer shell becomes a
    /// session leader (so the job has a session and process group of its own and no terminal),
    /// starts the waiting subshell in the background, writes its pid and exits at once, so the
    /// subshell is not left as an unreaped child of whoever launched it. The subshell ignores
    /// SIGHUP, defers SIGTERM until the command has ended (so the exit status is still written
    /// when the job is cancelled) and writes the status atomically.
    static let wrapperScript = """
        dir="$1"; shift
        (
          trap '' HUP
          trap ':' TERM
          "$@" </dev/null >>"$dir/output.log" 2>&1
          code=$?
          echo "$code" >"$dir/exit_status.tmp" && mv "$dir/exit_status.tmp" "$dir/exit_status"
        ) </dev/null >/dev/null 2>&1 &
        echo "$!" >"$dir/wrapper.pid"
        """

    #if os(Linux)
    /// Keeps every descriptor above 2 out of the job. Whatever the launching process has open
    /// (pipes to its own parent, sockets) would otherwise stay open for the job's whole life: a
    /// parent waiting for end-of-file on such a pipe would wait for the job, not for `sura`.
    private static func closeInheritedDescriptors(_ actions: inout posix_spawn_file_actions_t) {
        typealias CloseFrom = @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32
        // posix_spawn_file_actions_addclosefrom_np (glibc ≥ 2.34) is not in Swift's view of spawn.h.
        if let symbol = dlsym(nil, "posix_spawn_file_actions_addclosefrom_np") {
            if unsafeBitCast(symbol, to: CloseFrom.self)(&actions, 3) == 0 { return }
        }
        // Older C libraries: mark this process's descriptors close-on-exec instead.
        for name in (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? [] {
            if let fd = Int32(name), fd > 2 {
                let flags = fcntl(fd, F_GETFD)
                if flags >= 0 { _ = fcntl(fd, F_SETFD, flags | FD_CLOEXEC) }
            }
        }
    }
    #endif

    /// Runs the wrapper in a new session and waits for its outer shell (not the job); returns
    /// the session id.
    static func spawnDetached(folder: URL, argv: [String], environment: [String: String]) throws -> pid_t {
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        #if os(Linux)
        // POSIX_SPAWN_SETSID (glibc ≥ 2.26); the macro is hidden behind _GNU_SOURCE in Swift's view.
        let setSessionFlag: Int32 = 0x80
        #else
        // POSIX_SPAWN_SETSID | POSIX_SPAWN_CLOEXEC_DEFAULT (only fds 0–2 reach the job).
        let setSessionFlag: Int32 = 0x400 | 0x4000
        #endif
        // Start with no blocked signals and default dispositions, whatever the launching process had.
        var noSignals = sigset_t()
        sigemptyset(&noSignals)
        posix_spawnattr_setsigmask(&attributes, &noSignals)
        var defaults = sigset_t()
        sigemptyset(&defaults)
        for signal in [SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGPIPE, SIGCHLD] { sigaddset(&defaults, signal) }
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        posix_spawnattr_setflags(&attributes, Int16(setSessionFlag | Int32(POSIX_SPAWN_SETSIGMASK) | Int32(POSIX_SPAWN_SETSIGDEF)))

        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        for fd: Int32 in 0...2 {
            posix_spawn_file_actions_addopen(&actions, fd, "/dev/null", fd == 0 ? O_RDONLY : O_WRONLY, 0)
        }
        #if os(Linux)
        closeInheritedDescriptors(&actions)
        #endif

        let arguments = ["/bin/sh", "-c", wrapperScript, "sura-job", folder.path] + argv
        let environmentLines = environment.map { "\($0.key)=\($0.value)" }
        var cArguments = arguments.map { strdup($0) } + [nil]
        var cEnvironment = environmentLines.map { strdup($0) } + [nil]
        defer {
            cArguments.forEach { free($0) }
            cEnvironment.forEach { free($0) }
        }
        var pid = pid_t()
        let result = posix_spawn(&pid, "/bin/sh", &actions, &attributes, &cArguments, &cEnvironment)
        guard result == 0 else {
            throw JobStoreError("cannot start /bin/sh for the job wrapper: \(String(cString: strerror(result)))")
        }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) == -1 && errno == EINTR {}
        return pid
    }
}
