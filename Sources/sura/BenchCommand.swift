import ArgumentParser
import Foundation
import Tensor

/// `sura bench …`: benchmarks that print ratios against a peer measured in the same run.
struct BenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Benchmarks that print ratios against a peer measured in the same run.",
        subcommands: [TensorBench.self, UNetBenchCommand.self, LLMBenchCommand.self, CollectiveBench.self, TrainingBench.self, ServeBench.self])
}

/// `sura bench tensor`: Tensor matmul next to raw cblas_sgemm, conv2d, attention, elementwise.
struct TensorBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tensor",
        abstract: "Tensor matmul GFLOP/s vs raw sgemm (1 thread and all cores), conv2d, attention, elementwise GB/s.")

    @Option(help: "Matrix sizes, comma separated.")
    var sizes: String = "256,512,1024,2048"

    @Option(help: "Seconds to spend per measurement.")
    var seconds: Double = 0.3

    func run() throws {
        let parsed = sizes.split(separator: ",").map { Int($0.trimmingCharacters(in: .whitespaces)) }
        guard !parsed.isEmpty, parsed.allSatisfy({ ($0 ?? 0) > 0 }) else {
            throw ValidationError("--sizes must be positive integers separated by commas, got '\(sizes)'")
        }
        print(TensorBenchmark.run(sizes: parsed.compactMap { $0 }, minSeconds: seconds) { line in
            FileHandle.standardError.write(Data((line + "\n").utf8))
        })
    }
}
