import Foundation
import Tensor

extension BertModel {
    /// Loads a transformers BERT folder: `config.json` and `model.safetensors` (or its sharded
    /// `.index.json`), e.g. all-MiniLM-L6-v2 or `bert-base-uncased`.
    ///
    /// Checkpoints of task models (`BertForMaskedLM`, `BertForSequenceClassification`, …) store
    /// the encoder under `bert.`: then only the `bert.` tensors are read and the heads are
    /// ignored. Old checkpoints' `embeddings.position_ids` / `token_type_ids` buffers are ignored.
    ///
    /// - addPoolingLayer: nil builds the pooler exactly when the checkpoint has one.
    /// - Throws: `TextModelError.missingFile` naming the folder and the files looked for;
    ///   `configContradictsWeights` when a size in the config disagrees with the weights (naming
    ///   the key and the tensor); `weightsDoNotMatch` listing every missing, unexpected or
    ///   mis-shaped tensor; config errors naming the key; `FileFormatError` for a broken file.
    public static func load(directory: URL, addPoolingLayer: Bool? = nil) throws -> BertModel {
        let config = try BertConfig(contentsOf: try TextModelFolder.configURL(directory))
        let (file, tensors) = try TextModelFolder.loadWeights(directory)
        return try load(config: config, weights: tensors, file: file, addPoolingLayer: addPoolingLayer)
    }

    /// Builds a model for `config` and loads `weights` (transformers names, with or without
    /// `bert.`) into it strictly; `file` names their source in errors.
    public static func load(config: BertConfig, weights: [String: Tensor], file: String = "weights",
                            addPoolingLayer: Bool? = nil) throws -> BertModel {
        try config.validate(source: file)
        let tensors = encoderTensors(weights)
        let withPooler = addPoolingLayer ?? (tensors["pooler.dense.weight"] != nil)
        var factory = TextParameterFactory.zeros
        let model = BertModel(config: config, addPoolingLayer: withPooler, factory: &factory)
        try model.loadWeights(tensors, file: file)
        return model
    }

    /// Copies transformers-named weights into this model, strictly (the `bert.` prefix and old
    /// buffers handled as in `load(directory:)`; pooler weights are skipped when the model has
    /// no pooler). Nothing is copied when it throws.
    public func loadWeights(_ weights: [String: Tensor], file: String = "weights") throws {
        var tensors = BertModel.encoderTensors(weights)
        if pooler == nil { tensors = tensors.filter { !$0.key.hasPrefix("pooler.") } }
        let c = config
        let h = c.hiddenSize
        let dims = [
            TextConfigDimension(tensor: "embeddings.word_embeddings.weight", axis: 1, key: "hidden_size", value: h),
            TextConfigDimension(tensor: "embeddings.word_embeddings.weight", axis: 0, key: "vocab_size", value: c.vocabSize),
            TextConfigDimension(tensor: "embeddings.position_embeddings.weight", axis: 0, key: "max_position_embeddings",
                            value: c.maxPositionEmbeddings),
            TextConfigDimension(tensor: "embeddings.token_type_embeddings.weight", axis: 0, key: "type_vocab_size",
                            value: c.typeVocabSize),
            TextConfigDimension(tensor: "encoder.layer.0.intermediate.dense.weight", axis: 0, key: "intermediate_size",
                            value: c.intermediateSize),
        ]
        try checkTextConfig(against: tensors, file: file, dimensions: dims, layerPrefix: "encoder.layer.",
                        layerKey: "num_hidden_layers", layers: c.numHiddenLayers)
        try TextModelFolder.loadStrictly(tensors, into: self, file: file)
    }

    /// Writes the model as a transformers folder (`config.json` + `model.safetensors`, keys
    /// without a prefix) that `BertModel.from_pretrained` and `load(directory:)` open.
    public func save(to directory: URL) throws {
        try TextModelFolder.save(configJSON: config.jsonData(), tensors: namedStateTensors(), to: directory)
    }

    /// The tensors under BertModel's own names: a `bert.` sub-tree when there is one, without
    /// the position / token-type id buffers that transformers no longer saves.
    static func encoderTensors(_ weights: [String: Tensor]) -> [String: Tensor] {
        var tensors = weights
        if weights.keys.contains(where: { $0.hasPrefix("bert.") }) {
            tensors = [:]
            for (key, value) in weights where key.hasPrefix("bert.") { tensors[String(key.dropFirst(5))] = value }
        }
        tensors["embeddings.position_ids"] = nil
        tensors["embeddings.token_type_ids"] = nil
        return tensors
    }
}
