import ArgumentParser
import Foundation
import Tensor

/// The user CLI. Each subcommand lives in its own file; this one only lists them.
@main
struct SuraCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sura",
        abstract: "Train and serve LLM-enhanced text-to-image diffusion adapters.",
        subcommands: [InspectCommand.self, DataCommand.self, ServeCommand.self, WorkerCommand.self,
                      SubmitCommand.self, JobsCommand.self, GenerateCommand.self, ForwardCommand.self,
                      CompleteCommand.self, ConvertCommand.self, FeaturesCommand.self, EvalCommand.self,
                      BenchCommand.self, DemoCommand.self, SelfTestCommand.self, KeysCommand.self])
}

/// Options every compute command shares.
struct ComputeOptions: ParsableArguments {
    @Option(name: .long, help: "Threads for BLAS and Sura's parallel loops (default: SURA_THREADS, else the cores this process may run on).")
    var threads: Int?

    @Flag(help: "Results bitwise independent of --threads (GEMMs cut by shape alone; a few per cent slower on one thread). Also SURA_DETERMINISTIC=1.")
    var deterministic = false

    /// Applies the thread settings before any work starts.
    func apply() throws {
        if let threads {
            guard threads >= 1 else { throw ValidationError("--threads must be at least 1, got \(threads)") }
            Threads.count = threads
        }
        if deterministic { Threads.deterministic = true }
    }
}

/// Errors a command reports to the user: printed as the message alone, exit status 1.
struct CommandFailure: Error, CustomStringConvertible {
    let description: String
    init(_ message: String) { description = message }
}
