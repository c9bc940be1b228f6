import Collective
import Foundation
import Tensor

/// `sura bench train`: data-parallel scaling, the share of gradient communication hidden behind
/// backward, and the measured pipeline bubble next to (p−1)/(m+p−1).
///
/// Under `mpirun -np N` (N ≥ 2) the multi-rank figures use MPI; started alone, they use two
/// threads of this process as ranks (an in-process group). Every rank uses one compute thread
/// (`Threads.count = 1`), so "1 rank" and "N ranks" compare like with like.
public enum TrainingBenchmark {
    public struct Options: Sendable {
        /// Probe MLP widths; the default (≈10.5 M parameters, 42 MB of gradients, two 25 MB
        /// buckets plus a 1 MB first one) is large enough that the allreduce matters.
        public var widths: [Int]
        /// Samples per rank per step (weak scaling: the global batch grows with the ranks).
        public var batchPerRank: Int
        public var warmupSteps: Int
        public var steps: Int
        /// Micro-batch counts for the pipeline measurement.
        public var pipelineMicroBatches: [Int]
        /// Measured steps per pipeline schedule and micro-batch count (after `warmupSteps`); the
        /// median step is reported.
        public var pipelineSteps: Int
        /// Widths of the pipeline model (equal blocks, so stages cost the same).
        public var pipelineWidths: [Int]
        public var pipelineBatch: Int
        public var algorithm: AllreduceAlgorithm
        /// Gradient bucket cap in bytes (the first bucket is capped at 1 MB).
        public var bucketCapBytes: Int
        /// Alternating rounds of the 1-rank and N-rank measurement; the medians are reported, so
        /// one disturbed window on a shared machine does not decide the scaling figure.
        public var rounds: Int
        /// When set, the last N-rank round's compute and communication spans of every rank are
        /// written there as one Chrome trace (as `train --timeline`), and the pipeline's last
        /// step of each schedule at the most micro-batches beside it (`pipelineTimelineURL`).
        public var timeline: URL?

        public init(widths: [Int] = [512, 2048, 2048, 2048, 512], batchPerRank: Int = 64, warmupSteps: Int = 2,
                    steps: Int = 6, pipelineMicroBatches: [Int] = [2, 4, 8], pipelineSteps: Int = 15,
                    pipelineWidths: [Int] = [1024, 1024, 1024, 1024, 1024], pipelineBatch: Int = 256,
                    algorithm: AllreduceAlgorithm = .ring, bucketCapBytes: Int = GradientBucketOptions().capBytes,
                    rounds: Int = 3, timeline: URL? = nil) {
            self.widths = widths
            self.batchPerRank = batchPerRank
            self.warmupSteps = warmupSteps
            self.steps = steps
            self.pipelineMicroBatches = pipelineMicroBatches
            self.pipelineSteps = max(1, pipelineSteps)
            self.pipelineWidths = pipelineWidths
            self.pipelineBatch = pipelineBatch
            self.algorithm = algorithm
            self.bucketCapBytes = bucketCapBytes
            self.rounds = max(1, rounds)
            self.timeline = timeline
        }
    }

    /// One pipeline measurement.
    public struct PipelineRow: Sendable {
        public let kind: PipelineSchedule.Kind
        public let stages: Int
        public let microBatches: Int
        /// 1 − compute/makespan (the slowest stage's step time), averaged over stages; the median
        /// over the measured steps, so one step that the machine disturbed does not decide it.
        public let measuredIdle: Double
        /// The same schedule replayed with each step's measured forward and backward times and
        /// instant messages, averaged over stages, median over steps: the bubble of these stage
        /// times, unequal ones included. measured − replayed is what sending and waiting for
        /// messages cost.
        public let replayedIdle: Double
        /// (p−1)/(m+p−1), for equal stages.
        public let theoreticalIdle: Double
    }

    public struct Report: Sendable {
        public let parameters: Int
        public let ranks: Int
        /// "MPI (thread multiple)" or "in-process threads".
        public let transport: String
        /// Medians over the rounds.
        public let singleSamplesPerSecond: Double
        public let parallelSamplesPerSecond: Double
        /// Every round's figures, in order.
        public let singleRounds: [Double]
        public let parallelRounds: [Double]
        /// parallel / (ranks × single): 1 is perfect weak scaling.
        public var scalingEfficiency: Double { parallelSamplesPerSecond / (Double(ranks) * singleSamplesPerSecond) }
        /// N ranks training at once with no gradient exchange (each on its own data; median and
        /// rounds): what the machine allows before any communication, since ranks that share
        /// caches, memory bandwidth and a VM's cores slow each other down.
        public let unsynchronizedSamplesPerSecond: Double
        public let unsynchronizedRounds: [Double]
        /// unsynchronized / (ranks × single): the ceiling of `scalingEfficiency` on this machine.
        public var computeOnlyEfficiency: Double {
            unsynchronizedSamplesPerSecond / (Double(ranks) * singleSamplesPerSecond)
        }
        /// Seconds per step the allreduces ran, and the part of that overlapping backward.
        public let communicationSecondsPerStep: Double
        public let hiddenCommunicationSecondsPerStep: Double
        public var hiddenCommunicationShare: Double {
            communicationSecondsPerStep > 0 ? hiddenCommunicationSecondsPerStep / communicationSecondsPerStep : 0
        }
        /// Median over the steps of the ranks' mean wait for the gradients after their own
        /// backward: the last bucket's allreduce plus waiting for a slower rank.
        public let exposedWaitSecondsPerStep: Double
        /// Median over the steps of the slowest minus the fastest rank's backward time: what the
        /// machine's noise alone makes the faster rank wait.
        public let backwardSpreadSecondsPerStep: Double
        public let buckets: Int
        public let pipeline: [PipelineRow]
        /// Measured steps behind each pipeline row.
        public let pipelineSteps: Int
        /// The machine's CPU time stolen by the hypervisor over the whole benchmark, as rank 0
        /// saw it (0…1; nil off Linux).
        public var stealShare: Double?
    }

    /// Runs every measurement; all ranks of `world` call it together. Sets `Threads.count` to 1.
    /// - Returns: the report (meaningful on rank 0; other ranks return theirs).
    public static func run(world: Communicator, options: Options = Options()) throws -> Report {
        Threads.count = 1
        let cpuBefore = CPUTimeSample.now()
        let savedTimeout = world.timeout
        defer { world.timeout = savedTimeout }
        let parameters = ProbeModel.blocks(widths: options.widths, seed: 1).reduce(0) { $0 + $1.parameterCount }
        let group = world.size >= 2 ? nil : try InProcessGroup(size: 2, timeout: max(savedTimeout, 600))
        let ranks = group?.size ?? world.size
        let transport = group?[0].kind ?? world.kind
        var singles: [Double] = [], parallels: [Measurement] = [], unsynchronized: [Double] = []
        var lastTimelines: [Timeline] = []
        for _ in 0 ..< options.rounds {
            // Rank 0 measures alone while the others wait at a barrier.
            world.timeout = max(savedTimeout, 3600)
            var single = 0.0
            if world.rank == 0 {
                single = try measureDataParallel(on: InProcessCommunicator.singleProcess(), options: options, timeline: nil).samplesPerSecond
            }
            try world.barrier()
            world.timeout = savedTimeout
            singles.append(single)
            if let group {
                let results = RankResults<Measurement>(size: 2), alone = RankResults<Measurement>(size: 2)
                let timelines = [Timeline(rank: 0), Timeline(rank: 1)]
                try group.run { comm in
                    results[comm.rank] = try measureDataParallel(on: comm, options: options, timeline: timelines[comm.rank])
                    alone[comm.rank] = try measureDataParallel(on: comm, options: options, timeline: nil, synchronize: false)
                }
                parallels.append(results[0]!)
                unsynchronized.append(alone[0]!.samplesPerSecond)
                lastTimelines = timelines
            } else {
                let timeline = Timeline(rank: world.rank)
                parallels.append(try measureDataParallel(on: world, options: options, timeline: timeline))
                unsynchronized.append(try measureDataParallel(on: world, options: options, timeline: nil,
                                                              synchronize: false).samplesPerSecond)
                lastTimelines = [timeline]
            }
        }
        if let url = options.timeline {
            if group != nil {
                try Timeline.write(lastTimelines.flatMap(\.spans), to: url)
            } else {
                try lastTimelines[0].writeMerged(to: url, over: world)
            }
        }
        var pipeline: [PipelineRow]
        if let group {
            let results = RankResults<([PipelineRow], Timeline?)>(size: 2)
            try group.run { comm in results[comm.rank] = try measurePipeline(on: comm, options: options) }
            pipeline = results[0]!.0
            if let url = options.timeline {
                try Timeline.write((0 ..< 2).flatMap { results[$0]!.1?.spans ?? [] }, to: pipelineTimelineURL(url))
            }
        } else {
            let recorded: Timeline?
            (pipeline, recorded) = try measurePipeline(on: world, options: options)
            if let url = options.timeline, let recorded { try recorded.writeMerged(to: pipelineTimelineURL(url), over: world) }
        }
        // The median round of the N-rank measurement also supplies the communication figures.
        let median = parallels.sorted { $0.samplesPerSecond < $1.samplesPerSecond }[parallels.count / 2]
        var report = Report(parameters: parameters, ranks: ranks, transport: transport,
                      singleSamplesPerSecond: CollectiveBenchmark.median(singles), parallelSamplesPerSecond: median.samplesPerSecond,
                      singleRounds: singles, parallelRounds: parallels.map(\.samplesPerSecond),
                      unsynchronizedSamplesPerSecond: CollectiveBenchmark.median(unsynchronized),
                      unsynchronizedRounds: unsynchronized,
                      communicationSecondsPerStep: median.communicationPerStep,
                      hiddenCommunicationSecondsPerStep: median.hiddenPerStep,
                      exposedWaitSecondsPerStep: median.exposedWaitPerStep,
                      backwardSpreadSecondsPerStep: median.backwardSpreadPerStep,
                      buckets: median.buckets, pipeline: pipeline, pipelineSteps: options.pipelineSteps)
        if let cpuBefore, let cpuAfter = CPUTimeSample.now() { report.stealShare = cpuAfter.stealShare(since: cpuBefore) }
        return report
    }

    struct Measurement {
        var samplesPerSecond = 0.0
        var communicationPerStep = 0.0
        var hiddenPerStep = 0.0
        var exposedWaitPerStep = 0.0
        var backwardSpreadPerStep = 0.0
        var buckets = 0
    }

    /// Weak-scaling data parallelism on `communicator`: every rank trains on `batchPerRank`
    /// samples per step; throughput is the global batch over the slowest rank's step time.
    /// Without `synchronize` the ranks skip the gradient allreduce (each steps on its own
    /// gradient), which isolates what running side by side costs from what communication costs.
    static func measureDataParallel(on communicator: Communicator, options: Options,
                                    timeline: Timeline?, synchronize: Bool = true) throws -> Measurement {
        let blocks = ProbeModel.blocks(widths: options.widths, seed: 1)
        let parameters = ProbeModel.namedParameters(blocks)
        let replica = try DataParallelReplica(parameters: parameters, communicator: communicator,
                                              options: DataParallelOptions(buckets: GradientBucketOptions(capBytes: options.bucketCapBytes,
                                                                                                           algorithm: options.algorithm)))
        try replica.broadcastParameters()
        let optimizer = try SGD(parameters: parameters, learningRate: 1e-4)
        let data = ProbeModel.data(samples: options.batchPerRank, inputs: options.widths.first!,
                                   outputs: options.widths.last!, seed: UInt64(communicator.rank))
        let step = {
            let body = { _ = try replica.step(optimizer: optimizer) { _ in Loss.mse(ProbeModel.forward(blocks, data.x), data.y) } }
            if synchronize { try body() } else { try replica.withoutGradientSync(body) }
        }
        for _ in 0 ..< options.warmupSteps { try step() }
        try timeline?.synchronizeOrigin(over: communicator)
        replica.timeline = timeline
        try communicator.barrier()
        let start = DispatchTime.now().uptimeNanoseconds
        var waits = [Double](repeating: 0, count: options.steps), backwards = waits
        for index in 0 ..< options.steps {
            try step()
            waits[index] = replica.buckets.lastReport.exposedWaitSeconds
            backwards[index] = replica.buckets.lastReport.backwardSeconds
        }
        try communicator.barrier()
        let seconds = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
        replica.timeline = nil
        var result = Measurement()
        result.samplesPerSecond = Double(options.batchPerRank * communicator.size * options.steps) / seconds
        result.buckets = replica.buckets.layout.buckets.count
        if synchronize {
            // Gathered after the timed steps, so the measurement itself gains no exchanges.
            var slowest = backwards, fastest = backwards
            try communicator.allreduce(&waits, op: .average)
            try communicator.allreduce(&slowest, op: .max)
            try communicator.allreduce(&fastest, op: .min)
            result.exposedWaitPerStep = CollectiveBenchmark.median(waits)
            result.backwardSpreadPerStep = CollectiveBenchmark.median(zip(slowest, fastest).map { $0 - $1 })
        }
        if let timeline {
            let isAllreduce = { (span: Timeline.Span) in span.category == .allreduce }
            let isBackward = { (span: Timeline.Span) in span.category == .backward }
            result.communicationPerStep = timeline.busySeconds(where: isAllreduce) / Double(options.steps)
            result.hiddenPerStep = timeline.overlapSeconds(of: isAllreduce, with: isBackward) / Double(options.steps)
        }
        return result
    }

    /// The pipeline bubble: `communicator.size` stages of equal cost, each schedule, each
    /// micro-batch count; idle = 1 − compute/makespan per stage (stages start together after a
    /// barrier; the makespan is the slowest stage's step), averaged over stages, median over steps.
    /// With `options.timeline` it also returns this rank's spans of the last measured step of each
    /// schedule at the largest micro-batch count (clocks aligned at one barrier on entry).
    static func measurePipeline(on communicator: Communicator, options: Options) throws -> ([PipelineRow], Timeline?) {
        let p = communicator.size
        let all = ProbeModel.blocks(widths: options.pipelineWidths, seed: 3)
        let partition = try PipelinePartition.balanced(costs: all.map(\.parameterCount), stages: p)
        let mine = Array(all[partition.stages[communicator.rank]])
        let parameters = ProbeModel.namedParameters(mine, firstIndex: partition.stages[communicator.rank].lowerBound)
        let stage = try PipelineStage(communicator: communicator, parameters: parameters) { x, _ in
            ProbeModel.forward(mine, x)
        }
        let data = ProbeModel.data(samples: options.pipelineBatch, inputs: options.pipelineWidths.first!,
                                   outputs: options.pipelineWidths.last!, seed: 5)
        let recorder = options.timeline == nil ? nil : Timeline(rank: communicator.rank)
        try recorder?.synchronizeOrigin(over: communicator)
        let recordedM = options.pipelineMicroBatches.filter { options.pipelineBatch % $0 == 0 }.max()
        var rows: [PipelineRow] = []
        for kind in PipelineSchedule.Kind.allCases {
            for m in options.pipelineMicroBatches where options.pipelineBatch % m == 0 {
                let size = options.pipelineBatch / m
                // Stage 0's input needs a gradient, as every later stage's does: otherwise stage 0
                // skips its first layer's input-gradient GEMM and runs a sixth faster than stage 1,
                // an imbalance that (p−1)/(m+p−1) does not model and that would read as bubble.
                let x = (0 ..< m).map { k -> Tensor in
                    let rows = ProbeModel.rows(data.x, (k * size) ..< ((k + 1) * size))
                    rows.requiresGrad = true
                    return rows
                }
                let y = (0 ..< m).map { ProbeModel.rows(data.y, ($0 * size) ..< (($0 + 1) * size)) }
                var idle: [Double] = [], replayed: [Double] = []
                let schedule = try PipelineSchedule(kind: kind, stages: p, microBatches: m)
                let steps = options.warmupSteps + options.pipelineSteps
                for step in 0 ..< steps {
                    try communicator.barrier()
                    stage.timeline = m == recordedM && step == steps - 1 ? recorder : nil
                    let result = try stage.run(kind, microBatches: m, input: { x[$0] },
                                               loss: { out, k in Loss.mse(out, y[k]) * (1 / Float(m)) })
                    for (_, tensor) in parameters { tensor.grad = nil }
                    let makespan = try communicator.allreduce(result.seconds, op: .max)
                    guard step >= options.warmupSteps else { continue }
                    idle.append(try communicator.allreduce(result.idleFraction(makespan: makespan), op: .average))
                    // Every stage's durations on every rank: [stage][forward 0..<m, backward 0..<m].
                    var durations = [Double](repeating: 0, count: p * 2 * m)
                    for k in 0 ..< m {
                        durations[communicator.rank * 2 * m + k] = result.forwardSeconds[k]
                        durations[communicator.rank * 2 * m + m + k] = result.backwardSeconds[k]
                    }
                    try communicator.allreduce(&durations)
                    let replay = try schedule.simulate { stage, op in
                        switch op {
                        case let .forward(k): return durations[stage * 2 * m + k]
                        case let .backward(k): return durations[stage * 2 * m + m + k]
                        default: return 0
                        }
                    }
                    replayed.append(replay.idleFractions.reduce(0, +) / Double(p))
                }
                rows.append(PipelineRow(kind: kind, stages: p, microBatches: m,
                                        measuredIdle: CollectiveBenchmark.median(idle),
                                        replayedIdle: CollectiveBenchmark.median(replayed),
                                        theoreticalIdle: PipelineSchedule.theoreticalIdleFraction(stages: p, microBatches: m)))
            }
        }
        stage.timeline = nil
        return (rows, recorder)
    }

    /// `t.json` → `t.pipeline.json`: where `--timeline` puts the pipeline's steps.
    public static func pipelineTimelineURL(_ url: URL) -> URL {
        Timeline.siblingURL(url, inserting: "pipeline")
    }

    /// The report as a table.
    public static func format(_ report: Report) -> String {
        var lines: [String] = []
        lines.append("model: probe MLP, \(report.parameters) parameters (\(report.buckets) gradient buckets), 1 thread per rank")
        lines.append("multi-rank transport: \(report.ranks) ranks, \(report.transport)")
        lines.append("host steal over the benchmark: " + (report.stealShare.map { String(format: "%.1f%% of CPU time", $0 * 100) } ?? "unknown")
                     + " (a stolen vCPU stalls its rank, and the other rank waits)")
        lines.append("")
        lines.append("ranks  samples/s (median of \(report.singleRounds.count) alternating rounds)  scaling efficiency  rounds")
        lines.append("-----  ---------  ------------------  ------")
        let rounds = { (values: [Double]) in values.map { String(format: "%.1f", $0) }.joined(separator: ", ") }
        lines.append(String(format: "%5d  %9.1f  %18.3f  ", 1, report.singleSamplesPerSecond, 1.0) + rounds(report.singleRounds))
        lines.append(String(format: "%5d  %9.1f  %18.3f  ", report.ranks, report.parallelSamplesPerSecond,
                            report.scalingEfficiency) + rounds(report.parallelRounds))
        lines.append(String(format: "%5d  %9.1f  %18.3f  ", report.ranks, report.unsynchronizedSamplesPerSecond,
                            report.computeOnlyEfficiency) + rounds(report.unsynchronizedRounds)
            + "  (no gradient sync: the machine's ceiling)")
        lines.append("")
        lines.append(String(format: "gradient allreduce %.1f ms/step, %.1f ms hidden behind backward (%.0f%%)",
                            report.communicationSecondsPerStep * 1e3, report.hiddenCommunicationSecondsPerStep * 1e3,
                            report.hiddenCommunicationShare * 100))
        lines.append(String(format: "after backward each step waited a median %.1f ms for its gradients; the ranks' backward times "
            + "differed by a median %.1f ms per step (the faster rank waits for the slower)",
                            report.exposedWaitSecondsPerStep * 1e3, report.backwardSpreadSecondsPerStep * 1e3))
        lines.append("")
        lines.append("pipeline bubble: median step of \(report.pipelineSteps) (idle averaged over the stages)")
        lines.append("schedule  stages  micro-batches  measured idle  replayed idle  (p-1)/(m+p-1)")
        lines.append("--------  ------  -------------  -------------  -------------  -------------")
        for row in report.pipeline {
            let name = row.kind.rawValue
            lines.append(String(repeating: " ", count: max(0, 8 - name.count)) + name
                + String(format: "  %6d  %13d  %13.3f  %13.3f  %13.3f", row.stages, row.microBatches,
                         row.measuredIdle, row.replayedIdle, row.theoreticalIdle))
        }
        lines.append("replayed: the same schedule with each step's measured stage times and instant messages "
            + "(unequal stages raise it above (p-1)/(m+p-1); measured − replayed is what messages add)")
        return lines.joined(separator: "\n")
    }
}

/// One slot per rank thread, read after the group has finished.
final class RankResults<Value> {
    private let lock = NSLock()
    private var values: [Value?]

    init(size: Int) {
        values = Array(repeating: nil, count: size)
    }

    subscript(rank: Int) -> Value? {
        get { lock.lock(); defer { lock.unlock() }; return values[rank] }
        set { lock.lock(); values[rank] = newValue; lock.unlock() }
    }
}
