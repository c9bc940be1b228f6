import CMPIShim
import Foundation

/// The process-wide side of MPI: detecting `mpirun`, initialising once, finalising at exit, and
/// turning MPI error codes into Swift errors.
///
/// A process started without `mpirun` never touches MPI: `worldCommunicator()` then returns a
/// world of one (`InProcessCommunicator.singleProcess()`), so every command works on a laptop.
///
/// What happens when a rank fails (measured with Open MPI 4.1.4, `mpirun -np 3`):
/// - killed, even by SIGKILL: `mpirun` notices ("exited on signal 9"), kills the other ranks and
///   exits with 137, within about a second. Nothing waits for a timeout.
/// - exits with a non-zero status (`exit(1)` after an error): the exit handler calls `MPI_Abort`,
///   so `mpirun` ends the job at once with that status.
/// - alive but stalled (an endless loop, SIGSTOP): the ranks waiting on it throw
///   `CollectiveError.timeout` after `Communicator.timeout` seconds, naming it for point-to-point
///   and ring operations (MPI's own collectives cannot say which rank is missing); when they exit
///   with that error the job is aborted, so nothing hangs forever.
public enum MPIRuntime {
    private static let stateLock = NSLock()
    private static var initialised = false
    private static var multipleThreads = false
    private static var unclean: String?
    /// Serialises MPI calls when the library does not provide `MPI_THREAD_MULTIPLE`.
    private static let callLock = NSLock()

    /// True when this process was launched by an MPI launcher: Open MPI's `mpirun` sets
    /// `OMPI_COMM_WORLD_SIZE`, PMIx launchers (`srun --mpi=pmix`, prte) set `PMIX_RANK`, and
    /// PMI-1/2 launchers set `PMI_RANK`.
    public static var isUnderMPIRun: Bool {
        let environment = ProcessInfo.processInfo.environment
        return ["OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK"].contains { environment[$0] != nil }
    }

    /// True once `initialize()` has succeeded in this process.
    public static var isInitialized: Bool {
        stateLock.lock()
        defer { stateLock.unlock() }
        return initialised
    }

    /// True when MPI provides `MPI_THREAD_MULTIPLE`; otherwise every MPI call is made under one
    /// process-wide lock (calls never block inside MPI, they poll, so the lock is held briefly).
    public static var isThreadMultiple: Bool {
        stateLock.lock()
        defer { stateLock.unlock() }
        return multipleThreads
    }

    /// Initialises MPI once per process with `MPI_Init_thread(MPI_THREAD_MULTIPLE)` (see
    /// `requestedThreadLevel`), makes
    /// `MPI_COMM_WORLD` return errors instead of aborting, and finalises at process exit.
    /// Further calls do nothing.
    public static func initialize() throws {
        stateLock.lock()
        defer { stateLock.unlock() }
        if initialised { return }
        var already: Int32 = 0
        MPI_Initialized(&already)
        var provided: Int32 = 0
        if already != 0 {
            MPI_Query_thread(&provided)
        } else {
            let code = MPI_Init_thread(nil, nil, requestedThreadLevel, &provided)
            guard code == sura_mpi_success() else {
                throw CollectiveError.mpi(operation: "MPI_Init_thread", code: Int(code),
                                          message: "MPI could not start (is this process under mpirun?)")
            }
            registerExitHandler()
        }
        multipleThreads = provided >= sura_mpi_thread_multiple()
        initialised = true
        MPI_Comm_set_errhandler(sura_mpi_comm_world(), sura_mpi_errors_return())
    }

    /// `MPI_THREAD_MULTIPLE`, unless `SURA_MPI_THREAD_LEVEL=serialized` asks for the lock-based
    /// mode (to exercise it, or to work around an MPI build whose multi-threading misbehaves).
    private static var requestedThreadLevel: Int32 {
        ProcessInfo.processInfo.environment["SURA_MPI_THREAD_LEVEL"] == "serialized"
            ? sura_mpi_thread_serialized() : sura_mpi_thread_multiple()
    }

    /// The world communicator: MPI's world under `mpirun` (initialising MPI if needed),
    /// otherwise a world of one that needs no MPI at all.
    public static func worldCommunicator(timeout: Double = CollectiveTimeout.defaultSeconds) throws -> Communicator {
        guard isUnderMPIRun else { return InProcessCommunicator.singleProcess(timeout: timeout) }
        let world = try MPICommunicator.world()
        world.timeout = timeout
        return world
    }

    /// Finalises MPI if it was initialised and not yet finalised; also registered to run at exit.
    /// Open MPI's finalize waits for every rank to finalise, so after any timeout in this process
    /// (a peer is stalled) the job is aborted at once with `MPI_Abort` instead. As a last safety
    /// net, if finalize still takes longer than `grace` seconds the process exits with status 1,
    /// which makes `mpirun` end the job. `grace` is generous because ranks that finish early
    /// legitimately wait here while rank 0 finishes its own last work (a checkpoint, evaluation).
    public static func finalize(grace: Double = 600) {
        stateLock.lock()
        let wasInitialised = initialised
        let leftover = unclean
        stateLock.unlock()
        guard wasInitialised, !isFinalized else { return }
        if let leftover {
            abort(reason: "\(leftover), so a peer is stalled", code: 1)
        }
        let finished = DispatchSemaphore(value: 0)
        let watchdog = Thread {
            guard finished.wait(timeout: .now() + grace) == .timedOut else { return }
            FileHandle.standardError.write(Data(
                "sura: MPI_Finalize did not complete within \(grace) s (a peer is stalled); exiting\n".utf8))
            _exit(1)
        }
        watchdog.start()
        MPI_Finalize()
        finished.signal()
    }

    /// Aborts the whole MPI job (every rank) with `code` after printing `reason`.
    public static func abort(reason: String, code: Int32) -> Never {
        FileHandle.standardError.write(Data("sura: aborting MPI job: \(reason)\n".utf8))
        MPI_Abort(sura_mpi_comm_world(), code)
        _exit(code)
    }

    static var isFinalized: Bool {
        var finalized: Int32 = 0
        MPI_Finalized(&finalized)
        return finalized != 0
    }

    /// At exit, finalise after a successful run; after `exit(status)` with a non-zero status
    /// abort the job at once, since the peers would otherwise wait in their next collective (or
    /// in finalize) until their timeouts. glibc's `on_exit` reports the status; elsewhere
    /// `atexit` always finalises.
    private static func registerExitHandler() {
        #if os(Linux)
        on_exit({ status, _ in
            if status != 0 && !MPIRuntime.isFinalized {
                MPIRuntime.abort(reason: "this rank is exiting with status \(status)", code: status)
            }
            MPIRuntime.finalize()
        }, nil)
        #else
        atexit { MPIRuntime.finalize() }
        #endif
    }

    /// Records that an operation timed out: a peer is stalled (so `MPI_Finalize` would wait for
    /// it forever) or requests were left that MPI may still complete into memory the caller got
    /// back. Such a process aborts the job rather than finalising.
    static func markUnclean(_ reason: String) {
        stateLock.lock()
        if unclean == nil && expectedTimeouts == 0 { unclean = reason }
        stateLock.unlock()
    }

    private static var expectedTimeouts = 0

    /// Runs `body`, in which a timeout is provoked on purpose (the self-test's silent-peer check)
    /// and must not make the process abort at exit.
    static func expectingTimeouts<T>(_ body: () throws -> T) rethrows -> T {
        stateLock.lock()
        expectedTimeouts += 1
        stateLock.unlock()
        defer {
            stateLock.lock()
            expectedTimeouts -= 1
            stateLock.unlock()
        }
        return try body()
    }

    /// Runs one MPI call, under the process-wide lock when MPI lacks `MPI_THREAD_MULTIPLE`.
    @inline(__always)
    static func call<T>(_ body: () -> T) -> T {
        if multipleThreads { return body() }
        callLock.lock()
        defer { callLock.unlock() }
        return body()
    }

    /// Throws `CollectiveError.mpi` with MPI's own message when `code` is not `MPI_SUCCESS`.
    @inline(__always)
    static func check(_ code: Int32, _ operation: @autoclosure () -> String) throws {
        if code != sura_mpi_success() {
            throw CollectiveError.mpi(operation: operation(), code: Int(code), message: errorString(code))
        }
    }

    /// `MPI_Error_string` of `code`.
    static func errorString(_ code: Int32) -> String {
        var text = [CChar](repeating: 0, count: Int(sura_mpi_max_error_string()) + 1)
        var length: Int32 = 0
        guard MPI_Error_string(code, &text, &length) == sura_mpi_success() else {
            return "unknown MPI error"
        }
        return String(decoding: text.prefix(Int(length)).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}
