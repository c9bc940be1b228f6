import ArgumentParser
import Foundation
import Tensor
import Collective
import Coordinator

/// `train --config cfg.yaml`, alone or as every rank of `mpirun -np N train --config cfg.yaml`.
struct TrainCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "train",
        abstract: "Train Sura's base model or an adapter from a YAML config, in one process or under mpirun.",
        discussion: "Writes checkpoints, metrics.jsonl, loss.png and sample grids under the config's output_dir. See docs/config.md.")

    @Option(help: "The training config (YAML).")
    var config: String

    @Flag(help: "Continue from output_dir/checkpoints/latest.safetensors.")
    var resume = false

    @Option(name: .customLong("resume-from"), help: "Continue from this checkpoint file instead.")
    var resumeFrom: String?

    @Flag(name: .customLong("resume-if-present"),
          help: "Continue from output_dir's latest checkpoint when there is one, else start fresh (for restarted cluster jobs).")
    var resumeIfPresent = false

    @Flag(help: "Start afresh in an output_dir that holds an earlier run, replacing its checkpoint and metrics.")
    var overwrite = false

    @Option(name: .customLong("max-steps"), help: "Stop after this many steps in total (default: optim.steps).")
    var maxSteps: Int?

    @Option(help: "Write a Chrome-trace JSON of compute and communication of every rank to this file.")
    var timeline: String?

    @Option(name: .customLong("stall-timeout"), help: "Seconds a collective may wait for a rank before the job stops naming it.")
    var stallTimeout: Double?

    @Option(help: "Threads per rank for BLAS and Sura's loops (default: SURA_THREADS, else the cores of the rank's CPU affinity: one per rank under mpirun's default binding).")
    var threads: Int?

    @Flag(help: "Results bitwise independent of --threads, so a run continues with the same bits on another core count (GEMMs cut by shape alone; a few per cent slower on one thread). Also SURA_DETERMINISTIC=1.")
    var deterministic = false

    func run() throws {
        if let threads {
            guard threads >= 1 else { throw ValidationError("--threads must be at least 1, got \(threads)") }
            Threads.count = threads
        }
        if deterministic { Threads.deterministic = true }
        if let maxSteps, maxSteps < 1 { throw ValidationError("--max-steps must be at least 1, got \(maxSteps)") }
        let parsed = try TrainingConfig(contentsOf: URL(fileURLWithPath: config))
        var options = TrainingOptions()
        options.resume = resume || resumeFrom != nil
        options.resumeFrom = resumeFrom
        options.overwrite = overwrite
        options.resumeIfPresent = resumeIfPresent
        if overwrite && (options.resume || resumeIfPresent) {
            throw ValidationError("--overwrite starts a fresh run and --resume continues one: pass one of them")
        }
        options.maxSteps = maxSteps
        options.timeline = timeline
        options.stallTimeout = stallTimeout
        let world = try MPIRuntime.worldCommunicator()
        try TrainingRun(config: parsed, options: options, communicator: world).run()
        MPIRuntime.finalize()
    }
}

TrainCommand.main()
