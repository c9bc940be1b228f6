import Foundation

/// The model classes Sura runs, recognised from a model folder's `config.json` the way the
/// reference libraries recognise them: diffusers writes `_class_name`; transformers writes
/// `model_type` and `architectures`. A `.gguf` file is a Llama-family model.
public enum ModelKind: String, CaseIterable, Sendable {
    case unet2DCondition = "UNet2DConditionModel"
    case autoencoderKL = "AutoencoderKL"
    case bert = "BertModel"
    case clipText = "CLIPTextModel"
    case clipTextWithProjection = "CLIPTextModelWithProjection"
    case llama = "LlamaForCausalLM"

    /// Is this a text encoder a pipeline can take its conditioning from?
    public var isTextEncoder: Bool { self == .bert || self == .clipText || self == .clipTextWithProjection }

    /// The kind of the model at `url`: a folder with `config.json`, or a `.gguf` file.
    ///
    /// - Throws: `PipelineError.missingComponent` when there is no config.json (with a hint when
    ///   the folder is a whole diffusers pipeline, whose parts are in sub-folders);
    ///   `.invalidFolderConfig` when config.json is not a JSON object;
    ///   `.unsupportedModel` quoting the class, type or architecture it names.
    public static func detect(at url: URL) throws -> ModelKind {
        var isDirectory: ObjCBool = false
        let fm = FileManager.default
        guard fm.fileExists(atPath: url.path, isDirectory: &isDirectory) else {
            throw PipelineError.missingComponent(folder: url.deletingLastPathComponent().path, component: "model",
                                                 tried: [url.path], hint: "pass a model folder or a .gguf file")
        }
        if !isDirectory.boolValue {
            if url.pathExtension.lowercased() == "gguf" { return .llama }
            throw PipelineError.unsupportedModel(path: url.path, found: "a file that is not .gguf",
                                                 supported: ["a model folder with config.json", "a .gguf file"])
        }
        let configURL = url.appendingPathComponent("config.json")
        guard fm.fileExists(atPath: configURL.path) else {
            var hint = "a model folder holds config.json next to its safetensors weights"
            if fm.fileExists(atPath: url.appendingPathComponent("model_index.json").path)
                || fm.fileExists(atPath: url.appendingPathComponent("unet").path) {
                hint = "this is a pipeline folder: pass one of its parts, e.g. \(url.appendingPathComponent("unet").path)"
            }
            throw PipelineError.missingComponent(folder: url.path, component: "config.json", tried: [configURL.path], hint: hint)
        }
        return try detect(configURL: configURL)
    }

    /// The kind a `config.json` describes.
    public static func detect(configURL: URL) throws -> ModelKind {
        let json: [String: Any]
        do {
            let data = try Data(contentsOf: configURL)
            guard let object = try JSONSerialization.jsonObject(with: data) as? [String: Any] else {
                throw PipelineError.invalidFolderConfig(file: configURL.path, key: "(top level)", message: "not a JSON object")
            }
            json = object
        } catch let error as PipelineError {
            throw error
        } catch {
            throw PipelineError.invalidFolderConfig(file: configURL.path, key: "(file)", message: "cannot read JSON: \(error.localizedDescription)")
        }
        return try detect(config: json, path: configURL.path)
    }

    /// The kind a parsed config object describes; `path` names it in errors.
    public static func detect(config json: [String: Any], path: String) throws -> ModelKind {
        let supported = allCases.map(\.rawValue)
        if let className = json["_class_name"] as? String {
            switch className {
            case "UNet2DConditionModel": return .unet2DCondition
            case "AutoencoderKL": return .autoencoderKL
            default: throw PipelineError.unsupportedModel(path: path, found: "_class_name \"\(className)\"", supported: supported)
            }
        }
        let architectures = json["architectures"] as? [String] ?? []
        for architecture in architectures {
            switch architecture {
            case "CLIPTextModelWithProjection": return .clipTextWithProjection
            case "CLIPTextModel", "CLIPModel": return .clipText
            case "LlamaForCausalLM", "LlamaModel": return .llama
            default:
                // Task heads on a BERT encoder keep it under `bert.`; BertModel.load reads it from there.
                if architecture.hasPrefix("Bert") { return .bert }
            }
        }
        if let type = json["model_type"] as? String {
            switch type {
            case "bert": return .bert
            case "clip_text_model", "clip": return .clipText
            case "llama": return .llama
            default: throw PipelineError.unsupportedModel(path: path, found: "model_type \"\(type)\"", supported: supported)
            }
        }
        if let first = architectures.first {
            throw PipelineError.unsupportedModel(path: path, found: "architectures [\"\(first)\"]", supported: supported)
        }
        throw PipelineError.unsupportedModel(path: path, found: "a config without _class_name, model_type or architectures",
                                             supported: supported)
    }
}
