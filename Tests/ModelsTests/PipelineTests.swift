import Foundation
import XCTest
import Models
import Tensor

// The text-to-image pipeline on the small random-weight fixture UNet and VAE
// (Tests/Reference/make_diffusion_fixtures.py) with a stub conditioning provider.

private func fixtures() throws -> URL {
    try XCTUnwrap(Bundle.module.url(forResource: "Fixtures", withExtension: nil), "test bundle has no Fixtures folder")
}

private func diffusionFixture(_ name: String) throws -> URL {
    try fixtures().appendingPathComponent("diffusion").appendingPathComponent(name)
}

/// Deterministic conditioning: each prompt seeds its own [1, 5, width] draw; the negative is a
/// fixed draw. Counts calls so tests can see what the pipeline asked for.
private final class StubConditioning: ConditioningProvider {
    let width: Int
    let length: Int
    var negativeLength: Int
    private(set) var requested: [[String]] = []

    init(width: Int = 32, length: Int = 5, negativeLength: Int? = nil) {
        self.width = width
        self.length = length
        self.negativeLength = negativeLength ?? length
    }

    func row(_ prompt: String, length: Int) -> Tensor {
        var seed: UInt64 = 1469598103934665603
        for byte in prompt.utf8 { seed = (seed ^ UInt64(byte)) &* 1099511628211 }
        var rng = SeededGenerator(seed: seed)
        return Tensor.randn([1, length, width], using: &rng)
    }

    func conditioning(for prompts: [String]) throws -> Tensor {
        requested.append(prompts)
        return Tensor.concat(prompts.map { row($0, length: length) }, axis: 0)
    }

    func negativeConditioning() throws -> Tensor { row("<negative>", length: negativeLength) * 0.5 }
}

/// A DDIM config like Stable Diffusion's, with the options a test needs.
private func ddimConfig(prediction: PredictionType = .epsilon, spacing: TimestepSpacing? = nil) -> SchedulerConfig {
    var config = SchedulerConfig(className: DDIMScheduler.className)
    config.betaSchedule = .scaledLinear
    config.betaStart = 0.00085
    config.betaEnd = 0.012
    config.clipSample = false
    config.predictionType = prediction
    config.timestepSpacing = spacing
    return config
}

private func maxAbsDifference(_ a: Tensor, _ b: Tensor) -> Float {
    precondition(a.shape == b.shape, "\(a.shape) vs \(b.shape)")
    return zip(a.scalars, b.scalars).reduce(0) { max($0, abs($1.0 - $1.1)) }
}

private func temporaryDirectory(_ name: String) throws -> URL {
    let url = FileManager.default.temporaryDirectory.appendingPathComponent("sura-pipeline-\(name)-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    return url
}

final class PipelineTests: XCTestCase {
    private var unet: UNet2DConditionModel!
    private var vae: AutoencoderKL!

    override func setUpWithError() throws {
        unet = try UNet2DConditionModel.load(directory: diffusionFixture("unet_small"))
        vae = try AutoencoderKL.load(directory: diffusionFixture("vae"))
    }

    private func pipeline(_ config: SchedulerConfig = ddimConfig(), provider: ConditioningProvider? = StubConditioning(),
                          vae withVAE: Bool = true) throws -> TextToImagePipeline {
        try TextToImagePipeline(unet: unet, vae: withVAE ? vae : nil, scheduler: SchedulerRegistry.makeScheduler(config: config),
                                conditioningProvider: provider)
    }

    // MARK: Reproducibility

    func testSameSeedGivesSameImagesAndOtherSeedsDiffer() throws {
        let p = try pipeline()
        let options = TextToImageOptions(steps: 3, guidanceScale: 4)
        let a = try p.generate(prompts: ["a red shirt", "two sneakers"], seed: 11, options: options)
        let b = try p.generate(prompts: ["a red shirt", "two sneakers"], seed: 11, options: options)
        XCTAssertEqual(a.images.shape, [2, 3, 32, 32], "16×16 latents decoded by a VAE of factor 2")
        XCTAssertEqual(a.latents.shape, [2, 4, 16, 16])
        XCTAssertEqual(a.images.scalars, b.images.scalars)
        XCTAssertTrue(a.images.scalars.allSatisfy { $0 >= 0 && $0 <= 1 })
        let c = try p.generate(prompts: ["a red shirt", "two sneakers"], seed: 12, options: options)
        XCTAssertGreaterThan(maxAbsDifference(a.latents, c.latents), 1e-2)
    }

    /// An image depends on its own prompt, negative prompt and seed only: taken out of a batch
    /// it is the same, also with a stochastic sampler (DDPM draws noise at every step).
    func testImageDoesNotDependOnTheRestOfTheBatch() throws {
        var ddpm = SchedulerConfig(className: DDPMScheduler.className)
        ddpm.clipSample = false
        for config in [ddimConfig(), ddpm] {
            let p = try pipeline(config)
            let options = TextToImageOptions(steps: 3, guidanceScale: 3)
            let batch = [ImagePrompt("a red shirt", seed: 5), ImagePrompt("two sneakers", negativePrompt: "blurry", seed: 7),
                         ImagePrompt("a bag", seed: 9)]
            let together = try p.denoise(batch, options: options)
            for (i, item) in batch.enumerated() {
                let alone = try p.denoise([item], options: options)
                let diff = maxAbsDifference(together.sliced(axis: 0, i, i + 1).contiguousCopy(), alone)
                XCTAssertLessThan(diff, 1e-4, "\(config.className!) image \(i) changed with its batch (max |Δ| \(diff))")
            }
        }
    }

    // MARK: Guidance

    /// Guidance 1 runs the conditional branch alone: the plain sampling loop gives the same latents.
    func testGuidanceOneEqualsTheConditionalOnlyLoop() throws {
        let provider = StubConditioning()
        let p = try pipeline(provider: provider)
        let options = TextToImageOptions(steps: 4, guidanceScale: 1)
        let out = try p.denoise([ImagePrompt("a coat", seed: 3)], options: options)

        let scheduler = try DDIMScheduler(config: ddimConfig())
        try scheduler.setTimesteps(4)
        var rng = SeededGenerator(seed: 3)
        var x = Tensor.randn([1, 4, 16, 16], using: &rng)
        let cond = try provider.conditioning(for: ["a coat"])
        try withoutGrad {
            for t in scheduler.timesteps {
                let eps = try unet.forward(sample: x, timesteps: [t], encoderHiddenStates: cond)
                x = try scheduler.step(modelOutput: eps, timestep: t, sample: x).prevSample
            }
        }
        XCTAssertLessThan(maxAbsDifference(out, x), 1e-6)
    }

    /// One step by hand: ε̂ = ε_u + s·(ε_c − ε_u) from two separate UNet calls, then DDIM's last
    /// step to x̂₀ written out (trailing spacing: t = 999, ᾱ_prev = 1), for ε and v prediction.
    func testOneGuidedStepMatchesHandComputation() throws {
        // Negative conditioning of the same length runs as one batch of 2, of another length as two calls.
        for (prediction, negativeLength) in [(PredictionType.epsilon, 5), (.vPrediction, 5), (.epsilon, 3)] {
            let provider = StubConditioning(negativeLength: negativeLength)
            let config = ddimConfig(prediction: prediction, spacing: .trailing)
            let p = try pipeline(config, provider: provider)
            let scale: Float = 3.5
            let out = try p.denoise([ImagePrompt("a blue dress", seed: 21)], options: TextToImageOptions(steps: 1, guidanceScale: scale))

            var rng = SeededGenerator(seed: 21)
            let x = Tensor.randn([1, 4, 16, 16], using: &rng)
            let (u, c) = try withoutGrad {
                (try unet.forward(sample: x, timesteps: [999], encoderHiddenStates: provider.negativeConditioning()),
                 try unet.forward(sample: x, timesteps: [999], encoderHiddenStates: provider.conditioning(for: ["a blue dress"])))
            }
            let alphaBar = try NoiseSchedule(config: config).alphasCumprod[999]
            let a = alphaBar.squareRoot(), b = (1 - alphaBar).squareRoot()
            let guided = zip(u.scalars, c.scalars).map { u, c in u + scale * (c - u) }
            let expected = zip(x.scalars, guided).map { x, g in prediction == .epsilon ? (x - b * g) / a : a * x - b * g }
            let got = out.scalars
            let scaleOfValues = expected.map(abs).max()!
            let err = zip(got, expected).map { abs($0 - $1) }.max()! / scaleOfValues
            XCTAssertLessThan(err, 1e-5, "\(prediction.rawValue): relative error \(err)")
        }
    }

    func testGuidanceKeepsTheConditionalVarianceHalf() {
        let u = Tensor(shape: [1, 4, 1, 1], data: [1, 2, 10, 20])
        let c = Tensor(shape: [1, 4, 1, 1], data: [3, 6, 30, 40])
        XCTAssertEqual(TextToImagePipeline.guide(unconditional: u, conditional: c, scale: 2, sampleChannels: 2).scalars,
                       [5, 10, 30, 40])
        XCTAssertEqual(TextToImagePipeline.guide(unconditional: u, conditional: c, scale: 2, sampleChannels: 4).scalars,
                       [5, 10, 50, 60])
    }

    // MARK: Images

    func testWritesImagesAndGridAsValidPNGs() throws {
        let p = try pipeline()
        let result = try p.generate(prompts: ["a", "b", "c"], seed: 0, options: TextToImageOptions(steps: 2, guidanceScale: 2))
        let dir = try temporaryDirectory("png")
        defer { try? FileManager.default.removeItem(at: dir) }
        let urls = try result.writePNGs(to: dir, prefix: "img")
        XCTAssertEqual(urls.map(\.lastPathComponent), ["img-0.png", "img-1.png", "img-2.png", "img-grid.png"])
        for (i, url) in urls.prefix(3).enumerated() {
            let png = try PNGImage(contentsOf: url)
            XCTAssertEqual([png.width, png.height, png.channels], [32, 32, 3])
            XCTAssertEqual(png, try result.pngImage(at: i))
        }
        let grid = try PNGImage(contentsOf: urls[3])
        // ⌈√3⌉ = 2 columns, 2 rows, 2-pixel gaps.
        XCTAssertEqual([grid.width, grid.height], [2 * 32 + 3 * 2, 2 * 32 + 3 * 2])
        let first = try result.pngImage(at: 0)
        XCTAssertEqual(Array(grid.pixels[((2 * grid.width) + 2) * 3 ..< ((2 * grid.width) + 2 + 32) * 3]),
                       Array(first.pixels[0..<(32 * 3)]), "image 0's first row sits at (2, 2) in the grid")
    }

    /// Without a VAE the UNet works on pixels: the 3-channel fixture UNet gives 16×16 RGB images.
    func testPixelSpacePipeline() throws {
        let pixelUNet = try UNet2DConditionModel.load(directory: diffusionFixture("unet_linear"))
        let p = try TextToImagePipeline(unet: pixelUNet, vae: nil, scheduler: DDIMScheduler(config: ddimConfig(prediction: .vPrediction)),
                                        conditioningProvider: StubConditioning(width: 24))
        let result = try p.generate(prompts: ["x"], options: TextToImageOptions(steps: 2, guidanceScale: 4))
        XCTAssertEqual(result.images.shape, [1, 3, 16, 16])
        XCTAssertEqual(try result.pngImage(at: 0).channels, 3)
        XCTAssertThrowsError(try TextToImagePipeline(unet: unet, vae: nil, scheduler: DDIMScheduler(config: ddimConfig()),
                                                     conditioningProvider: nil)) { error in
            XCTAssertTrue("\(error)".contains("in_channels 1 or 3"), "\(error)")
        }
    }

    func testNegativeConditioningOfAnotherLengthRunsAsTwoCalls() throws {
        let same = try pipeline(provider: StubConditioning(negativeLength: 5))
        let other = try pipeline(provider: StubConditioning(negativeLength: 2))
        let options = TextToImageOptions(steps: 2, guidanceScale: 5)
        XCTAssertEqual(try same.denoise([ImagePrompt("a", seed: 1)], options: options).shape, [1, 4, 16, 16])
        XCTAssertEqual(try other.denoise([ImagePrompt("a", seed: 1)], options: options).shape, [1, 4, 16, 16])
    }

    // MARK: Errors

    func testInvalidOptionsAndConditioningAreNamed() throws {
        let p = try pipeline()
        func message(_ body: () throws -> Void) -> String {
            do { try body(); return "no error" } catch { return "\(error)" }
        }
        XCTAssertTrue(message { _ = try p.generate(prompts: ["a"], options: TextToImageOptions(steps: 1, height: 18)) }.hasPrefix("height = 18: must be a positive multiple of 4"))
        XCTAssertTrue(message { _ = try p.generate(prompts: ["a"], options: TextToImageOptions(steps: 0)) }.hasPrefix("steps = 0"))
        XCTAssertTrue(message { _ = try p.generate(prompts: []) }.contains("at least one prompt"))
        let wide = Tensor(zeros: [1, 5, 48])
        XCTAssertTrue(message { _ = try p.generate(conditioning: wide, negativeConditioning: wide, seeds: [0]) }
            .contains("cross_attention_dim"))
        let cond = Tensor(zeros: [2, 5, 32])
        XCTAssertTrue(message { _ = try p.generate(conditioning: cond, negativeConditioning: Tensor(zeros: [3, 5, 32]), seeds: [0, 1]) }
            .hasPrefix("negative conditioning"))
        let none = try pipeline(provider: nil)
        XCTAssertTrue(message { _ = try none.generate(prompts: ["a"]) }.contains("no text encoder"))
    }

    func testSchedulerChoiceByNameKeepsTheFolderSchedule() throws {
        let base = ddimConfig(prediction: .vPrediction)
        for (name, className) in [("ddim", "DDIMScheduler"), ("ddpm", "DDPMScheduler"), ("euler", "EulerDiscreteScheduler"),
                                  ("dpm++2m", "DPMSolverMultistepScheduler"), ("EulerDiscreteScheduler", "EulerDiscreteScheduler")] {
            let scheduler = try SchedulerChoice.makeScheduler(name, config: base)
            XCTAssertEqual(type(of: scheduler).className, className)
            XCTAssertEqual(scheduler.config.predictionType, .vPrediction, name)
            XCTAssertEqual(scheduler.schedule, try NoiseSchedule(config: base), name)
        }
        XCTAssertEqual(type(of: try SchedulerChoice.makeScheduler(nil, config: base)).className, "DDIMScheduler")
        XCTAssertThrowsError(try SchedulerChoice.makeScheduler("heun", config: base)) { error in
            XCTAssertTrue("\(error)".contains("ddim, ddpm, euler, dpm++2m"), "\(error)")
        }
    }

    func testModelKindFromConfig() throws {
        let text = try fixtures().appendingPathComponent("text_encoders")
        XCTAssertEqual(try ModelKind.detect(at: diffusionFixture("unet_small")), .unet2DCondition)
        XCTAssertEqual(try ModelKind.detect(at: diffusionFixture("vae")), .autoencoderKL)
        XCTAssertEqual(try ModelKind.detect(at: text.appendingPathComponent("bert_tiny")), .bert)
        XCTAssertEqual(try ModelKind.detect(at: text.appendingPathComponent("clip_sd")), .clipText)
        XCTAssertEqual(try ModelKind.detect(at: text.appendingPathComponent("clip_proj")), .clipTextWithProjection)
        XCTAssertEqual(try ModelKind.detect(config: ["model_type": "llama"], path: "c"), .llama)
        XCTAssertThrowsError(try ModelKind.detect(config: ["model_type": "gpt2"], path: "x/config.json")) { error in
            XCTAssertTrue("\(error)".hasPrefix("x/config.json: model_type \"gpt2\" is not a model Sura runs"), "\(error)")
        }
        XCTAssertThrowsError(try ModelKind.detect(config: ["_class_name": "UNet2DModel"], path: "c")) { error in
            XCTAssertTrue("\(error)".contains("_class_name \"UNet2DModel\""), "\(error)")
        }
    }
}

// MARK: - Model folders

/// A diffusers-style folder assembled from the fixtures: unet/, vae/, scheduler/, and the tiny
/// CLIP text encoder with its tokenizer.
private func makeFolder(textEncoder: Bool = true, vae: Bool = true, scheduler: Bool = true) throws -> URL {
    let fm = FileManager.default
    let root = try temporaryDirectory("folder")
    let fixtureRoot = try fixtures()
    try fm.createSymbolicLink(at: root.appendingPathComponent("unet"), withDestinationURL: diffusionFixture("unet_small"))
    if vae { try fm.createSymbolicLink(at: root.appendingPathComponent("vae"), withDestinationURL: diffusionFixture("vae")) }
    if scheduler {
        try fm.createDirectory(at: root.appendingPathComponent("scheduler"), withIntermediateDirectories: true)
        try ddimConfig().write(to: root.appendingPathComponent("scheduler/scheduler_config.json"))
    }
    if textEncoder {
        try fm.createSymbolicLink(at: root.appendingPathComponent("text_encoder"),
                                  withDestinationURL: fixtureRoot.appendingPathComponent("text_encoders/clip_sd"))
        try fm.createDirectory(at: root.appendingPathComponent("tokenizer"), withIntermediateDirectories: true)
        try fm.copyItem(at: fixtureRoot.appendingPathComponent("tokenizers/clip-tokenizer.json"),
                        to: root.appendingPathComponent("tokenizer/tokenizer.json"))
    }
    return root
}

final class PipelineFolderTests: XCTestCase {
    func testLoadsADiffusersFolderAndGenerates() throws {
        let root = try makeFolder()
        defer { try? FileManager.default.removeItem(at: root) }
        let folder = try PipelineFolder.load(root)
        XCTAssertNotNil(folder.vae)
        let conditioning = try XCTUnwrap(folder.textConditioning)
        XCTAssertEqual(conditioning.maxLength, 77)
        XCTAssertEqual(try conditioning.conditioning(for: ["two sneakers", "a bag"]).shape, [2, 77, 32])
        XCTAssertEqual(try conditioning.negativeConditioning().scalars, try conditioning.conditioning(for: [""]).scalars)
        let p = try folder.makePipeline(scheduler: "euler")
        var reported: [Int] = []
        let result = try p.generate(prompts: ["two sneakers"], options: TextToImageOptions(steps: 2, guidanceScale: 4)) { step, total in
            XCTAssertEqual(total, 2)
            reported.append(step)
        }
        XCTAssertEqual(reported, [1, 2])
        XCTAssertEqual(result.images.shape, [1, 3, 32, 32])
    }

    /// sura.json names a text encoder outside the folder and sets the token count.
    func testSuraJSONNamesTheTextEncoder() throws {
        let root = try makeFolder(textEncoder: false)
        defer { try? FileManager.default.removeItem(at: root) }
        let fixtureRoot = try fixtures()
        let tokenizerDir = root.appendingPathComponent("tok")
        try FileManager.default.createDirectory(at: tokenizerDir, withIntermediateDirectories: true)
        try FileManager.default.copyItem(at: fixtureRoot.appendingPathComponent("tokenizers/clip-tokenizer.json"),
                                         to: tokenizerDir.appendingPathComponent("tokenizer.json"))
        let encoder = fixtureRoot.appendingPathComponent("text_encoders/clip_sd").path
        try Data("{\"text_encoder\": \"\(encoder)\", \"tokenizer\": \"tok\", \"max_length\": 12, \"_comment\": \"ok\"}".utf8)
            .write(to: root.appendingPathComponent("sura.json"))
        let folder = try PipelineFolder.load(root)
        XCTAssertEqual(folder.textConditioning?.maxLength, 12)
        XCTAssertEqual(try folder.textConditioning?.conditioning(for: ["a"]).shape, [1, 12, 32])
        XCTAssertNil(try PipelineFolder.load(try makeFolder(textEncoder: false)).textConditioning)
    }

    func testFolderErrorsNameTheMissingPiece() throws {
        func message(_ url: URL) -> String {
            do { _ = try PipelineFolder.load(url); return "no error" } catch { return "\(error)" }
        }
        let empty = try temporaryDirectory("empty")
        defer { try? FileManager.default.removeItem(at: empty) }
        XCTAssertTrue(message(empty).contains("no UNet (looked for unet/config.json)"), message(empty))
        XCTAssertTrue(message(empty.appendingPathComponent("nope")).contains("no model folder"))

        let noScheduler = try makeFolder(scheduler: false)
        defer { try? FileManager.default.removeItem(at: noScheduler) }
        XCTAssertTrue(message(noScheduler).contains("scheduler/scheduler_config.json"), message(noScheduler))

        let noTokenizer = try makeFolder()
        defer { try? FileManager.default.removeItem(at: noTokenizer) }
        try FileManager.default.removeItem(at: noTokenizer.appendingPathComponent("tokenizer"))
        XCTAssertTrue(message(noTokenizer).contains("no tokenizer (looked for tokenizer/)"), message(noTokenizer))

        let badSura = try makeFolder(textEncoder: false)
        defer { try? FileManager.default.removeItem(at: badSura) }
        let suraURL = badSura.appendingPathComponent("sura.json")
        try Data("{\"text_encoders\": \"x\"}".utf8).write(to: suraURL)
        XCTAssertTrue(message(badSura).contains("sura.json: text_encoders: unknown key; allowed keys are text_encoder"), message(badSura))
        try Data("{\"text_encoder\": \"missing-folder\"}".utf8).write(to: suraURL)
        XCTAssertTrue(message(badSura).contains("text_encoder: \(badSura.path)/missing-folder does not exist"), message(badSura))
        try Data("{\"max_length\": true}".utf8).write(to: suraURL)
        XCTAssertTrue(message(badSura).contains("max_length: must be a whole number"), message(badSura))
        try Data("[1]".utf8).write(to: suraURL)
        XCTAssertTrue(message(badSura).contains("must be a JSON object"), message(badSura))

        // A text encoder whose width is not the UNet's cross_attention_dim (clip_proj is 48 wide).
        let wide = try makeFolder(textEncoder: false)
        defer { try? FileManager.default.removeItem(at: wide) }
        let clipProj = try fixtures().appendingPathComponent("text_encoders/clip_proj").path
        let tokenizerDir = wide.appendingPathComponent("tok")
        try FileManager.default.createDirectory(at: tokenizerDir, withIntermediateDirectories: true)
        try FileManager.default.copyItem(at: fixtures().appendingPathComponent("tokenizers/clip-tokenizer.json"),
                                         to: tokenizerDir.appendingPathComponent("tokenizer.json"))
        let wideSura = wide.appendingPathComponent("sura.json")
        try Data("{\"text_encoder\": \"\(clipProj)\", \"tokenizer\": \"tok\"}".utf8).write(to: wideSura)
        XCTAssertTrue(message(wide).contains("max_length = 77: must be between 2 and the text encoder's max_position_embeddings = 12"),
                      message(wide))
        try Data("{\"text_encoder\": \"\(clipProj)\", \"tokenizer\": \"tok\", \"max_length\": 10}".utf8).write(to: wideSura)
        XCTAssertTrue(message(wide).contains("gives 48-wide tokens but the UNet's cross_attention_dim is 32"), message(wide))
    }
}

extension TextToImagePipeline {
    /// The final latents for `items` (the test's view of `generate`).
    fileprivate func denoise(_ items: [ImagePrompt], options: TextToImageOptions) throws -> Tensor {
        try generate(items, options: options).latents
    }
}
