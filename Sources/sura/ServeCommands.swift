import ArgumentParser
import Coordinator
import Foundation
import Models
import Worker

/// A log line on standard error: `[serve +1.234s] message`.
func serveLogger(_ role: String) -> @Sendable (String) -> Void {
    let start = Date()
    return { message in
        let line = String(format: "[%@ +%.3fs] ", role, Date().timeIntervalSince(start)) + message + "\n"
        FileHandle.standardError.write(Data(line.utf8))
    }
}

/// Runs a handler on a dispatch queue when one of `signals` arrives (instead of the default action).
final class SignalWatcher {
    private var sources: [DispatchSourceSignal] = []

    init(_ signals: [Int32], handler: @escaping @Sendable (Int32) -> Void) {
        for number in signals {
            signal(number, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: number, queue: .global())
            source.setEventHandler { handler(number) }
            source.resume()
            sources.append(source)
        }
    }
}

/// An endpoint other processes on this machine can connect to (`tcp://0.0.0.0:N` → `tcp://127.0.0.1:N`).
func connectable(_ endpoint: String) -> String {
    endpoint.replacingOccurrences(of: "tcp://0.0.0.0:", with: "tcp://127.0.0.1:")
        .replacingOccurrences(of: "tcp://*:", with: "tcp://127.0.0.1:")
        .replacingOccurrences(of: "tcp://[::]:", with: "tcp://127.0.0.1:")
}

/// The executors `sura worker --executor` knows.
enum WorkerExecutorKind: String, ExpressibleByArgument, CaseIterable {
    /// Deterministic placeholder PNGs without a model (testing and benchmarking the serving path).
    case null
    /// The text-to-image pipeline of a model folder (`--model DIR`).
    case pipeline
}

/// What runs a worker's batches: the options `sura worker` takes and `sura serve` passes on to
/// its local workers.
struct ExecutorOptions: ParsableArguments {
    @Option(help: "What runs the batches (of this worker, or of serve's local workers): null (placeholder images) or pipeline (the model folder of --model).")
    var executor: WorkerExecutorKind = .null
    @Option(help: "Pipeline executor: the model folder (unet/, scheduler/, optional vae/, a text encoder or sura.json naming one).")
    var model: String?
    @Option(help: "Pipeline executor: sampler (ddim, ddpm, euler, dpm++2m, a class name or a scheduler_config.json; default: the folder's).")
    var sampler: String?
    @Option(help: "Pipeline executor: exact (one pipeline call per request: the same PNG whatever the batch) or grouped (one call per group of equal settings).")
    var pipelineBatching: String?
    @Option(help: "Pipeline executor: an adapter checkpoint (train's export); prompts go through the LLM and the adapter.")
    var adapter: String?
    @Option(help: "Pipeline executor: the LLM for --adapter (default: the path the checkpoint names).")
    var llm: String?

    /// The pipeline executor needs `--model`; the null executor takes none of the pipeline's options.
    func validate() throws {
        switch executor {
        case .pipeline:
            guard let model, !model.isEmpty else {
                throw ValidationError("--executor pipeline needs --model DIR (a model folder with unet/, scheduler/ and a text encoder)")
            }
            _ = try batching()
        case .null:
            if model != nil || sampler != nil || pipelineBatching != nil || adapter != nil || llm != nil {
                throw ValidationError("--model, --sampler, --pipeline-batching, --adapter and --llm apply to --executor pipeline only")
            }
        }
    }

    /// The `--pipeline-batching` choice; `exact` when not given.
    func batching() throws -> PipelineBatchExecutor.Batching {
        guard let text = pipelineBatching else { return .exact }
        guard let batching = PipelineBatchExecutor.Batching(rawValue: text) else {
            let allowed = PipelineBatchExecutor.Batching.allCases.map(\.rawValue).joined(separator: ", ")
            throw ValidationError("--pipeline-batching must be one of \(allowed), got '\(text)'")
        }
        return batching
    }

    /// The model folder as an absolute path (local workers may start in another directory).
    var absoluteModel: String { URL(fileURLWithPath: model ?? "").standardizedFileURL.path }

    /// Loads the pipeline executor of `--model`, as a user-facing failure naming the folder or adapter.
    func loadPipeline(log: (String) -> Void) throws -> PipelineBatchExecutor {
        let started = Date()
        let model = self.model ?? ""
        let mode = try batching()
        var conditioning: AdapterConditioning? = nil
        if let adapter {
            do {
                let folder = try PipelineFolder.load(URL(fileURLWithPath: model))
                conditioning = try AdapterConditioning.load(checkpoint: URL(fileURLWithPath: adapter), folder: folder, llm: llm)
            } catch {
                throw CommandFailure("--adapter \(adapter): \(error)")
            }
        }
        do {
            let executor = try PipelineBatchExecutor(modelFolder: URL(fileURLWithPath: model), sampler: sampler, conditioning: conditioning,
                                                     batching: mode)
            log(String(format: "loaded model %@%@ (%dx%d, %@, %@ batching) in %.1f s", model,
                       conditioning.map { " with the \($0.type.rawValue) adapter \(adapter ?? "")" } ?? "", executor.width, executor.height,
                       type(of: executor.pipeline.scheduler).className, mode.rawValue, Date().timeIntervalSince(started)))
            return executor
        } catch {
            throw CommandFailure("--model: \(error)")
        }
    }

    /// These options as `sura worker` arguments, with absolute paths.
    var workerArguments: [String] {
        func absolute(_ path: String) -> String { URL(fileURLWithPath: path).standardizedFileURL.path }
        var arguments = ["--executor", executor.rawValue]
        guard executor == .pipeline else { return arguments }
        arguments += ["--model", absoluteModel] + (sampler.map { ["--sampler", $0] } ?? [])
        arguments += pipelineBatching.map { ["--pipeline-batching", $0] } ?? []
        arguments += adapter.map { ["--adapter", absolute($0)] } ?? []
        arguments += llm.map { ["--llm", absolute($0)] } ?? []
        return arguments
    }
}

/// `sura serve`: the ZeroMQ scheduler, the HTTP gateway, and optionally local autoscaled workers.
struct ServeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Run the inference scheduler (ZeroMQ), the HTTP image API, and optionally local workers.",
        discussion: """
        Clients speak the protocol in docs/protocol.md to --frontend, workers connect to --backend, and the \
        HTTP API (POST /v1/images/generations, GET /healthz, /metrics, /v1/status, /) listens on --http-host:--http-port. \
        Everything binds 127.0.0.1 unless told otherwise. SIGTERM or Ctrl-C drains: new requests are refused, queued \
        and running ones finish; a second signal stops at once.
        """)

    @Option(help: "ZeroMQ endpoint for clients (port * = any free port).")
    var frontend = "tcp://127.0.0.1:5555"
    @Option(help: "ZeroMQ endpoint for workers.")
    var backend = "tcp://127.0.0.1:5556"
    @Option(help: "Address of the HTTP API.")
    var httpHost = "127.0.0.1"
    @Option(help: "Port of the HTTP API (0 = any free port).")
    var httpPort = 8080
    @Flag(help: "Do not start the HTTP API.")
    var noHttp = false
    @Option(help: "Bearer token required by POST /v1/images/generations (default: SURA_API_TOKEN, else none).")
    var apiToken: String?
    @Option(help: "CurveZMQ: this server's key file (sura keys generate); encrypts --frontend and --backend. Clients and workers then need its .pub.")
    var curveKey: String?
    @Option(help: "CurveZMQ: client public keys allowed to connect, one per line (default: any client that knows the server's public key).")
    var curveAuthorizedKeys: String?

    @Option(help: "Most requests per batch.")
    var maxBatch = 8
    @Option(help: "Milliseconds a request may wait for its batch to fill.")
    var maxQueueDelayMs = 5.0
    @Option(help: "Most requests waiting; more are rejected with queue_full (HTTP 429).")
    var queueCapacity = 1024
    @Option(help: "Milliseconds a request may take in all when the client gives no timeout_ms.")
    var defaultTimeoutMs = 60_000
    @Option(help: "Milliseconds between heartbeats (both directions).")
    var heartbeatMs = 1000
    @Option(help: "Missed heartbeats after which a worker is dead.")
    var liveness = 3
    @Option(help: "Seconds a drain waits for queued and running requests.")
    var drainTimeout = 30.0
    @Option(help: "Largest ZeroMQ request, bytes.")
    var maxRequestBytes = 256 * 1024
    @Option(help: "Longest prompt over HTTP, characters.")
    var maxPromptCharacters = 1000
    @Option(help: "Default image size over HTTP.")
    var defaultSize = "32x32"

    @Option(help: "Local worker processes to keep running (fixed count, no autoscaling).")
    var workers = 0
    @Flag(help: "Start and drain local workers between --min-workers and --max-workers.")
    var autoscale = false
    @Option(help: "Fewest workers (autoscaling, and the exported desired-workers signal).")
    var minWorkers = 1
    @Option(help: "Most workers.")
    var maxWorkers = 4
    @Option(help: "Fraction of workers that should be busy.")
    var targetUtilisation = 0.75
    @Option(help: "Seconds demand must stay high before workers are added.")
    var scaleUpWindow = 0.0
    @Option(help: "Seconds demand must stay low before workers are drained.")
    var scaleDownWindow = 30.0
    @Option(help: "Seconds between autoscaler decisions.")
    var autoscaleInterval = 1.0
    @OptionGroup(title: "Local workers' executor") var execution: ExecutorOptions
    @Option(help: "Compute threads of each local worker (default: SURA_THREADS, else the cores it may run on).")
    var workerThreads: Int?
    @Option(help: "Null executor: milliseconds per batch (local workers).")
    var nullDelayMs = 0.0

    func validate() throws {
        guard maxBatch >= 1 else { throw ValidationError("--max-batch must be at least 1") }
        guard queueCapacity >= 1 else { throw ValidationError("--queue-capacity must be at least 1") }
        guard heartbeatMs >= 10 else { throw ValidationError("--heartbeat-ms must be at least 10") }
        guard liveness >= 1 else { throw ValidationError("--liveness must be at least 1") }
        guard workers >= 0, minWorkers >= 0, maxWorkers >= max(1, minWorkers) else {
            throw ValidationError("need 0 ≤ --min-workers ≤ --max-workers and --max-workers ≥ 1 (got \(minWorkers)…\(maxWorkers))")
        }
        guard (0.05...1).contains(targetUtilisation) else { throw ValidationError("--target-utilisation must be 0.05…1") }
        guard (0...65535).contains(httpPort) else { throw ValidationError("--http-port must be 0…65535") }
        guard defaultTimeoutMs >= 1 else { throw ValidationError("--default-timeout-ms must be at least 1") }
        if let workerThreads, workerThreads < 1 { throw ValidationError("--worker-threads must be at least 1, got \(workerThreads)") }
        if curveAuthorizedKeys != nil && curveKey == nil { throw ValidationError("--curve-authorized-keys needs --curve-key (the server's key file)") }
        _ = try parsedDefaultSize()
    }

    private func parsedDefaultSize() throws -> (Int, Int) {
        let parts = defaultSize.lowercased().split(separator: "x")
        guard parts.count == 2, let width = Int(parts[0]), let height = Int(parts[1]), width > 0, height > 0 else {
            throw ValidationError("--default-size must be WIDTHxHEIGHT such as 32x32, got '\(defaultSize)'")
        }
        return (width, height)
    }

    func run() throws {
        signal(SIGPIPE, SIG_IGN)
        let log = serveLogger("serve")
        let local = autoscale || workers > 0
        let curve = try curveKey.map { try serverCurveSecurity(keyFile: $0, authorizedKeys: curveAuthorizedKeys, log: log) }
        if local && execution.executor == .pipeline {
            // Loaded once here, before anything listens, so a bad folder stops `sura serve` with
            // its path instead of local workers failing at start and being relaunched over and over.
            var absolute = execution
            absolute.model = execution.absoluteModel
            _ = try absolute.loadPipeline(log: log)
        }
        var configuration = SchedulerConfiguration()
        configuration.batching = BatchingPolicy(maxBatchSize: maxBatch, maxQueueDelay: maxQueueDelayMs / 1000)
        configuration.queueCapacity = queueCapacity
        configuration.heartbeatInterval = Double(heartbeatMs) / 1000
        configuration.liveness = liveness
        configuration.drainTimeout = drainTimeout
        configuration.maxRequestBytes = maxRequestBytes
        configuration.requestPolicy.defaultTimeout = Double(defaultTimeoutMs) / 1000
        let (width, height) = try parsedDefaultSize()
        configuration.requestPolicy.defaultWidth = width
        configuration.requestPolicy.defaultHeight = height
        let metrics = MetricsRegistry()
        let scheduler: InferenceScheduler
        do {
            scheduler = try InferenceScheduler(configuration: configuration, frontend: frontend, backend: backend, metrics: metrics,
                                               curve: curve, log: log)
        } catch {
            throw CommandFailure("cannot start the scheduler: \(error)")
        }

        var server: HTTPServer?
        var client: SchedulerClient?
        if !noHttp {
            // The gateway connects with the server's own key pair, which the ZAP handler always accepts.
            let schedulerClient = try SchedulerClient(endpoint: connectable(scheduler.frontendEndpoint), maxRequestBytes: maxRequestBytes,
                                                      curve: curve.map { CurveClientSecurity(serverKey: $0.keyPair.publicKey, keyPair: $0.keyPair) })
            var gatewayConfiguration = ImageGatewayConfiguration()
            gatewayConfiguration.apiToken = apiToken ?? ProcessInfo.processInfo.environment["SURA_API_TOKEN"]
            gatewayConfiguration.maxPromptCharacters = maxPromptCharacters
            gatewayConfiguration.defaultSize = defaultSize
            gatewayConfiguration.defaultTimeout = configuration.requestPolicy.defaultTimeout
            let gateway = ImageGateway(configuration: gatewayConfiguration, client: schedulerClient, metrics: metrics,
                                       status: { scheduler.status })
            var httpConfiguration = HTTPServerConfiguration()
            httpConfiguration.host = httpHost
            httpConfiguration.port = httpPort
            let http = HTTPServer(configuration: httpConfiguration, handler: { gateway.handle($0) })
            do {
                try http.start()
            } catch {
                throw CommandFailure("\(error)")
            }
            server = http
            client = schedulerClient
        }

        var pool: LocalWorkerPool?
        if local {
            let executable = Bundle.main.executableURL ?? URL(fileURLWithPath: CommandLine.arguments[0])
            var arguments = [
                "worker", "--scheduler", connectable(scheduler.backendEndpoint),
                "--max-batch", String(maxBatch), "--heartbeat-ms", String(heartbeatMs), "--liveness", String(liveness),
                "--parent-pid", String(getpid()),
            ] + execution.workerArguments
            if execution.executor == .null { arguments += ["--null-delay-ms", String(nullDelayMs)] }
            if let workerThreads { arguments += ["--threads", String(workerThreads)] }
            if let curveKey {
                // Local workers reuse the server's key file (always accepted); the secret stays in the file, not in `ps`.
                let path = URL(fileURLWithPath: curveKey).standardizedFileURL.path
                arguments += ["--curve-server-key", path, "--curve-key", path]
            }
            pool = LocalWorkerPool(executable: executable, arguments: arguments, log: log)
        }
        let policy = AutoscalerPolicy(minWorkers: autoscale ? minWorkers : (workers > 0 ? workers : minWorkers),
                                      maxWorkers: autoscale ? maxWorkers : (workers > 0 ? workers : maxWorkers),
                                      targetUtilisation: targetUtilisation, scaleUpWindow: scaleUpWindow,
                                      scaleDownWindow: scaleDownWindow, interval: autoscaleInterval)
        scheduler.attach(AutoscaleController(policy: policy, pool: pool, log: log))

        let signals = SignalCounter()
        let watcher = SignalWatcher([SIGTERM, SIGINT]) { number in
            let count = signals.increment()
            log("signal \(number): " + (count == 1 ? "draining (send again to stop at once)" : "stopping now"))
            scheduler.requestStop(drain: count == 1)
        }
        let http = server.map { "http://\(httpHost.contains(":") ? "[\(httpHost)]" : httpHost):\($0.port)/" } ?? "off"
        print("sura serve: frontend=\(scheduler.frontendEndpoint) backend=\(scheduler.backendEndpoint) http=\(http)"
            + (scheduler.curvePublicKey.map { " curve=\($0)" } ?? ""))
        fflush(stdout)
        log("serving: max batch \(maxBatch), max queue delay \(maxQueueDelayMs) ms, queue capacity \(queueCapacity)"
            + (local ? ", local workers \(policy.minWorkers)…\(policy.maxWorkers)" : ""))
        defer {
            withExtendedLifetime(watcher) {}
            server?.stop()
            client?.close()
            pool?.stopAll(timeout: 10)
            log("stopped")
        }
        do {
            try scheduler.run()
        } catch {
            throw CommandFailure("scheduler loop failed: \(error)")
        }
    }
}

/// Counts signals across the dispatch queue the handlers run on.
final class SignalCounter: @unchecked Sendable {
    private let lock = NSLock()
    private var count = 0

    func increment() -> Int {
        lock.lock()
        defer { lock.unlock() }
        count += 1
        return count
    }
}

/// `sura worker`: one inference worker connected to a scheduler's back end.
struct WorkerCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "worker",
        abstract: "Run one inference worker: receive batches from the scheduler, return PNG images.",
        discussion: "SIGTERM or Ctrl-C: finish the current batch, say BYE, exit 0.")

    @Option(help: "The scheduler's back-end endpoint.")
    var scheduler = "tcp://127.0.0.1:5556"
    @OptionGroup(title: "Executor") var execution: ExecutorOptions
    @Option(help: "Name in logs and status (default worker-<pid>).")
    var name: String?
    @Option(help: "Most requests per batch this worker takes.")
    var maxBatch = 8
    @Option(help: "Milliseconds between heartbeats.")
    var heartbeatMs = 1000
    @Option(help: "Missed scheduler heartbeats before reconnecting.")
    var liveness = 3
    @Option(help: "Most seconds between reconnection attempts.")
    var reconnectMaxDelay = 5.0
    @Option(help: "Null executor: milliseconds per batch.")
    var nullDelayMs = 0.0
    @Option(help: "Null executor: extra milliseconds per image.")
    var nullPerImageDelayMs = 0.0
    @Option(help: "Null executor: a prompt that makes its batch fail (for testing error paths).")
    var nullFailingPrompt: String?
    @Option(help: "CurveZMQ: the scheduler's public key file (its .pub). Needs --curve-key.")
    var curveServerKey: String?
    @Option(help: "CurveZMQ: this worker's key file (sura keys generate); the scheduler's --curve-authorized-keys must list its .pub.")
    var curveKey: String?
    @Option(help: .hidden)
    var parentPid: Int32?
    @OptionGroup var compute: ComputeOptions

    func validate() throws {
        guard maxBatch >= 1 else { throw ValidationError("--max-batch must be at least 1") }
        guard heartbeatMs >= 10 else { throw ValidationError("--heartbeat-ms must be at least 10") }
        guard liveness >= 1 else { throw ValidationError("--liveness must be at least 1") }
        guard nullDelayMs >= 0, nullPerImageDelayMs >= 0 else { throw ValidationError("null executor delays must be ≥ 0") }
        guard (curveServerKey == nil) == (curveKey == nil) else {
            throw ValidationError("--curve-server-key and --curve-key go together: the scheduler's public key and this worker's key pair")
        }
    }

    func run() throws {
        signal(SIGPIPE, SIG_IGN)
        let workerName = name ?? "worker-\(getpid())"
        let log = serveLogger(workerName)
        try compute.apply()
        // Read before the model loads, so a bad key file fails at once.
        let curve = try curveServerKey.map { try clientCurveSecurity(serverKeyFile: $0, keyFile: curveKey ?? "", log: log) }
        let batchExecutor: InferenceBatchExecutor
        switch execution.executor {
        case .null:
            batchExecutor = NullImageExecutor(batchDelay: nullDelayMs / 1000, perImageDelay: nullPerImageDelayMs / 1000,
                                              failingPrompt: nullFailingPrompt)
        case .pipeline:
            // Loaded before connecting, so READY means the model is in memory.
            batchExecutor = try execution.loadPipeline(log: log)
        }
        var configuration = InferenceWorkerConfiguration(scheduler: scheduler, name: workerName)
        configuration.maxBatch = maxBatch
        configuration.executorName = execution.executor.rawValue
        configuration.heartbeatInterval = Double(heartbeatMs) / 1000
        configuration.liveness = liveness
        configuration.reconnectMaxDelay = reconnectMaxDelay
        configuration.parentPID = parentPid
        configuration.curve = curve
        let client = try InferenceWorkerClient(configuration: configuration, executor: batchExecutor, log: log)
        let watcher = SignalWatcher([SIGTERM, SIGINT]) { number in
            log("signal \(number): finishing the current batch, then leaving")
            client.requestStop()
        }
        defer { withExtendedLifetime(watcher) {} }
        do {
            try client.run()
        } catch {
            throw CommandFailure("worker failed: \(error)")
        }
    }
}

/// `sura bench serve`: scheduler requests/s, latency, overhead and batch size with null workers.
struct ServeBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Scheduler throughput, p50/p99 latency and overhead, mean batch size, with null workers or the real pipeline (--model), vs a bare ZeroMQ echo.")

    @Option(help: "In-process workers.")
    var workers = 2
    @Option(help: "Most requests per batch.")
    var maxBatch = 8
    @Option(help: "Milliseconds a request may wait for its batch to fill.")
    var maxQueueDelayMs = 5.0
    @Option(help: "Requests per second of the open-loop phase.")
    var rate = 1000.0
    @Option(help: "Seconds per phase.")
    var seconds = 5.0
    @Option(help: "Requests outstanding in the saturating phase (default 8 × workers × max batch).")
    var outstanding: Int?
    @Option(help: "Null executor milliseconds per batch in the saturating phase.")
    var saturationDelayMs = 2.0
    @Option(help: "Run the real pipeline of this model folder in the workers instead of the null executor (use a low --rate).")
    var model: String?
    @Option(help: "With --model: an adapter checkpoint the workers apply.")
    var adapter: String?
    @Option(help: "With --model: denoising steps per request.")
    var steps: Int = 25
    @Option(help: "With --model: exact or grouped pipeline batching.")
    var pipelineBatching: String = "grouped"

    func run() throws {
        guard workers >= 1, maxBatch >= 1, rate > 0, seconds > 0 else {
            throw ValidationError("--workers, --max-batch, --rate and --seconds must be positive")
        }
        var options = ServeBenchmarkOptions()
        options.workers = workers
        options.maxBatch = maxBatch
        options.maxQueueDelay = maxQueueDelayMs / 1000
        options.rate = rate
        options.seconds = seconds
        options.outstanding = outstanding
        options.saturationBatchDelay = saturationDelayMs / 1000
        var makeExecutor: (() throws -> any InferenceBatchExecutor)? = nil
        if let model {
            let quiet: (String) -> Void = { FileHandle.standardError.write(Data(($0 + "\n").utf8)) }
            // Parsed rather than built: an option group's unset options cannot be read otherwise.
            let execution = try ExecutorOptions.parse(["--executor", "pipeline", "--model", model, "--pipeline-batching", pipelineBatching]
                                                      + (adapter.map { ["--adapter", $0] } ?? []))
            let probe = try execution.loadPipeline(log: quiet)
            options.imageSide = probe.width
            options.steps = steps
            options.executorName = "pipeline \(model)" + (adapter.map { " + adapter \($0)" } ?? "") + ", \(steps) steps, \(pipelineBatching) batching"
            // Each worker gets its own pipeline, as separate worker processes would.
            makeExecutor = { try execution.loadPipeline(log: { _ in }) }
        } else if adapter != nil {
            throw ValidationError("--adapter needs --model")
        }
        let report = try ServeBenchmark.run(options, makeExecutor: makeExecutor) { line in FileHandle.standardError.write(Data((line + "\n").utf8)) }
        print(ServeBenchmark.format(report))
    }
}
