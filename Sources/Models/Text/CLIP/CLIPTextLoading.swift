import Foundation
import Tensor

// Loading CLIP text encoders from transformers folders. Three layouts hold the same tensors:
// - `text_model.…` — transformers 4.x `CLIPTextModel`, every Stable Diffusion `text_encoder/`,
//   `CLIPTextModelWithProjection` (plus `text_projection.weight`), and a full `CLIPModel` (plus the
//   vision tower, `visual_projection` and `logit_scale`, which are ignored);
// - no prefix — transformers 5 `CLIPTextModel.save_pretrained`.
// Old checkpoints also carry the `position_ids` buffer, which is ignored.

enum CLIPTextWeights {
    /// The tensors under Sura's names (`text_model.…`, and `text_projection.weight` when
    /// `withProjection`), from any of the layouts above.
    static func normalized(_ weights: [String: Tensor], withProjection: Bool) -> [String: Tensor] {
        var tensors: [String: Tensor] = [:]
        let prefixed = weights.keys.contains { $0.hasPrefix("text_model.") }
        for (key, value) in weights {
            if prefixed {
                if key.hasPrefix("vision_model.") || key.hasPrefix("visual_projection.") || key == "logit_scale" { continue }
                if key.hasPrefix("text_projection.") && !withProjection { continue }
                tensors[key] = value
            } else if key.hasPrefix("text_projection.") {
                if withProjection { tensors[key] = value }
            } else {
                tensors["text_model." + key] = value
            }
        }
        tensors["text_model.embeddings.position_ids"] = nil
        return tensors
    }

    /// Checks the config against the weights' sizes, then loads strictly into `module`.
    static func load(_ weights: [String: Tensor], into module: Module, config c: CLIPTextConfig,
                     withProjection: Bool, file: String) throws {
        let tensors = normalized(weights, withProjection: withProjection)
        var dims = [
            TextConfigDimension(tensor: "text_model.embeddings.token_embedding.weight", axis: 1, key: "hidden_size",
                            value: c.hiddenSize),
            TextConfigDimension(tensor: "text_model.embeddings.token_embedding.weight", axis: 0, key: "vocab_size",
                            value: c.vocabSize),
            TextConfigDimension(tensor: "text_model.embeddings.position_embedding.weight", axis: 0,
                            key: "max_position_embeddings", value: c.maxPositionEmbeddings),
            TextConfigDimension(tensor: "text_model.encoder.layers.0.mlp.fc1.weight", axis: 0, key: "intermediate_size",
                            value: c.intermediateSize),
        ]
        if withProjection {
            dims.append(TextConfigDimension(tensor: "text_projection.weight", axis: 0, key: "projection_dim", value: c.projectionDim))
        }
        try checkTextConfig(against: tensors, file: file, dimensions: dims, layerPrefix: "text_model.encoder.layers.",
                        layerKey: "num_hidden_layers", layers: c.numHiddenLayers)
        try TextModelFolder.loadStrictly(tensors, into: module, file: file)
    }
}

extension CLIPTextModel {
    /// Loads a transformers CLIP text folder (`config.json` + `model.safetensors` or its sharded
    /// index), e.g. a Stable Diffusion 1.x/2.x `text_encoder/`; also the text tower of a full
    /// `CLIPModel` folder or a `CLIPTextModelWithProjection` folder (the projection is ignored).
    ///
    /// - Throws: `TextModelError.missingFile` naming the folder and the files looked for;
    ///   `configContradictsWeights` naming the config key and the tensor that disagree;
    ///   `weightsDoNotMatch` listing every missing, unexpected or mis-shaped tensor; config errors
    ///   naming the key; `FileFormatError` for a broken file.
    public static func load(directory: URL) throws -> CLIPTextModel {
        let config = try CLIPTextConfig(contentsOf: try TextModelFolder.configURL(directory))
        let (file, tensors) = try TextModelFolder.loadWeights(directory)
        return try load(config: config, weights: tensors, file: file)
    }

    /// Builds a model for `config` and loads `weights` (any of the layouts above) strictly.
    public static func load(config: CLIPTextConfig, weights: [String: Tensor], file: String = "weights") throws -> CLIPTextModel {
        try config.validate(source: file)
        var factory = TextParameterFactory.zeros
        let model = CLIPTextModel(config: config, factory: &factory)
        try model.loadWeights(weights, file: file)
        return model
    }

    /// Copies transformers-named weights into this model, strictly. Nothing is copied when it throws.
    public func loadWeights(_ weights: [String: Tensor], file: String = "weights") throws {
        try CLIPTextWeights.load(weights, into: self, config: config, withProjection: false, file: file)
    }

    /// Writes the model as a transformers folder with `text_model.` keys (the layout of Stable
    /// Diffusion's `text_encoder/`), which `CLIPTextModel.from_pretrained` opens.
    public func save(to directory: URL) throws {
        try TextModelFolder.save(configJSON: config.jsonData(architecture: "CLIPTextModel"),
                                 tensors: namedStateTensors(), to: directory)
    }
}

extension CLIPTextModelWithProjection {
    /// Loads a transformers `CLIPTextModelWithProjection` folder (e.g. SDXL's `text_encoder_2/`)
    /// or a full `CLIPModel` folder (text tower and `text_projection`); errors as
    /// `CLIPTextModel.load(directory:)`.
    public static func load(directory: URL) throws -> CLIPTextModelWithProjection {
        let config = try CLIPTextConfig(contentsOf: try TextModelFolder.configURL(directory))
        let (file, tensors) = try TextModelFolder.loadWeights(directory)
        return try load(config: config, weights: tensors, file: file)
    }

    /// Builds a model for `config` and loads `weights` strictly.
    public static func load(config: CLIPTextConfig, weights: [String: Tensor],
                            file: String = "weights") throws -> CLIPTextModelWithProjection {
        try config.validate(source: file)
        var factory = TextParameterFactory.zeros
        let model = CLIPTextModelWithProjection(config: config, factory: &factory)
        try model.loadWeights(weights, file: file)
        return model
    }

    /// Copies transformers-named weights into this model, strictly. Nothing is copied when it throws.
    public func loadWeights(_ weights: [String: Tensor], file: String = "weights") throws {
        try CLIPTextWeights.load(weights, into: self, config: config, withProjection: true, file: file)
    }

    /// Writes the model as a transformers `CLIPTextModelWithProjection` folder.
    public func save(to directory: URL) throws {
        try TextModelFolder.save(configJSON: config.jsonData(architecture: "CLIPTextModelWithProjection"),
                                 tensors: namedStateTensors(), to: directory)
    }
}
