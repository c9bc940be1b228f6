import Foundation
import Tensor

/// The `config.json` of a transformers `CLIPTextModel` / `CLIPTextModelWithProjection`
/// (`model_type` "clip_text_model"), or the `text_config` of a full `CLIPModel` ("clip").
///
/// The shape keys — `vocab_size`, `hidden_size`, `intermediate_size`, `num_hidden_layers`,
/// `num_attention_heads`, `max_position_embeddings` — are required and throw
/// `TextModelError.missingConfigKey` when absent; the others take transformers' defaults
/// (`hidden_act` "quick_gelu", `layer_norm_eps` 1e-5, `eos_token_id` 49407, `projection_dim` 512).
///
/// **Pooling.** `eos_token_id` decides where `pooler_output` is read, as in transformers:
/// the legacy value 2 (Stable Diffusion 1.x/2.x configs) takes the position of the largest id
/// of each row — `<|endoftext|>` is CLIP's largest id —, any other value takes the first
/// position holding that id.
public struct CLIPTextConfig: Equatable, Sendable {
    public var vocabSize: Int
    /// Width of every token vector, H.
    public var hiddenSize: Int
    /// Width of the MLP.
    public var intermediateSize: Int
    public var numHiddenLayers: Int
    /// Heads per layer; each has H / heads dimensions.
    public var numAttentionHeads: Int
    /// Rows of the position table: the context length (77 for released CLIPs).
    public var maxPositionEmbeddings: Int
    public var hiddenAct: TextActivation
    public var layerNormEps: Double
    public var bosTokenId: Int?
    public var eosTokenId: Int
    public var padTokenId: Int?
    /// Width of `text_projection` (`CLIPTextModelWithProjection`'s output).
    public var projectionDim: Int
    /// Standard deviation of the random initialisation.
    public var initializerRange: Double

    /// The keys a config file must contain.
    public static let requiredKeys = ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                      "num_attention_heads", "max_position_embeddings"]

    public init(vocabSize: Int, hiddenSize: Int, intermediateSize: Int, numHiddenLayers: Int,
                numAttentionHeads: Int, maxPositionEmbeddings: Int = 77, hiddenAct: TextActivation = .quickGelu,
                layerNormEps: Double = 1e-5, bosTokenId: Int? = 49406, eosTokenId: Int = 49407,
                padTokenId: Int? = 1, projectionDim: Int = 512, initializerRange: Double = 0.02) {
        self.vocabSize = vocabSize
        self.hiddenSize = hiddenSize
        self.intermediateSize = intermediateSize
        self.numHiddenLayers = numHiddenLayers
        self.numAttentionHeads = numAttentionHeads
        self.maxPositionEmbeddings = maxPositionEmbeddings
        self.hiddenAct = hiddenAct
        self.layerNormEps = layerNormEps
        self.bosTokenId = bosTokenId
        self.eosTokenId = eosTokenId
        self.padTokenId = padTokenId
        self.projectionDim = projectionDim
        self.initializerRange = initializerRange
    }

    /// Stable Diffusion 1.x's text encoder (CLIP ViT-L/14's text tower).
    public static let stableDiffusion1 = CLIPTextConfig(
        vocabSize: 49408, hiddenSize: 768, intermediateSize: 3072, numHiddenLayers: 12, numAttentionHeads: 12,
        bosTokenId: 0, eosTokenId: 2, padTokenId: 1, projectionDim: 768)

    /// Reads a `config.json`.
    /// - Throws: `TextModelError` naming the file and the key at fault.
    public init(contentsOf url: URL) throws {
        try self.init(reader: TextConfigReader(contentsOf: url))
    }

    /// Parses config JSON; `source` names it in errors.
    public init(jsonData: Data, source: String = "config.json") throws {
        try self.init(reader: TextConfigReader(data: jsonData, path: source))
    }

    init(reader top: TextConfigReader) throws {
        var r = top
        var projection = try top.optionalInt("projection_dim", minimum: 1)
        let modelType = try top.string("model_type", default: nil)
        if modelType == "clip" {
            // A full CLIPModel config: the text tower's keys sit under `text_config`.
            guard case .object(let inner)? = top.raw("text_config") else {
                throw TextModelError.missingConfigKey(path: top.path, key: "text_config")
            }
            r = TextConfigReader(object: inner, path: top.path + " text_config")
            projection = try r.optionalInt("projection_dim", minimum: 1) ?? projection
        } else if let modelType, modelType != "clip_text_model" {
            throw TextModelError.unsupportedConfig(path: top.path, key: "model_type", value: "\"\(modelType)\"",
                                                   reason: "expected \"clip_text_model\" or \"clip\"")
        }
        self.init(vocabSize: try r.requiredInt("vocab_size"),
                  hiddenSize: try r.requiredInt("hidden_size"),
                  intermediateSize: try r.requiredInt("intermediate_size"),
                  numHiddenLayers: try r.requiredInt("num_hidden_layers"),
                  numAttentionHeads: try r.requiredInt("num_attention_heads"),
                  maxPositionEmbeddings: try r.requiredInt("max_position_embeddings"),
                  hiddenAct: try r.activation("hidden_act", default: .quickGelu),
                  layerNormEps: try r.positiveDouble("layer_norm_eps", default: 1e-5),
                  bosTokenId: try r.nullableInt("bos_token_id", default: 49406),
                  eosTokenId: try r.optionalInt("eos_token_id") ?? 49407,
                  padTokenId: try r.nullableInt("pad_token_id", default: 1),
                  projectionDim: projection ?? 512,
                  initializerRange: try r.positiveDouble("initializer_range", default: 0.02))
        try validate(source: r.path)
    }

    /// Throws `TextModelError.invalidConfigValue` for sizes below 1 or a width that the heads do
    /// not divide.
    public func validate(source: String = "CLIPTextConfig") throws {
        let sizes = [("vocab_size", vocabSize), ("hidden_size", hiddenSize), ("intermediate_size", intermediateSize),
                     ("num_hidden_layers", numHiddenLayers), ("num_attention_heads", numAttentionHeads),
                     ("max_position_embeddings", maxPositionEmbeddings), ("projection_dim", projectionDim)]
        for (key, value) in sizes where value < 1 {
            throw TextModelError.invalidConfigValue(path: source, key: key, value: String(value), message: "must be ≥ 1")
        }
        try checkTextHeads(hidden: hiddenSize, heads: numAttentionHeads, path: source)
        if !(layerNormEps > 0) {
            throw TextModelError.invalidConfigValue(path: source, key: "layer_norm_eps", value: String(layerNormEps), message: "must be positive")
        }
        if eosTokenId < 0 {
            throw TextModelError.invalidConfigValue(path: source, key: "eos_token_id", value: String(eosTokenId), message: "must be ≥ 0")
        }
    }

    /// Dimensions per head, H / heads.
    public var headDim: Int { hiddenSize / numAttentionHeads }

    /// True for the legacy `eos_token_id` 2, where pooling takes each row's largest id.
    public var usesLegacyEOSPooling: Bool { eosTokenId == 2 }

    /// The config as transformers writes it (sorted keys); `architecture` is the class named
    /// in `architectures`.
    public func jsonData(architecture: String = "CLIPTextModel") throws -> Data {
        var o: [String: Any] = [
            "architectures": [architecture], "model_type": "clip_text_model", "vocab_size": vocabSize,
            "hidden_size": hiddenSize, "intermediate_size": intermediateSize, "num_hidden_layers": numHiddenLayers,
            "num_attention_heads": numAttentionHeads, "max_position_embeddings": maxPositionEmbeddings,
            "hidden_act": hiddenAct.rawValue, "layer_norm_eps": layerNormEps, "eos_token_id": eosTokenId,
            "projection_dim": projectionDim, "initializer_range": initializerRange, "initializer_factor": 1.0,
            "attention_dropout": 0.0,
        ]
        o["bos_token_id"] = bosTokenId.map { $0 as Any } ?? NSNull()
        o["pad_token_id"] = padTokenId.map { $0 as Any } ?? NSNull()
        return try encodeTextConfigJSON(o)
    }
}
