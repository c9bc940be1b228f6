import Foundation
import Tensor

/// Settings of one generation call that every image of the batch shares.
public struct TextToImageOptions: Sendable, Equatable {
    /// Denoising steps (1 … num_train_timesteps).
    public var steps: Int
    /// Classifier-free guidance scale s in ε̂ = ε_u + s·(ε_c − ε_u); 1 runs the conditional branch alone.
    public var guidanceScale: Float
    /// Image size in pixels; nil means the UNet's `sample_size` (times the VAE's factor).
    public var height: Int?
    public var width: Int?

    public init(steps: Int = 25, guidanceScale: Float = 4, height: Int? = nil, width: Int? = nil) {
        self.steps = steps
        self.guidanceScale = guidanceScale
        self.height = height
        self.width = width
    }
}

/// One image to generate: its prompt, its negative prompt and its seed. The image depends on
/// these three (and the shared options) only, never on the other images of the batch.
public struct ImagePrompt: Sendable, Equatable {
    public var prompt: String
    /// Text for the unconditional branch; nil or "" uses the provider's negative conditioning.
    public var negativePrompt: String?
    /// Seeds this image's own generator: its initial noise and any noise a stochastic sampler adds.
    public var seed: UInt64

    public init(_ prompt: String, negativePrompt: String? = nil, seed: UInt64 = 0) {
        self.prompt = prompt
        self.negativePrompt = negativePrompt
        self.seed = seed
    }
}

/// What a generation call returns.
public struct TextToImageResult {
    /// The images, [N, C, H, W] with values in [0, 1].
    public let images: Tensor
    /// The final sample of the denoising loop, as the UNet saw it: scaled latents
    /// [N, latent_channels, H/f, W/f] with a VAE, pixels in about [−1, 1] without one.
    public let latents: Tensor

    public var count: Int { images.shape[0] }

    /// Image `index` as an 8-bit PNG image (byte = round(255·v)).
    public func pngImage(at index: Int) throws -> PNGImage {
        try PNGImage(tensor: images.sliced(axis: 0, index, index + 1))
    }

    /// Every image, in order.
    public func pngImages() throws -> [PNGImage] {
        try (0..<count).map { try pngImage(at: $0) }
    }

    /// All images in one picture: `columns` per row (default ⌈√N⌉), `spacing` black pixels
    /// between and around them.
    public func grid(columns: Int? = nil, spacing: Int = 2) throws -> PNGImage {
        try PNGImage.grid(pngImages(), columns: columns, spacing: spacing)
    }

    /// Writes `prefix-0.png`, `prefix-1.png`, … and, with `grid`, `prefix-grid.png` into `directory`
    /// (created if needed), each through a temporary file. Returns the image files, then the grid.
    public func writePNGs(to directory: URL, prefix: String = "image", grid: Bool = true) throws -> [URL] {
        do {
            try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        } catch {
            throw FileFormatError.writeFailed(file: directory.path, reason: error.localizedDescription)
        }
        let pngs = try pngImages()
        var urls: [URL] = []
        for (i, png) in pngs.enumerated() {
            let url = directory.appendingPathComponent("\(prefix)-\(i).png")
            try png.write(to: url)
            urls.append(url)
        }
        if grid {
            let url = directory.appendingPathComponent("\(prefix)-grid.png")
            try PNGImage.grid(pngs, columns: nil, spacing: 2).write(to: url)
            urls.append(url)
        }
        return urls
    }
}

extension PNGImage {
    /// Tiles images of one size and channel count into rows of `columns` (default ⌈√N⌉) with
    /// `spacing` black pixels between and around them.
    /// - Throws: `FileFormatError.image` when the list is empty or the images differ in size.
    public static func grid(_ images: [PNGImage], columns: Int? = nil, spacing: Int = 2) throws -> PNGImage {
        guard let first = images.first else { throw FileFormatError.image(file: "<grid>", reason: "no images to tile") }
        if let bad = images.firstIndex(where: { $0.width != first.width || $0.height != first.height || $0.channels != first.channels }) {
            throw FileFormatError.image(file: "<grid>", reason: "image \(bad) is \(images[bad].width)×\(images[bad].height)×\(images[bad].channels), "
                                        + "image 0 is \(first.width)×\(first.height)×\(first.channels)")
        }
        let cols = max(1, min(columns ?? Int(Double(images.count).squareRoot().rounded(.up)), images.count))
        let rows = (images.count + cols - 1) / cols
        let gap = max(0, spacing), c = first.channels
        let width = cols * first.width + (cols + 1) * gap
        let height = rows * first.height + (rows + 1) * gap
        var pixels = [UInt8](repeating: 0, count: width * height * c)
        if c == 2 || c == 4 {
            // Opaque background: set every alpha byte.
            for i in stride(from: c - 1, to: pixels.count, by: c) { pixels[i] = 255 }
        }
        for (k, image) in images.enumerated() {
            let x0 = gap + (k % cols) * (first.width + gap), y0 = gap + (k / cols) * (first.height + gap)
            let rowBytes = first.width * c
            for y in 0..<first.height {
                let dst = ((y0 + y) * width + x0) * c
                pixels.replaceSubrange(dst..<(dst + rowBytes), with: image.pixels[(y * rowBytes)..<((y + 1) * rowBytes)])
            }
        }
        return try PNGImage(width: width, height: height, channels: c, pixels: pixels)
    }
}

/// Text-to-image sampling with classifier-free guidance: conditioning → denoising loop → VAE
/// decode (or pixel space) → images in [0, 1].
///
/// Each step runs the UNet once on the batch [x; x] with conditioning [negative; positive]:
///
///     ε_u, ε_c = UNet(scale(x), t, [c_neg; c_pos]).chunk(2)
///     ε̂ = ε_u + s·(ε_c − ε_u)                     (Ho & Salimans 2022, eq. 6)
///     x = scheduler.step(ε̂, t, x)
///
/// The combination is linear in the model output, so it holds for ε, v and x₀ prediction alike:
/// the scheduler interprets ε̂ per its `prediction_type`. With s = 1 only the conditional branch
/// runs. A UNet with learned variances (out_channels = 2·in_channels) guides the first half of
/// its channels and keeps the conditional branch's variance half.
///
/// With a VAE the loop runs on latents [N, latent, H/f, W/f] and the images are
/// decode(latents / scaling_factor + shift_factor); without one (UNet in/out channels 1 or 3) it
/// runs on pixels in [−1, 1]. Images are (x + 1)/2 clamped to [0, 1].
///
/// **Reproducibility.** Image i has its own `SeededGenerator(seed: seeds[i])`, which draws its
/// initial noise [1, C, h, w] and then, at every step, the noise a stochastic sampler (DDPM, DDIM
/// with η > 0) adds. So an image depends only on its prompt, negative prompt, seed and the shared
/// options — not on which other images share its batch.
///
/// A pipeline holds a stateful scheduler: run one generation at a time per instance.
public final class TextToImagePipeline {
    public let unet: UNet2DConditionModel
    public let vae: AutoencoderKL?
    public let scheduler: any DiffusionScheduler
    /// Turns prompts into conditioning; nil when the caller passes conditioning tensors itself.
    public let conditioningProvider: (any ConditioningProvider)?

    /// - Throws: `PipelineError.incompatibleComponents` when the UNet's in_channels differ from
    ///   the VAE's latent_channels, or — without a VAE — are not 1 or 3 (pixel space), or when
    ///   out_channels is neither in_channels nor 2·in_channels.
    public init(unet: UNet2DConditionModel, vae: AutoencoderKL?, scheduler: any DiffusionScheduler,
                conditioningProvider: (any ConditioningProvider)?) throws {
        let c = unet.config
        if let vae {
            guard c.inChannels == vae.config.latentChannels else {
                throw PipelineError.incompatibleComponents(
                    message: "unet in_channels = \(c.inChannels) but vae latent_channels = \(vae.config.latentChannels)")
            }
        } else {
            guard c.inChannels == 1 || c.inChannels == 3 else {
                throw PipelineError.incompatibleComponents(
                    message: "without a vae the UNet works in pixel space and needs in_channels 1 or 3, got \(c.inChannels)")
            }
        }
        guard c.outChannels == c.inChannels || c.outChannels == 2 * c.inChannels else {
            throw PipelineError.incompatibleComponents(
                message: "unet out_channels = \(c.outChannels) must equal in_channels = \(c.inChannels) (or twice it, for learned variances)")
        }
        self.unet = unet
        self.vae = vae
        self.scheduler = scheduler
        self.conditioningProvider = conditioningProvider
        unet.eval()
        vae?.eval()
    }

    /// Pixels per latent position: the VAE's downsampling factor, or 1 in pixel space.
    public var pixelsPerLatent: Int { vae?.config.downsamplingFactor ?? 1 }

    /// Image sizes must be multiples of this: the VAE factor times the UNet's 2^(blocks − 1).
    public var sizeMultiple: Int { pixelsPerLatent << unet.config.upsamplerCount }

    /// The default image size (height, width): the UNet's `sample_size` in pixels, or 64 latent positions.
    public var defaultSize: (height: Int, width: Int) {
        let values = unet.config.sampleSize?.values ?? [64]
        let h = values[0], w = values.count > 1 ? values[1] : values[0]
        return (h * pixelsPerLatent, w * pixelsPerLatent)
    }

    // MARK: Generation from prompts

    /// Generates one image per prompt; image i uses seed `seed + i`.
    public func generate(prompts: [String], negativePrompt: String? = nil, seed: UInt64 = 0,
                         options: TextToImageOptions = TextToImageOptions(),
                         progress: ((_ step: Int, _ total: Int) -> Void)? = nil) throws -> TextToImageResult {
        let items = prompts.enumerated().map { i, p in ImagePrompt(p, negativePrompt: negativePrompt, seed: seed &+ UInt64(i)) }
        return try generate(items, options: options, progress: progress)
    }

    /// Generates one image per item, each from its own prompt, negative prompt and seed.
    /// - Throws: `PipelineError.noConditioningProvider` without a provider, and what the
    ///   provider, `generate(conditioning:…)` and the models throw.
    public func generate(_ items: [ImagePrompt], options: TextToImageOptions = TextToImageOptions(),
                         progress: ((_ step: Int, _ total: Int) -> Void)? = nil) throws -> TextToImageResult {
        guard let provider = conditioningProvider else { throw PipelineError.noConditioningProvider(folder: "this pipeline") }
        guard !items.isEmpty else { throw PipelineError.invalidOption(name: "prompts", value: "[]", message: "at least one prompt is needed") }
        let (positive, negative) = try withoutGrad { () -> (Tensor, Tensor) in
            let positive = try provider.conditioning(for: items.map(\.prompt))
            return (positive, try negativeConditioning(for: items, provider: provider))
        }
        var perStep: ((Float) throws -> (Tensor, Tensor))? = nil
        if let timed = provider as? any TimestepConditioningProvider {
            guard items.allSatisfy({ ($0.negativePrompt ?? "").isEmpty }) else {
                throw PipelineError.invalidOption(name: "negative_prompt", value: items.compactMap(\.negativePrompt).first ?? "",
                                                  message: "a timestep-aware adapter uses its own negative conditioning; leave the negative prompt empty")
            }
            let prompts = items.map(\.prompt)
            perStep = { t in (try timed.conditioning(for: prompts, timestep: t), try timed.negativeConditioning(timestep: t)) }
        }
        let latents = try denoise(conditioning: positive, negativeConditioning: negative, seeds: items.map(\.seed),
                                  options: options, conditioningAt: perStep, progress: progress)
        return TextToImageResult(images: try decode(latents), latents: latents)
    }

    /// [N, L, D] when some items have their own negative prompt (the others get the provider's
    /// negative), else the provider's [1, L, D].
    private func negativeConditioning(for items: [ImagePrompt], provider: any ConditioningProvider) throws -> Tensor {
        let shared = try provider.negativeConditioning()
        let custom = items.indices.filter { !(items[$0].negativePrompt ?? "").isEmpty }
        guard !custom.isEmpty else { return shared }
        let encoded = try provider.conditioning(for: custom.map { items[$0].negativePrompt! })
        guard encoded.rank == 3, shared.rank == 3, encoded.shape[1...] == shared.shape[1...] else {
            throw PipelineError.conditioningShape(what: "negative prompt conditioning", expected: "[\(custom.count), \(shared.shape.dropFirst().map(String.init).joined(separator: ", "))] like the provider's negative conditioning",
                                                  got: encoded.shape)
        }
        var rows: [Tensor] = []
        var next = 0
        for i in items.indices {
            if next < custom.count && custom[next] == i {
                rows.append(encoded.sliced(axis: 0, next, next + 1))
                next += 1
            } else {
                rows.append(shared)
            }
        }
        return Tensor.concat(rows, axis: 0)
    }

    // MARK: Generation from conditioning tensors

    /// Generates one image per seed from conditioning tensors (an adapter's output, say).
    ///
    /// - Parameters:
    ///   - conditioning: [N, L, D] with N = seeds.count.
    ///   - negativeConditioning: [1, L', D] shared by all images or [N, L', D]; L' may differ from L.
    /// - Throws: `PipelineError` naming the option or tensor at fault; the models' errors.
    public func generate(conditioning: Tensor, negativeConditioning: Tensor, seeds: [UInt64],
                         options: TextToImageOptions = TextToImageOptions(),
                         progress: ((_ step: Int, _ total: Int) -> Void)? = nil) throws -> TextToImageResult {
        let latents = try denoise(conditioning: conditioning, negativeConditioning: negativeConditioning, seeds: seeds,
                                  options: options, progress: progress)
        return TextToImageResult(images: try decode(latents), latents: latents)
    }

    /// The denoising loop alone: returns the final sample (latents, or pixels in pixel space).
    ///   - conditioningAt: for conditioning that depends on the timestep (ELLA's connector):
    ///     called at every step with t, returns that step's conditioning [N, L, D] and negative
    ///     conditioning [1 or N, L', D], which replace the fixed ones.
    public func denoise(conditioning fixedConditioning: Tensor, negativeConditioning fixedNegative: Tensor, seeds: [UInt64],
                        options: TextToImageOptions = TextToImageOptions(),
                        conditioningAt: ((Float) throws -> (Tensor, Tensor))? = nil,
                        progress: ((_ step: Int, _ total: Int) -> Void)? = nil) throws -> Tensor {
        var conditioning = fixedConditioning, negativeConditioning = fixedNegative
        let n = seeds.count
        try checkConditioning(conditioning, negativeConditioning, count: n)
        let (height, width) = try imageSize(options)
        guard options.guidanceScale.isFinite else {
            throw PipelineError.invalidOption(name: "guidance", value: "\(options.guidanceScale)", message: "must be a finite number")
        }
        guard options.steps >= 1 else {
            throw PipelineError.invalidOption(name: "steps", value: "\(options.steps)", message: "must be at least 1")
        }
        try scheduler.setTimesteps(options.steps)
        let timesteps = scheduler.timesteps
        let guided = options.guidanceScale != 1
        var negative = Tensor(zeros: [1]), joined: Tensor? = nil
        func prepare() {
            negative = negativeConditioning.shape[0] == n ? negativeConditioning
                : negativeConditioning.expanded(to: [n] + Array(negativeConditioning.shape.dropFirst())).contiguous()
            // One UNet batch when both branches have the same token count; two calls otherwise.
            joined = guided && negative.shape[1] == conditioning.shape[1]
                ? Tensor.concat([negative, conditioning], axis: 0) : nil
        }
        prepare()

        return try withoutGrad {
            var generators = seeds.map { SeededGenerator(seed: $0) }
            let shape = [1, unet.config.inChannels, height / pixelsPerLatent, width / pixelsPerLatent]
            var x = drawNoise(shape, &generators) * scheduler.initNoiseSigma
            for (k, t) in timesteps.enumerated() {
                if let conditioningAt {
                    (conditioning, negativeConditioning) = try conditioningAt(t)
                    try checkConditioning(conditioning, negativeConditioning, count: n)
                    prepare()
                }
                let input = try scheduler.scaleModelInput(x, timestep: t)
                let output: Tensor
                if !guided {
                    output = try unet.forward(sample: input, timesteps: [t], encoderHiddenStates: conditioning)
                } else if let joined {
                    let both = try unet.forward(sample: Tensor.concat([input, input], axis: 0), timesteps: [t],
                                                encoderHiddenStates: joined)
                    let halves = both.chunked(2, axis: 0)
                    output = Self.guide(unconditional: halves[0], conditional: halves[1], scale: options.guidanceScale,
                                        sampleChannels: x.shape[1])
                } else {
                    let u = try unet.forward(sample: input, timesteps: [t], encoderHiddenStates: negative)
                    let c = try unet.forward(sample: input, timesteps: [t], encoderHiddenStates: conditioning)
                    output = Self.guide(unconditional: u, conditional: c, scale: options.guidanceScale, sampleChannels: x.shape[1])
                }
                // Drawn every step whether or not the sampler uses it, so each image's stream stays its own.
                let stepNoise = drawNoise(shape, &generators)
                x = try scheduler.step(modelOutput: output, timestep: t, sample: x, varianceNoise: stepNoise).prevSample
                progress?(k + 1, timesteps.count)
            }
            return x
        }
    }

    /// ε̂ = ε_u + s·(ε_c − ε_u); with learned variances only the first `sampleChannels` channels
    /// are guided and the conditional variance channels are kept.
    public static func guide(unconditional u: Tensor, conditional c: Tensor, scale s: Float,
                             sampleChannels: Int) -> Tensor {
        if c.rank == 4 && c.shape[1] == 2 * sampleChannels {
            let uParts = u.split([sampleChannels, sampleChannels], axis: 1)
            let cParts = c.split([sampleChannels, sampleChannels], axis: 1)
            return Tensor.concat([uParts[0] + (cParts[0] - uParts[0]) * s, cParts[1]], axis: 1)
        }
        return u + (c - u) * s
    }

    /// One [1, C, h, w] standard-normal draw from each image's generator, stacked to [N, C, h, w].
    private func drawNoise(_ shape: [Int], _ generators: inout [SeededGenerator]) -> Tensor {
        let rows = generators.indices.map { Tensor.randn(shape, using: &generators[$0]) }
        return rows.count == 1 ? rows[0] : Tensor.concat(rows, axis: 0)
    }

    /// The final sample → images [N, C, H, W] in [0, 1].
    public func decode(_ latents: Tensor) throws -> Tensor {
        try withoutGrad {
            var pixels = latents
            if let vae {
                var z = latents / vae.scalingFactor
                if let shift = vae.shiftFactor { z = z + shift }
                pixels = try vae.decode(z)
            }
            return (pixels * 0.5 + 0.5).clamp(min: 0, max: 1)
        }
    }

    // MARK: Checks

    private func imageSize(_ options: TextToImageOptions) throws -> (Int, Int) {
        let fallback = defaultSize
        let height = options.height ?? fallback.height, width = options.width ?? fallback.width
        let multiple = sizeMultiple
        for (name, value) in [("height", height), ("width", width)] where value < multiple || value % multiple != 0 {
            throw PipelineError.invalidOption(
                name: name, value: "\(value)",
                message: "must be a positive multiple of \(multiple) (the VAE factor \(pixelsPerLatent) × the UNet's 2^\(unet.config.upsamplerCount))")
        }
        return (height, width)
    }

    private func checkConditioning(_ positive: Tensor, _ negative: Tensor, count n: Int) throws {
        guard n >= 1 else { throw PipelineError.invalidOption(name: "seeds", value: "[]", message: "at least one image is needed") }
        let width = unet.config.crossAttentionDim.value(at: 0)
        guard positive.rank == 3, positive.shape[0] == n, positive.shape[1] >= 1 else {
            throw PipelineError.conditioningShape(what: "conditioning", expected: "[\(n), L, \(width)] (one row per image)", got: positive.shape)
        }
        guard negative.rank == 3, negative.shape[0] == 1 || negative.shape[0] == n, negative.shape[1] >= 1,
              negative.shape[2] == positive.shape[2] else {
            throw PipelineError.conditioningShape(what: "negative conditioning", expected: "[1 or \(n), L, \(positive.shape[2])]",
                                                  got: negative.shape)
        }
        guard positive.shape[2] == width else {
            throw PipelineError.conditioningShape(what: "conditioning", expected: "[\(n), L, \(width)] (the UNet's cross_attention_dim)",
                                                  got: positive.shape)
        }
    }
}
