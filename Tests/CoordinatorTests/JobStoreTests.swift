import Coordinator
import Foundation
import SuraTestSupport
import XCTest
#if canImport(Glibc)
import Glibc
#endif

/// Local jobs as real detached processes: the "training program" is a shell script that runs its
/// `--config` file as a script, so each test's config says what the job does. Every wait is
/// bounded; every job that might still run is cancelled in tearDown.
final class JobStoreTests: XCTestCase {
    private var folder: URL!
    private var store: JobStore!
    private var launcher: LocalJobLauncher!

    override func setUpWithError() throws {
        folder = FileManager.default.temporaryDirectory.appendingPathComponent("sura-jobs-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        store = JobStore(directory: folder.appendingPathComponent("jobs"))
        // Stands in for mpirun: drops mpirun's options and runs the program once, as one rank.
        let fakeMpirun = try script("fake-mpirun", """
            #!/bin/sh
            while [ $# -gt 0 ]; do
              case "$1" in
                -np|--hostfile|-x|--bind-to|--mca) shift 2 ;;
                -*) shift ;;
                *) break ;;
              esac
            done
            exec "$@"
            """)
        let fakeTrain = try script("fake-train", """
            #!/bin/sh
            [ "$1" = "--config" ] || { echo "usage: train --config FILE" >&2; exit 64; }
            exec /bin/sh "$2"
            """)
        launcher = LocalJobLauncher(store: store, mpirun: fakeMpirun.path, trainProgram: fakeTrain.path)
    }

    override func tearDownWithError() throws {
        if let store {
            for record in (try? store.list()) ?? [] where store.status(of: record).state == .running {
                _ = try? store.cancel(record.id, grace: 1)
            }
        }
        if let folder { try? FileManager.default.removeItem(at: folder) }
    }

    private func script(_ name: String, _ text: String) throws -> URL {
        let url = folder.appendingPathComponent(name)
        try (text + "\n").write(to: url, atomically: true, encoding: .utf8)
        chmod(url.path, 0o755)
        return url
    }

    /// A job whose rank runs `body` as a shell script.
    private func submit(_ name: String, _ body: String, ranks: Int = 1) throws -> JobRecord {
        let config = try script("\(name).sh", body)
        var spec = try JobSpec(yaml: "name: \(name)\nconfig: \(config.path)\nranks: \(ranks)\n")
        spec.env = ["JOB_GREETING": "hello from env"]
        return try launcher.launch(spec)
    }

    /// Polls `condition` every 20 ms for at most `seconds`.
    private func eventually(_ seconds: TimeInterval, _ condition: () throws -> Bool) rethrows -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if try condition() { return true }
            Thread.sleep(forTimeInterval: 0.02)
        }
        return try condition()
    }

    func testASucceedingJobRecordsItsOutputAndStatus() throws {
        let record = try submit("ok", "echo first line\necho \"$JOB_GREETING\"\necho threads=$SURA_THREADS\necho last line")
        let status = try store.wait(record.id, timeout: 20)
        XCTAssertEqual(status.state, .succeeded, status.description)
        XCTAssertEqual(status.exitCode, 0)
        XCTAssertNotNil(status.finishedAt)
        let log = try store.logs(record.id, lines: nil)
        XCTAssertEqual(log, "first line\nhello from env\nthreads=1\nlast line\n")
        XCTAssertEqual(try store.logs(record.id, lines: 1), "last line\n")
        XCTAssertEqual(try store.logs(record.id, lines: 2), "threads=1\nlast line\n")
        XCTAssertEqual(try store.logs(record.id, lines: 0), "")

        let saved = try store.record(record.id)
        XCTAssertEqual(saved.submittedAt.timeIntervalSince1970, record.submittedAt.timeIntervalSince1970, accuracy: 0.002)
        var expected = record
        expected.submittedAt = saved.submittedAt
        XCTAssertEqual(saved, expected)
        XCTAssertEqual(saved.command.first, launcher.mpirun)
        XCTAssertEqual(saved.command.suffix(4), [launcher.trainProgram, "--config", record.spec.config, "--resume-if-present"])
        XCTAssertTrue(saved.id.hasPrefix("ok-"), saved.id)
        XCTAssertNotNil(saved.pid)
        let jobYAML = store.folder(record.id).appendingPathComponent("job.yaml")
        XCTAssertEqual(try JobSpec(yaml: String(contentsOf: jobYAML, encoding: .utf8)), record.spec)
    }

    func testAFailingJobKeepsItsExitStatus() throws {
        let record = try submit("bad", "echo about to fail >&2\nexit 3")
        let status = try store.wait(record.id, timeout: 20)
        XCTAssertEqual(status.state, .failed)
        XCTAssertEqual(status.exitCode, 3)
        XCTAssertTrue(status.detail.contains("exit status 3"), status.detail)
        XCTAssertEqual(try store.logs(record.id), "about to fail\n")
    }

    func testCancelStopsARunningJobWithSIGTERM() throws {
        let record = try submit("long", "echo started\nsleep 60\necho never")
        XCTAssertTrue(try eventually(10) { try store.logs(record.id).contains("started") })
        XCTAssertEqual(try store.status(record.id).state, .running)
        let session = try XCTUnwrap(record.session)
        XCTAssertFalse(ProcessTable.runningMembers(ofSession: session).isEmpty)

        let start = Date()
        let status = try store.cancel(record.id, grace: 10)
        XCTAssertLessThan(Date().timeIntervalSince(start), 8, "SIGTERM should end sh and sleep at once")
        XCTAssertEqual(status.state, .cancelled, status.description)
        XCTAssertEqual(status.exitCode, 143, "the wrapper records 128 + SIGTERM")
        XCTAssertTrue(ProcessTable.runningMembers(ofSession: session).isEmpty)
        XCTAssertFalse(try store.logs(record.id, lines: nil).contains("never"))
        // Cancelling again changes nothing.
        XCTAssertEqual(try store.cancel(record.id).state, .cancelled)
    }

    /// A descriptor the launching process holds (here a pipe, like the one a parent reads
    /// `sura submit`'s output from) must not stay open in the detached job.
    func testTheJobInheritsNoDescriptorsBeyondStandardIO() throws {
        let pipe = Pipe()
        defer { try? pipe.fileHandleForWriting.close() }
        let record = try submit("fds", "echo up\nsleep 60")
        XCTAssertTrue(try eventually(10) { try store.logs(record.id).contains("up") })
        var info = stat()
        XCTAssertEqual(fstat(pipe.fileHandleForWriting.fileDescriptor, &info), 0)
        let ours = "pipe:[\(info.st_ino)]"
        let members = ProcessTable.runningMembers(ofSession: try XCTUnwrap(record.session))
        XCTAssertFalse(members.isEmpty)
        for pid in members {
            let fds = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd")) ?? []
            let targets = fds.compactMap { try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/fd/\($0)") }
            XCTAssertFalse(targets.contains(ours), "process \(pid) of the job holds the launcher's pipe \(ours): \(targets)")
        }
        _ = try store.cancel(record.id, grace: 5)
    }

    func testCancelEscalatesToSIGKILLAfterTheGracePeriod() throws {
        let record = try submit("stubborn", "trap '' TERM\necho ready\nwhile :; do sleep 0.1; done")
        XCTAssertTrue(try eventually(10) { try store.logs(record.id).contains("ready") })
        let start = Date()
        let status = try store.cancel(record.id, grace: 0.5)
        let elapsed = Date().timeIntervalSince(start)
        XCTAssertGreaterThanOrEqual(elapsed, 0.5)
        XCTAssertLessThan(elapsed, 6)
        XCTAssertEqual(status.state, .cancelled, status.description)
        XCTAssertNil(status.exitCode, "SIGKILL leaves no exit status")
        XCTAssertTrue(ProcessTable.runningMembers(ofSession: try XCTUnwrap(record.session)).isEmpty)
    }

    func testAJobKilledBehindOurBackIsFailed() throws {
        let record = try submit("victim", "echo up\nsleep 60")
        XCTAssertTrue(try eventually(10) { try store.logs(record.id).contains("up") })
        let session = try XCTUnwrap(record.session)
        ProcessTable.signal(session: session, SIGKILL)
        XCTAssertTrue(eventually(5) { ProcessTable.runningMembers(ofSession: session).isEmpty })
        let status = try store.status(record.id)
        XCTAssertEqual(status.state, .failed)
        XCTAssertTrue(status.detail.contains("without an exit status"), status.detail)
    }

    func testListOrdersJobsAndTailReadsOnlyTheEnd() throws {
        let a = try submit("alpha", "seq 1 200000")
        let b = try submit("beta", "echo b")
        XCTAssertEqual(try store.wait(a.id, timeout: 30).state, .succeeded)
        XCTAssertEqual(try store.wait(b.id, timeout: 30).state, .succeeded)
        XCTAssertEqual(try store.list().map(\.id), [a.id, b.id])
        XCTAssertEqual(try store.logs(a.id, lines: 3), "199998\n199999\n200000\n")
        // A folder without a record (an interrupted submission) is skipped, not an error.
        try FileManager.default.createDirectory(at: store.directory.appendingPathComponent("half-done"), withIntermediateDirectories: true)
        XCTAssertEqual(try store.list().count, 2)
    }

    func testARecordWithoutAProcessIsAFailedLaunch() throws {
        let id = try store.makeJobFolder(name: "halfway")
        let spec = try JobSpec(yaml: "name: halfway\nconfig: c\nranks: 1\n")
        try store.save(JobRecord(id: id, spec: spec, submittedAt: JobStore.now(), command: ["mpirun"], logFile: "/nonexistent/log"))
        let status = try store.status(id)
        XCTAssertEqual(status.state, .failed)
        XCTAssertTrue(status.detail.contains("launch did not complete"), status.detail)
        XCTAssertEqual(try store.logs(id), "", "no log yet is an empty log")
        XCTAssertEqual(try store.cancel(id).state, .failed, "nothing to cancel")
    }

    func testSameSecondSubmissionsGetDistinctIDs() throws {
        let date = Date()
        let first = try store.makeJobFolder(name: "twin", at: date)
        let second = try store.makeJobFolder(name: "twin", at: date)
        XCTAssertNotEqual(first, second)
        XCTAssertTrue(second.hasSuffix("-2"), second)
    }

    func testUnknownAndMalformedIDsAreClearErrors() {
        XCTAssertThrowsError(try store.status("nope-000000-000000")) { error in
            XCTAssertTrue("\(error)".contains("no job 'nope-000000-000000'"), "\(error)")
            XCTAssertTrue("\(error)".contains(store.directory.path), "\(error)")
        }
        XCTAssertThrowsError(try store.logs("../etc")) { error in
            XCTAssertTrue("\(error)".contains("not a job id"), "\(error)")
        }
        XCTAssertThrowsError(try store.cancel("")) { error in
            XCTAssertTrue("\(error)".contains("not a job id"), "\(error)")
        }
        XCTAssertEqual(try store.list(), [])
    }

    func testMissingFilesAreRefusedBeforeAnythingStarts() throws {
        var spec = try JobSpec(yaml: "name: nofile\nconfig: \(folder.path)/absent.yaml\nranks: 1\n")
        XCTAssertThrowsError(try launcher.launch(spec)) { error in
            XCTAssertTrue("\(error)".contains("key 'config'"), "\(error)")
        }
        spec.config = try script("present.sh", "true").path
        spec.hostfile = "\(folder.path)/no-hostfile"
        XCTAssertThrowsError(try launcher.launch(spec)) { error in
            XCTAssertTrue("\(error)".contains("key 'hostfile'"), "\(error)")
        }
        spec.hostfile = nil
        var noMPI = launcher!
        noMPI.mpirun = "sura-test-no-such-mpirun"
        XCTAssertThrowsError(try noMPI.launch(spec)) { error in
            XCTAssertTrue("\(error)".contains("'sura-test-no-such-mpirun' is not an executable program"), "\(error)")
        }
        var noTrain = launcher!
        noTrain.trainProgram = "\(folder.path)/absent-train"
        XCTAssertThrowsError(try noTrain.launch(spec)) { error in
            XCTAssertTrue("\(error)".contains("absent-train' is not an executable program"), "\(error)")
        }
        spec.backend = .slurm
        XCTAssertThrowsError(try launcher.launch(spec)) { error in
            XCTAssertTrue("\(error)".contains("backend is slurm"), "\(error)")
        }
        XCTAssertEqual(try store.list(), [])
    }

    func testHostsAreWrittenToTheJobsHostfile() throws {
        let config = try script("hosts.sh", "true")
        var spec = try JobSpec(yaml: "name: hosted\nconfig: \(config.path)\nranks: 2\nhosts: [localhost:2]\n")
        spec.threadsPerRank = 1
        let record = try launcher.launch(spec)
        let hostfile = store.folder(record.id).appendingPathComponent("hostfile")
        XCTAssertEqual(try String(contentsOf: hostfile, encoding: .utf8), "localhost slots=2\n")
        XCTAssertEqual(record.command[record.command.firstIndex(of: "--hostfile")! + 1], hostfile.path)
        XCTAssertEqual(try store.wait(record.id, timeout: 20).state, .succeeded)
    }

    func testDefaultDirectory() {
        XCTAssertEqual(JobStore.defaultDirectory(environment: ["SURA_JOBS_DIR": "/srv/jobs", "HOME": "/home/u"]).path, "/srv/jobs")
        XCTAssertEqual(JobStore.defaultDirectory(environment: ["HOME": "/home/u"]).path, "/home/u/.sura/jobs")
        XCTAssertEqual(JobStore.defaultDirectory(environment: ["SURA_JOBS_DIR": "", "HOME": "/home/u"]).path, "/home/u/.sura/jobs")
    }

    /// The same path with the real Open MPI: two ranks, each printing its rank.
    func testRealMpirunRunsEveryRank() throws {
        let mpirun = try BuiltProducts.mpirun()
        launcher.mpirun = mpirun
        let record = try submit("mpi", "echo rank=$OMPI_COMM_WORLD_RANK threads=$SURA_THREADS", ranks: 2)
        let status = try store.wait(record.id, timeout: 60)
        let log = try store.logs(record.id, lines: nil)
        XCTAssertEqual(status.state, .succeeded, "\(status)\n\(log)")
        XCTAssertEqual(record.command.first, mpirun)
        XCTAssertTrue(log.contains("rank=0 threads=1"), log)
        XCTAssertTrue(log.contains("rank=1 threads=1"), log)
    }

    // MARK: - Slurm and Kubernetes submission through their clients (fakes here)

    func testSlurmSubmissionRecordsTheJobIDAndCancelsWithScancel() throws {
        let calls = folder.appendingPathComponent("calls.txt")
        var submitter = ClusterJobSubmitter(store: store, trainProgram: "/opt/sura/train")
        submitter.sbatch = try script("sbatch", "#!/bin/sh\necho \"sbatch $*\" >> \(calls.path)\necho '4242;cluster'").path
        submitter.scancel = try script("scancel", "#!/bin/sh\necho \"scancel $*\" >> \(calls.path)").path
        let config = try script("cfg.yaml", "steps: 1")
        let spec = try JobSpec(yaml: "name: slurmy\nconfig: \(config.path)\nranks: 4\nbackend: slurm\nslurm: {partition: cpu}\n")
        let record = try submitter.submit(spec)
        XCTAssertEqual(record.externalID, "4242")
        let script = store.folder(record.id).appendingPathComponent("job.sbatch")
        let text = try String(contentsOf: script, encoding: .utf8)
        XCTAssertTrue(text.contains("#SBATCH --partition=cpu"), text)
        XCTAssertTrue(text.contains("srun --mpi=pmix --cpus-per-task=1 /opt/sura/train --config \(config.path)"), text)
        XCTAssertEqual(try store.status(record.id).state, .submitted)
        XCTAssertTrue(try store.status(record.id).detail.contains("squeue -j 4242"))
        XCTAssertEqual(try submitter.cancel(record.id).state, .cancelled)
        XCTAssertEqual(try String(contentsOf: calls, encoding: .utf8), "sbatch --parsable \(script.path)\nscancel 4242\n")
    }

    func testKubernetesSubmissionAppliesTheRenderedManifest() throws {
        let calls = folder.appendingPathComponent("calls.txt")
        var submitter = ClusterJobSubmitter(store: store)
        submitter.kubectl = try script("kubectl", "#!/bin/sh\necho \"kubectl $*\" >> \(calls.path)\necho applied").path
        let config = try script("cfg.yaml", "steps: 1")
        let spec = try JobSpec(yaml: "name: kube\nconfig: \(config.path)\nranks: 2\nbackend: kubernetes\nimage: sura:dev\nkubernetes: {namespace: ml}\n")
        let record = try submitter.submit(spec)
        XCTAssertEqual(record.externalID, "mpijob/ml/kube")
        let manifest = store.folder(record.id).appendingPathComponent("mpijob.yaml")
        XCTAssertTrue(try String(contentsOf: manifest, encoding: .utf8).contains("kind: MPIJob"))
        XCTAssertEqual(try store.logs(record.id), "applied\n")
        _ = try submitter.cancel(record.id)
        XCTAssertEqual(try String(contentsOf: calls, encoding: .utf8),
                       "kubectl apply -f \(manifest.path)\nkubectl delete mpijob kube -n ml\n")
    }

    func testAMissingClusterClientIsAClearError() throws {
        var submitter = ClusterJobSubmitter(store: store)
        submitter.sbatch = "sura-no-such-sbatch"
        let config = try script("cfg.yaml", "steps: 1")
        let spec = try JobSpec(yaml: "name: nosbatch\nconfig: \(config.path)\nranks: 1\nbackend: slurm\n")
        XCTAssertThrowsError(try submitter.submit(spec)) { error in
            XCTAssertTrue("\(error)".contains("sura-no-such-sbatch is not on PATH"), "\(error)")
            XCTAssertTrue("\(error)".contains("--render slurm"), "\(error)")
        }
        var failing = ClusterJobSubmitter(store: store)
        failing.sbatch = try script("sbatch-fails", "#!/bin/sh\necho 'sbatch: error: invalid partition' >&2\nexit 1").path
        XCTAssertThrowsError(try failing.submit(spec)) { error in
            XCTAssertTrue("\(error)".contains("invalid partition"), "\(error)")
        }
    }
}
