import Foundation

/// One image to generate: what a client asked for, after validation by the scheduler.
///
/// Requests that share a `BatchCompatibility` (model, size, steps, guidance) may run in one
/// batch; the prompt, negative prompt and seed may differ between the members of a batch.
public struct GenerationRequest: Codable, Sendable, Equatable {
    /// Identifier echoed in the `GeneratedImage`; unique among the requests a worker holds.
    public var id: String
    public var prompt: String
    /// Text for the unconditional branch of classifier-free guidance ("" = the empty prompt).
    public var negativePrompt: String
    /// Image width in pixels.
    public var width: Int
    /// Image height in pixels.
    public var height: Int
    /// Denoising steps.
    public var steps: Int
    /// Classifier-free guidance scale w: ε = ε_uncond + w·(ε_cond − ε_uncond).
    public var guidanceScale: Double
    /// Seed of the initial noise; the same request and seed give the same image.
    public var seed: UInt64
    /// Name of the model (base model plus adapter) the request is for.
    public var model: String

    public init(id: String, prompt: String, negativePrompt: String = "", width: Int = 32, height: Int = 32,
                steps: Int = 25, guidanceScale: Double = 4, seed: UInt64 = 0, model: String = "default") {
        self.id = id
        self.prompt = prompt
        self.negativePrompt = negativePrompt
        self.width = width
        self.height = height
        self.steps = steps
        self.guidanceScale = guidanceScale
        self.seed = seed
        self.model = model
    }

    enum CodingKeys: String, CodingKey {
        case id, prompt, width, height, steps, seed, model
        case negativePrompt = "negative_prompt"
        case guidanceScale = "guidance_scale"
    }

    /// The key under which requests may share a batch.
    public var compatibility: BatchCompatibility {
        BatchCompatibility(model: model, width: width, height: height, steps: steps, guidanceScale: guidanceScale)
    }
}

/// What must be equal for two requests to run in one batch: the sampler runs the same number of
/// steps on latents of one shape through one model with one guidance scale.
public struct BatchCompatibility: Hashable, Sendable, CustomStringConvertible {
    public var model: String
    public var width: Int
    public var height: Int
    public var steps: Int
    public var guidanceScale: Double

    public init(model: String, width: Int, height: Int, steps: Int, guidanceScale: Double) {
        self.model = model
        self.width = width
        self.height = height
        self.steps = steps
        self.guidanceScale = guidanceScale
    }

    public var description: String { "\(model) \(width)x\(height) steps=\(steps) guidance=\(guidanceScale)" }
}

/// One generated image: PNG bytes for the request with the same id.
public struct GeneratedImage: Sendable, Equatable {
    public var requestID: String
    /// A complete PNG file.
    public var png: Data
    public var width: Int
    public var height: Int

    public init(requestID: String, png: Data, width: Int, height: Int) {
        self.requestID = requestID
        self.png = png
        self.width = width
        self.height = height
    }
}
