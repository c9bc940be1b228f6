import ArgumentParser
import Foundation
import Models
import Tensor

/// `sura generate --model DIR --prompt "…"`: text-to-image from a model folder, written as PNGs.
struct GenerateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "generate",
        abstract: "Generate images from prompts with a model folder; write one PNG per prompt and a grid.",
        discussion: """
            The folder is diffusers' layout: unet/, scheduler/scheduler_config.json, optional vae/ \
            (absent: the UNet works in pixel space), and a text encoder — text_encoder/ + tokenizer/, \
            or a sura.json naming one ({"text_encoder": "path/to/minilm", "max_length": 18}). \
            Image i uses seed --seed + i, so an image does not depend on the other prompts.
            With --interleaved and a voken_mapper checkpoint trained with the LM loss, the LLM \
            continues the one --prompt and an image is drawn wherever it emits the vokens \
            (MiniGPT-5); the output folder gets document.md and document.html with the PNGs.
            """)

    @Option(help: "Model folder.")
    var model: String

    @Option(help: "An adapter checkpoint (train's export): prompts go through the LLM and the adapter instead of the folder's text encoder alone.")
    var adapter: String?

    @Option(help: "The LLM for --adapter (default: the path the checkpoint names).")
    var llm: String?

    @Option(name: .customLong("prompt"), help: "A prompt; repeat the option for several images.")
    var prompts: [String] = []

    @Option(help: "Negative prompt for every image (default: the empty prompt).")
    var negativePrompt: String?

    @Option(help: "Denoising steps.")
    var steps: Int = 25

    @Option(help: "Classifier-free guidance scale (1: conditional branch only).")
    var guidance: Float = 4

    @Option(help: "Sampler: ddim, ddpm, euler, dpm++2m, a diffusers class name, or a scheduler_config.json (default: the folder's).")
    var scheduler: String?

    @Option(help: "Seed of the first image; image i uses seed + i.")
    var seed: UInt64 = 0

    @Option(help: "Image height in pixels (default: the model's sample size).")
    var height: Int?

    @Option(help: "Image width in pixels (default: the model's sample size).")
    var width: Int?

    @Option(help: "Output folder (created if needed).")
    var output: String = "out/generate"

    @Flag(help: "Do not write the grid image.")
    var noGrid = false

    @Flag(help: "MiniGPT-5 interleaved generation: text continuing the --prompt with images where the LLM emits vokens (needs --adapter with a voken_mapper checkpoint).")
    var interleaved = false

    @Option(help: "With --interleaved: most text tokens to generate.")
    var maxNewTokens: Int = 64

    @Option(help: "With --interleaved: most images in the document.")
    var maxImages: Int = 3

    @Option(help: "With --interleaved: sampling temperature of the LLM (0: greedy).")
    var temperature: Float = 0

    @Option(help: "With --interleaved: transformers' repetition penalty on text tokens already in the document.")
    var repetitionPenalty: Float = 1.2

    @OptionGroup var compute: ComputeOptions

    func run() throws {
        try compute.apply()
        guard !prompts.isEmpty else { throw ValidationError("give at least one --prompt") }
        guard steps >= 1 else { throw ValidationError("--steps must be at least 1, got \(steps)") }
        guard guidance.isFinite else { throw ValidationError("--guidance must be a number, got \(guidance)") }
        let folderURL = URL(fileURLWithPath: model)
        if interleaved { return try runInterleaved(folderURL) }
        do {
            let folder = try PipelineFolder.load(folderURL)
            var provider: (any ConditioningProvider)? = nil
            if let adapter {
                provider = try AdapterConditioning.load(checkpoint: URL(fileURLWithPath: adapter), folder: folder, llm: llm)
            } else if folder.textConditioning == nil {
                throw PipelineError.noConditioningProvider(folder: folderURL.path)
            }
            let pipeline = try folder.makePipeline(scheduler: scheduler, conditioning: provider)
            let options = TextToImageOptions(steps: steps, guidanceScale: guidance, height: height, width: width)
            let bar = ProgressBar(total: steps, label: "generate", unit: "step")
            let start = BenchmarkTimer.now()
            let result = try pipeline.generate(prompts: prompts, negativePrompt: negativePrompt, seed: seed,
                                               options: options) { done, _ in bar.update(done) }
            let seconds = BenchmarkTimer.now() - start
            let urls = try result.writePNGs(to: URL(fileURLWithPath: output, isDirectory: true), grid: !noGrid)
            let size = result.images.shape
            let samplerName = type(of: pipeline.scheduler).className
            print("\(prompts.count) image(s) of \(size[3])×\(size[2]) in \(String(format: "%.1f", seconds)) s "
                  + "(\(samplerName), \(steps) steps, guidance \(guidance))")
            for (i, prompt) in prompts.enumerated() {
                print("\(urls[i].path)  seed \(seed &+ UInt64(i))  \"\(prompt)\"")
            }
            if !noGrid, let grid = urls.last { print("\(grid.path)  grid") }
        } catch let error as ValidationError {
            throw error
        } catch {
            throw CommandFailure("\(error)")
        }
    }

    func runInterleaved(_ folderURL: URL) throws {
        guard let adapter else { throw ValidationError("--interleaved needs --adapter with a voken_mapper checkpoint") }
        guard prompts.count == 1 else { throw ValidationError("--interleaved takes exactly one --prompt, got \(prompts.count)") }
        guard maxNewTokens >= 1 else { throw ValidationError("--max-new-tokens must be at least 1, got \(maxNewTokens)") }
        guard maxImages >= 0 else { throw ValidationError("--max-images must be ≥ 0, got \(maxImages)") }
        guard temperature >= 0, temperature.isFinite else { throw ValidationError("--temperature must be ≥ 0, got \(temperature)") }
        guard repetitionPenalty > 0, repetitionPenalty.isFinite else { throw ValidationError("--repetition-penalty must be > 0, got \(repetitionPenalty)") }
        do {
            let document = InterleavedDocument(folder: try PipelineFolder.load(folderURL), checkpointPath: adapter, llmOverride: llm,
                                               scheduler: scheduler, options: TextToImageOptions(steps: steps, guidanceScale: guidance,
                                                                                                  height: height, width: width),
                                               seed: seed)
            let generation = LlamaGenerationConfig(doSample: temperature > 0, temperature: temperature > 0 ? temperature : 1,
                                                   repetitionPenalty: repetitionPenalty, seed: seed)
            let written = try document.write(prompt: prompts[0], generation: generation, maxNewTokens: maxNewTokens,
                                             maxImages: maxImages, to: URL(fileURLWithPath: output, isDirectory: true)) { print($0) }
            print(written.text)
            print("\(written.markdown.path)  (\(written.images.count) image(s))")
            print(written.html.path)
        } catch let error as CommandFailure {
            throw error
        } catch {
            throw CommandFailure("\(error)")
        }
    }
}
