import Foundation
import Tensor

// Pieces shared by the BERT and CLIP text encoders: the activations a transformers config may
// name, reading config.json with errors that name the key, reading and writing Hugging Face model
// folders, checking token batches, padding masks, multi-head attention and sentence pooling.

/// The `hidden_act` values of transformers configs that Sura implements.
public enum TextActivation: String, CaseIterable, Sendable {
    /// Exact GELU, x·Φ(x) (`gelu`, and `gelu_python`, the same function written in Python).
    case gelu, geluPython = "gelu_python"
    /// GELU's tanh approximation, ½x(1 + tanh(√(2/π)(x + 0.044715x³))), under its three names.
    case geluNew = "gelu_new", geluPytorchTanh = "gelu_pytorch_tanh", geluFast = "gelu_fast"
    /// CLIP's x·σ(1.702x).
    case quickGelu = "quick_gelu"
    case relu
    /// x·σ(x), under both names.
    case silu, swish

    /// Applies the activation elementwise.
    public func callAsFunction(_ x: Tensor) -> Tensor {
        switch self {
        case .gelu, .geluPython: return x.gelu()
        case .geluNew, .geluPytorchTanh, .geluFast: return x.gelu(approximateTanh: true)
        case .quickGelu: return x.quickGelu()
        case .relu: return x.relu()
        case .silu, .swish: return x.silu()
        }
    }
}

// MARK: - config.json

/// A JSON value as read from a config file.
enum TextConfigValue: Decodable, Equatable {
    case null, bool(Bool), number(Double), string(String), array([TextConfigValue]), object([String: TextConfigValue])

    init(from decoder: Decoder) throws {
        let c = try decoder.singleValueContainer()
        if c.decodeNil() { self = .null }
        else if let b = try? c.decode(Bool.self) { self = .bool(b) }
        else if let d = try? c.decode(Double.self) { self = .number(d) }
        else if let s = try? c.decode(String.self) { self = .string(s) }
        else if let a = try? c.decode([TextConfigValue].self) { self = .array(a) }
        else { self = .object(try c.decode([String: TextConfigValue].self)) }
    }

    /// A short rendering for error messages.
    var shown: String {
        switch self {
        case .null: return "null"
        case .bool(let b): return String(b)
        case .number(let d): return d == d.rounded() && abs(d) < 1e15 ? String(Int(d)) : String(d)
        case .string(let s): return "\"\(s)\""
        case .array(let a): return "[" + a.map(\.shown).joined(separator: ", ") + "]"
        case .object: return "{…}"
        }
    }
}

/// Typed access to the keys of a config object; every failure names `path` and the key.
struct TextConfigReader {
    let object: [String: TextConfigValue]
    let path: String

    /// Parses `data` as a JSON object.
    init(data: Data, path: String) throws {
        let value: TextConfigValue
        do {
            value = try JSONDecoder().decode(TextConfigValue.self, from: data)
        } catch {
            throw TextModelError.unreadableConfig(path: path, message: "not valid JSON")
        }
        guard case .object(let object) = value else {
            throw TextModelError.unreadableConfig(path: path, message: "the top level is not a JSON object")
        }
        self.init(object: object, path: path)
    }

    init(object: [String: TextConfigValue], path: String) {
        self.object = object
        self.path = path
    }

    /// Reads a file, naming it when it cannot.
    init(contentsOf url: URL) throws {
        let data: Data
        do { data = try Data(contentsOf: url) } catch {
            throw TextModelError.unreadableConfig(path: url.path, message: "cannot read the file (\(error.localizedDescription))")
        }
        try self.init(data: data, path: url.path)
    }

    /// The value at `key`, nil when absent or null.
    func raw(_ key: String) -> TextConfigValue? {
        guard let v = object[key], v != .null else { return nil }
        return v
    }

    private func invalid(_ key: String, _ value: TextConfigValue, _ message: String) -> TextModelError {
        .invalidConfigValue(path: path, key: key, value: value.shown, message: message)
    }

    /// An integer ≥ `minimum`; throws `missingConfigKey` when absent.
    func requiredInt(_ key: String, minimum: Int = 1) throws -> Int {
        guard let v = try optionalInt(key, minimum: minimum) else {
            throw TextModelError.missingConfigKey(path: path, key: key)
        }
        return v
    }

    /// An integer ≥ `minimum`, or nil when absent or null.
    func optionalInt(_ key: String, minimum: Int = 0) throws -> Int? {
        guard let v = raw(key) else { return nil }
        guard case .number(let d) = v, d == d.rounded(), abs(d) < 1e15 else { throw invalid(key, v, "expected an integer") }
        guard Int(d) >= minimum else { throw invalid(key, v, "must be ≥ \(minimum)") }
        return Int(d)
    }

    /// An integer ≥ 0 where null means none: `fallback` when the key is absent, nil when null.
    func nullableInt(_ key: String, default fallback: Int?) throws -> Int? {
        guard object[key] != nil else { return fallback }
        return try optionalInt(key)
    }

    /// A positive number, or `fallback` when absent.
    func positiveDouble(_ key: String, default fallback: Double) throws -> Double {
        guard let v = raw(key) else { return fallback }
        guard case .number(let d) = v else { throw invalid(key, v, "expected a number") }
        guard d > 0, d.isFinite else { throw invalid(key, v, "must be a positive number") }
        return d
    }

    /// A string, or `fallback` when absent.
    func string(_ key: String, default fallback: String?) throws -> String? {
        guard let v = raw(key) else { return fallback }
        guard case .string(let s) = v else { throw invalid(key, v, "expected a string") }
        return s
    }

    /// An activation name from `TextActivation`, or `fallback` when absent.
    func activation(_ key: String, default fallback: TextActivation) throws -> TextActivation {
        guard let v = raw(key) else { return fallback }
        guard case .string(let s) = v, let a = TextActivation(rawValue: s) else {
            throw TextModelError.unsupportedConfig(path: path, key: key, value: v.shown, reason: "allowed values are "
                + TextActivation.allCases.map { "\"\($0.rawValue)\"" }.joined(separator: ", "))
        }
        return a
    }

    /// Throws `unsupportedConfig` unless `key` is absent, null or equal to `expected`.
    func require(_ key: String, equals expected: TextConfigValue, reason: String) throws {
        guard let v = raw(key), v != expected else { return }
        throw TextModelError.unsupportedConfig(path: path, key: key, value: v.shown, reason: reason)
    }
}

/// Config JSON as transformers writes it: keys sorted, indented.
func encodeTextConfigJSON(_ object: [String: Any]) throws -> Data {
    try JSONSerialization.data(withJSONObject: object, options: [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes])
}

/// Throws when `hidden_size` does not split into `num_attention_heads` heads.
func checkTextHeads(hidden: Int, heads: Int, path: String) throws {
    if hidden % heads != 0 {
        throw TextModelError.invalidConfigValue(path: path, key: "num_attention_heads", value: String(heads),
                                                message: "hidden_size = \(hidden) is not divisible into \(heads) heads")
    }
}

// MARK: - Model folders

/// Hugging Face transformers model folders: `config.json` next to `model.safetensors` (or the
/// sharded `model.safetensors.index.json`), as `save_pretrained` writes them.
enum TextModelFolder {
    static let configName = "config.json"
    static let weightsName = "model.safetensors"
    static let indexName = "model.safetensors.index.json"

    /// The folder's config file, or `missingFile` naming it.
    static func configURL(_ directory: URL) throws -> URL {
        let url = directory.appendingPathComponent(configName)
        guard FileManager.default.fileExists(atPath: url.path) else {
            throw TextModelError.missingFile(directory: directory.path, tried: [configName], hint: nil)
        }
        return url
    }

    /// Every tensor of the folder's weights and the file (or index) they came from.
    static func loadWeights(_ directory: URL) throws -> (file: String, tensors: [String: Tensor]) {
        let fm = FileManager.default
        let single = directory.appendingPathComponent(weightsName)
        let index = directory.appendingPathComponent(indexName)
        if fm.fileExists(atPath: single.path) {
            return (single.path, try SafeTensorsFile(contentsOf: single).loadAll())
        }
        guard fm.fileExists(atPath: index.path) else {
            let pickles = ["pytorch_model.bin", "tf_model.h5", "flax_model.msgpack"].filter {
                fm.fileExists(atPath: directory.appendingPathComponent($0).path)
            }
            let hint = pickles.isEmpty ? nil : "found \(pickles.joined(separator: ", ")), which Sura does not read; "
                + "convert it with transformers' save_pretrained(safe_serialization=True)"
            throw TextModelError.missingFile(directory: directory.path, tried: [weightsName, indexName], hint: hint)
        }
        let data: Data
        do { data = try Data(contentsOf: index) } catch {
            throw FileFormatError.unreadable(file: index.path, reason: error.localizedDescription)
        }
        guard let json = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
              let weightMap = json["weight_map"] as? [String: String] else {
            throw FileFormatError.invalidHeader(file: index.path, reason: "expected a JSON object with a \"weight_map\" of tensor name → shard file")
        }
        var tensors: [String: Tensor] = [:]
        for shard in Set(weightMap.values).sorted() {
            guard !shard.contains("/"), !shard.hasPrefix(".") else {
                throw FileFormatError.invalidEntry(file: index.path, key: shard, reason: "shard names must be plain file names in the same folder")
            }
            let file = try SafeTensorsFile(contentsOf: directory.appendingPathComponent(shard))
            for name in file.names where weightMap[name] == shard { tensors[name] = try file.tensor(named: name) }
        }
        return (index.path, tensors)
    }

    /// Writes `config.json` and `model.safetensors` (float32, metadata `format: pt`), each
    /// through a temporary file.
    static func save(configJSON: Data, tensors: [(String, Tensor)], to directory: URL) throws {
        let configURL = directory.appendingPathComponent(configName)
        do {
            try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
            try configJSON.write(to: configURL, options: .atomic)
        } catch {
            throw FileFormatError.writeFailed(file: configURL.path, reason: error.localizedDescription)
        }
        try SafeTensorsWriter.write(tensors, metadata: ["format": "pt"], to: directory.appendingPathComponent(weightsName))
    }

    /// Loads `weights` strictly into `module`, turning a mismatch into an error naming `file`.
    static func loadStrictly(_ weights: [String: Tensor], into module: Module, file: String) throws {
        do {
            try module.load(weights, strict: true)
        } catch let error as StateDictError {
            throw TextModelError.weightsDoNotMatch(file: file, error: error)
        }
    }
}

/// A size the config fixes and a tensor dimension that shows it: `tensor`.shape[`axis`] must
/// equal `value`, the config's `key`.
struct TextConfigDimension {
    let tensor: String
    let axis: Int
    let key: String
    let value: Int
}

/// Compares the sizes a config implies with the weights before the strict load, so that a
/// config that contradicts its weights is reported by key rather than as a list of mis-shaped
/// tensors. Also counts the layers `\(layerPrefix)N.` present against `layers` (`layerKey`).
func checkTextConfig(against tensors: [String: Tensor], file: String, dimensions: [TextConfigDimension],
                 layerPrefix: String, layerKey: String, layers: Int) throws {
    for d in dimensions {
        guard let t = tensors[d.tensor], d.axis < t.rank, t.shape[d.axis] != d.value else { continue }
        throw TextModelError.configContradictsWeights(file: file, key: d.key, configValue: d.value,
                                                      impliedValue: t.shape[d.axis], tensor: d.tensor, shape: t.shape)
    }
    var indices = Set<Int>()
    for name in tensors.keys where name.hasPrefix(layerPrefix) {
        if let n = Int(name.dropFirst(layerPrefix.count).prefix { $0 != "." }) { indices.insert(n) }
    }
    guard let highest = indices.max(), highest + 1 != layers else { return }
    let example = tensors.keys.filter { $0.hasPrefix("\(layerPrefix)\(highest).") }.sorted().first ?? layerPrefix
    throw TextModelError.configContradictsWeights(file: file, key: layerKey, configValue: layers,
                                                  impliedValue: highest + 1, tensor: example,
                                                  shape: tensors[example]?.shape ?? [])
}

// MARK: - Token batches

/// A rectangular batch of token ids, checked: [batch][length] with equal row lengths.
struct TextTokenBatch {
    let batch: Int
    let length: Int
    /// Row-major ids, batch·length of them.
    let flat: [Int]

    /// - Throws: `invalidInput` for an empty batch or ragged rows, `sequenceTooLong` beyond
    ///   `maxPositions`, `tokenIdOutOfRange` for ids outside 0..<vocabularySize.
    init(_ rows: [[Int]], name: String = "input_ids", vocabularySize: Int, vocabularyKey: String = "vocab_size",
         maxPositions: Int, positionsKey: String = "max_position_embeddings") throws {
        guard let first = rows.first, !first.isEmpty else {
            throw TextModelError.invalidInput(name: name, message: "needs at least one row of at least one token")
        }
        if let r = rows.firstIndex(where: { $0.count != first.count }) {
            throw TextModelError.invalidInput(name: name, message: "row \(r) has \(rows[r].count) tokens but row 0 has \(first.count); pad the rows to one length")
        }
        if first.count > maxPositions {
            throw TextModelError.sequenceTooLong(length: first.count, limit: maxPositions, key: positionsKey)
        }
        try TextTokenBatch.checkRange(rows, name: name, limit: vocabularySize, key: vocabularyKey)
        batch = rows.count
        length = first.count
        flat = rows.flatMap { $0 }
    }

    /// Throws `tokenIdOutOfRange` for the first value outside 0..<limit.
    static func checkRange(_ rows: [[Int]], name: String, limit: Int, key: String) throws {
        for (r, row) in rows.enumerated() {
            if let c = row.firstIndex(where: { $0 < 0 || $0 >= limit }) {
                throw TextModelError.tokenIdOutOfRange(input: name, id: row[c], row: r, column: c, limit: limit, key: key)
            }
        }
    }

    /// Throws unless `other` has this batch's shape.
    func checkShape(_ other: [[Int]], name: String) throws {
        guard other.count == batch, other.allSatisfy({ $0.count == length }) else {
            throw TextModelError.invalidInput(name: name, message: "has shape [\(other.count)][\(other.first?.count ?? 0)…] but input_ids is [\(batch)][\(length)]")
        }
    }

    /// Checks that `mask` has this shape and holds only 0 and 1.
    func checkMask(_ mask: [[Int]], name: String = "attention_mask") throws {
        try checkShape(mask, name: name)
        for (r, row) in mask.enumerated() {
            if let c = row.firstIndex(where: { $0 != 0 && $0 != 1 }) {
                throw TextModelError.invalidInput(name: name, message: "[\(r)][\(c)] = \(row[c]); a mask holds 1 for tokens and 0 for padding")
            }
        }
    }
}

/// What the mask adds to the scores of a blocked key: transformers' `finfo(float32).min`, so that a
/// query whose every key is blocked attends uniformly instead of producing NaN.
let textBlockedScore = -Float.greatestFiniteMagnitude

/// The additive key-padding mask [B, 1, 1, L]: 0 for tokens, `textBlockedScore` for padding.
func textPaddingMask(_ mask: [[Int]]) -> Tensor {
    let b = mask.count, l = mask[0].count
    return Tensor(shape: [b, 1, 1, l], data: mask.flatMap { $0.map { $0 != 0 ? 0 : textBlockedScore } })
}

/// Checks that `embeds` is [batch, length, width] for token embeddings supplied by the caller.
func checkTextEmbeddings(_ embeds: Tensor, batch: Int, length: Int, width: Int) throws {
    guard embeds.shape == [batch, length, width] else {
        throw TextModelError.invalidInput(name: "inputs_embeds", message: "has shape \(embeds.shape); expected [\(batch), \(length), \(width)]")
    }
}

/// Multi-head attention over projected tokens q, k, v [B, L, H·d]: the heads are strided views
/// [B, H, L, d] (no copy), scores softmax(q·kᵀ/√d + mask), heads merged back to [B, L, H·d].
func textMultiHeadAttention(query: Tensor, key: Tensor, value: Tensor, heads: Int, mask: Tensor?) -> Tensor {
    let b = query.shape[0], l = query.shape[1], width = query.shape[2]
    let d = width / heads
    func split(_ t: Tensor) -> Tensor { t.reshaped([b, l, heads, d]).permuted([0, 2, 1, 3]) }
    let o = Tensor.scaledDotProductAttention(query: split(query), key: split(key), value: split(value), mask: mask)
    return o.permuted([0, 2, 1, 3]).reshaped([b, l, width])
}

// MARK: - Pooling

/// Sentence embeddings from token features, as sentence-transformers computes them.
public enum TokenPooling {
    /// Mean over the tokens whose mask is 1 (sentence-transformers' `Pooling(mean)`):
    /// out[b] = Σ_t m[b,t]·h[b,t,:] / max(Σ_t m[b,t], 1e-9).
    /// - hidden: [B, L, D]; attentionMask: [B][L] of 0/1 (nil: every token) → [B, D]. Differentiable.
    /// - Throws: `TextModelError.invalidInput` when the mask's shape is not [B][L] or holds
    ///   values other than 0 and 1.
    public static func mean(_ hidden: Tensor, attentionMask: [[Int]]?) throws -> Tensor {
        guard hidden.rank == 3 else {
            throw TextModelError.invalidInput(name: "hidden states", message: "has shape \(hidden.shape); expected [batch, length, width]")
        }
        let b = hidden.shape[0], l = hidden.shape[1]
        guard let attentionMask else { return hidden.mean(axes: [1]) }
        guard attentionMask.count == b, attentionMask.allSatisfy({ $0.count == l }),
              attentionMask.allSatisfy({ $0.allSatisfy { $0 == 0 || $0 == 1 } }) else {
            throw TextModelError.invalidInput(name: "attention_mask", message: "must be [\(b)][\(l)] of 0 and 1 for hidden states \(hidden.shape)")
        }
        let m = Tensor(shape: [b, l, 1], data: attentionMask.flatMap { $0.map(Float.init) })
        let counts = Tensor(shape: [b, 1], data: attentionMask.map { Swift.max(Float($0.reduce(0, +)), 1e-9) })
        return (hidden * m).sum(axes: [1]) / counts
    }

    /// Rows scaled to unit Euclidean length (PyTorch `F.normalize(p=2, dim=-1)`):
    /// x / max(‖x‖₂, eps). - x: [..., D] → same shape. Differentiable.
    public static func l2Normalized(_ x: Tensor, eps: Float = 1e-12) -> Tensor {
        let norm = x.square().sum(axes: [x.rank - 1], keepDims: true).sqrt()
        return x / Tensor.maximum(norm, Tensor(scalar: eps))
    }
}

// MARK: - Parameters

/// Makes the parameters of a text encoder: random as transformers' `_init_weights` does
/// (weights N(0, std²), biases 0, norms 1 and 0), or zeros for a model whose weights are about
/// to be loaded (no random numbers drawn for tensors that are overwritten at once).
struct TextParameterFactory {
    var rng: SeededGenerator?
    let std: Float

    static func random(seed: UInt64, std: Double) -> TextParameterFactory {
        TextParameterFactory(rng: SeededGenerator(seed: seed), std: Float(std))
    }

    static var zeros: TextParameterFactory { TextParameterFactory(rng: nil, std: 0) }

    mutating func normal(_ shape: [Int]) -> Tensor {
        guard rng != nil else { return ParameterInit.constant(shape, 0) }
        return ParameterInit.normal(shape, std: std, using: &rng!)
    }

    mutating func linear(_ inFeatures: Int, _ outFeatures: Int, bias: Bool = true) -> Linear {
        Linear(weight: normal([outFeatures, inFeatures]), bias: bias ? ParameterInit.constant([outFeatures], 0) : nil)
    }

    mutating func embedding(_ count: Int, _ dim: Int, paddingIndex: Int? = nil) -> Embedding {
        let table = normal([count, dim])
        if let p = paddingIndex, p >= 0, p < count { (table.pointer + p * dim).update(repeating: 0, count: dim) }
        return Embedding(weight: table, paddingIndex: paddingIndex.flatMap { $0 >= 0 && $0 < count ? $0 : nil })
    }
}
