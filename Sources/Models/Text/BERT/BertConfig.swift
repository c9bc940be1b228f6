import Foundation
import Tensor

/// The `config.json` of a transformers `BertModel`, with transformers' keys.
///
/// The keys that fix the model's shape — `vocab_size`, `hidden_size`, `num_hidden_layers`,
/// `num_attention_heads`, `intermediate_size`, `max_position_embeddings` — are required: a config
/// without one throws `TextModelError.missingConfigKey` rather than silently taking
/// bert-base's value. The others take transformers' defaults. Dropout probabilities and other
/// training-only keys are accepted and ignored (Sura's encoders run without dropout). Options
/// Sura does not implement (a decoder, cross-attention, relative position embeddings, another
/// `model_type`) throw `TextModelError.unsupportedConfig` naming the key.
public struct BertConfig: Equatable, Sendable {
    public var vocabSize: Int
    /// Width of every token vector, H.
    public var hiddenSize: Int
    public var numHiddenLayers: Int
    /// Heads per layer; each has H / heads dimensions.
    public var numAttentionHeads: Int
    /// Width of the feed-forward layer.
    public var intermediateSize: Int
    /// Rows of the position table: the longest input.
    public var maxPositionEmbeddings: Int
    /// Rows of the segment table (`token_type_ids` lie in 0..<typeVocabSize).
    public var typeVocabSize: Int
    public var hiddenAct: TextActivation
    public var layerNormEps: Double
    public var padTokenId: Int?
    /// Standard deviation of the random initialisation (transformers' `_init_weights`).
    public var initializerRange: Double

    /// The keys a config file must contain.
    public static let requiredKeys = ["vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                                      "intermediate_size", "max_position_embeddings"]

    public init(vocabSize: Int, hiddenSize: Int, numHiddenLayers: Int, numAttentionHeads: Int,
                intermediateSize: Int, maxPositionEmbeddings: Int = 512, typeVocabSize: Int = 2,
                hiddenAct: TextActivation = .gelu, layerNormEps: Double = 1e-12, padTokenId: Int? = 0,
                initializerRange: Double = 0.02) {
        self.vocabSize = vocabSize
        self.hiddenSize = hiddenSize
        self.numHiddenLayers = numHiddenLayers
        self.numAttentionHeads = numAttentionHeads
        self.intermediateSize = intermediateSize
        self.maxPositionEmbeddings = maxPositionEmbeddings
        self.typeVocabSize = typeVocabSize
        self.hiddenAct = hiddenAct
        self.layerNormEps = layerNormEps
        self.padTokenId = padTokenId
        self.initializerRange = initializerRange
    }

    /// all-MiniLM-L6-v2's shape (the text encoder Sura ships with).
    public static let miniLML6 = BertConfig(vocabSize: 30522, hiddenSize: 384, numHiddenLayers: 6,
                                            numAttentionHeads: 12, intermediateSize: 1536)

    /// Reads a `config.json`.
    /// - Throws: `TextModelError` naming the file and the key at fault.
    public init(contentsOf url: URL) throws {
        try self.init(reader: TextConfigReader(contentsOf: url))
    }

    /// Parses config JSON; `source` names it in errors.
    public init(jsonData: Data, source: String = "config.json") throws {
        try self.init(reader: TextConfigReader(data: jsonData, path: source))
    }

    init(reader r: TextConfigReader) throws {
        try r.require("model_type", equals: .string("bert"),
                      reason: "only \"bert\" is built by BertModel (RoBERTa-style models offset their positions)")
        try r.require("is_decoder", equals: .bool(false), reason: "BertModel is built as an encoder")
        try r.require("add_cross_attention", equals: .bool(false), reason: "cross-attention layers are not built")
        try r.require("position_embedding_type", equals: .string("absolute"),
                      reason: "only absolute position embeddings are implemented")
        self.init(vocabSize: try r.requiredInt("vocab_size"),
                  hiddenSize: try r.requiredInt("hidden_size"),
                  numHiddenLayers: try r.requiredInt("num_hidden_layers"),
                  numAttentionHeads: try r.requiredInt("num_attention_heads"),
                  intermediateSize: try r.requiredInt("intermediate_size"),
                  maxPositionEmbeddings: try r.requiredInt("max_position_embeddings"),
                  typeVocabSize: try r.optionalInt("type_vocab_size", minimum: 1) ?? 2,
                  hiddenAct: try r.activation("hidden_act", default: .gelu),
                  layerNormEps: try r.positiveDouble("layer_norm_eps", default: 1e-12),
                  padTokenId: try r.nullableInt("pad_token_id", default: 0),
                  initializerRange: try r.positiveDouble("initializer_range", default: 0.02))
        try validate(source: r.path)
    }

    /// Throws `TextModelError.invalidConfigValue` for sizes below 1 or a width that the heads do
    /// not divide.
    public func validate(source: String = "BertConfig") throws {
        let sizes = [("vocab_size", vocabSize), ("hidden_size", hiddenSize), ("num_hidden_layers", numHiddenLayers),
                     ("num_attention_heads", numAttentionHeads), ("intermediate_size", intermediateSize),
                     ("max_position_embeddings", maxPositionEmbeddings), ("type_vocab_size", typeVocabSize)]
        for (key, value) in sizes where value < 1 {
            throw TextModelError.invalidConfigValue(path: source, key: key, value: String(value), message: "must be ≥ 1")
        }
        try checkTextHeads(hidden: hiddenSize, heads: numAttentionHeads, path: source)
        if !(layerNormEps > 0) {
            throw TextModelError.invalidConfigValue(path: source, key: "layer_norm_eps", value: String(layerNormEps), message: "must be positive")
        }
    }

    /// Dimensions per head, H / heads.
    public var headDim: Int { hiddenSize / numAttentionHeads }

    /// The config as transformers writes it (sorted keys), readable by `BertConfig.from_pretrained`.
    public func jsonData() throws -> Data {
        var o: [String: Any] = [
            "architectures": ["BertModel"], "model_type": "bert", "vocab_size": vocabSize,
            "hidden_size": hiddenSize, "num_hidden_layers": numHiddenLayers,
            "num_attention_heads": numAttentionHeads, "intermediate_size": intermediateSize,
            "max_position_embeddings": maxPositionEmbeddings, "type_vocab_size": typeVocabSize,
            "hidden_act": hiddenAct.rawValue, "layer_norm_eps": layerNormEps,
            "initializer_range": initializerRange, "hidden_dropout_prob": 0.1,
            "attention_probs_dropout_prob": 0.1, "position_embedding_type": "absolute",
        ]
        o["pad_token_id"] = padTokenId.map { $0 as Any } ?? NSNull()
        return try encodeTextConfigJSON(o)
    }
}
