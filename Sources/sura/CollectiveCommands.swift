import ArgumentParser
import Collective
import Foundation

/// Runs `body` on this process's world communicator (MPI under mpirun, a world of one otherwise),
/// printing on rank 0 only; any error is printed by the failing rank and aborts the whole job.
func runOnWorld(_ body: (Communicator) throws -> String) throws {
    let world = try MPIRuntime.worldCommunicator()
    do {
        let text = try body(world)
        if world.rank == 0 { print(text) }
        MPIRuntime.finalize()
    } catch {
        FileHandle.standardError.write(Data("rank \(world.rank): \(error)\n".utf8))
        if MPIRuntime.isInitialized { MPIRuntime.abort(reason: "\(error)", code: 1) }
        throw ExitCode(1)
    }
}

/// `sura bench collective`: Sura's ring allreduce next to MPI_Allreduce, bus bandwidth per size.
struct CollectiveBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "collective",
        abstract: "Allreduce bus bandwidth (busbw = S/t·2(n−1)/n), ring vs MPI_Allreduce; run under mpirun.")

    @Option(help: "Iterations per size, algorithm and round (default: chosen per size).")
    var iterations: Int?

    @Option(help: "Alternating rounds of ring and MPI_Allreduce per size; medians are reported.")
    var rounds = 5

    func run() throws {
        if let iterations, iterations < 1 { throw ValidationError("--iterations must be at least 1") }
        if rounds < 1 { throw ValidationError("--rounds must be at least 1") }
        try runOnWorld { world in
            let rows = try CollectiveBenchmark.run(communicator: world, iterations: iterations, rounds: rounds)
            return "ranks=\(world.size) (\(world.kind))\n" + CollectiveBenchmark.format(rows)
        }
    }
}

/// `sura selftest …`: checks a deployment end to end (hidden from the main help).
struct SelfTestCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "selftest", abstract: "Check collectives on this deployment.",
        shouldDisplay: false, subcommands: [CollectiveSelfTestCommand.self, TrainingSelfTestCommand.self])
}

/// `mpirun -np N sura selftest collective`: every collective operation with known values.
struct CollectiveSelfTestCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "collective", abstract: "Exercise every collective with known values; fail on any mismatch.")

    func run() throws {
        try runOnWorld { world in try CollectiveSelfTest.run(communicator: world) }
    }
}
