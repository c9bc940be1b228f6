import Foundation
import Tensor

/// Everything that can go wrong when configuring, loading or calling a text encoder
/// (`BertModel`, `CLIPTextModel`, `CLIPTextModelWithProjection`).
///
/// Each case names the file, the `config.json` key, the tensor or the input position at fault,
/// so that the message alone says what to fix.
public enum TextModelError: Error, CustomStringConvertible, Equatable {
    /// The config file is missing, unreadable or not a JSON object.
    case unreadableConfig(path: String, message: String)
    /// A key the model's shape depends on is absent from the config.
    case missingConfigKey(path: String, key: String)
    /// A key holds a value of the wrong type or outside its allowed range.
    case invalidConfigValue(path: String, key: String, value: String, message: String)
    /// A transformers option Sura does not implement, set to a value other than the default.
    case unsupportedConfig(path: String, key: String, value: String, reason: String)
    /// A file the folder must contain is absent; `tried` lists the names looked for.
    case missingFile(directory: String, tried: [String], hint: String?)
    /// The config says one size, the weights another: `tensor` has `shape`, which implies
    /// `key` = `impliedValue`.
    case configContradictsWeights(file: String, key: String, configValue: Int, impliedValue: Int,
                                  tensor: String, shape: [Int])
    /// The weights do not fit the module: every missing, unexpected and mis-shaped tensor.
    case weightsDoNotMatch(file: String, error: StateDictError)
    /// A row longer than the position table (`max_position_embeddings`).
    case sequenceTooLong(length: Int, limit: Int, key: String)
    /// An id in `input` (`input_ids`, `token_type_ids`) outside 0..<limit, where `limit` is the
    /// config's `key`.
    case tokenIdOutOfRange(input: String, id: Int, row: Int, column: Int, limit: Int, key: String)
    /// An input of the wrong shape or with invalid values; `message` says what was expected.
    case invalidInput(name: String, message: String)

    public var description: String {
        switch self {
        case let .unreadableConfig(path, message):
            return "text encoder config \(path): \(message)"
        case let .missingConfigKey(path, key):
            return "text encoder config \(path): the required key \"\(key)\" is missing"
        case let .invalidConfigValue(path, key, value, message):
            return "text encoder config \(path): \(key) = \(value): \(message)"
        case let .unsupportedConfig(path, key, value, reason):
            return "text encoder config \(path): \(key) = \(value) is not supported by Sura: \(reason)"
        case let .missingFile(directory, tried, hint):
            return "\(directory): no \(tried.joined(separator: " or "))" + (hint.map { " (\($0))" } ?? "")
        case let .configContradictsWeights(file, key, configValue, impliedValue, tensor, shape):
            return "\(file): the config says \(key) = \(configValue) but the weights say \(impliedValue) "
                + "(\(tensor) has shape \(shape))"
        case let .weightsDoNotMatch(file, error):
            return "\(file): \(error)"
        case let .sequenceTooLong(length, limit, key):
            return "input of \(length) tokens is longer than the model's \(key) = \(limit); truncate it to \(limit) tokens"
        case let .tokenIdOutOfRange(input, id, row, column, limit, key):
            return "\(input)[\(row)][\(column)] = \(id) is outside 0..<\(limit) (\(key) = \(limit))"
        case let .invalidInput(name, message):
            return "\(name): \(message)"
        }
    }
}
