import Foundation
import Tensor

/// Everything that can go wrong when configuring, loading, converting or running a Llama-family
/// decoder (`LlamaForCausalLM`).
///
/// Each case names the file, the config or metadata key, the tensor, or the input position at
/// fault, so that the message alone says what to fix.
public enum LlamaError: Error, CustomStringConvertible, Equatable {
    /// The config file is missing, unreadable or not a JSON object.
    case unreadableConfig(path: String, message: String)
    /// A key the model's shape depends on is absent (a `config.json` key or a GGUF metadata key).
    case missingConfigKey(source: String, key: String)
    /// A key holds a value of the wrong type or outside its allowed range.
    case invalidConfigValue(source: String, key: String, value: String, message: String)
    /// The file describes another model family: `key` (`architectures`, `model_type` or GGUF
    /// `general.architecture`) is `value`.
    case unsupportedArchitecture(source: String, key: String, value: String)
    /// An option Sura does not implement, set to a value other than the default.
    case unsupportedConfig(source: String, key: String, value: String, reason: String)
    /// A file the folder must contain is absent; `tried` lists the names looked for.
    case missingFile(directory: String, tried: [String], hint: String?)
    /// The config says one size, the weights another: `tensor` has `shape`, which implies
    /// `key` = `impliedValue`.
    case configContradictsWeights(file: String, key: String, configValue: Int, impliedValue: Int,
                                  tensor: String, shape: [Int])
    /// The weights do not fit the module: every missing, unexpected and mis-shaped tensor.
    case weightsDoNotMatch(file: String, error: StateDictError)
    /// A prompt (plus the tokens already in the key/value cache) longer than the position limit.
    case sequenceTooLong(length: Int, limit: Int, key: String)
    /// An id in `input` outside 0..<limit (`vocab_size`).
    case tokenIdOutOfRange(input: String, id: Int, row: Int, column: Int, limit: Int)
    /// An input of the wrong shape or with invalid values; `message` says what was expected.
    case invalidInput(name: String, message: String)
    /// The output folder of a conversion exists and is not empty.
    case outputExists(path: String)

    public var description: String {
        switch self {
        case let .unreadableConfig(path, message):
            return "Llama config \(path): \(message)"
        case let .missingConfigKey(source, key):
            return "\(source): the required key \"\(key)\" is missing"
        case let .invalidConfigValue(source, key, value, message):
            return "\(source): \(key) = \(value): \(message)"
        case let .unsupportedArchitecture(source, key, value):
            return "\(source): \(key) = \(value) is not a Llama-family model; Sura's decoder loads "
                + "\"LlamaForCausalLM\" (model_type \"llama\", GGUF general.architecture \"llama\")"
        case let .unsupportedConfig(source, key, value, reason):
            return "\(source): \(key) = \(value) is not supported by Sura: \(reason)"
        case let .missingFile(directory, tried, hint):
            return "\(directory): no \(tried.joined(separator: " or "))" + (hint.map { " (\($0))" } ?? "")
        case let .configContradictsWeights(file, key, configValue, impliedValue, tensor, shape):
            return "\(file): the config says \(key) = \(configValue) but the weights say \(impliedValue) "
                + "(\(tensor) has shape \(shape))"
        case let .weightsDoNotMatch(file, error):
            return "\(file): \(error)"
        case let .sequenceTooLong(length, limit, key):
            return "a sequence of \(length) positions is longer than the model's \(key) = \(limit); "
                + "shorten the prompt (or the number of new tokens) to fit \(limit) positions"
        case let .tokenIdOutOfRange(input, id, row, column, limit):
            return "\(input)[\(row)][\(column)] = \(id) is outside 0..<\(limit) (vocab_size = \(limit))"
        case let .invalidInput(name, message):
            return "\(name): \(message)"
        case let .outputExists(path):
            return "\(path) already exists and is not empty; choose another folder or pass overwrite"
        }
    }
}
