import Foundation
import Tensor

/// What an adapter may read for a batch of B prompts. Which fields a given adapter needs is
/// stated by its `requirements`; the training loop and the worker fill exactly those.
public struct AdapterInputs {
    /// The text encoder's (MiniLM's) token features of the prompts: [B, Lt, Dt].
    public var textTokens: Tensor?
    /// The LLM's hidden states of the prompts at the configured layer: [B, Ll, Dl].
    public var llmHidden: Tensor?
    /// [B, Ll]: 1 for real tokens, 0 for padding of `llmHidden`.
    public var llmMask: Tensor?
    /// B diffusion timesteps (ELLA's connector depends on t); nil outside the denoising loop.
    public var timesteps: [Float]?

    public init(textTokens: Tensor? = nil, llmHidden: Tensor? = nil, llmMask: Tensor? = nil, timesteps: [Float]? = nil) {
        self.textTokens = textTokens
        self.llmHidden = llmHidden
        self.llmMask = llmMask
        self.timesteps = timesteps
    }
}

/// Which inputs an adapter consumes.
public struct AdapterRequirements: OptionSet, Sendable {
    public let rawValue: Int
    public init(rawValue: Int) { self.rawValue = rawValue }
    public static let textTokens = AdapterRequirements(rawValue: 1)
    public static let llmHidden = AdapterRequirements(rawValue: 2)
    public static let timesteps = AdapterRequirements(rawValue: 4)
}

/// A trainable module that turns prompt features into the conditioning a frozen UNet expects:
/// [B, L, cross_attention_dim] for some L.
public protocol ConditioningAdapter: Module {
    /// The adapter's type name as written in configs (`sur_adapter`, `cross_adapter`, …).
    static var typeName: String { get }
    var requirements: AdapterRequirements { get }
    /// D of the output tokens; must equal the UNet's `cross_attention_dim`.
    var outputWidth: Int { get }
    /// The width of the LLM hidden states the adapter reads (its `input_dim` or `llm_dim`), nil
    /// when it reads none; trainers check it against the LLM they load.
    var llmInputWidth: Int? { get }
    /// The conditioning, [B, L, outputWidth].
    /// - Throws: `AdapterError` naming the missing input or the mis-shaped tensor.
    func conditioning(_ inputs: AdapterInputs) throws -> Tensor
}

/// Why an adapter could not be built or run; every case names the key or tensor.
public enum AdapterError: Error, CustomStringConvertible, Equatable {
    /// A config value out of range: key, value, allowed.
    case invalidConfig(key: String, value: String, allowed: String)
    /// An input the adapter needs was not given.
    case missingInput(adapter: String, input: String)
    /// An input tensor has the wrong shape.
    case inputShape(adapter: String, input: String, expected: String, got: [Int])

    public var description: String {
        switch self {
        case let .invalidConfig(key, value, allowed): return "adapter config key '\(key)': \(value) is not allowed (\(allowed))"
        case let .missingInput(adapter, input): return "\(adapter) needs \(input), which was not given"
        case let .inputShape(adapter, input, expected, got): return "\(adapter): \(input) must be \(expected), got \(got)"
        }
    }
}
