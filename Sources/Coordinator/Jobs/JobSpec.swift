import Foundation
import Yams

/// A training job as written in a `job.yaml`: what to run (`train --config`), on how many ranks,
/// where (hosts, Slurm or Kubernetes), with what resources.
///
/// ```yaml
/// name: sur-adapter
/// config: configs/sur_adapter.yaml   # relative paths are relative to the job file
/// ranks: 4                           # or np: 4
/// hosts: [node1:2, node2:2]          # or hostfile: cluster/hostfile
/// threads_per_rank: 1
/// backend: local                     # local | slurm | kubernetes
/// ```
///
/// Every key is checked on load: an unknown key, a value of the wrong kind or out of range, or a
/// choice outside its allowed values is a `JobSpecError` naming the file, line and key.
public struct JobSpec: Codable, Equatable, Sendable {
    /// What the job runs. Only training jobs exist today.
    public enum Kind: String, Codable, CaseIterable, Sendable { case train }

    /// Where the job runs: `mpirun` on this machine (and the hosts it names), a Slurm batch
    /// script, or an MPIJob for the Kubeflow MPI Operator.
    public enum Backend: String, Codable, CaseIterable, Sendable { case local, slurm, kubernetes }

    /// One `hosts` entry: `node1` or `node1:4` (4 slots, i.e. at most 4 ranks on that host).
    /// Encoded as that same text.
    public struct Host: Codable, Equatable, Sendable, CustomStringConvertible {
        public var name: String
        public var slots: Int?
        public init(name: String, slots: Int? = nil) {
            self.name = name
            self.slots = slots
        }

        public var description: String { slots.map { "\(name):\($0)" } ?? name }

        public init(from decoder: Decoder) throws {
            let text = try decoder.singleValueContainer().decode(String.self)
            let parts = text.split(separator: ":", omittingEmptySubsequences: false)
            guard parts.count <= 2, !parts[0].isEmpty else {
                throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: "expected 'host' or 'host:slots', got '\(text)'"))
            }
            name = String(parts[0])
            slots = parts.count == 2 ? Int(parts[1]) : nil
        }

        public func encode(to encoder: Encoder) throws {
            var container = encoder.singleValueContainer()
            try container.encode(description)
        }
    }

    /// What one rank needs: CPU (cores or millicores) and memory (Kubernetes quantities).
    public struct Resources: Codable, Equatable, Sendable {
        public var cpu: String?
        public var memory: String?
        public init(cpu: String? = nil, memory: String? = nil) {
            self.cpu = cpu
            self.memory = memory
        }
    }

    /// `#SBATCH` options for the Slurm backend.
    public struct Slurm: Codable, Equatable, Sendable {
        /// How ranks start inside the allocation: `srun --mpi=pmix` or `mpirun`.
        public enum Launcher: String, Codable, CaseIterable, Sendable { case srun, mpirun }
        public var partition: String?
        /// Wall-clock limit in a Slurm time format (`90`, `02:00:00`, `1-12:00:00`).
        public var time: String?
        public var nodes: Int?
        public var ntasksPerNode: Int?
        public var account: String?
        public var launcher: Launcher = .srun

        public init() {}

        enum CodingKeys: String, CodingKey {
            case partition, time, nodes, account, launcher
            case ntasksPerNode = "ntasks_per_node"
        }
    }

    /// Options for the Kubernetes backend (an MPIJob).
    public struct Kubernetes: Codable, Equatable, Sendable {
        public var namespace: String?
        /// Ranks per worker pod (the MPIJob's `slotsPerWorker`).
        public var slotsPerWorker: Int = 1
        /// The ConfigMap holding the training config; default `<name>-config`.
        public var configMap: String?

        public init() {}

        enum CodingKeys: String, CodingKey {
            case namespace
            case slotsPerWorker = "slots_per_worker"
            case configMap = "config_map"
        }
    }

    public var name: String
    public var kind: Kind = .train
    /// Path of the training config passed as `train --config`.
    public var config: String
    /// Number of MPI ranks (`mpirun -np`).
    public var ranks: Int
    public var hosts: [Host] = []
    public var hostfile: String?
    /// Threads each rank uses for BLAS and Sura's loops (exported as `SURA_THREADS`,
    /// `OMP_NUM_THREADS` and `OPENBLAS_NUM_THREADS`).
    public var threadsPerRank: Int = 1
    /// Results independent of the thread count (`train --deterministic`): exported as
    /// `SURA_DETERMINISTIC=1`, so a job resumed with another `threads_per_rank` continues the same
    /// bits.
    public var deterministic = false
    /// Container image (Kubernetes backend).
    public var image: String?
    public var resources = Resources()
    public var backend: Backend = .local
    public var slurm = Slurm()
    public var kubernetes = Kubernetes()
    /// Extra environment for every rank.
    public var env: [String: String] = [:]
    /// Extra `mpirun` arguments placed before `-np` (for example `--mca btl_tcp_if_include eth0`).
    public var mpirunArgs: [String] = []

    public init(name: String, config: String, ranks: Int) {
        self.name = name
        self.config = config
        self.ranks = ranks
    }

    enum CodingKeys: String, CodingKey {
        case name, kind, config, ranks, hosts, hostfile, deterministic, image, resources, backend, slurm, kubernetes, env
        case threadsPerRank = "threads_per_rank"
        case mpirunArgs = "mpirun_args"
    }

    /// The keys a job file may hold at the top level (`np` is another name for `ranks`).
    public static let topLevelKeys = ["name", "kind", "config", "ranks", "np", "hosts", "hostfile", "threads_per_rank",
                                      "deterministic", "image", "resources", "backend", "slurm", "kubernetes", "env", "mpirun_args"]

    /// Reads and checks a job file. Relative `config` and `hostfile` paths become absolute,
    /// relative to the job file's folder.
    public static func load(contentsOf url: URL) throws -> JobSpec {
        let text: String
        do {
            text = try String(contentsOf: url, encoding: .utf8)
        } catch {
            throw JobSpecError(file: url.path, line: nil, key: "", message: "cannot read the job file: \(error.localizedDescription)")
        }
        return try JobSpec(yaml: text, file: url.path).resolvingPaths(against: url.deletingLastPathComponent())
    }

    /// Parses and checks job YAML; `file` only names the source in errors.
    public init(yaml: String, file: String = "job.yaml") throws {
        let top = try JobYAMLReader.document(yaml, file: file)
        try top.rejectUnknownKeys(allowed: JobSpec.topLevelKeys)

        guard let name = try top.string("name") else { throw top.error("name", "is required (a lowercase name such as 'sur-adapter')") }
        try JobSpec.checkName(name, top)
        guard let config = try top.string("config") else { throw top.error("config", "is required: the training config passed to 'train --config'") }
        guard !config.isEmpty else { throw top.error("config", "must not be empty") }
        if top.has("ranks") && top.has("np") { throw top.error("np", "'np' and 'ranks' mean the same thing; give only one") }
        let rankKey = top.has("np") ? "np" : "ranks"
        guard let ranks = try top.int(rankKey, in: 1...65_536) else { throw top.error("ranks", "is required: the number of MPI ranks (or 'np')") }
        self.init(name: name, config: config, ranks: ranks)

        kind = try top.choice("kind", Kind.self) ?? .train
        backend = try top.choice("backend", Backend.self) ?? .local
        threadsPerRank = try top.int("threads_per_rank", in: 1...1024) ?? 1
        deterministic = try top.bool("deterministic") ?? false
        image = try top.string("image")
        if let image, image.isEmpty || image.contains(where: \.isWhitespace) {
            throw top.error("image", "expected an image reference such as 'registry.example/sura:latest', got '\(image)'")
        }
        hostfile = try top.string("hostfile")
        if let list = try top.strings("hosts") {
            if hostfile != nil { throw top.error("hosts", "give either 'hosts' or 'hostfile', not both") }
            guard !list.isEmpty else { throw top.error("hosts", "must list at least one host (or leave it out to run on this machine)") }
            hosts = try list.map { try JobSpec.parseHost($0, top) }
        }
        mpirunArgs = try top.strings("mpirun_args") ?? []
        if let section = try top.mapping("resources") { try readResources(section) }
        if let section = try top.mapping("slurm") { try readSlurm(section) }
        if let section = try top.mapping("kubernetes") { try readKubernetes(section) }
        if let section = try top.mapping("env") {
            for (key, value) in try section.scalarPairs() {
                guard JobSpec.isEnvironmentName(key) else {
                    throw section.error(key, "is not a valid environment variable name (letters, digits and '_', not starting with a digit)")
                }
                env[key] = value
            }
        }
        if backend == .kubernetes && image == nil {
            throw top.error("image", "is required when backend is kubernetes (the image holding 'sura' and 'train')")
        }
        if let nodes = slurm.nodes, let perNode = slurm.ntasksPerNode, nodes * perNode < ranks {
            throw JobSpecError(file: file, line: top.line, key: "slurm.ntasks_per_node",
                               message: "nodes (\(nodes)) × ntasks_per_node (\(perNode)) = \(nodes * perNode) is fewer than the \(ranks) ranks")
        }
    }

    private mutating func readResources(_ section: JobYAMLReader) throws {
        try section.rejectUnknownKeys(allowed: ["cpu", "memory"])
        if let cpu = try section.string("cpu") {
            guard ResourceQuantity.millicores(cpu) != nil else {
                throw section.error("cpu", "expected cores ('2', '1.5') or millicores ('500m'), got '\(cpu)'")
            }
            resources.cpu = cpu
        }
        if let memory = try section.string("memory") {
            guard ResourceQuantity.bytes(memory) != nil else {
                throw section.error("memory", "expected bytes with a suffix Ki, Mi, Gi, Ti, k, M, G or T (e.g. '4Gi'), got '\(memory)'")
            }
            resources.memory = memory
        }
    }

    private mutating func readSlurm(_ section: JobYAMLReader) throws {
        try section.rejectUnknownKeys(allowed: ["partition", "time", "nodes", "ntasks_per_node", "account", "launcher"])
        slurm.partition = try section.string("partition")
        slurm.account = try section.string("account")
        slurm.nodes = try section.int("nodes", in: 1...100_000)
        slurm.ntasksPerNode = try section.int("ntasks_per_node", in: 1...10_000)
        slurm.launcher = try section.choice("launcher", Slurm.Launcher.self) ?? .srun
        if let time = try section.string("time") {
            guard JobSpec.isSlurmTime(time) else {
                throw section.error("time", "expected a Slurm time limit: minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS; got '\(time)'")
            }
            slurm.time = time
        }
        for key in ["partition", "account"] where (key == "partition" ? slurm.partition : slurm.account)?.contains(where: \.isWhitespace) == true {
            throw section.error(key, "must be a single word")
        }
    }

    private mutating func readKubernetes(_ section: JobYAMLReader) throws {
        try section.rejectUnknownKeys(allowed: ["namespace", "slots_per_worker", "config_map"])
        kubernetes.slotsPerWorker = try section.int("slots_per_worker", in: 1...1024) ?? 1
        for key in ["namespace", "config_map"] {
            guard let value = try section.string(key) else { continue }
            guard JobSpec.isDNSLabel(value, maxLength: 63) else {
                throw section.error(key, "must be a Kubernetes name: lowercase letters, digits and '-', starting and ending with a letter or digit, at most 63 characters; got '\(value)'")
            }
            if key == "namespace" { kubernetes.namespace = value } else { kubernetes.configMap = value }
        }
    }

    // MARK: - Checks shared with the renderers

    /// Job names become Kubernetes object names (with `-launcher`, `-worker-N` and `-config`
    /// appended) and Slurm job names, hence the DNS-label rule and the 40-character cap.
    static func checkName(_ name: String, _ reader: JobYAMLReader) throws {
        guard isDNSLabel(name, maxLength: 40) else {
            throw reader.error("name", "must be lowercase letters, digits and '-', starting with a letter, ending with a letter or digit, at most 40 characters; got '\(name)'")
        }
        guard name.first?.isLetter == true else { throw reader.error("name", "must start with a letter; got '\(name)'") }
    }

    /// A lowercase RFC 1123 label.
    public static func isDNSLabel(_ text: String, maxLength: Int) -> Bool {
        guard !text.isEmpty, text.count <= maxLength, text.first != "-", text.last != "-" else { return false }
        return text.allSatisfy { ($0.isASCII && ($0.isLowercase || $0.isNumber)) || $0 == "-" }
    }

    static func isEnvironmentName(_ text: String) -> Bool {
        guard let first = text.first, !first.isNumber else { return false }
        return text.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "_") }
    }

    /// Slurm's `--time` forms.
    static func isSlurmTime(_ text: String) -> Bool {
        func numbers(_ part: Substring, count: ClosedRange<Int>) -> Bool {
            let fields = part.split(separator: ":", omittingEmptySubsequences: false)
            return count.contains(fields.count) && fields.allSatisfy { !$0.isEmpty && $0.count <= 4 && $0.allSatisfy(\.isNumber) }
        }
        if let dash = text.firstIndex(of: "-") {
            let days = text[..<dash], rest = text[text.index(after: dash)...]
            return !days.isEmpty && days.allSatisfy(\.isNumber) && numbers(rest, count: 1...3)
        }
        return numbers(Substring(text), count: 1...3)
    }

    static func parseHost(_ text: String, _ reader: JobYAMLReader) throws -> Host {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false)
        let name = String(parts[0])
        guard !name.isEmpty, !name.contains(where: { $0.isWhitespace || $0 == "=" }), parts.count <= 2 else {
            throw reader.error("hosts", "expected 'host' or 'host:slots', got '\(text)'")
        }
        guard parts.count == 2 else { return Host(name: name) }
        guard let slots = Int(parts[1]), slots >= 1, slots <= 4096 else {
            throw reader.error("hosts", "slots in '\(text)' must be a whole number from 1 to 4096")
        }
        return Host(name: name, slots: slots)
    }

    // MARK: - Derived values

    /// The spec with `config` and `hostfile` made absolute against `directory`.
    public func resolvingPaths(against directory: URL) -> JobSpec {
        var copy = self
        func absolute(_ path: String) -> String {
            let expanded = (path as NSString).expandingTildeInPath
            return expanded.hasPrefix("/") ? expanded : directory.appendingPathComponent(expanded).standardizedFileURL.path
        }
        copy.config = absolute(config)
        copy.hostfile = hostfile.map(absolute)
        return copy
    }

    /// CPU per rank in millicores: `resources.cpu`, or one core per thread.
    public var millicoresPerRank: Int {
        resources.cpu.flatMap(ResourceQuantity.millicores) ?? threadsPerRank * 1000
    }

    /// Memory per rank in bytes, when given.
    public var bytesPerRank: Int64? { resources.memory.flatMap(ResourceQuantity.bytes) }

    /// The environment every rank gets: the thread settings (and `SURA_DETERMINISTIC` when asked
    /// for), then `env` (which may override them).
    public var rankEnvironment: [(String, String)] {
        var pairs: [(String, String)] = [("SURA_THREADS", "\(threadsPerRank)"), ("OMP_NUM_THREADS", "\(threadsPerRank)"),
                                         ("OPENBLAS_NUM_THREADS", "\(threadsPerRank)")]
        if deterministic { pairs.append(("SURA_DETERMINISTIC", "1")) }
        pairs.removeAll { env[$0.0] != nil }
        return pairs + env.keys.sorted().map { ($0, env[$0]!) }
    }

    /// The job file as YAML (the keys `init(yaml:)` reads; defaults left out).
    public func yaml() throws -> String {
        try YAMLEncoder().encode(self)
    }

    // Defaults are left out when encoding and filled in when decoding, so a stored record
    // reads like the job file it came from.
    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        name = try c.decode(String.self, forKey: .name)
        config = try c.decode(String.self, forKey: .config)
        ranks = try c.decode(Int.self, forKey: .ranks)
        kind = try c.decodeIfPresent(Kind.self, forKey: .kind) ?? .train
        hosts = try c.decodeIfPresent([Host].self, forKey: .hosts) ?? []
        hostfile = try c.decodeIfPresent(String.self, forKey: .hostfile)
        threadsPerRank = try c.decodeIfPresent(Int.self, forKey: .threadsPerRank) ?? 1
        deterministic = try c.decodeIfPresent(Bool.self, forKey: .deterministic) ?? false
        image = try c.decodeIfPresent(String.self, forKey: .image)
        resources = try c.decodeIfPresent(Resources.self, forKey: .resources) ?? Resources()
        backend = try c.decodeIfPresent(Backend.self, forKey: .backend) ?? .local
        slurm = try c.decodeIfPresent(Slurm.self, forKey: .slurm) ?? Slurm()
        kubernetes = try c.decodeIfPresent(Kubernetes.self, forKey: .kubernetes) ?? Kubernetes()
        env = try c.decodeIfPresent([String: String].self, forKey: .env) ?? [:]
        mpirunArgs = try c.decodeIfPresent([String].self, forKey: .mpirunArgs) ?? []
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(name, forKey: .name)
        try c.encode(kind, forKey: .kind)
        try c.encode(config, forKey: .config)
        try c.encode(ranks, forKey: .ranks)
        if !hosts.isEmpty { try c.encode(hosts, forKey: .hosts) }
        try c.encodeIfPresent(hostfile, forKey: .hostfile)
        try c.encode(threadsPerRank, forKey: .threadsPerRank)
        if deterministic { try c.encode(deterministic, forKey: .deterministic) }
        try c.encodeIfPresent(image, forKey: .image)
        if resources != Resources() { try c.encode(resources, forKey: .resources) }
        try c.encode(backend, forKey: .backend)
        if slurm != Slurm() { try c.encode(slurm, forKey: .slurm) }
        if kubernetes != Kubernetes() { try c.encode(kubernetes, forKey: .kubernetes) }
        if !env.isEmpty { try c.encode(env, forKey: .env) }
        if !mpirunArgs.isEmpty { try c.encode(mpirunArgs, forKey: .mpirunArgs) }
    }
}
