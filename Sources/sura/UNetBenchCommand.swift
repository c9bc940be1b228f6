import ArgumentParser
import Foundation
import Models
import Tensor

/// `sura bench unet`: UNet2DConditionModel forward and forward+backward milliseconds next to
/// PyTorch/diffusers on the same config, batch and thread count, measured in the same run.
struct UNetBenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "unet",
        abstract: "UNet forward and forward+backward ms vs PyTorch/diffusers (same config, batch, threads), at 1 thread and all cores.")

    static let defaultConfig = "Tests/ModelsTests/Fixtures/diffusion/unet_small/config.json"
    static let peerScript = "bench/peers/unet_torch_bench.py"

    @Option(help: "A diffusers UNet2DConditionModel config.json (default: the test fixture's small UNet).")
    var config: String?

    @Option(help: "Batch size.")
    var batch: Int = 4

    @Option(help: "Conditioning tokens per sample.")
    var tokens: Int = 8

    @Option(help: "Timed repetitions per measurement (the best one counts), after one warm-up.")
    var repeats: Int = 10

    @Option(help: "Thread counts to measure, comma separated (default: 1 and all cores).")
    var threads: String?

    @Option(help: "Python interpreter with torch and diffusers for the peer.")
    var peerPython: String = "python3"

    @Flag(help: "Skip the PyTorch peer.")
    var noPeer = false

    func run() throws {
        guard batch >= 1 else { throw ValidationError("--batch must be at least 1, got \(batch)") }
        guard tokens >= 1 else { throw ValidationError("--tokens must be at least 1, got \(tokens)") }
        guard repeats >= 1 else { throw ValidationError("--repeats must be at least 1, got \(repeats)") }
        let configURL: URL
        if let config {
            configURL = URL(fileURLWithPath: config)
        } else {
            guard let found = RepositoryFiles.locate(Self.defaultConfig) else {
                throw CommandFailure("cannot find \(Self.defaultConfig); run from the Sura repository or pass --config PATH")
            }
            configURL = found
        }
        let unetConfig: UNet2DConditionConfig
        do {
            unetConfig = try UNet2DConditionConfig(contentsOf: configURL)
        } catch {
            throw CommandFailure("\(error)")
        }
        let sizes = unetConfig.sampleSize?.values ?? [32]
        let height = sizes[0], width = sizes.count > 1 ? sizes[1] : sizes[0]
        let cores = ProcessInfo.processInfo.activeProcessorCount
        var threadCounts = cores > 1 ? [1, cores] : [1]
        if let threads {
            let parsed = threads.split(separator: ",").map { Int($0.trimmingCharacters(in: .whitespaces)) }
            guard !parsed.isEmpty, parsed.allSatisfy({ ($0 ?? 0) >= 1 }) else {
                throw ValidationError("--threads must be positive integers separated by commas, got '\(threads)'")
            }
            threadCounts = parsed.map { $0! }
        }
        let peer = PeerBenchmark(python: peerPython, script: Self.peerScript)

        var table = TextTable(header: ["threads", "pass", "Sura ms", "PyTorch ms", "Sura/PyTorch"])
        var peerNotes: [String] = []
        var parameters = 0
        for threads in threadCounts {
            Threads.count = threads
            FileHandle.standardError.write(Data("bench unet: Sura at \(threads) thread(s)…\n".utf8))
            let sura = try measureSura(unetConfig, height: height, width: width)
            parameters = sura.parameters
            var outcome = PeerBenchmark.Outcome.unavailable("skipped (--no-peer)")
            if !noPeer {
                FileHandle.standardError.write(Data("bench unet: PyTorch at \(threads) thread(s)…\n".utf8))
                outcome = peer.run(["--config", configURL.path, "--threads", "\(threads)", "--batch", "\(batch)",
                                    "--tokens", "\(tokens)", "--repeats", "\(repeats)"],
                                   environment: ["OMP_NUM_THREADS": "\(threads)"])
            }
            if case .unavailable(let reason) = outcome, !peerNotes.contains(reason) { peerNotes.append(reason) }
            for (pass, ms, key) in [("forward", sura.forward, "forward_ms"), ("forward+backward", sura.forwardBackward, "forward_backward_ms")] {
                let peerMs = outcome.number(key)
                table.add(["\(threads)", pass, String(format: "%.2f", ms), peerMs.map { String(format: "%.2f", $0) } ?? "-",
                           peerMs.map { String(format: "%.3f", ms / $0) } ?? "-"])
            }
        }
        var lines = [BLASKernels.header(cores: cores),
                     "config=\(configURL.path)",
                     "batch=\(batch) sample=\(unetConfig.inChannels)x\(height)x\(width) tokens=\(tokens)x\(unetConfig.crossAttentionDim.value(at: 0)) "
                        + "parameters=\(parameters) repeats=\(repeats) (best of)",
                     "", table.render()]
        if !peerNotes.isEmpty { lines += [""] + peerNotes.map { "PyTorch peer unavailable: \($0)" } }
        print(lines.joined(separator: "\n"))
    }

    struct SuraTimes {
        let forward: Double
        let forwardBackward: Double
        let parameters: Int
    }

    /// Best-of-`repeats` milliseconds for a random-weight UNet, the way the peer measures:
    /// forward without a graph; forward + backward of mean(out²) with parameter gradients.
    func measureSura(_ config: UNet2DConditionConfig, height: Int, width: Int) throws -> SuraTimes {
        var rng = SeededGenerator(seed: 0)
        let unet: UNet2DConditionModel
        do {
            unet = try UNet2DConditionModel(config: config, rng: &rng)
        } catch {
            throw CommandFailure("\(error)")
        }
        let x = Tensor.randn([batch, config.inChannels, height, width], using: &rng)
        let t = (0..<batch).map { _ in Float(Int(rng.nextUniform() * 1000)) }
        let context = Tensor.randn([batch, tokens, config.crossAttentionDim.value(at: 0)], using: &rng)

        func best(_ body: () throws -> Void) rethrows -> Double {
            try body()
            var best = Double.infinity
            for _ in 0..<repeats {
                let t0 = BenchmarkTimer.now()
                try body()
                best = min(best, BenchmarkTimer.now() - t0)
            }
            return best * 1e3
        }
        let forward = try best {
            _ = try withoutGrad { try unet.forward(sample: x, timesteps: t, encoderHiddenStates: context) }
        }
        let forwardBackward = try best {
            unet.zeroGrad()
            let xi = x.contiguousCopy()
            xi.requiresGrad = true
            try unet.forward(sample: xi, timesteps: t, encoderHiddenStates: context).square().mean().backward()
        }
        return SuraTimes(forward: forward, forwardBackward: forwardBackward, parameters: unet.parameterCount)
    }
}
