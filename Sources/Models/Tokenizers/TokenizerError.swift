/// Why a tokenizer could not be built. Every case names the source (a file path, or a label such
/// as "model.gguf: tokenizer.ggml.merges" for tokenizers built from arrays) and the field.
public enum TokenizerError: Error, Equatable, CustomStringConvertible {
    /// The file could not be read at all.
    case unreadableFile(source: String, reason: String)
    /// The file is not valid JSON (or its top level is not an object).
    case invalidJSON(source: String, reason: String)
    /// A required key is absent, e.g. `model.vocab`.
    case missingField(source: String, field: String)
    /// A key holds a value of the wrong type or an impossible value.
    case invalidField(source: String, field: String, reason: String)
    /// A merge is not exactly two space-separated tokens; `line` is 1-based in merges.txt and
    /// the 0-based array index for JSON and arrays.
    case badMerge(source: String, field: String, line: Int, text: String)
    /// A token that must exist (the unknown token, a special token, a merge's part) is not in
    /// the vocabulary.
    case missingToken(source: String, field: String, token: String)
    /// A tokenizer component Sura does not implement.
    case unsupported(source: String, field: String, value: String)
    /// A chat template that is not ChatML.
    case unsupportedChatTemplate(reason: String)

    public var description: String {
        switch self {
        case let .unreadableFile(source, reason):
            return "\(source): cannot read file: \(reason)"
        case let .invalidJSON(source, reason):
            return "\(source): not valid JSON: \(reason)"
        case let .missingField(source, field):
            return "\(source): missing field '\(field)'"
        case let .invalidField(source, field, reason):
            return "\(source): field '\(field)': \(reason)"
        case let .badMerge(source, field, line, text):
            return "\(source): \(field) line \(line): a merge must be two tokens separated by one space, got '\(text)'"
        case let .missingToken(source, field, token):
            return "\(source): field '\(field)': token '\(token)' is not in the vocabulary"
        case let .unsupported(source, field, value):
            return "\(source): field '\(field)': '\(value)' is not supported"
        case let .unsupportedChatTemplate(reason):
            return "chat template: \(reason)"
        }
    }
}
