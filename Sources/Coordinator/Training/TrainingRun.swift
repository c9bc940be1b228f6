import Foundation
import Tensor
import Models
import Data
import Collective
import Worker

/// How `train` was invoked, beyond the config.
public struct TrainingOptions: Sendable {
    /// Resume from `output_dir/checkpoints/latest.safetensors` (or this file when set).
    public var resume = false
    public var resumeFrom: String?
    /// Resume when output_dir holds a checkpoint, else start fresh: for jobs that a cluster
    /// scheduler restarts with the same command line (MPIJob backoff, Slurm requeue).
    public var resumeIfPresent = false
    /// Start a fresh run in an output_dir that already holds a run's checkpoint (its checkpoint,
    /// metrics and samples are replaced); without it such a run stops with an error.
    public var overwrite = false
    /// Stop after this many steps in total (for tests and short demos); nil: `optim.steps`.
    public var maxSteps: Int?
    /// Chrome-trace JSON of each rank's compute and communication (rank suffix added).
    public var timeline: String?
    /// Stop with an error when a collective waits longer than this (seconds).
    public var stallTimeout: Double?

    public init() {}
}

/// A failure of a training run, naming the config key, file or rank.
public enum TrainingError: Error, CustomStringConvertible {
    case config(file: String, key: String, message: String)
    case checkpoint(file: String, message: String)
    case otherRank(rank: Int, message: String)
    case data(String)

    public var description: String {
        switch self {
        case let .config(file, key, message): return "\(file): key '\(key)': \(message)"
        case let .checkpoint(file, message): return "checkpoint \(file): \(message)"
        case let .otherRank(rank, message): return "rank \(rank) failed: \(message)"
        case let .data(message): return message
        }
    }
}

/// The training loop shared by every task, data-parallel over `communicator`.
///
/// Step s, micro-batch k, replica r, local sample j take dataset position
/// p = (s·A + k)·m + j of replica r's sampler stream (m = batch_size / (dp·A)), which is global
/// sample g = p·dp + r; sample g draws all its randomness from `SeededGenerator.stream(seed, g)`.
/// So the data order and noise depend only on the step, which makes `--resume` continue the
/// uninterrupted run's loss curve and dp = 2 compute the same global batch as dp = 1.
public final class TrainingRun {
    public let config: TrainingConfig
    public let options: TrainingOptions
    public let communicator: Communicator
    public let outputs: TrainingOutputs
    private let agreement: RankAgreement
    /// The semantic checker that scores the samples, loaded by rank 0 when it first scores.
    private lazy var scoring = SampleScoring.load()

    public init(config: TrainingConfig, options: TrainingOptions, communicator: Communicator) throws {
        self.config = config
        self.options = options
        self.communicator = communicator
        let world = communicator.size
        guard config.topology.dp * config.topology.pp == world else {
            throw TrainingError.config(file: config.file, key: "topology",
                                       message: "dp × pp = \(config.topology.dp) × \(config.topology.pp) = \(config.topology.dp * config.topology.pp), but the job has \(world) rank\(world == 1 ? "" : "s"); make dp × pp equal the number of ranks (mpirun -np)")
        }
        let perMicro = config.optim.batchSize / (world * config.optim.gradientAccumulation)
        guard perMicro >= 1, perMicro * world * config.optim.gradientAccumulation == config.optim.batchSize else {
            throw TrainingError.config(file: config.file, key: "optim.batch_size",
                                       message: "\(config.optim.batchSize) must be a multiple of dp × pp × gradient_accumulation = \(config.topology.dp) × \(config.topology.pp) × \(config.optim.gradientAccumulation)")
        }
        outputs = try TrainingOutputs(directory: config.outputDir, rank: communicator.rank)
        agreement = RankAgreement(communicator: communicator)
    }

    /// Every rank runs `body`; if any rank throws, every rank throws (the others with an error
    /// naming the failing rank), so a problem on one rank never leaves the rest waiting.
    func agree<T>(_ what: String, _ body: () throws -> T) throws -> T {
        try agreement(what, body)
    }

    /// Runs the whole job; returns the last step's mean loss.
    @discardableResult
    public func run() throws -> Double {
        // The trained module (base UNet or adapter) is replicated on every rank: with pp > 1 the
        // pipeline stages split the frozen LLM's feature pass, and all dp × pp ranks then train
        // data-parallel. With LoRA on the LLM and pp > 1 the stages split every step instead
        // (`PipelinedAdapterTraining`), and only the dp replicas take different samples.
        let rank = communicator.rank
        let log = outputs.log
        log("train: task \(config.task.rawValue), \(communicator.size) rank(s) (dp \(config.topology.dp), pp \(config.topology.pp)), config \(config.file)")
        log("kernels: \(BLASKernels.summary), \(Threads.count) thread(s) per rank" + (Threads.deterministic ? ", deterministic (bits independent of the thread count)" : ""))
        if let warning = BLASKernels.fallbackWarning() { log(warning) }
        let dataset = try agree("reading the dataset") { () throws -> ImageTextDataset in
            guard FileManager.default.fileExists(atPath: config.data.path) else {
                throw TrainingError.config(file: config.file, key: "data.path",
                                           message: "\(config.data.path) does not exist; it must be a folder with metadata.jsonl (build one with `sura data scenes --out \(config.data.path)`)")
            }
            return try ImageTextDataset(contentsOf: URL(fileURLWithPath: config.data.path), split: config.data.split, limit: config.data.limit)
        }
        log("data: \(dataset.count) images of \(dataset.width)×\(dataset.height) from \(config.data.path)")
        let groups = config.topology.pp > 1
            ? try TopologyGroups(world: communicator, topology: TrainingTopology(worldSize: communicator.size, dataParallel: config.topology.dp,
                                                                                pipelineStages: config.topology.pp))
            : nil
        let task: TrainingTask = try agree("building the model") {
            switch config.task {
            case .base: return try BaseModelTask(config: config, dataset: dataset, agreement: agreement, log: log)
            case .surAdapter, .crossAdapter, .vokenMapper, .ella:
                return try AdapterTask(config: config, dataset: dataset, pipeline: groups?.pipeline, replicas: groups?.dataParallel,
                                       agreement: agreement, log: log)
            }
        }
        let parameters = task.module.namedTrainableParameters().map { (name: $0.0, tensor: $0.1) }
        log("model: \(task.module.parameterCount) parameters, \(parameters.reduce(0) { $0 + $1.tensor.count }) trainable")
        let optimizer = try AdamW(parameters: parameters, learningRate: config.optim.learningRate,
                                  weightDecay: config.optim.weightDecay, exemptFromWeightDecay: AdamW.exemptBiasesAndNorms)
        let ema = try config.optim.emaDecay.map { try ExponentialMovingAverage(parameters: parameters, decay: $0) }
        let buckets = GradientBucketOptions(capBytes: Int(config.topology.bucketMB * 1_048_576), algorithm: config.topology.allreduce)
        let parallelOptions = DataParallelOptions(buckets: buckets,
                                                  stallTimeout: options.stallTimeout)
        let pipelined: PipelinedAdapterTraining? = try agree("building the LLM pipeline") {
            guard let adapterTask = task as? AdapterTask, adapterTask.llmLoRA != nil, let groups else { return nil }
            return try PipelinedAdapterTraining(task: adapterTask, groups: groups, topology: config.topology, parameters: parameters,
                                                options: parallelOptions, file: config.file, log: log)
        }
        // Every rank built the same initial weights from the seed; the broadcast makes sure.
        let replica = try pipelined?.replica
            ?? DataParallelReplica(parameters: parameters, communicator: communicator, options: parallelOptions)
        if options.timeline != nil {
            replica.timeline = Timeline(rank: rank)
            pipelined?.stage.timeline = replica.timeline
        }
        if pipelined == nil { try replica.broadcastParameters(from: 0) }
        // Samples are split over the data-parallel replicas: every rank, or with a pipelined LLM
        // the dp replicas (the stages of one replica see the same samples).
        let dp = pipelined == nil ? communicator.size : config.topology.dp
        let dataRank = pipelined == nil ? rank : groups!.dpRank
        if dp > 1 {
            log("data parallel: \(dp) replicas, gradients averaged in \(replica.buckets.layout.buckets.count) bucket(s) (cap \(config.topology.bucketMB) MB) by the \(config.topology.allreduce.rawValue) allreduce")
        }

        var startStep = 0
        var resuming = options.resume
        if options.resumeIfPresent && !resuming {
            // Rank 0 decides for everyone, so the ranks of a shared output_dir never disagree.
            var found: [Float] = [rank == 0 && FileManager.default.fileExists(atPath: outputs.latestCheckpoint.path) ? 1 : 0]
            try communicator.allreduce(&found, op: .sum)
            resuming = found[0] > 0
            log(resuming ? "--resume-if-present: \(outputs.latestCheckpoint.path) exists; resuming"
                         : "--resume-if-present: no checkpoint in \(outputs.directory.path); starting fresh")
        }
        if resuming {
            startStep = try agree("resuming") { try resume(task: task, optimizer: optimizer, ema: ema) }
            log("resumed at step \(startStep)")
        } else {
            try agree("checking output_dir") { if rank == 0 { try startFresh() } }
        }
        let totalSteps = min(options.maxSteps ?? config.optim.steps, config.optim.steps)
        let accumulation = config.optim.gradientAccumulation
        let perMicro = config.optim.batchSize / (communicator.size * accumulation)
        let sampler = try DistributedSampler(datasetSize: dataset.count, replicas: dp, rank: dataRank, seed: config.seed)
        var epochCache: (epoch: Int, indices: [Int]) = (-1, [])
        func index(at position: Int) -> Int {
            let epoch = position / sampler.samplesPerReplica
            if epochCache.epoch != epoch { epochCache = (epoch, sampler.indices(epoch: epoch)) }
            return epochCache.indices[position % sampler.samplesPerReplica]
        }
        let schedule = config.optim.learningRateSchedule
        let bar = rank == 0 && startStep < totalSteps
            ? ProgressBar(total: totalSteps - startStep, label: "train \(config.task.rawValue)", unit: "steps") : nil
        var lastLoss = Double.nan
        var smoothed: Double? = nil
        let clock = Date()
        task.module.train()
        var step = startStep
        while step < totalSteps {
            let stepStart = DispatchTime.now().uptimeNanoseconds
            optimizer.learningRate = schedule.learningRate(base: config.optim.learningRate, atStep: step)
            var parts: [String: Double] = [:]
            let report: (loss: Double, gradientNorm: Float?)
            var stageIdle: [Double] = []
            if let pipelined {
                // pp × A micro-batches of perMicro samples per replica.
                let m = config.topology.pp * accumulation
                let result = try pipelined.step(microBatches: m, kind: config.topology.schedule, optimizer: optimizer,
                                                maxGradientNorm: config.optim.maxGradNorm) { k in
                    let first = (step * m + k) * perMicro
                    let positions = Array(first ..< first + perMicro)
                    return (positions.map(index(at:)), positions.map { SeededGenerator.stream(seed: config.seed, index: $0 * dp + dataRank) })
                }
                parts = result.parts
                stageIdle = result.stageIdle
                report = (result.loss, result.gradientNorm)
            } else {
                let result = try replica.step(microBatches: accumulation, optimizer: optimizer, maxGradientNorm: config.optim.maxGradNorm) { k in
                    let first = (step * accumulation + k) * perMicro
                    let positions = Array(first ..< first + perMicro)
                    var generators = positions.map { SeededGenerator.stream(seed: config.seed, index: $0 * dp + dataRank) }
                    let (loss, lossParts) = try task.loss(indices: positions.map(index(at:)), generators: &generators)
                    for (key, value) in lossParts { parts[key, default: 0] += value / Double(accumulation) }
                    return loss
                }
                report = (result.loss, result.gradientNorm)
            }
            ema?.update()
            step += 1
            lastLoss = report.loss
            smoothed = smoothed.map { 0.98 * $0 + 0.02 * report.loss } ?? report.loss
            if rank == 0 {
                let elapsed = Date().timeIntervalSince(clock)
                var line: [String: Any] = ["step": step, "loss": report.loss, "lr": optimizer.learningRate,
                                           "samples": step * config.optim.batchSize, "elapsed_s": (elapsed * 10).rounded() / 10,
                                           "samples_per_s": Double((step - startStep) * config.optim.batchSize) / max(elapsed, 1e-9)]
                // This step alone (forward, backward, allreduce, optimizer), to 0.1 ms.
                line["step_s"] = (Double(DispatchTime.now().uptimeNanoseconds - stepStart) / 1e5).rounded() / 1e4
                if let norm = report.gradientNorm { line["grad_norm"] = Double(norm) }
                for (key, value) in parts { line["loss_\(key)"] = value }
                if !stageIdle.isEmpty { line["pipeline_idle"] = stageIdle.map { ($0 * 1000).rounded() / 1000 } }
                outputs.metric(line)
                bar?.update(step - startStep, status: String(format: "loss %.4f (avg %.4f) lr %.2e", report.loss, smoothed!, optimizer.learningRate))
            }
            let checkpointDue = step % config.checkpoint.every == 0 || step == totalSteps
            let samplesDue = config.checkpoint.sampleEvery.map { step % $0 == 0 || step == totalSteps } ?? false
            if checkpointDue || samplesDue || step == totalSteps {
                // Checkpoints, samples and the export read every stage's tensors.
                try pipelined?.synchronize(optimizer: optimizer, ema: ema)
            }
            if checkpointDue {
                try saveCheckpoint(step: step, task: task, optimizer: optimizer, ema: ema)
            }
            if samplesDue {
                try writeSamples(step: step, task: task, parameters: parameters, ema: ema)
            }
        }
        if let path = options.timeline, let timeline = replica.timeline {
            try timeline.writeMerged(to: URL(fileURLWithPath: path), over: communicator)
        }
        if rank == 0, let export = exportPath, step >= config.optim.steps || options.maxSteps != nil {
            let backup = parameters.map { $0.tensor.contiguousCopy() }
            ema?.copy(into: parameters)
            let written = try task.export(to: export)
            for (k, p) in parameters.enumerated() { p.tensor.assign(backup[k]) }
            log("exported \(ema == nil ? "weights" : "EMA weights") to \(written.joined(separator: ", "))")
        }
        try communicator.barrier()
        log(lastLoss.isNaN ? "done: step \(step) (no steps left to run)" : String(format: "done: step %d, loss %.5f", step, lastLoss))
        return lastLoss
    }

    var exportPath: String? {
        switch config.task {
        case .base: return config.base?.export
        case .surAdapter, .crossAdapter, .vokenMapper, .ella: return config.adapter?.export
        }
    }

    /// What a checkpoint must agree on with the config to be resumed: everything that changes
    /// the meaning of the weights or the data order (not the step count or learning rate).
    var fingerprint: String {
        var parts = [config.task.rawValue, "seed=\(config.seed)", "data=\(config.data.path)|\(config.data.split ?? "")|\(config.data.limit ?? 0)",
                     "batch=\(config.optim.batchSize)x\(config.optim.gradientAccumulation)",
                     "schedule=\(config.diffusion.scheduler.betaSchedule.rawValue),\(config.diffusion.scheduler.numTrainTimesteps),\(config.diffusion.scheduler.predictionType.rawValue)"]
        if let base = config.base { parts.append("unet=\(base.unet)|encoder=\(base.textEncoder)|\(base.maxLength)") }
        if let adapter = config.adapter {
            parts.append("adapter=\(adapter.type.rawValue)|\(String(decoding: adapter.configJSON, as: UTF8.self))|base=\(adapter.baseModel)|llm=\(adapter.llm ?? "")|\(adapter.llmLayer)|\(adapter.llmMaxLength)|\(adapter.promptField)"
                         + (adapter.llmLoRA.map { "|lora=\($0.rank),\($0.alpha),\($0.targets.joined(separator: "+"))" } ?? ""))
        }
        return parts.joined(separator: ";")
    }

    func saveCheckpoint(step: Int, task: TrainingTask, optimizer: AdamW, ema: ExponentialMovingAverage?) throws {
        try agree("writing the checkpoint") {
            guard communicator.rank == 0 else { return }
            var checkpoint = TrainingCheckpoint(module: task.module, optimizer: optimizer, trainableOnly: true, metadata: [
                "step": "\(step)", "task": config.task.rawValue, "config": config.file, "fingerprint": fingerprint,
                "samples_seen": "\(step * config.optim.batchSize)", "world_size": "\(communicator.size)",
            ])
            if let ema { checkpoint.extraState = ema.stateDict() }
            try outputs.writeCheckpoint(checkpoint, step: step)
        }
    }

    /// Loads the checkpoint on every rank and returns its step.
    /// A run without `--resume` owns output_dir: an earlier run's checkpoint is never replaced
    /// unless `--overwrite` says so, and its metric lines never mix with the new run's.
    func startFresh() throws {
        let latest = outputs.latestCheckpoint
        if FileManager.default.fileExists(atPath: latest.path) {
            guard options.overwrite else {
                let step = (try? TrainingCheckpoint(contentsOf: latest).metadata["step"]).flatMap { $0 }.map { " at step \($0)" } ?? ""
                throw TrainingError.config(file: config.file, key: "output_dir", message:
                    "\(outputs.directory.path) already holds a run (\(latest.path)\(step)); pass --resume to continue it, "
                    + "--overwrite to replace it, or choose another output_dir")
            }
            outputs.log("--overwrite: replacing the earlier run in \(outputs.directory.path)")
        }
        try outputs.truncateMetrics(after: 0)
    }

    func resume(task: TrainingTask, optimizer: AdamW, ema: ExponentialMovingAverage?) throws -> Int {
        let url = options.resumeFrom.map { URL(fileURLWithPath: $0) } ?? outputs.latestCheckpoint
        guard FileManager.default.fileExists(atPath: url.path) else {
            throw TrainingError.checkpoint(file: url.path, message: "does not exist; nothing to resume (run without --resume to start)")
        }
        let checkpoint = try TrainingCheckpoint(contentsOf: url)
        guard checkpoint.metadata["fingerprint"] == fingerprint else {
            throw TrainingError.checkpoint(file: url.path, message: "was written for a different config (\(checkpoint.metadata["fingerprint"] ?? "no fingerprint")); this config is \(fingerprint)")
        }
        guard let stepText = checkpoint.metadata["step"], let step = Int(stepText) else {
            throw TrainingError.checkpoint(file: url.path, message: "has no step in its metadata")
        }
        do {
            try checkpoint.restore(into: task.module, optimizer: optimizer)
            if let ema { try ema.loadStateDict(checkpoint.extraState) }
        } catch {
            throw TrainingError.checkpoint(file: url.path, message: "does not fit this model: \(error)")
        }
        if communicator.rank == 0 { try outputs.truncateMetrics(after: step) }
        return step
    }

    /// Draws the evaluation samples with the current (EMA) weights, each rank a contiguous share
    /// (`RankShares`), so no rank idles towards its collective timeout while another samples;
    /// rank 0 assembles the grid, scores it and writes both.
    func writeSamples(step: Int, task: TrainingTask, parameters: [(name: String, tensor: Tensor)], ema: ExponentialMovingAverage?) throws {
        let records = task.evaluationRecords.count
        guard records > 0 else { return }
        let runs = RankShares.runs(count: records, ranks: communicator.size)
        let mine = runs[communicator.rank]
        let (height, width) = (task.dataset.height, task.dataset.width)
        let rowSize = 3 * height * width
        let drawn: [Float] = try agree("drawing samples") {
            guard !mine.isEmpty else { return [] }
            let backup = parameters.map { $0.tensor.contiguousCopy() }
            ema?.copy(into: parameters)
            task.module.eval()
            defer {
                for (k, p) in parameters.enumerated() { p.tensor.assign(backup[k]) }
                task.module.train()
            }
            let images = try task.sampleImages(step: step, range: mine).contiguous()  // [n, 3, H, W]
            guard images.shape == [mine.count, 3, height, width] else {
                throw TrainingError.data("samples of shape \(images.shape), expected [\(mine.count), 3, \(height), \(width)]")
            }
            return Array(UnsafeBufferPointer(start: images.storage.pointer + images.offset, count: images.count))
        }
        let all = try RankShares.assemble(drawn, rowSize: rowSize, runs: runs, count: records, communicator: communicator)
        try agree("writing samples") {
            guard communicator.rank == 0 else { return }
            let images = Tensor(shape: [records, 3, height, width], data: all)
            let pngs = try (0..<records).map { try PNGImage(tensor: images.sliced(axis: 0, $0, $0 + 1)) }
            let scores = try scoring.score(images: images, records: task.evaluationRecords)
            try outputs.writeSamples(TrainingSamples(grid: try PNGImage.grid(pngs, columns: 8), scores: scores), step: step)
        }
    }
}
