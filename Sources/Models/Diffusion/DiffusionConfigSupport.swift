import Foundation
import Tensor

// Pieces shared by the diffusers-style configs (`UNet2DConditionConfig`, `AutoencoderKLConfig`):
// values that may be one number or one per block, the activation names, and JSON decoding that
// reports the key at fault.

/// A config value that diffusers accepts either as one integer for every block or as a list with
/// one entry per block (`layers_per_block`, `attention_head_dim`, `cross_attention_dim`, …).
/// It encodes back in the form it was read, so a round trip leaves `config.json` unchanged.
public enum IntOrList: Codable, Equatable, Sendable, CustomStringConvertible {
    case single(Int)
    case list([Int])

    public init(from decoder: Decoder) throws {
        let container = try decoder.singleValueContainer()
        if let v = try? container.decode(Int.self) {
            self = .single(v)
        } else {
            self = .list(try container.decode([Int].self))
        }
    }

    public func encode(to encoder: Encoder) throws {
        var container = encoder.singleValueContainer()
        switch self {
        case .single(let v): try container.encode(v)
        case .list(let l): try container.encode(l)
        }
    }

    /// The value for block `index` (the single value for every index).
    public func value(at index: Int) -> Int {
        switch self {
        case .single(let v): return v
        case .list(let l): return l[index]
        }
    }

    /// Every value listed (one element for `.single`).
    public var values: [Int] {
        switch self {
        case .single(let v): return [v]
        case .list(let l): return l
        }
    }

    public var description: String {
        switch self {
        case .single(let v): return String(v)
        case .list(let l): return "[" + l.map(String.init).joined(separator: ", ") + "]"
        }
    }

    /// Throws unless this is a single value or a list of exactly `count` values, all ≥ `minimum`.
    func check(key: String, count: Int, minimum: Int) throws {
        if case .list(let l) = self, l.count != count {
            throw DiffusionConfigError.invalidValue(key: key, value: description,
                                                    message: "needs one value per block (\(count)), got \(l.count)")
        }
        for v in values where v < minimum {
            throw DiffusionConfigError.invalidValue(key: key, value: description, message: "values must be ≥ \(minimum)")
        }
    }
}

/// The activation functions a diffusers config may name in `act_fn` and similar keys.
public enum DiffusionActivation: String, Codable, CaseIterable, Sendable {
    case silu, swish, gelu, relu

    /// Applies the activation elementwise (SiLU and swish are the same function, x·σ(x)).
    public func callAsFunction(_ x: Tensor) -> Tensor {
        switch self {
        case .silu, .swish: return x.silu()
        case .gelu: return x.gelu()
        case .relu: return x.relu()
        }
    }
}

/// A JSON object key given as a string.
struct DiffusionConfigKey: CodingKey {
    let stringValue: String
    var intValue: Int? { nil }
    init(_ string: String) { stringValue = string }
    init?(stringValue: String) { self.stringValue = stringValue }
    init?(intValue: Int) { nil }
}

/// A short rendering of whatever JSON value sits at a key, for error messages.
private struct JSONValueDescription: Decodable {
    let text: String
    init(from decoder: Decoder) throws {
        let c = try decoder.singleValueContainer()
        if c.decodeNil() { text = "null" }
        else if let b = try? c.decode(Bool.self) { text = String(b) }
        else if let i = try? c.decode(Int.self) { text = String(i) }
        else if let d = try? c.decode(Double.self) { text = String(d) }
        else if let s = try? c.decode(String.self) { text = "\"\(s)\"" }
        else if let a = try? c.decode([JSONValueDescription].self) { text = "[" + a.map(\.text).joined(separator: ", ") + "]" }
        else { text = "{…}" }
    }
}

extension KeyedDecodingContainer where Key == DiffusionConfigKey {
    /// The value at `key`, `fallback` when the key is absent or null; a value of the wrong type
    /// throws `DiffusionConfigError.invalidValue` naming the key.
    func value<T: Decodable>(_ key: String, default fallback: T) throws -> T {
        let k = DiffusionConfigKey(key)
        guard contains(k), try !decodeNil(forKey: k) else { return fallback }
        return try typed(T.self, key)
    }

    /// For keys where JSON null means "none" (`mid_block_type`): nil when null, `fallback` when absent.
    func nullable<T: Decodable>(_ key: String, default fallback: T?) throws -> T? {
        let k = DiffusionConfigKey(key)
        guard contains(k) else { return fallback }
        if try decodeNil(forKey: k) { return nil }
        return try typed(T.self, key)
    }

    private func typed<T: Decodable>(_ type: T.Type, _ key: String) throws -> T {
        let k = DiffusionConfigKey(key)
        do {
            return try decode(T.self, forKey: k)
        } catch {
            let shown = (try? decode(JSONValueDescription.self, forKey: k).text) ?? "?"
            throw DiffusionConfigError.invalidValue(key: key, value: shown, message: "expected \(Self.typeName(T.self))")
        }
    }

    /// Throws `unsupported` when `key` holds anything but null (absent is fine).
    func requireNull(_ key: String, reason: String) throws {
        let k = DiffusionConfigKey(key)
        guard contains(k), try !decodeNil(forKey: k) else { return }
        let shown = (try? decode(JSONValueDescription.self, forKey: k).text) ?? "?"
        throw DiffusionConfigError.unsupported(key: key, value: shown, reason: reason)
    }

    /// Throws `unsupported` when `key` is present with a value other than `expected`.
    func require<T: Decodable & Equatable>(_ key: String, equals expected: T, reason: String) throws {
        let v: T = try value(key, default: expected)
        if v != expected {
            let shown = (try? decode(JSONValueDescription.self, forKey: DiffusionConfigKey(key)).text) ?? "\(v)"
            throw DiffusionConfigError.unsupported(key: key, value: shown, reason: reason)
        }
    }

    private static func typeName<T>(_ type: T.Type) -> String {
        switch type {
        case is Int.Type, is Int?.Type: return "an integer"
        case is Double.Type, is Double?.Type: return "a number"
        case is Bool.Type: return "true or false"
        case is String.Type, is String?.Type: return "a string"
        case is [String].Type: return "a list of strings"
        case is [Int].Type: return "a list of integers"
        case is IntOrList.Type, is IntOrList?.Type: return "an integer or a list of integers"
        case is DiffusionActivation.Type, is DiffusionActivation?.Type:
            return "one of " + DiffusionActivation.allCases.map { "\"\($0.rawValue)\"" }.joined(separator: ", ")
        default: return "\(type)"
        }
    }
}

/// Decodes a config type from JSON data, turning parse errors into `unreadableConfig` for `path`.
func decodeDiffusionConfig<T: Decodable>(_ type: T.Type, from data: Data, path: String) throws -> T {
    do {
        return try JSONDecoder().decode(T.self, from: data)
    } catch let error as DiffusionConfigError {
        throw error
    } catch let DecodingError.dataCorrupted(context) {
        throw DiffusionConfigError.unreadableConfig(path: path, message: "not valid JSON: \(context.debugDescription)")
    } catch let DecodingError.typeMismatch(_, context) {
        throw DiffusionConfigError.unreadableConfig(path: path, message: "not a JSON object: \(context.debugDescription)")
    } catch {
        throw DiffusionConfigError.unreadableConfig(path: path, message: "\(error)")
    }
}

/// Reads a config file's bytes, naming the file when it cannot.
func readConfigData(at url: URL) throws -> Data {
    do {
        return try Data(contentsOf: url)
    } catch {
        throw DiffusionConfigError.unreadableConfig(path: url.path, message: "cannot read file (\(error.localizedDescription))")
    }
}

/// Config JSON as written by Sura: keys sorted, indented, like diffusers' `to_json_string`.
func encodeDiffusionConfig<T: Encodable>(_ value: T) throws -> Data {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
    return try encoder.encode(value)
}
