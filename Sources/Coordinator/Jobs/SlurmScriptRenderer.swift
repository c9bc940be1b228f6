import Foundation

/// Renders a training job as a Slurm batch script for `sbatch`.
///
/// One Slurm task is one rank: `--ntasks` = ranks, `--cpus-per-task` = ⌈CPU per rank⌉ (one core
/// per thread unless `resources.cpu` says otherwise), `--mem-per-cpu` = memory per rank ÷
/// cpus-per-task. Inside the allocation the ranks start with `srun --mpi=pmix` (Slurm wires them
/// through PMIx) or with `mpirun`, which reads the allocation from Slurm's environment.
public struct SlurmScriptRenderer {
    /// The training program as the compute nodes see it (an absolute path on a shared file
    /// system, or a name on their PATH).
    public var trainProgram: String
    /// Where Slurm writes the job's output; `%x` is the job name, `%j` the job id.
    public var outputPattern = "%x-%j.out"

    public init(trainProgram: String = "train") {
        self.trainProgram = trainProgram
    }

    /// CPUs each task gets.
    public static func cpusPerTask(_ spec: JobSpec) -> Int {
        max(1, (spec.millicoresPerRank + 999) / 1000)
    }

    /// The batch script.
    public func render(_ spec: JobSpec) -> String {
        let cpus = SlurmScriptRenderer.cpusPerTask(spec)
        var lines = ["#!/bin/bash",
                     "# Sura training job '\(spec.name)', written by 'sura submit --render slurm'. Submit with: sbatch <this file>",
                     "#SBATCH --job-name=\(spec.name)",
                     "#SBATCH --ntasks=\(spec.ranks)"]
        if let nodes = spec.slurm.nodes { lines.append("#SBATCH --nodes=\(nodes)") }
        if let perNode = spec.slurm.ntasksPerNode { lines.append("#SBATCH --ntasks-per-node=\(perNode)") }
        lines.append("#SBATCH --cpus-per-task=\(cpus)")
        if let bytes = spec.bytesPerRank {
            let perCPU = (ResourceQuantity.mebibytes(bytes: bytes) + Int64(cpus) - 1) / Int64(cpus)
            lines.append("#SBATCH --mem-per-cpu=\(perCPU)M")
        }
        if let partition = spec.slurm.partition { lines.append("#SBATCH --partition=\(partition)") }
        if let account = spec.slurm.account { lines.append("#SBATCH --account=\(account)") }
        if let time = spec.slurm.time { lines.append("#SBATCH --time=\(time)") }
        lines.append("#SBATCH --output=\(outputPattern)")
        lines += ["", "set -euo pipefail", ""]
        lines.append("# Every rank inherits this environment (srun and mpirun both export it to the tasks).")
        for (name, value) in spec.rankEnvironment {
            lines.append("export \(name)=\(SlurmScriptRenderer.shellQuoted(value))")
        }
        lines.append("")
        // A requeued job runs this script again: it continues from the checkpoint.
        let program = [trainProgram, "--config", spec.config, "--resume-if-present"].map(SlurmScriptRenderer.shellQuoted).joined(separator: " ")
        switch spec.slurm.launcher {
        case .srun:
            lines.append("# One task per rank; Slurm 22.05+ no longer passes --cpus-per-task from sbatch to srun, so repeat it.")
            var srun = ["srun", "--mpi=pmix", "--cpus-per-task=\(cpus)"]
            if spec.threadsPerRank > 1 { srun.append("--cpu-bind=cores") }
            lines.append(srun.joined(separator: " ") + " " + program)
        case .mpirun:
            lines.append("# Open MPI finds the nodes and slots of this allocation in Slurm's environment.")
            var mpirun = ["mpirun"]
            if spec.threadsPerRank > 1 { mpirun += ["--map-by", "slot:PE=\(cpus)", "--bind-to", "core"] }
            mpirun += spec.mpirunArgs.map(SlurmScriptRenderer.shellQuoted)
            mpirun += ["-np", "\(spec.ranks)"]
            lines.append(mpirun.joined(separator: " ") + " " + program)
        }
        return lines.joined(separator: "\n") + "\n"
    }

    /// `text` as one shell word: unchanged when it has only safe characters, else single-quoted.
    public static func shellQuoted(_ text: String) -> String {
        let safe = Set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-./:=@%+,")
        if !text.isEmpty && text.allSatisfy({ safe.contains($0) }) { return text }
        return "'" + text.replacingOccurrences(of: "'", with: "'\\''") + "'"
    }
}
