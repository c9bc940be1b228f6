import ArgumentParser
import Foundation
import Models
import Tensor

/// `sura complete --model PATH --prompt "…"`: answers a prompt with a Llama-family model (a
/// .gguf file or a transformers folder), printing the reply token by token as it is generated.
struct CompleteCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "complete",
        abstract: "Complete a prompt with a Llama-family LLM (.gguf or transformers folder), streaming the reply.",
        discussion: """
        With --chat (the default) the prompt is a user message rendered with the model's chat template
        (the GGUF's tokenizer.chat_template, else SmolLM2's); with --no-chat it is raw text continued as is.
        --temperature 0 (the default) decodes greedily; a positive temperature samples, with --top-k,
        --top-p and --seed.
        """)

    @Option(help: "A Llama .gguf file or a transformers folder (config.json, model.safetensors, tokenizer.json).")
    var model: String

    @Option(help: "The prompt.")
    var prompt: String

    @Option(help: "Most tokens to generate.")
    var maxTokens: Int = 64

    @Option(help: "0 decodes greedily; a positive value samples at that temperature.")
    var temperature: Float = 0

    @Option(help: "Sampling: keep the k most likely tokens (0 turns it off).")
    var topK: Int = 50

    @Option(help: "Sampling: keep the most likely tokens whose probability reaches p (1 turns it off).")
    var topP: Float = 1

    @Option(help: "Divides the logits of tokens already seen (1 turns it off).")
    var repetitionPenalty: Float = 1

    @Option(help: "Seed of the sampler.")
    var seed: UInt64 = 0

    @Flag(inversion: .prefixedNo, help: "Render the prompt as a chat user message.")
    var chat = true

    @OptionGroup var compute: ComputeOptions

    func run() throws {
        try compute.apply()
        guard maxTokens >= 0 else { throw ValidationError("--max-tokens must be ≥ 0, got \(maxTokens)") }
        guard temperature >= 0, temperature.isFinite else { throw ValidationError("--temperature must be ≥ 0, got \(temperature)") }
        let url = URL(fileURLWithPath: model)
        do {
            let loadStart = BenchmarkTimer.now()
            let llm = try LlamaForCausalLM.load(from: url)
            llm.freeze()
            let tokenizer = try LlamaTokenizerLoader.tokenizer(for: url)
            var generation = LlamaGenerationConfig(
                maxNewTokens: maxTokens, doSample: temperature > 0, temperature: temperature > 0 ? temperature : 1,
                topK: topK, topP: topP, repetitionPenalty: repetitionPenalty, seed: seed)
            try generation.validate()
            let ids: [Int]
            if chat {
                let template = Self.chatTemplate(for: url)
                ids = tokenizer.encodeChat([.user(prompt)], template: template, addGenerationPrompt: true)
                // A chat turn ends with <|im_end|> as well as with the model's EOS.
                if let end = tokenizer.id(forToken: "<|im_end|>") {
                    generation.eosTokenIds = Array(Set(llm.config.eosTokenIds + [end])).sorted()
                }
            } else {
                ids = tokenizer.encode(prompt, addSpecialTokens: true)
            }
            guard !ids.isEmpty else { throw CommandFailure("--prompt encodes to no tokens; give some text") }
            let loadSeconds = BenchmarkTimer.now() - loadStart

            var stream = TokenStream(tokenizer: tokenizer)
            let start = BenchmarkTimer.now()
            var firstToken: Double? = nil
            let result = try llm.generate(prompts: [ids], config: generation) { _, token in
                if firstToken == nil { firstToken = BenchmarkTimer.now() }
                stream.append(token)
            }[0]
            stream.finish()
            let seconds = BenchmarkTimer.now() - start
            let n = result.tokens.count
            let decodeRate = n > 1 ? Double(n - 1) / max(BenchmarkTimer.now() - (firstToken ?? start), 1e-9) : 0
            let note = String(format: "[%d prompt tokens, %d new tokens (\(result.finishReason.rawValue)) in %.2f s; decode %.1f tokens/s; load %.2f s]\n",
                              ids.count, n, seconds, decodeRate, loadSeconds)
            FileHandle.standardError.write(Data(note.utf8))
        } catch let error as CommandFailure {
            throw error
        } catch {
            throw CommandFailure("\(error)")
        }
    }

    /// The GGUF's own chat template when it has a ChatML one, else SmolLM2's.
    static func chatTemplate(for url: URL) -> ChatTemplate {
        guard url.pathExtension.lowercased() == "gguf", let file = try? GGUFFile(contentsOf: url) else { return .smolLM2 }
        return LlamaTokenizerLoader.chatTemplate(gguf: file) ?? .smolLM2
    }
}

/// Prints decoded text as tokens arrive. Byte-level BPE tokens can split a UTF-8 character, so
/// the whole reply is decoded each time and only the new, complete part is written; a trailing
/// U+FFFD (an unfinished character) waits for the next token.
struct TokenStream {
    let tokenizer: any Tokenizer
    private var tokens: [Int] = []
    private var printed = ""

    init(tokenizer: any Tokenizer) { self.tokenizer = tokenizer }

    mutating func append(_ token: Int) {
        tokens.append(token)
        flush(final: false)
    }

    mutating func finish() {
        flush(final: true)
        FileHandle.standardOutput.write(Data("\n".utf8))
    }

    private mutating func flush(final: Bool) {
        let text = tokenizer.decode(tokens, skipSpecialTokens: true)
        if !final && text.hasSuffix("\u{FFFD}") { return }
        guard text.hasPrefix(printed) else { return }
        let delta = String(text.dropFirst(printed.count))
        guard !delta.isEmpty else { return }
        FileHandle.standardOutput.write(Data(delta.utf8))
        printed = text
    }
}

/// `sura convert IN.gguf OUT_DIR`: a Llama GGUF file as a Hugging Face transformers folder.
struct ConvertCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "convert",
        abstract: "Convert a Llama .gguf file into a transformers folder (config.json, float32 model.safetensors, tokenizer files).")

    @Argument(help: "The .gguf file.")
    var input: String

    @Argument(help: "The output folder (created if needed).")
    var output: String

    @Flag(help: "Write into a folder that already has files.")
    var overwrite = false

    @Flag(inversion: .prefixedNo, help: "Also write generation_config.json.")
    var generationConfig = true

    func run() throws {
        let start = BenchmarkTimer.now()
        let report: LlamaConversionReport
        do {
            report = try LlamaConversion.convert(gguf: URL(fileURLWithPath: input), to: URL(fileURLWithPath: output),
                                                 overwrite: overwrite, generationConfig: generationConfig)
        } catch LlamaError.outputExists(let path) {
            throw CommandFailure("\(path) already has files; pass --overwrite to write into it")
        } catch {
            throw CommandFailure("\(error)")
        }
        let c = report.config
        var lines = [String(format: "converted %@ → %@ in %.2f s", input, report.directory.path, BenchmarkTimer.now() - start),
                     "  layers \(c.numHiddenLayers), hidden \(c.hiddenSize), heads \(c.numAttentionHeads)/\(c.numKeyValueHeads) KV, "
                        + "vocab \(c.vocabSize), tied embeddings \(c.tieWordEmbeddings)",
                     "  \(report.tensorCount) tensors (float32)"]
        var table = TextTable(header: ["file", "bytes"])
        for name in report.files {
            let path = report.directory.appendingPathComponent(name).path
            let size = (try? FileManager.default.attributesOfItem(atPath: path)[.size] as? Int) ?? nil
            table.add([name, size.map(String.init) ?? "?"])
        }
        lines.append(table.render())
        if let skipped = report.tokenizerSkipped { lines.append("no tokenizer.json written: \(skipped)") }
        print(lines.joined(separator: "\n"))
    }
}
