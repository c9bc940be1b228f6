import Coordinator
import Foundation
import XCTest

final class JobSpecTests: XCTestCase {
    let full = """
        name: sur-adapter
        kind: train
        config: configs/sur.yaml
        ranks: 4
        hosts: [node1:2, node2:2]
        threads_per_rank: 2
        image: registry.example/sura:1.0
        resources:
          cpu: 1500m
          memory: 3Gi
        backend: slurm
        slurm:
          partition: cpu
          time: "02:00:00"
          nodes: 2
          ntasks_per_node: 2
          account: research
          launcher: mpirun
        kubernetes:
          namespace: ml
          slots_per_worker: 2
          config_map: sur-config
        env:
          SURA_LOG: debug
          SEED: 7
        mpirun_args: [--mca, btl_tcp_if_include, eth0]
        """

    func testEveryKeyIsRead() throws {
        let spec = try JobSpec(yaml: full)
        XCTAssertEqual(spec.name, "sur-adapter")
        XCTAssertEqual(spec.kind, .train)
        XCTAssertEqual(spec.config, "configs/sur.yaml")
        XCTAssertEqual(spec.ranks, 4)
        XCTAssertEqual(spec.hosts, [JobSpec.Host(name: "node1", slots: 2), JobSpec.Host(name: "node2", slots: 2)])
        XCTAssertNil(spec.hostfile)
        XCTAssertEqual(spec.threadsPerRank, 2)
        XCTAssertEqual(spec.image, "registry.example/sura:1.0")
        XCTAssertEqual(spec.resources, JobSpec.Resources(cpu: "1500m", memory: "3Gi"))
        XCTAssertEqual(spec.backend, .slurm)
        XCTAssertEqual(spec.slurm.partition, "cpu")
        XCTAssertEqual(spec.slurm.time, "02:00:00")
        XCTAssertEqual(spec.slurm.nodes, 2)
        XCTAssertEqual(spec.slurm.ntasksPerNode, 2)
        XCTAssertEqual(spec.slurm.account, "research")
        XCTAssertEqual(spec.slurm.launcher, .mpirun)
        XCTAssertEqual(spec.kubernetes.namespace, "ml")
        XCTAssertEqual(spec.kubernetes.slotsPerWorker, 2)
        XCTAssertEqual(spec.kubernetes.configMap, "sur-config")
        XCTAssertEqual(spec.env, ["SURA_LOG": "debug", "SEED": "7"])
        XCTAssertEqual(spec.mpirunArgs, ["--mca", "btl_tcp_if_include", "eth0"])
        XCTAssertEqual(spec.millicoresPerRank, 1500)
        XCTAssertEqual(spec.bytesPerRank, 3 << 30)
    }

    func testDefaultsAndTheNpSpelling() throws {
        let spec = try JobSpec(yaml: "name: tiny\nconfig: c.yaml\nnp: 2\n")
        XCTAssertEqual(spec.ranks, 2)
        XCTAssertEqual(spec.kind, .train)
        XCTAssertEqual(spec.backend, .local)
        XCTAssertEqual(spec.threadsPerRank, 1)
        XCTAssertEqual(spec.hosts, [])
        XCTAssertEqual(spec.slurm.launcher, .srun)
        XCTAssertEqual(spec.kubernetes.slotsPerWorker, 1)
        XCTAssertEqual(spec.millicoresPerRank, 1000)
        XCTAssertNil(spec.bytesPerRank)
        let environment = Dictionary(uniqueKeysWithValues: spec.rankEnvironment)
        XCTAssertEqual(environment["SURA_THREADS"], "1")
        XCTAssertEqual(environment["OMP_NUM_THREADS"], "1")
    }

    func testEnvOverridesTheThreadVariables() throws {
        let spec = try JobSpec(yaml: "name: t\nconfig: c\nranks: 1\nthreads_per_rank: 3\nenv: {OMP_NUM_THREADS: 1}\n")
        let environment = spec.rankEnvironment
        XCTAssertEqual(environment.filter { $0.0 == "OMP_NUM_THREADS" }.map(\.1), ["1"])
        XCTAssertEqual(environment.first { $0.0 == "SURA_THREADS" }?.1, "3")
    }

    func testDeterministicExportsTheVariableEveryBackendPasses() throws {
        let spec = try JobSpec(yaml: "name: t\nconfig: c\nranks: 2\ndeterministic: true\n")
        XCTAssertTrue(spec.deterministic)
        XCTAssertEqual(spec.rankEnvironment.first { $0.0 == "SURA_DETERMINISTIC" }?.1, "1")
        XCTAssertEqual(try JobSpec(yaml: try spec.yaml()), spec)
        let plain = try JobSpec(yaml: "name: t\nconfig: c\nranks: 2\ndeterministic: no\n")
        XCTAssertFalse(plain.rankEnvironment.contains { $0.0 == "SURA_DETERMINISTIC" })
        XCTAssertFalse(try plain.yaml().contains("deterministic"))
        XCTAssertThrowsError(try JobSpec(yaml: "name: t\nconfig: c\nranks: 2\ndeterministic: maybe\n")) { error in
            XCTAssertEqual((error as? JobSpecError)?.key, "deterministic")
            XCTAssertTrue("\(error)".contains("expected true or false, got 'maybe'"), "\(error)")
        }
    }

    func testYAMLAndJSONRoundTrip() throws {
        let spec = try JobSpec(yaml: full)
        XCTAssertEqual(try JobSpec(yaml: try spec.yaml()), spec)
        let data = try JSONEncoder().encode(spec)
        XCTAssertEqual(try JSONDecoder().decode(JobSpec.self, from: data), spec)
        let minimal = try JobSpec(yaml: "name: m\nconfig: c\nranks: 1\n")
        let text = try minimal.yaml()
        XCTAssertFalse(text.contains("slurm"), text)
        XCTAssertFalse(text.contains("hosts"), text)
        XCTAssertEqual(try JobSpec(yaml: text), minimal)
    }

    func testRelativePathsResolveAgainstTheJobFile() throws {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("jobspec-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: folder) }
        let file = folder.appendingPathComponent("job.yaml")
        try "name: rel\nconfig: ../cfg/train.yaml\nranks: 1\nhostfile: hosts.txt\n".write(to: file, atomically: true, encoding: .utf8)
        let spec = try JobSpec.load(contentsOf: file)
        XCTAssertEqual(spec.config, folder.deletingLastPathComponent().appendingPathComponent("cfg/train.yaml").path)
        XCTAssertEqual(spec.hostfile, folder.appendingPathComponent("hosts.txt").path)
        XCTAssertThrowsError(try JobSpec.load(contentsOf: folder.appendingPathComponent("missing.yaml"))) { error in
            XCTAssertTrue("\(error)".contains("missing.yaml"), "\(error)")
        }
    }

    // MARK: - Errors name the file, line, key and allowed values

    private func failure(_ yaml: String, file: StaticString = #filePath, line: UInt = #line) -> JobSpecError? {
        do {
            _ = try JobSpec(yaml: yaml, file: "job.yaml")
            XCTFail("expected an error for:\n\(yaml)", file: file, line: line)
            return nil
        } catch let error as JobSpecError {
            return error
        } catch {
            XCTFail("expected JobSpecError, got \(error)", file: file, line: line)
            return nil
        }
    }

    func testUnknownKeysAreErrorsWithSuggestions() {
        let top = failure("name: a\nconfig: c\nrank: 2\n")
        XCTAssertEqual(top?.key, "rank")
        XCTAssertEqual(top?.line, 3)
        XCTAssertTrue(top?.message.contains("did you mean 'ranks'?") == true, top?.description ?? "")
        XCTAssertTrue(top?.description.hasPrefix("job.yaml:3: key 'rank'") == true, top?.description ?? "")

        let nested = failure("name: a\nconfig: c\nranks: 2\nslurm:\n  ntask_per_node: 2\n")
        XCTAssertEqual(nested?.key, "slurm.ntask_per_node")
        XCTAssertEqual(nested?.line, 5)
        XCTAssertTrue(nested?.message.contains("ntasks_per_node") == true, nested?.description ?? "")

        let resources = failure("name: a\nconfig: c\nranks: 2\nresources: {gpu: 1}\n")
        XCTAssertEqual(resources?.key, "resources.gpu")
        XCTAssertTrue(resources?.message.contains("cpu, memory") == true)
    }

    func testChoicesListTheAllowedValues() {
        let backend = failure("name: a\nconfig: c\nranks: 2\nbackend: k8s\n")
        XCTAssertEqual(backend?.key, "backend")
        XCTAssertTrue(backend?.message.contains("local, slurm, kubernetes") == true, backend?.description ?? "")
        let kind = failure("name: a\nkind: serve\nconfig: c\nranks: 2\n")
        XCTAssertEqual(kind?.key, "kind")
        XCTAssertTrue(kind?.message.contains("allowed values: train") == true)
        let launcher = failure("name: a\nconfig: c\nranks: 2\nslurm: {launcher: ssh}\n")
        XCTAssertEqual(launcher?.key, "slurm.launcher")
        XCTAssertTrue(launcher?.message.contains("srun, mpirun") == true)
    }

    func testNumbersAreCheckedForKindAndRange() {
        XCTAssertEqual(failure("name: a\nconfig: c\nranks: 0\n")?.key, "ranks")
        XCTAssertTrue(failure("name: a\nconfig: c\nranks: four\n")?.message.contains("whole number") == true)
        XCTAssertTrue(failure("name: a\nconfig: c\nranks: 2.5\n")?.message.contains("'2.5'") == true)
        XCTAssertEqual(failure("name: a\nconfig: c\nranks: 2\nthreads_per_rank: 0\n")?.key, "threads_per_rank")
        XCTAssertEqual(failure("name: a\nconfig: c\nranks: 2\nkubernetes: {slots_per_worker: -1}\n")?.key, "kubernetes.slots_per_worker")
        XCTAssertEqual(failure("name: a\nconfig: c\nranks: [1]\n")?.key, "ranks")
        XCTAssertTrue(failure("name: a\nconfig: c\nranks:\n")?.message.contains("needs a value") == true)
    }

    func testRequiredKeys() {
        XCTAssertEqual(failure("config: c\nranks: 1\n")?.key, "name")
        XCTAssertEqual(failure("name: a\nranks: 1\n")?.key, "config")
        XCTAssertEqual(failure("name: a\nconfig: c\n")?.key, "ranks")
        XCTAssertEqual(failure("name: a\nconfig: c\nranks: 1\nnp: 1\n")?.key, "np")
        let image = failure("name: a\nconfig: c\nranks: 1\nbackend: kubernetes\n")
        XCTAssertEqual(image?.key, "image")
        XCTAssertTrue(image?.message.contains("kubernetes") == true)
    }

    func testNamesAndWordsAreChecked() {
        XCTAssertEqual(failure("name: Big_Job\nconfig: c\nranks: 1\n")?.key, "name")
        XCTAssertEqual(failure("name: 1job\nconfig: c\nranks: 1\n")?.key, "name")
        XCTAssertEqual(failure("name: \(String(repeating: "a", count: 41))\nconfig: c\nranks: 1\n")?.key, "name")
        XCTAssertEqual(failure("name: a\nconfig: c\nranks: 1\nkubernetes: {namespace: My NS}\n")?.key, "kubernetes.namespace")
        XCTAssertEqual(failure("name: a\nconfig: c\nranks: 1\nenv: {1BAD: x}\n")?.key, "env.1BAD")
        XCTAssertEqual(failure("name: a\nconfig: c\nranks: 1\nenv: {A: [1]}\n")?.key, "env.A")
        XCTAssertEqual(failure("name: a\nconfig: c\nranks: 1\nimage: 'my image'\n")?.key, "image")
        XCTAssertEqual(failure("name: a\nconfig: c\nranks: 1\nslurm: {partition: two words}\n")?.key, "slurm.partition")
    }

    func testHostsAndHostfile() {
        XCTAssertTrue(failure("name: a\nconfig: c\nranks: 1\nhosts: [n1]\nhostfile: h\n")?.message.contains("not both") == true)
        XCTAssertTrue(failure("name: a\nconfig: c\nranks: 1\nhosts: [n1:0]\n")?.message.contains("slots") == true)
        XCTAssertTrue(failure("name: a\nconfig: c\nranks: 1\nhosts: ['n1:2:3']\n")?.message.contains("host:slots") == true)
        XCTAssertTrue(failure("name: a\nconfig: c\nranks: 1\nhosts: []\n")?.message.contains("at least one") == true)
        XCTAssertTrue(failure("name: a\nconfig: c\nranks: 1\nhosts: n1\n")?.message.contains("expected a list") == true)
        XCTAssertEqual(failure("name: a\nconfig: c\nranks: 1\nhosts: [{name: n1}]\n")?.key, "hosts[0]")
    }

    func testResourcesAndSlurmValues() throws {
        XCTAssertEqual(failure("name: a\nconfig: c\nranks: 1\nresources: {cpu: two}\n")?.key, "resources.cpu")
        XCTAssertEqual(failure("name: a\nconfig: c\nranks: 1\nresources: {cpu: 0.0001}\n")?.key, "resources.cpu")
        XCTAssertEqual(failure("name: a\nconfig: c\nranks: 1\nresources: {memory: 4GB}\n")?.key, "resources.memory")
        XCTAssertEqual(failure("name: a\nconfig: c\nranks: 1\nslurm: {time: 2h}\n")?.key, "slurm.time")
        XCTAssertEqual(failure("name: a\nconfig: c\nranks: 1\nslurm: {time: '1:2:3:4'}\n")?.key, "slurm.time")
        let shortfall = failure("name: a\nconfig: c\nranks: 8\nslurm: {nodes: 2, ntasks_per_node: 3}\n")
        XCTAssertEqual(shortfall?.key, "slurm.ntasks_per_node")
        XCTAssertTrue(shortfall?.message.contains("fewer than the 8 ranks") == true)
        for time in ["90", "30:00", "02:00:00", "1-12", "1-12:30", "2-00:00:00"] {
            XCTAssertEqual(try JobSpec(yaml: "name: a\nconfig: c\nranks: 1\nslurm: {time: '\(time)'}\n").slurm.time, time)
        }
        XCTAssertEqual(try JobSpec(yaml: "name: a\nconfig: c\nranks: 1\nresources: {cpu: 2}\n").millicoresPerRank, 2000)
    }

    func testMalformedDocuments() {
        XCTAssertTrue(failure("")?.message.contains("empty") == true)
        XCTAssertTrue(failure("- a\n- b\n")?.message.contains("expected a mapping") == true)
        XCTAssertTrue(failure("name: [unclosed\n")?.message.contains("not valid YAML") == true)
        let twice = failure("name: a\nname: b\nconfig: c\nranks: 1\n")
        XCTAssertNotNil(twice)
        XCTAssertTrue(twice?.description.contains("name") == true, twice?.description ?? "")
        XCTAssertEqual(failure("name: a\nconfig: c\nranks: 1\nslurm: [1]\n")?.key, "slurm")
    }

    func testResourceQuantities() {
        XCTAssertEqual(ResourceQuantity.millicores("500m"), 500)
        XCTAssertEqual(ResourceQuantity.millicores("1.5"), 1500)
        XCTAssertEqual(ResourceQuantity.millicores("2"), 2000)
        XCTAssertNil(ResourceQuantity.millicores("0"))
        XCTAssertNil(ResourceQuantity.millicores("-1"))
        XCTAssertNil(ResourceQuantity.millicores("1.2345"))
        XCTAssertEqual(ResourceQuantity.bytes("4Gi"), 4 << 30)
        XCTAssertEqual(ResourceQuantity.bytes("512Mi"), 512 << 20)
        XCTAssertEqual(ResourceQuantity.bytes("2G"), 2_000_000_000)
        XCTAssertEqual(ResourceQuantity.bytes("1000"), 1000)
        XCTAssertNil(ResourceQuantity.bytes("Gi"))
        XCTAssertNil(ResourceQuantity.bytes("1.5Gi"))
        XCTAssertNil(ResourceQuantity.bytes("99999999999999999999Ti"))
        XCTAssertEqual(ResourceQuantity.cpuText(millicores: 3000), "3")
        XCTAssertEqual(ResourceQuantity.cpuText(millicores: 2500), "2500m")
        XCTAssertEqual(ResourceQuantity.memoryText(bytes: 6 << 30), "6Gi")
        XCTAssertEqual(ResourceQuantity.memoryText(bytes: 1536 << 20), "1536Mi")
        XCTAssertEqual(ResourceQuantity.mebibytes(bytes: (1 << 20) + 1), 2)
    }

    // MARK: - The local mpirun command line

    func testMpirunCommandLine() throws {
        let store = JobStore(directory: URL(fileURLWithPath: "/nonexistent"))
        var spec = try JobSpec(yaml: "name: a\nconfig: /cfg.yaml\nranks: 4\n")
        let root = LocalJobLauncher(store: store, mpirun: "mpirun", trainProgram: "/opt/train", cores: 2, isRoot: true)
        let argv = root.command(for: spec, hostfile: nil)
        XCTAssertEqual(argv.prefix(3), ["mpirun", "--allow-run-as-root", "--oversubscribe"])
        XCTAssertEqual(argv.suffix(6), ["-np", "4", "/opt/train", "--config", "/cfg.yaml", "--resume-if-present"])
        XCTAssertTrue(argv.contains("SURA_THREADS=1"))
        XCTAssertFalse(argv.contains("--bind-to"))

        let user = LocalJobLauncher(store: store, mpirun: "mpirun", trainProgram: "train", cores: 8, isRoot: false)
        XCTAssertFalse(user.command(for: spec, hostfile: nil).contains("--allow-run-as-root"))
        XCTAssertFalse(user.command(for: spec, hostfile: nil).contains("--oversubscribe"))

        spec.threadsPerRank = 2
        spec.hosts = [JobSpec.Host(name: "n1", slots: 2), JobSpec.Host(name: "n2", slots: 1)]
        spec.mpirunArgs = ["--mca", "btl", "tcp,self"]
        let hosted = user.command(for: spec, hostfile: "/jobs/x/hostfile")
        XCTAssertTrue(hosted.contains("--oversubscribe"), "4 ranks on 3 listed slots")
        XCTAssertEqual(Array(hosted[hosted.firstIndex(of: "--bind-to")!...].prefix(2)), ["--bind-to", "none"])
        XCTAssertEqual(Array(hosted.suffix(6).prefix(2)), ["--hostfile", "/jobs/x/hostfile"])
        XCTAssertTrue(hosted.contains("OMP_NUM_THREADS=2"))
        XCTAssertLessThan(hosted.firstIndex(of: "--mca")!, hosted.firstIndex(of: "-np")!)
        XCTAssertEqual(LocalJobLauncher.hostfileText(spec.hosts), "n1 slots=2\nn2 slots=1\n")

        spec.hosts = [JobSpec.Host(name: "n1", slots: 4)]
        XCTAssertFalse(user.command(for: spec, hostfile: "/h").contains("--oversubscribe"))
        spec.hosts = []
        XCTAssertEqual(user.availableSlots(spec, hostfileText: "# cluster\nn1 slots=2\nn2 slots=2 max_slots=4\n"), 4)
        XCTAssertNil(user.availableSlots(spec, hostfileText: "n1\nn2 slots=2\n"))
    }
}
