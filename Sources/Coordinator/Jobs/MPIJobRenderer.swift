import Foundation
import Yams

/// Builds YAML documents key by key, in the order written, with strings quoted whenever they
/// would otherwise read back as a number, boolean or null (`"4"` stays a string).
enum YAMLTree {
    static func map(_ pairs: [(String, Node?)]) -> Node {
        Node.mapping(Node.Mapping(pairs.compactMap { key, value in value.map { (text(key), $0) } }))
    }

    static func list(_ items: [Node]) -> Node { Node.sequence(Node.Sequence(items)) }

    static func text(_ value: String) -> Node { Node.scalar(value.represented()) }

    /// Multi-line text as a literal block (`|`), as a person would write a config in a ConfigMap.
    static func block(_ value: String) -> Node {
        Node.scalar(Node.Scalar(value, Tag(.str), value.contains("\n") ? .literal : .any))
    }

    static func int(_ value: Int) -> Node { Node.scalar(Node.Scalar(String(value), Tag(.int), .plain)) }

    static func bool(_ value: Bool) -> Node { Node.scalar(Node.Scalar(value ? "true" : "false", Tag(.bool), .plain)) }

    static func texts(_ values: [String]) -> Node { list(values.map(text)) }

    /// Documents separated by `---`.
    static func serialize(_ documents: [Node]) throws -> String {
        try documents.map { try Yams.serialize(node: $0, indent: 2, width: -1, allowUnicode: true, sortKeys: false) }.joined(separator: "---\n")
    }
}

/// Renders a training job as a Kubeflow MPI Operator `MPIJob` (API `kubeflow.org/v2beta1`), with
/// the ConfigMap that carries its training config.
///
/// The launcher pod runs `mpirun -np N … train --config /config/cfg.yaml --resume-if-present`; the operator writes the
/// hostfile and SSH keys, and the worker pods run `sshd` for mpirun to start ranks through.
/// Workers = ⌈ranks / slots_per_worker⌉. Each worker requests and is limited to
/// slots_per_worker × the per-rank `resources` (CPU defaults to one core per thread).
/// The image is the one `k8s/Containerfile` builds: user `sura` (uid 1000), `sshd` on port 2222
/// with its config in the user's home, `sura` and `train` in `/usr/local/bin`.
public struct MPIJobRenderer {
    /// Where the ConfigMap is mounted; the config is `<mountPath>/cfg.yaml`.
    public var configMountPath = "/config"
    public var configFileName = "cfg.yaml"
    /// The training program inside the image.
    public var trainProgram = "/usr/local/bin/train"
    /// The unprivileged user the image runs as, and its home (SSH keys go to `<home>/.ssh`).
    public var userID = 1000
    public var home = "/home/sura"

    public init() {}

    /// Workers needed for `spec.ranks` at `slots_per_worker` ranks each.
    public static func workerCount(_ spec: JobSpec) -> Int {
        (spec.ranks + spec.kubernetes.slotsPerWorker - 1) / spec.kubernetes.slotsPerWorker
    }

    /// The ConfigMap name: `kubernetes.config_map`, else `<name>-config`.
    public static func configMapName(_ spec: JobSpec) -> String {
        spec.kubernetes.configMap ?? "\(spec.name)-config"
    }

    /// The ConfigMap (when `configText` is given) and the MPIJob, as one multi-document YAML.
    /// Without `configText` the ConfigMap is expected to exist already.
    public func render(_ spec: JobSpec, configText: String?) throws -> String {
        var documents: [Node] = []
        if let configText { documents.append(configMap(spec, configText: configText)) }
        documents.append(try mpiJob(spec))
        return try YAMLTree.serialize(documents)
    }

    /// The launcher's command line.
    public func launcherCommand(_ spec: JobSpec) -> [String] {
        var argv = ["mpirun"]
        if spec.threadsPerRank > 1 { argv += ["--bind-to", "none"] }
        argv += spec.mpirunArgs
        // Ranks start through ssh on the workers, so the environment must travel with -x.
        for (name, value) in spec.rankEnvironment { argv += ["-x", "\(name)=\(value)"] }
        // The operator relaunches a failed launcher (backoffLimit): it continues from the checkpoint.
        argv += ["-np", "\(spec.ranks)", trainProgram, "--config", "\(configMountPath)/\(configFileName)", "--resume-if-present"]
        return argv
    }

    func labels(_ spec: JobSpec) -> Node {
        YAMLTree.map([("app.kubernetes.io/name", YAMLTree.text("sura")),
                      ("app.kubernetes.io/component", YAMLTree.text("train")),
                      ("sura/job", YAMLTree.text(spec.name))])
    }

    func metadata(_ spec: JobSpec, name: String) -> Node {
        YAMLTree.map([("name", YAMLTree.text(name)),
                      ("namespace", spec.kubernetes.namespace.map(YAMLTree.text)),
                      ("labels", labels(spec))])
    }

    public func configMap(_ spec: JobSpec, configText: String) -> Node {
        YAMLTree.map([
            ("apiVersion", YAMLTree.text("v1")),
            ("kind", YAMLTree.text("ConfigMap")),
            ("metadata", metadata(spec, name: MPIJobRenderer.configMapName(spec))),
            ("data", YAMLTree.map([(configFileName, YAMLTree.block(configText))])),
        ])
    }

    public func mpiJob(_ spec: JobSpec) throws -> Node {
        guard let image = spec.image else {
            throw JobSpecError(file: spec.name, line: nil, key: "image",
                               message: "is required to render an MPIJob (the image holding 'sura' and 'train')")
        }
        let slots = spec.kubernetes.slotsPerWorker
        let env = YAMLTree.list(spec.rankEnvironment.map { name, value in
            YAMLTree.map([("name", YAMLTree.text(name)), ("value", YAMLTree.text(value))])
        })
        var workerResources: [(String, Node?)] = [("cpu", YAMLTree.text(ResourceQuantity.cpuText(millicores: slots * spec.millicoresPerRank)))]
        if let bytes = spec.bytesPerRank {
            workerResources.append(("memory", YAMLTree.text(ResourceQuantity.memoryText(bytes: Int64(slots) * bytes))))
        }
        let launcherResources = YAMLTree.map([("cpu", YAMLTree.text("500m")), ("memory", YAMLTree.text("512Mi"))])

        func podTemplate(container: Node) -> Node {
            YAMLTree.map([
                ("metadata", YAMLTree.map([("labels", labels(spec))])),
                ("spec", YAMLTree.map([
                    ("securityContext", YAMLTree.map([("runAsUser", YAMLTree.int(userID)), ("runAsGroup", YAMLTree.int(userID)),
                                                      ("fsGroup", YAMLTree.int(userID))])),
                    ("containers", YAMLTree.list([container])),
                    ("volumes", YAMLTree.list([YAMLTree.map([
                        ("name", YAMLTree.text("config")),
                        ("configMap", YAMLTree.map([("name", YAMLTree.text(MPIJobRenderer.configMapName(spec)))])),
                    ])])),
                ])),
            ])
        }
        let configMount = YAMLTree.list([YAMLTree.map([("name", YAMLTree.text("config")),
                                                       ("mountPath", YAMLTree.text(configMountPath)),
                                                       ("readOnly", YAMLTree.bool(true))])])
        let launcher = YAMLTree.map([
            ("name", YAMLTree.text("launcher")),
            ("image", YAMLTree.text(image)),
            ("imagePullPolicy", YAMLTree.text("IfNotPresent")),
            ("command", YAMLTree.texts(Array(launcherCommand(spec).prefix(1)))),
            ("args", YAMLTree.texts(Array(launcherCommand(spec).dropFirst()))),
            ("env", env),
            ("resources", YAMLTree.map([("requests", launcherResources), ("limits", launcherResources)])),
            ("volumeMounts", configMount),
        ])
        let worker = YAMLTree.map([
            ("name", YAMLTree.text("worker")),
            ("image", YAMLTree.text(image)),
            ("imagePullPolicy", YAMLTree.text("IfNotPresent")),
            // mpirun on the launcher reaches each worker through this unprivileged sshd.
            ("command", YAMLTree.texts(["/usr/sbin/sshd", "-De", "-f", "\(home)/.sshd_config"])),
            ("env", env),
            ("resources", YAMLTree.map([("requests", YAMLTree.map(workerResources)), ("limits", YAMLTree.map(workerResources))])),
            ("volumeMounts", configMount),
        ])
        return YAMLTree.map([
            ("apiVersion", YAMLTree.text("kubeflow.org/v2beta1")),
            ("kind", YAMLTree.text("MPIJob")),
            ("metadata", metadata(spec, name: spec.name)),
            ("spec", YAMLTree.map([
                ("slotsPerWorker", YAMLTree.int(slots)),
                ("runPolicy", YAMLTree.map([("cleanPodPolicy", YAMLTree.text("Running")), ("backoffLimit", YAMLTree.int(3))])),
                ("sshAuthMountPath", YAMLTree.text("\(home)/.ssh")),
                ("mpiImplementation", YAMLTree.text("OpenMPI")),
                // Start mpirun only once every worker's sshd is up, instead of failing and retrying.
                ("launcherCreationPolicy", YAMLTree.text("WaitForWorkersReady")),
                ("mpiReplicaSpecs", YAMLTree.map([
                    ("Launcher", YAMLTree.map([("replicas", YAMLTree.int(1)), ("restartPolicy", YAMLTree.text("OnFailure")),
                                               ("template", podTemplate(container: launcher))])),
                    ("Worker", YAMLTree.map([("replicas", YAMLTree.int(MPIJobRenderer.workerCount(spec))),
                                             ("restartPolicy", YAMLTree.text("OnFailure")),
                                             ("template", podTemplate(container: worker))])),
                ])),
            ])),
        ])
    }
}
