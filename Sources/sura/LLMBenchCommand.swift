import ArgumentParser
import Foundation
import Models
import Tensor

/// `sura bench llm`: SmolLM2 prefill and decode tokens/s next to llama.cpp (llama-cpp-python) on
/// the same GGUF file and thread count, measured in the same run, at 1 thread and all cores.
///
/// Both sides process the same fixed token ids (not text): prefill is `batch` prompts of
/// `tokens` tokens (Sura runs them as one padded batch, llama.cpp one prompt after another, as
/// its Python API evaluates one sequence at a time), with logits for the last token only;
/// decode is `decode` greedy tokens, one at a time with a key/value cache, after an 8-token prompt.
struct LLMBenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "llm",
        abstract: "SmolLM2 prefill and decode tokens/s vs llama.cpp (same GGUF, same threads), at 1 thread and all cores.")

    static let defaultModel = "cache/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    static let peerScript = "bench/peers/llama_cpp_bench.py"

    @Option(help: "The Llama .gguf file (default: the cached SmolLM2-135M-Instruct).")
    var model: String?

    @Option(help: "Prefill: prompts per batch.")
    var batch: Int = 16

    @Option(help: "Prefill: tokens per prompt.")
    var tokens: Int = 32

    @Option(help: "Decode: tokens generated one at a time (batch 1).")
    var decode: Int = 64

    @Option(help: "Timed prefill repetitions (the best one counts), after one warm-up.")
    var repeats: Int = 3

    @Option(help: "Python interpreter with llama-cpp-python for the peer.")
    var peerPython: String = "python3"

    @Flag(help: "Skip the llama.cpp peer.")
    var noPeer = false

    func run() throws {
        guard batch >= 1 else { throw ValidationError("--batch must be at least 1, got \(batch)") }
        guard tokens >= 1 else { throw ValidationError("--tokens must be at least 1, got \(tokens)") }
        guard decode >= 2 else { throw ValidationError("--decode must be at least 2, got \(decode)") }
        guard repeats >= 1 else { throw ValidationError("--repeats must be at least 1, got \(repeats)") }
        let modelURL: URL
        if let model {
            modelURL = URL(fileURLWithPath: model)
        } else {
            guard let found = RepositoryFiles.locate(Self.defaultModel) else {
                throw CommandFailure("cannot find \(Self.defaultModel) (the setup script fetches it); pass --model PATH")
            }
            modelURL = found
        }
        let llm: LlamaForCausalLM
        do {
            llm = try LlamaForCausalLM.load(from: modelURL)
            llm.freeze()
        } catch {
            throw CommandFailure("\(error)")
        }
        let c = llm.config
        guard tokens <= c.maxPositionEmbeddings, 8 + decode <= c.maxPositionEmbeddings else {
            throw CommandFailure("--tokens \(tokens) / --decode \(decode) exceed the model's max_position_embeddings \(c.maxPositionEmbeddings)")
        }
        // The peer's ids: fixed, in range for any vocabulary of at least 40100 tokens.
        let prompts = (0..<batch).map { b in (0..<tokens).map { i in ((17 * b + 31 * i) % 40000 + 100) % c.vocabSize } }
        let cores = ProcessInfo.processInfo.activeProcessorCount
        let threadCounts = cores > 1 ? [1, cores] : [1]
        let peer = PeerBenchmark(python: peerPython, script: Self.peerScript)

        var table = TextTable(header: ["threads", "phase", "Sura tokens/s", "llama.cpp tokens/s", "Sura/llama.cpp"])
        var peerNotes: [String] = []
        for threads in threadCounts {
            Threads.count = threads
            FileHandle.standardError.write(Data("bench llm: Sura at \(threads) thread(s)…\n".utf8))
            let prefill = try measurePrefill(llm, prompts)
            let decodeRate = try measureDecode(llm, prompt: Array(prompts[0].prefix(8)))
            var outcome = PeerBenchmark.Outcome.unavailable("skipped (--no-peer)")
            if !noPeer {
                FileHandle.standardError.write(Data("bench llm: llama.cpp at \(threads) thread(s)…\n".utf8))
                outcome = peer.run(["--model", modelURL.path, "--threads", "\(threads)", "--batch", "\(batch)",
                                    "--tokens", "\(tokens)", "--decode", "\(decode)", "--repeats", "\(repeats)"],
                                   environment: ["OMP_NUM_THREADS": "\(threads)"])
            }
            if case .unavailable(let reason) = outcome, !peerNotes.contains(reason) { peerNotes.append(reason) }
            for (phase, rate, key) in [("prefill \(batch)x\(tokens)", prefill, "prefill_tokens_per_s"),
                                       ("decode batch 1", decodeRate, "decode_tokens_per_s")] {
                let peerRate = outcome.number(key)
                table.add(["\(threads)", phase, String(format: "%.1f", rate), peerRate.map { String(format: "%.1f", $0) } ?? "-",
                           peerRate.map { String(format: "%.3f", rate / $0) } ?? "-"])
            }
        }
        var lines = [BLASKernels.header(cores: cores),
                     "model=\(modelURL.path)",
                     "layers=\(c.numHiddenLayers) hidden=\(c.hiddenSize) vocab=\(c.vocabSize) (weights dequantised to float32 in Sura)",
                     "prefill: \(batch) prompts x \(tokens) tokens, best of \(repeats); decode: \(decode) greedy tokens after 8",
                     "", table.render()]
        if !peerNotes.isEmpty { lines += [""] + peerNotes.map { "llama.cpp peer unavailable: \($0)" } }
        print(lines.joined(separator: "\n"))
    }

    /// Best-of-`repeats` prefill tokens/s: the whole batch in one forward, last-token logits.
    func measurePrefill(_ llm: LlamaForCausalLM, _ prompts: [[Int]]) throws -> Double {
        let run = { _ = try withoutGrad { try llm(inputIds: prompts, logits: .lastToken) } }
        try run()
        var best = Double.infinity
        for _ in 0..<repeats {
            let t0 = BenchmarkTimer.now()
            try run()
            best = min(best, BenchmarkTimer.now() - t0)
        }
        return Double(prompts.count * prompts[0].count) / best
    }

    /// Decode tokens/s at batch 1: prefill `prompt` into a cache (not timed), then `decode` steps
    /// of argmax → one-token forward.
    func measureDecode(_ llm: LlamaForCausalLM, prompt: [Int]) throws -> Double {
        try withoutGrad {
            let cache = llm.makeCache(batch: 1, capacity: prompt.count + decode + 1)
            var logits = try llm(inputIds: [prompt], cache: cache, logits: .lastToken).logits!
            let t0 = BenchmarkTimer.now()
            for _ in 0..<decode {
                let scores = logits.contiguousCopy().scalars
                var next = 0
                for i in scores.indices where scores[i] > scores[next] { next = i }
                logits = try llm(inputIds: [[next]], cache: cache, logits: .lastToken).logits!
            }
            return Double(decode) / (BenchmarkTimer.now() - t0)
        }
    }
}
