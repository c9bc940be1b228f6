import Coordinator
import Foundation
import XCTest

/// The manifests in k8s/ and the MPIJobs `sura submit --render mpijob` writes, validated against
/// the Kubernetes schemas (from the kubernetes-validate package) and the MPIJob and KEDA
/// ScaledObject schemas (written from the operators' API types), all under Fixtures/schemas.
final class RenderedManifestTests: XCTestCase {
    private static let validator = Result { try SchemaValidator(folder: RepositoryPaths.schemas) }

    private func validator() throws -> SchemaValidator { try Self.validator.get() }

    /// Every manifest file in k8s/ (train-job.yaml is a Sura job file, checked separately).
    private func k8sDocuments() throws -> [(file: String, document: JSONValue)] {
        let files = try FileManager.default.contentsOfDirectory(atPath: RepositoryPaths.k8s.path)
            .filter { $0.hasSuffix(".yaml") && $0 != "train-job.yaml" }.sorted()
        return try files.flatMap { file -> [(String, JSONValue)] in
            let text = try String(contentsOf: RepositoryPaths.k8s.appendingPathComponent(file), encoding: .utf8)
            return try JSONValue.documents(yaml: text).map { (file, $0) }
        }
    }

    private func find(_ documents: [(file: String, document: JSONValue)], kind: String, name: String) -> JSONValue? {
        documents.first { $0.document["kind"]?.string == kind && $0.document["metadata"]?["name"]?.string == name }?.document
    }

    func testEveryK8sManifestMatchesItsSchema() throws {
        let validator = try validator()
        let documents = try k8sDocuments()
        XCTAssertGreaterThanOrEqual(documents.count, 8)
        for (file, document) in documents {
            let problems = validator.validate(document: document)
            XCTAssertEqual(problems, [], "k8s/\(file) \(document["kind"]?.string ?? "?"): \(problems.joined(separator: "\n"))")
        }
        let kinds = Set(documents.map { "\($0.document["apiVersion"]?.string ?? "")/\($0.document["kind"]?.string ?? "")" })
        XCTAssertEqual(kinds, ["v1/ConfigMap", "v1/Service", "apps/v1/Deployment", "autoscaling/v2/HorizontalPodAutoscaler",
                               "keda.sh/v1alpha1/ScaledObject", "kubeflow.org/v2beta1/MPIJob"])
    }

    /// Names and ports that must agree across files for the pieces to find each other.
    func testK8sManifestsReferToEachOther() throws {
        let documents = try k8sDocuments()
        let service = try XCTUnwrap(find(documents, kind: "Service", name: "sura-scheduler"))
        let scheduler = try XCTUnwrap(find(documents, kind: "Deployment", name: "sura-scheduler"))
        let worker = try XCTUnwrap(find(documents, kind: "Deployment", name: "sura-worker"))
        let podLabels = scheduler["spec"]?["template"]?["metadata"]?["labels"]?.object ?? [:]
        for (key, value) in service["spec"]?["selector"]?.object ?? [:] {
            XCTAssertEqual(podLabels[key], value, "the Service selects scheduler pods by \(key)")
        }
        XCTAssertEqual(scheduler["spec"]?["selector"]?["matchLabels"]?.object.map { $0.allSatisfy { podLabels[$0.key] == $0.value } }, true)

        let backendPort = service["spec"]?["ports"]?.array?.first { $0["name"]?.string == "backend" }?["port"]?.int
        XCTAssertEqual(backendPort, 5556)
        let workerArgs = worker["spec"]?["template"]?["spec"]?["containers"]?[0]?["args"]?.array?.compactMap(\.string) ?? []
        let schedulerEndpoint = workerArgs[(workerArgs.firstIndex(of: "--scheduler") ?? 0) + 1]
        XCTAssertEqual(schedulerEndpoint, "tcp://\(service["metadata"]?["name"]?.string ?? ""):\(backendPort ?? 0)")
        let schedulerArgs = scheduler["spec"]?["template"]?["spec"]?["containers"]?[0]?["args"]?.array?.compactMap(\.string) ?? []
        XCTAssertTrue(schedulerArgs.contains("tcp://0.0.0.0:5556"), "the scheduler binds the back end on every interface")

        // Every $(VAR) in args is defined in the container's env, and every configMapKeyRef exists.
        for deployment in [scheduler, worker] {
            let container = try XCTUnwrap(deployment["spec"]?["template"]?["spec"]?["containers"]?[0])
            let env = container["env"]?.array ?? []
            let names = Set(env.compactMap { $0["name"]?.string })
            for arg in container["args"]?.array?.compactMap(\.string) ?? [] where arg.hasPrefix("$(") {
                XCTAssertTrue(names.contains(String(arg.dropFirst(2).dropLast())), "\(arg) is not defined")
            }
            for variable in env {
                guard let reference = variable["valueFrom"]?["configMapKeyRef"] else { continue }
                let map = try XCTUnwrap(find(documents, kind: "ConfigMap", name: reference["name"]?.string ?? ""))
                XCTAssertNotNil(map["data"]?[reference["key"]?.string ?? ""], "ConfigMap key \(reference)")
            }
        }

        let hpa = try XCTUnwrap(find(documents, kind: "HorizontalPodAutoscaler", name: "sura-worker"))
        XCTAssertEqual(hpa["spec"]?["scaleTargetRef"]?["name"]?.string, "sura-worker")
        XCTAssertEqual(hpa["spec"]?["metrics"]?[0]?["external"]?["metric"]?["name"]?.string, "sura_queue_depth")
        let keda = try XCTUnwrap(find(documents, kind: "ScaledObject", name: "sura-worker"))
        XCTAssertEqual(keda["spec"]?["scaleTargetRef"]?["name"]?.string, "sura-worker")
        XCTAssertEqual(keda["spec"]?["triggers"]?[0]?["type"]?.string, "prometheus")
        XCTAssertTrue(keda["spec"]?["triggers"]?[0]?["metadata"]?["query"]?.string?.contains("sura_queue_depth") == true)

        let mpijob = try XCTUnwrap(find(documents, kind: "MPIJob", name: "sura-train"))
        let volumes = mpijob["spec"]?["mpiReplicaSpecs"]?["Launcher"]?["template"]?["spec"]?["volumes"]
        let configMap = try XCTUnwrap(volumes?[0]?["configMap"]?["name"]?.string)
        XCTAssertNotNil(find(documents, kind: "ConfigMap", name: configMap)?["data"]?["cfg.yaml"], "the MPIJob mounts \(configMap)")
    }

    /// k8s/mpijob-train.yaml is exactly what `sura submit k8s/train-job.yaml --render mpijob` prints.
    func testCommittedMPIJobIsTheRenderOfTrainJob() throws {
        let spec = try JobSpec.load(contentsOf: RepositoryPaths.k8s.appendingPathComponent("train-job.yaml"))
        let rendered = try MPIJobRenderer().render(spec, configText: nil)
        let committedURL = RepositoryPaths.k8s.appendingPathComponent("mpijob-train.yaml")
        let header = """
            # The training MPIJob (Kubeflow MPI Operator, kubeflow.org/v2beta1), generated from k8s/train-job.yaml:
            #   sura submit k8s/train-job.yaml --render mpijob > k8s/mpijob-train.yaml
            # Needs the MPI Operator installed, the image from k8s/Containerfile, and the sura-train-config
            # ConfigMap from k8s/configmap.yaml.

            """
        if ProcessInfo.processInfo.environment["SURA_UPDATE_MANIFESTS"] == "1" {
            try (header + rendered).write(to: committedURL, atomically: true, encoding: .utf8)
        }
        let committed = try String(contentsOf: committedURL, encoding: .utf8)
        XCTAssertEqual(committed, header + rendered,
                       "k8s/mpijob-train.yaml is stale: rerun this test with SURA_UPDATE_MANIFESTS=1")
    }

    // MARK: - Rendered MPIJobs

    private func spec(_ extra: String = "") throws -> JobSpec {
        try JobSpec(yaml: """
            name: sur-adapter
            config: /cfg/sur.yaml
            ranks: 5
            threads_per_rank: 2
            image: registry.example/sura:1.0
            resources: {cpu: 1500m, memory: 3Gi}
            backend: kubernetes
            kubernetes: {namespace: ml, slots_per_worker: 2}
            env: {SURA_LOG: "2"}
            \(extra)
            """)
    }

    func testRenderedMPIJobAndConfigMapMatchTheirSchemas() throws {
        let text = try MPIJobRenderer().render(try spec(), configText: "steps: 10\nlr: 1e-4  # tuned\nname: \"quoted\"\n")
        let documents = try JSONValue.documents(yaml: text)
        XCTAssertEqual(documents.count, 2)
        for document in documents {
            XCTAssertEqual(try validator().validate(document: document), [], text)
        }
        let configMap = documents[0]
        XCTAssertEqual(configMap["kind"]?.string, "ConfigMap")
        XCTAssertEqual(configMap["metadata"]?["name"]?.string, "sur-adapter-config")
        XCTAssertEqual(configMap["metadata"]?["namespace"]?.string, "ml")
        XCTAssertEqual(configMap["data"]?["cfg.yaml"]?.string, "steps: 10\nlr: 1e-4  # tuned\nname: \"quoted\"\n",
                       "the config survives the YAML round trip byte for byte")

        let job = documents[1]
        XCTAssertEqual(job["spec"]?["slotsPerWorker"]?.int, 2)
        let specs = try XCTUnwrap(job["spec"]?["mpiReplicaSpecs"])
        XCTAssertEqual(specs["Launcher"]?["replicas"]?.int, 1)
        XCTAssertEqual(specs["Worker"]?["replicas"]?.int, 3, "⌈5 ranks / 2 slots⌉")
        let launcher = try XCTUnwrap(specs["Launcher"]?["template"]?["spec"]?["containers"]?[0])
        let argv = (launcher["command"]?.array ?? []) + (launcher["args"]?.array ?? [])
        let words = argv.compactMap(\.string)
        XCTAssertEqual(words.count, argv.count, "every command word is a string, numbers included")
        XCTAssertEqual(words.first, "mpirun")
        XCTAssertEqual(words.suffix(6), ["-np", "5", "/usr/local/bin/train", "--config", "/config/cfg.yaml", "--resume-if-present"])
        XCTAssertEqual(Array(words[1...2]), ["--bind-to", "none"])
        XCTAssertTrue(words.contains("SURA_THREADS=2"))
        XCTAssertTrue(words.contains("SURA_LOG=2"))
        let worker = try XCTUnwrap(specs["Worker"]?["template"]?["spec"]?["containers"]?[0])
        XCTAssertEqual(worker["resources"]?["limits"]?["cpu"]?.string, "3", "2 slots × 1500m")
        XCTAssertEqual(worker["resources"]?["limits"]?["memory"]?.string, "6Gi", "2 slots × 3Gi")
        XCTAssertEqual(worker["command"]?[0]?.string, "/usr/sbin/sshd")
        XCTAssertEqual(worker["env"]?.array?.first { $0["name"]?.string == "SURA_LOG" }?["value"], .string("2"))
        XCTAssertEqual(worker["volumeMounts"]?[0]?["mountPath"]?.string, "/config")
    }

    func testRenderingWithoutConfigTextUsesTheNamedConfigMap() throws {
        var named = try spec()
        named.kubernetes.configMap = "shared-config"
        let documents = try JSONValue.documents(yaml: try MPIJobRenderer().render(named, configText: nil))
        XCTAssertEqual(documents.count, 1)
        XCTAssertEqual(documents[0]["spec"]?["mpiReplicaSpecs"]?["Worker"]?["template"]?["spec"]?["volumes"]?[0]?["configMap"]?["name"]?.string,
                       "shared-config")
        XCTAssertEqual(try validator().validate(document: documents[0]), [])
    }

    func testRenderingWithoutAnImageNamesTheKey() throws {
        var local = try JobSpec(yaml: "name: a\nconfig: c\nranks: 1\n")
        XCTAssertThrowsError(try MPIJobRenderer().render(local, configText: "x: 1")) { error in
            XCTAssertTrue("\(error)".contains("key 'image'"), "\(error)")
        }
        local.image = "sura:dev"
        XCTAssertNoThrow(try MPIJobRenderer().render(local, configText: "x: 1"))
    }

    /// The validator is only worth trusting if it refuses what the API server would refuse.
    func testTheValidatorCatchesMistakes() throws {
        let validator = try validator()
        let good = try JSONValue.documents(yaml: try MPIJobRenderer().render(try spec(), configText: nil))[0]
        XCTAssertEqual(validator.validate(document: good), [])

        func broken(_ yaml: String) throws -> [String] {
            validator.validate(document: try XCTUnwrap(JSONValue.documents(yaml: yaml).first))
        }
        let typo = try broken("""
            apiVersion: kubeflow.org/v2beta1
            kind: MPIJob
            metadata: {name: x}
            spec:
              slotPerWorker: 1
              mpiReplicaSpecs: {Launcher: {replicas: 1}}
            """)
        XCTAssertTrue(typo.contains { $0.hasPrefix("$.spec.slotPerWorker: unknown field") }, "\(typo)")
        let types = try broken("""
            apiVersion: kubeflow.org/v2beta1
            kind: MPIJob
            metadata: {name: x}
            spec:
              mpiReplicaSpecs:
                Launcher: {replicas: "1", restartPolicy: Sometimes}
                Workers: {replicas: 2}
            """)
        XCTAssertTrue(types.contains("$.spec.mpiReplicaSpecs.Launcher.replicas: expected integer, got string"), "\(types)")
        XCTAssertTrue(types.contains { $0.contains("restartPolicy: 'Sometimes' is not one of Always, OnFailure, Never, ExitCode") }, "\(types)")
        XCTAssertTrue(types.contains { $0.hasPrefix("$.spec.mpiReplicaSpecs.Workers: unknown field") }, "\(types)")
        let pod = try broken("""
            apiVersion: apps/v1
            kind: Deployment
            metadata: {name: x}
            spec:
              selector: {matchLabels: {a: b}}
              template:
                spec:
                  containers:
                    - image: sura
                      resources: {limits: {cpu: [2]}}
                      ports: [{containerPort: http}]
            """)
        XCTAssertTrue(pod.contains("$.spec.template.spec.containers[0]: missing required field 'name'"), "\(pod)")
        XCTAssertTrue(pod.contains { $0.hasPrefix("$.spec.template.spec.containers[0].resources.limits.cpu: matches 0 of the 2") }, "\(pod)")
        XCTAssertTrue(pod.contains("$.spec.template.spec.containers[0].ports[0].containerPort: expected integer, got string"), "\(pod)")
        let unknownKind = try broken("apiVersion: batch/v1\nkind: Job\nmetadata: {name: x}\n")
        XCTAssertTrue(unknownKind.first?.contains("no schema for batch/v1 Job") == true, "\(unknownKind)")
        let keda = try broken("""
            apiVersion: keda.sh/v1alpha1
            kind: ScaledObject
            metadata: {name: x}
            spec:
              scaleTargetRef: {name: w}
              triggers:
                - type: prometheus
                  metadata: {threshold: 4}
            """)
        XCTAssertTrue(keda.contains("$.spec.triggers[0].metadata.threshold: expected string, got integer"), "\(keda)")
    }

    // MARK: - Slurm scripts and the cluster/ files

    func testSlurmScriptCarriesTheJobsOptions() throws {
        var job = try spec("slurm: {partition: cpu, time: '02:00:00', nodes: 3, ntasks_per_node: 2, account: lab}")
        job.env["NOTE"] = "it's two words"
        let script = SlurmScriptRenderer(trainProgram: "/opt/sura/bin/train").render(job)
        for line in ["#!/bin/bash", "#SBATCH --job-name=sur-adapter", "#SBATCH --ntasks=5", "#SBATCH --nodes=3",
                     "#SBATCH --ntasks-per-node=2", "#SBATCH --cpus-per-task=2", "#SBATCH --mem-per-cpu=1536M",
                     "#SBATCH --partition=cpu", "#SBATCH --account=lab", "#SBATCH --time=02:00:00",
                     "export SURA_THREADS=2", "export NOTE='it'\\''s two words'",
                     "srun --mpi=pmix --cpus-per-task=2 --cpu-bind=cores /opt/sura/bin/train --config /cfg/sur.yaml --resume-if-present"] {
            XCTAssertTrue(script.split(separator: "\n").contains(Substring(line)), "missing '\(line)' in:\n\(script)")
        }
        job.slurm.launcher = .mpirun
        job.mpirunArgs = ["--mca", "btl", "self,tcp"]
        let mpirun = SlurmScriptRenderer().render(job)
        XCTAssertTrue(mpirun.contains("\nmpirun --map-by slot:PE=2 --bind-to core --mca btl self,tcp -np 5 train --config /cfg/sur.yaml --resume-if-present\n"), mpirun)
        try assertBashParses(script, name: "rendered.sbatch")
    }

    func testClusterFilesAreWellFormed() throws {
        for name in ["local-cluster.sh", "netns-cluster.sh", "slurm/train.sbatch"] {
            let url = RepositoryPaths.cluster.appendingPathComponent(name)
            try assertBashParses(try String(contentsOf: url, encoding: .utf8), name: name)
            if name.hasSuffix(".sh") {
                XCTAssertTrue(FileManager.default.isExecutableFile(atPath: url.path), "cluster/\(name) should be executable")
            }
        }
        let sbatch = try String(contentsOf: RepositoryPaths.cluster.appendingPathComponent("slurm/train.sbatch"), encoding: .utf8)
        XCTAssertTrue(sbatch.contains("#SBATCH --ntasks="), sbatch)
        XCTAssertTrue(sbatch.contains("srun --mpi=pmix"), sbatch)
        XCTAssertTrue(sbatch.contains("--resume-if-present"), "a requeued job continues from its checkpoint")
        let hostfile = try String(contentsOf: RepositoryPaths.cluster.appendingPathComponent("hostfile.example"), encoding: .utf8)
        let launcher = LocalJobLauncher(store: JobStore(directory: URL(fileURLWithPath: "/tmp")), cores: 1, isRoot: false)
        XCTAssertNotNil(launcher.availableSlots(try JobSpec(yaml: "name: a\nconfig: c\nranks: 1\n"), hostfileText: hostfile),
                        "every host in hostfile.example names its slots")
        for example in ["job.example.yaml", "job-slurm.example.yaml"] {
            XCTAssertNoThrow(try JobSpec.load(contentsOf: RepositoryPaths.cluster.appendingPathComponent(example)), example)
        }
    }

    private func assertBashParses(_ text: String, name: String, file: StaticString = #filePath, line: UInt = #line) throws {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("sura-\(UUID().uuidString)-\(name.replacingOccurrences(of: "/", with: "-"))")
        try text.write(to: url, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(at: url) }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/bash")
        process.arguments = ["-n", url.path]
        let errors = Pipe()
        process.standardError = errors
        try process.run()
        let message = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        XCTAssertEqual(process.terminationStatus, 0, "\(name) does not parse: \(message)", file: file, line: line)
    }
}
