import Foundation

/// Everything that can go wrong when loading a text-to-image model folder or running the
/// pipeline. Each case names the folder, file, key, option or tensor at fault, so the message
/// alone says what to fix.
public enum PipelineError: Error, CustomStringConvertible, Equatable {
    /// A part the folder must contain is absent; `tried` lists the paths looked for.
    case missingComponent(folder: String, component: String, tried: [String], hint: String)
    /// `sura.json` (or another folder file) holds a key Sura does not know or a bad value.
    case invalidFolderConfig(file: String, key: String, message: String)
    /// A config.json that names a model class Sura cannot run (`found` quotes what it said).
    case unsupportedModel(path: String, found: String, supported: [String])
    /// An option of a generation call (steps, guidance, height, width, scheduler, …) is invalid.
    case invalidOption(name: String, value: String, message: String)
    /// Two parts of the pipeline do not fit together (UNet channels vs VAE latents, …).
    case incompatibleComponents(message: String)
    /// A conditioning tensor of the wrong shape; `what` names it.
    case conditioningShape(what: String, expected: String, got: [Int])
    /// Prompts were given but the folder has no text encoder or adapter to turn them into conditioning.
    case noConditioningProvider(folder: String)

    public var description: String {
        switch self {
        case let .missingComponent(folder, component, tried, hint):
            return "\(folder): no \(component) (looked for \(tried.joined(separator: ", "))); \(hint)"
        case let .invalidFolderConfig(file, key, message):
            return "\(file): \(key): \(message)"
        case let .unsupportedModel(path, found, supported):
            return "\(path): \(found) is not a model Sura runs (supported: \(supported.joined(separator: ", ")))"
        case let .invalidOption(name, value, message):
            return "\(name) = \(value): \(message)"
        case let .incompatibleComponents(message):
            return "incompatible pipeline parts: \(message)"
        case let .conditioningShape(what, expected, got):
            return "\(what): expected shape \(expected), got \(got)"
        case let .noConditioningProvider(folder):
            return "\(folder): no text encoder to turn prompts into conditioning; add text_encoder/ and tokenizer/, "
                + "or a sura.json naming one ({\"text_encoder\": \"path/to/minilm\"})"
        }
    }
}
