import Foundation
import Tensor

/// The configuration of a Llama-family decoder, with transformers' `config.json` keys
/// (`LlamaForCausalLM`) and a reader for the `llama.*` metadata of a GGUF file.
///
/// The keys that fix the model's shape — `vocab_size`, `hidden_size`, `intermediate_size`,
/// `num_hidden_layers`, `num_attention_heads` — are required; the others take transformers'
/// defaults (`num_key_value_heads` = heads, `head_dim` = hidden / heads, `rms_norm_eps` 1e-6,
/// `rope_theta` 10000, `max_position_embeddings` 2048, untied embeddings, no biases).
/// The RoPE base is read from `rope_theta` (transformers 4) or `rope_parameters.rope_theta`
/// (transformers 5); both are written. Options Sura does not implement (RoPE scaling, another
/// activation than SiLU) throw `LlamaError.unsupportedConfig` naming the key; another model
/// family (`architectures`, `model_type`) throws `LlamaError.unsupportedArchitecture`.
///
/// Decoding through `JSONDecoder` works too (errors then surface as `LlamaError` as well, with
/// the source taken from `userInfo[LlamaConfig.sourceKey]`), but `init(contentsOf:)` is the
/// usual entry point.
public struct LlamaConfig: Codable, Equatable, Sendable {
    /// transformers' `architectures`; Sura builds `LlamaForCausalLM`.
    public var architectures: [String]
    public var vocabSize: Int
    /// Width of every token vector, D.
    public var hiddenSize: Int
    /// Width of the SwiGLU feed-forward layer.
    public var intermediateSize: Int
    public var numHiddenLayers: Int
    /// Query heads per layer.
    public var numAttentionHeads: Int
    /// Key/value heads per layer (grouped-query attention when fewer than the query heads).
    public var numKeyValueHeads: Int
    /// Width of one head; q_proj has heads·headDim rows.
    public var headDim: Int
    public var rmsNormEps: Double
    /// The RoPE base b: pair i of a head rotates by position · b^(−2i/headDim).
    public var ropeTheta: Double
    /// The longest sequence (prompt plus generated tokens) the model accepts.
    public var maxPositionEmbeddings: Int
    /// lm_head shares embed_tokens' table.
    public var tieWordEmbeddings: Bool
    public var bosTokenId: Int?
    /// `eos_token_id`, which transformers allows to be one id or a list; generation stops at any.
    public var eosTokenIds: [Int]
    public var padTokenId: Int?
    /// Biases on q/k/v/o_proj.
    public var attentionBias: Bool
    /// Biases on gate/up/down_proj.
    public var mlpBias: Bool
    /// Standard deviation of random initialisation (transformers' `_init_weights`).
    public var initializerRange: Double

    /// The `config.json` keys a file must contain.
    public static let requiredKeys = ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                      "num_attention_heads"]

    /// The `architectures` entry Sura builds.
    public static let architecture = "LlamaForCausalLM"

    public init(vocabSize: Int, hiddenSize: Int, intermediateSize: Int, numHiddenLayers: Int,
                numAttentionHeads: Int, numKeyValueHeads: Int? = nil, headDim: Int? = nil,
                rmsNormEps: Double = 1e-6, ropeTheta: Double = 10_000, maxPositionEmbeddings: Int = 2048,
                tieWordEmbeddings: Bool = false, bosTokenId: Int? = 1, eosTokenIds: [Int] = [2],
                padTokenId: Int? = nil, attentionBias: Bool = false, mlpBias: Bool = false,
                initializerRange: Double = 0.02) {
        self.architectures = [LlamaConfig.architecture]
        self.vocabSize = vocabSize
        self.hiddenSize = hiddenSize
        self.intermediateSize = intermediateSize
        self.numHiddenLayers = numHiddenLayers
        self.numAttentionHeads = numAttentionHeads
        self.numKeyValueHeads = numKeyValueHeads ?? numAttentionHeads
        self.headDim = headDim ?? (numAttentionHeads > 0 ? hiddenSize / numAttentionHeads : 0)
        self.rmsNormEps = rmsNormEps
        self.ropeTheta = ropeTheta
        self.maxPositionEmbeddings = maxPositionEmbeddings
        self.tieWordEmbeddings = tieWordEmbeddings
        self.bosTokenId = bosTokenId
        self.eosTokenIds = eosTokenIds
        self.padTokenId = padTokenId
        self.attentionBias = attentionBias
        self.mlpBias = mlpBias
        self.initializerRange = initializerRange
    }

    /// SmolLM2-135M(-Instruct): 30 layers, hidden 576, FFN 1536, 9 heads / 3 KV heads of 64,
    /// RoPE base 1e5, RMSNorm eps 1e-5, vocabulary 49152, tied embeddings, 8192 positions.
    public static let smolLM2_135M = LlamaConfig(
        vocabSize: 49152, hiddenSize: 576, intermediateSize: 1536, numHiddenLayers: 30, numAttentionHeads: 9,
        numKeyValueHeads: 3, headDim: 64, rmsNormEps: 1e-5, ropeTheta: 100_000, maxPositionEmbeddings: 8192,
        tieWordEmbeddings: true, bosTokenId: 1, eosTokenIds: [2], padTokenId: 2)

    /// Query heads sharing one key/value head.
    public var groupSize: Int { numAttentionHeads / Swift.max(numKeyValueHeads, 1) }

    /// Checks the sizes against each other.
    /// - Throws: `LlamaError.invalidConfigValue` naming the key at fault.
    public func validate(source: String = "config.json") throws {
        func bad(_ key: String, _ value: Int, _ message: String) -> LlamaError {
            .invalidConfigValue(source: source, key: key, value: String(value), message: message)
        }
        for (key, value) in [("vocab_size", vocabSize), ("hidden_size", hiddenSize),
                             ("intermediate_size", intermediateSize), ("num_hidden_layers", numHiddenLayers),
                             ("num_attention_heads", numAttentionHeads), ("num_key_value_heads", numKeyValueHeads),
                             ("head_dim", headDim), ("max_position_embeddings", maxPositionEmbeddings)] where value < 1 {
            throw bad(key, value, "must be ≥ 1")
        }
        if numAttentionHeads % numKeyValueHeads != 0 {
            throw bad("num_key_value_heads", numKeyValueHeads,
                      "num_attention_heads = \(numAttentionHeads) is not a multiple of it")
        }
        if headDim % 2 != 0 { throw bad("head_dim", headDim, "rotary embeddings need an even head width") }
        if !(rmsNormEps > 0) || !rmsNormEps.isFinite {
            throw LlamaError.invalidConfigValue(source: source, key: "rms_norm_eps", value: String(rmsNormEps),
                                                message: "must be a positive number")
        }
        if !(ropeTheta > 1) || !ropeTheta.isFinite {
            throw LlamaError.invalidConfigValue(source: source, key: "rope_theta", value: String(ropeTheta),
                                                message: "must be a number > 1")
        }
    }

    // MARK: config.json

    /// Where `init(from:)` finds the name of the config for its error messages.
    public static let sourceKey = CodingUserInfoKey(rawValue: "sura.llama.configSource")!

    /// Reads a `config.json`.
    /// - Throws: `LlamaError` naming the file and the key at fault.
    public init(contentsOf url: URL) throws {
        let data: Data
        do { data = try Data(contentsOf: url) } catch {
            throw LlamaError.unreadableConfig(path: url.path, message: "cannot read the file (\(error.localizedDescription))")
        }
        try self.init(jsonData: data, source: url.path)
    }

    /// Parses config JSON; `source` names it in errors.
    public init(jsonData: Data, source: String = "config.json") throws {
        guard (try? JSONSerialization.jsonObject(with: jsonData)) is [String: Any] else {
            throw LlamaError.unreadableConfig(path: source, message: "not a JSON object")
        }
        let decoder = JSONDecoder()
        decoder.userInfo[LlamaConfig.sourceKey] = source
        self = try decoder.decode(LlamaConfig.self, from: jsonData)
    }

    struct Key: CodingKey {
        let stringValue: String
        var intValue: Int? { nil }
        init(_ s: String) { stringValue = s }
        init?(stringValue: String) { self.stringValue = stringValue }
        init?(intValue: Int) { nil }
    }

    public init(from decoder: Decoder) throws {
        let source = decoder.userInfo[LlamaConfig.sourceKey] as? String ?? "config.json"
        let c = try decoder.container(keyedBy: Key.self)
        func has(_ key: String) -> Bool { c.contains(Key(key)) && !((try? c.decodeNil(forKey: Key(key))) ?? true) }
        func invalid(_ key: String, _ expected: String) -> LlamaError {
            .invalidConfigValue(source: source, key: key, value: LlamaConfig.shown(c, key), message: "expected \(expected)")
        }
        func int(_ key: String) throws -> Int? {
            guard has(key) else { return nil }
            if let v = try? c.decode(Int.self, forKey: Key(key)) { return v }
            if let d = try? c.decode(Double.self, forKey: Key(key)), d == d.rounded(), abs(d) < 1e15 { return Int(d) }
            throw invalid(key, "an integer")
        }
        func required(_ key: String) throws -> Int {
            guard let v = try int(key) else { throw LlamaError.missingConfigKey(source: source, key: key) }
            return v
        }
        func double(_ key: String) throws -> Double? {
            guard has(key) else { return nil }
            guard let v = try? c.decode(Double.self, forKey: Key(key)) else { throw invalid(key, "a number") }
            return v
        }
        func bool(_ key: String, _ fallback: Bool) throws -> Bool {
            guard has(key) else { return fallback }
            guard let v = try? c.decode(Bool.self, forKey: Key(key)) else { throw invalid(key, "true or false") }
            return v
        }
        func string(_ key: String) throws -> String? {
            guard has(key) else { return nil }
            guard let v = try? c.decode(String.self, forKey: Key(key)) else { throw invalid(key, "a string") }
            return v
        }

        // Model family first: a BERT or GPT-2 config should say so, not fail on a missing key.
        if let type = try string("model_type"), type != "llama" {
            throw LlamaError.unsupportedArchitecture(source: source, key: "model_type", value: "\"\(type)\"")
        }
        var architectures = [LlamaConfig.architecture]
        if has("architectures") {
            guard let list = try? c.decode([String].self, forKey: Key("architectures")) else {
                throw invalid("architectures", "a list of strings")
            }
            if !list.contains(LlamaConfig.architecture) {
                throw LlamaError.unsupportedArchitecture(source: source, key: "architectures",
                                                         value: "[" + list.map { "\"\($0)\"" }.joined(separator: ", ") + "]")
            }
            architectures = list
        }
        if let act = try string("hidden_act"), act != "silu" {
            throw LlamaError.unsupportedConfig(source: source, key: "hidden_act", value: "\"\(act)\"",
                                               reason: "Llama's MLP is SwiGLU with \"silu\"")
        }
        if has("rope_scaling") {
            let scaling = try? c.decode([String: String].self, forKey: Key("rope_scaling"))
            let type = scaling?["rope_type"] ?? scaling?["type"]
            if type != "default" {
                throw LlamaError.unsupportedConfig(source: source, key: "rope_scaling", value: LlamaConfig.shown(c, "rope_scaling"),
                                                   reason: "only unscaled rotary embeddings are implemented")
            }
        }
        var theta = try double("rope_theta")
        if has("rope_parameters") {
            let nested = try c.nestedContainer(keyedBy: Key.self, forKey: Key("rope_parameters"))
            if let type = try? nested.decode(String.self, forKey: Key("rope_type")), type != "default" {
                throw LlamaError.unsupportedConfig(source: source, key: "rope_parameters.rope_type", value: "\"\(type)\"",
                                                   reason: "only unscaled (\"default\") rotary embeddings are implemented")
            }
            if theta == nil, nested.contains(Key("rope_theta")) {
                guard let t = try? nested.decode(Double.self, forKey: Key("rope_theta")) else {
                    throw invalid("rope_parameters.rope_theta", "a number")
                }
                theta = t
            }
        }
        var eos: [Int] = []
        if has("eos_token_id") {
            if let one = try? c.decode(Int.self, forKey: Key("eos_token_id")) { eos = [one] }
            else if let list = try? c.decode([Int].self, forKey: Key("eos_token_id")) { eos = list }
            else { throw invalid("eos_token_id", "an integer or a list of integers") }
        }

        let hidden = try required("hidden_size")
        let heads = try required("num_attention_heads")
        self.init(vocabSize: try required("vocab_size"), hiddenSize: hidden,
                  intermediateSize: try required("intermediate_size"),
                  numHiddenLayers: try required("num_hidden_layers"), numAttentionHeads: heads,
                  numKeyValueHeads: try int("num_key_value_heads"),
                  headDim: try int("head_dim"),
                  rmsNormEps: try double("rms_norm_eps") ?? 1e-6,
                  ropeTheta: theta ?? 10_000,
                  maxPositionEmbeddings: try int("max_position_embeddings") ?? 2048,
                  tieWordEmbeddings: try bool("tie_word_embeddings", false),
                  bosTokenId: try int("bos_token_id"), eosTokenIds: eos,
                  padTokenId: try int("pad_token_id"),
                  attentionBias: try bool("attention_bias", false), mlpBias: try bool("mlp_bias", false),
                  initializerRange: try double("initializer_range") ?? 0.02)
        self.architectures = architectures
        if heads > 0, try int("head_dim") == nil, hidden % heads != 0 {
            throw LlamaError.invalidConfigValue(source: source, key: "num_attention_heads", value: String(heads),
                                                message: "hidden_size = \(hidden) is not divisible into \(heads) heads (and head_dim is not given)")
        }
        try validate(source: source)
    }

    /// A short rendering of the raw JSON at `key` for error messages.
    private static func shown(_ c: KeyedDecodingContainer<Key>, _ key: String) -> String {
        let k = Key(key)
        if let v = try? c.decode(Int.self, forKey: k) { return String(v) }
        if let v = try? c.decode(Double.self, forKey: k) { return String(v) }
        if let v = try? c.decode(Bool.self, forKey: k) { return String(v) }
        if let v = try? c.decode(String.self, forKey: k) { return "\"\(v)\"" }
        if (try? c.decodeNil(forKey: k)) == true { return "null" }
        return "{…}"
    }

    /// Writes the keys transformers writes for `LlamaForCausalLM` (both RoPE spellings).
    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: Key.self)
        try c.encode(architectures, forKey: Key("architectures"))
        try c.encode("llama", forKey: Key("model_type"))
        try c.encode(vocabSize, forKey: Key("vocab_size"))
        try c.encode(hiddenSize, forKey: Key("hidden_size"))
        try c.encode(intermediateSize, forKey: Key("intermediate_size"))
        try c.encode(numHiddenLayers, forKey: Key("num_hidden_layers"))
        try c.encode(numAttentionHeads, forKey: Key("num_attention_heads"))
        try c.encode(numKeyValueHeads, forKey: Key("num_key_value_heads"))
        try c.encode(headDim, forKey: Key("head_dim"))
        try c.encode(rmsNormEps, forKey: Key("rms_norm_eps"))
        try c.encode(ropeTheta, forKey: Key("rope_theta"))
        var rope = c.nestedContainer(keyedBy: Key.self, forKey: Key("rope_parameters"))
        try rope.encode(ropeTheta, forKey: Key("rope_theta"))
        try rope.encode("default", forKey: Key("rope_type"))
        try c.encode(maxPositionEmbeddings, forKey: Key("max_position_embeddings"))
        try c.encode(tieWordEmbeddings, forKey: Key("tie_word_embeddings"))
        if let bosTokenId { try c.encode(bosTokenId, forKey: Key("bos_token_id")) }
        if eosTokenIds.count == 1 { try c.encode(eosTokenIds[0], forKey: Key("eos_token_id")) }
        else if !eosTokenIds.isEmpty { try c.encode(eosTokenIds, forKey: Key("eos_token_id")) }
        if let padTokenId { try c.encode(padTokenId, forKey: Key("pad_token_id")) }
        try c.encode(attentionBias, forKey: Key("attention_bias"))
        try c.encode(mlpBias, forKey: Key("mlp_bias"))
        try c.encode("silu", forKey: Key("hidden_act"))
        try c.encode(0.0, forKey: Key("attention_dropout"))
        try c.encode(initializerRange, forKey: Key("initializer_range"))
        try c.encode(1, forKey: Key("pretraining_tp"))
        try c.encode(true, forKey: Key("use_cache"))
        try c.encode("float32", forKey: Key("torch_dtype"))
    }

    /// The config as transformers lays it out: sorted keys, indented.
    public func jsonData() throws -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        return try encoder.encode(self)
    }
}

// MARK: - GGUF metadata

extension LlamaConfig {
    /// Reads the `llama.*` hyper-parameters of a GGUF file (as llama.cpp's converter writes them)
    /// and its tokenizer's special ids. Embeddings are tied when the file has no `output.weight`.
    ///
    /// Keys: `general.architecture` (must be "llama"), `llama.block_count`, `.embedding_length`,
    /// `.feed_forward_length`, `.attention.head_count`, `.attention.head_count_kv` (default: heads),
    /// `.attention.key_length` (default: embedding / heads), `.attention.layer_norm_rms_epsilon`,
    /// `.context_length`, `.rope.freq_base` (default 10000), `.rope.dimension_count` (must equal
    /// the head width), `.vocab_size` (default: the number of tokenizer tokens, else the rows of
    /// `token_embd.weight`); `tokenizer.ggml.bos_token_id`, `.eos_token_id`, `.padding_token_id`.
    /// - Throws: `LlamaError` naming the file and the metadata key at fault.
    public init(gguf: GGUFFile) throws {
        let source = gguf.url.path
        let arch = gguf.metadata["general.architecture"]?.string
        guard let arch else { throw LlamaError.missingConfigKey(source: source, key: "general.architecture") }
        guard arch == "llama" else {
            throw LlamaError.unsupportedArchitecture(source: source, key: "general.architecture", value: "\"\(arch)\"")
        }
        func shown(_ v: GGUFValue) -> String {
            if let s = v.string { return "\"\(s)\"" }
            if let a = v.array { return "array of \(a.count)" }
            return v.float.map { String($0) } ?? "?"
        }
        func int(_ key: String) throws -> Int? {
            guard let v = gguf.metadata[key] else { return nil }
            guard let i = v.int else {
                throw LlamaError.invalidConfigValue(source: source, key: key, value: shown(v),
                                                    message: "expected one integer (per-layer arrays are not supported)")
            }
            return i
        }
        func required(_ key: String) throws -> Int {
            guard let v = try int(key) else { throw LlamaError.missingConfigKey(source: source, key: key) }
            return v
        }
        func float(_ key: String) throws -> Double? {
            guard let v = gguf.metadata[key] else { return nil }
            guard let d = v.float else {
                throw LlamaError.invalidConfigValue(source: source, key: key, value: shown(v), message: "expected a number")
            }
            // GGUF stores float32; print it back as the short decimal it was written from (1e-05).
            return Double(String(Float(d))) ?? d
        }
        if let scaling = gguf.metadata["llama.rope.scaling.type"]?.string, scaling != "none" {
            throw LlamaError.unsupportedConfig(source: source, key: "llama.rope.scaling.type", value: "\"\(scaling)\"",
                                               reason: "only unscaled rotary embeddings are implemented")
        }
        if let experts = try int("llama.expert_count"), experts > 0 {
            throw LlamaError.unsupportedConfig(source: source, key: "llama.expert_count", value: String(experts),
                                               reason: "mixture-of-experts layers are not implemented")
        }
        let hidden = try required("llama.embedding_length")
        let heads = try required("llama.attention.head_count")
        let layers = try required("llama.block_count")
        let ffn = try required("llama.feed_forward_length")
        let context = try required("llama.context_length")
        guard let eps = try float("llama.attention.layer_norm_rms_epsilon") else {
            throw LlamaError.missingConfigKey(source: source, key: "llama.attention.layer_norm_rms_epsilon")
        }
        guard heads > 0 else {
            throw LlamaError.invalidConfigValue(source: source, key: "llama.attention.head_count", value: String(heads), message: "must be ≥ 1")
        }
        let headDim = try int("llama.attention.key_length") ?? hidden / heads
        if let valueLength = try int("llama.attention.value_length"), valueLength != headDim {
            throw LlamaError.unsupportedConfig(source: source, key: "llama.attention.value_length", value: String(valueLength),
                                               reason: "value heads must be as wide as key heads (\(headDim))")
        }
        if let rotary = try int("llama.rope.dimension_count"), rotary != headDim {
            throw LlamaError.unsupportedConfig(source: source, key: "llama.rope.dimension_count", value: String(rotary),
                                               reason: "rotary embeddings over part of a head (head width \(headDim)) are not implemented")
        }
        var vocab = try int("llama.vocab_size")
        if vocab == nil { vocab = gguf.metadata["tokenizer.ggml.tokens"]?.array?.count }
        if vocab == nil { vocab = gguf.tensorInfo(named: "token_embd.weight")?.shape.first }
        guard let vocab else { throw LlamaError.missingConfigKey(source: source, key: "llama.vocab_size") }
        self.init(vocabSize: vocab, hiddenSize: hidden, intermediateSize: ffn, numHiddenLayers: layers,
                  numAttentionHeads: heads, numKeyValueHeads: try int("llama.attention.head_count_kv") ?? heads,
                  headDim: headDim, rmsNormEps: eps, ropeTheta: try float("llama.rope.freq_base") ?? 10_000,
                  maxPositionEmbeddings: context,
                  tieWordEmbeddings: gguf.tensorInfo(named: "output.weight") == nil,
                  bosTokenId: try int("tokenizer.ggml.bos_token_id"),
                  eosTokenIds: try int("tokenizer.ggml.eos_token_id").map { [$0] } ?? [],
                  padTokenId: try int("tokenizer.ggml.padding_token_id"),
                  attentionBias: gguf.tensorInfo(named: "blk.0.attn_q.bias") != nil,
                  mlpBias: gguf.tensorInfo(named: "blk.0.ffn_up.bias") != nil)
        try validate(source: source)
    }
}
