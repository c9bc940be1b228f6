import Foundation
import Tensor

/// Everything that can go wrong when configuring, loading or calling a diffusion model
/// (`UNet2DConditionModel`, `AutoencoderKL`).
///
/// Each case names the `config.json` key, the file or the tensor at fault, so that a message read
/// in a log is enough to fix the config, the checkpoint or the calling code.
public enum DiffusionConfigError: Error, CustomStringConvertible, Equatable {
    /// The config file is missing, unreadable or not a JSON object.
    case unreadableConfig(path: String, message: String)
    /// A key holds a value of the wrong type or outside its allowed range.
    case invalidValue(key: String, value: String, message: String)
    /// A block type that Sura does not build (`down_block_types[1]` = "SkipDownBlock2D").
    case unknownBlockType(key: String, value: String, allowed: [String])
    /// A diffusers option that Sura does not implement, set to a non-default value.
    case unsupported(key: String, value: String, reason: String)
    /// A channel count that GroupNorm cannot split into `norm_num_groups` groups.
    case channelsNotDivisible(key: String, channels: Int, groups: Int)
    /// A model input with the wrong rank or size; `expected` says what was wanted.
    case invalidInput(tensor: String, expected: String, got: [Int])
    /// The conditioning width (last dimension of `encoder_hidden_states`) differs from the
    /// model's `cross_attention_dim`.
    case conditioningWidthMismatch(tensor: String, expected: Int, got: Int, block: String)
    /// No weights file in a model folder; `tried` lists the names looked for.
    case missingWeights(directory: String, tried: [String])
    /// The weights file does not fit the config: every missing, unexpected and mis-shaped tensor.
    case weightsDoNotMatch(file: String, error: StateDictError)

    public var description: String {
        switch self {
        case let .unreadableConfig(path, message):
            return "diffusion config \(path): \(message)"
        case let .invalidValue(key, value, message):
            return "diffusion config: \(key) = \(value): \(message)"
        case let .unknownBlockType(key, value, allowed):
            return "diffusion config: \(key) = \"\(value)\" is not a block type Sura builds; allowed: "
                + allowed.map { "\"\($0)\"" }.joined(separator: ", ")
        case let .unsupported(key, value, reason):
            return "diffusion config: \(key) = \(value) is not supported by Sura: \(reason)"
        case let .channelsNotDivisible(key, channels, groups):
            return "diffusion config: \(key) = \(channels) channels cannot be split into norm_num_groups = \(groups) groups"
        case let .invalidInput(tensor, expected, got):
            return "\(tensor) has shape \(got); expected \(expected)"
        case let .conditioningWidthMismatch(tensor, expected, got, block):
            return "\(tensor) has width \(got) in its last dimension but \(block) expects cross_attention_dim = \(expected)"
        case let .missingWeights(directory, tried):
            return "\(directory): no weights file; looked for \(tried.joined(separator: ", "))"
        case let .weightsDoNotMatch(file, error):
            return "\(file): \(error)"
        }
    }
}
