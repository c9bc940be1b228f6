import Foundation
import Tensor

/// Reading and writing diffusers-style model folders: `config.json` next to
/// `diffusion_pytorch_model.safetensors` (or its sharded form with a `.index.json`), as written
/// by diffusers' `save_pretrained`.
public enum DiffusionModelFolder {
    /// The config file name inside a model folder.
    public static let configName = "config.json"
    /// The weights file name (with `variant`, e.g. "fp16": `diffusion_pytorch_model.fp16.safetensors`).
    public static func weightsName(variant: String? = nil) -> String {
        variant.map { "diffusion_pytorch_model.\($0).safetensors" } ?? "diffusion_pytorch_model.safetensors"
    }

    /// Every tensor of the folder's weights, and the file (or index) they came from.
    /// - Throws: `DiffusionConfigError.missingWeights` when neither a single file nor an index is
    ///   present; `FileFormatError` for unreadable or malformed files, naming the file.
    public static func loadWeights(directory: URL, variant: String? = nil) throws -> (file: String, tensors: [String: Tensor]) {
        let single = directory.appendingPathComponent(weightsName(variant: variant))
        let index = directory.appendingPathComponent(weightsName(variant: variant) + ".index.json")
        let fm = FileManager.default
        if fm.fileExists(atPath: single.path) {
            return (single.path, try SafeTensorsFile(contentsOf: single).loadAll())
        }
        guard fm.fileExists(atPath: index.path) else {
            throw DiffusionConfigError.missingWeights(directory: directory.path, tried: [single.lastPathComponent, index.lastPathComponent])
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

    /// Writes `config` as `config.json` and `module`'s state as `diffusion_pytorch_model.safetensors`
    /// (float32, metadata `format: pt` as diffusers writes), each through a temporary file.
    static func save(configJSON: Data, module: Module, to directory: URL) throws {
        do {
            try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
            try configJSON.write(to: directory.appendingPathComponent(configName), options: .atomic)
        } catch {
            throw FileFormatError.writeFailed(file: directory.appendingPathComponent(configName).path, reason: error.localizedDescription)
        }
        try SafeTensorsWriter.write(module.namedStateTensors(), metadata: ["format": "pt"],
                                    to: directory.appendingPathComponent(weightsName()))
    }

    /// Loads `weights` strictly into `module`, turning a mismatch into an error that names `file`.
    static func loadStrictly(_ weights: [String: Tensor], into module: Module, file: String) throws {
        do {
            try module.load(weights, strict: true)
        } catch let error as StateDictError {
            throw DiffusionConfigError.weightsDoNotMatch(file: file, error: error)
        }
    }

    /// Throws when a config's `_class_name` names another model class.
    static func checkClassName(_ name: String?, expected: String, path: String) throws {
        if let name, name != expected {
            throw DiffusionConfigError.invalidValue(key: "_class_name", value: "\"\(name)\"",
                                                    message: "\(path) describes a \(name), not a \(expected)")
        }
    }
}

extension UNet2DConditionModel {
    /// Loads a diffusers UNet folder (`config.json` + `diffusion_pytorch_model.safetensors`).
    ///
    /// Loading is strict: a weight the config does not expect, a missing weight or a weight of
    /// the wrong shape throws `DiffusionConfigError.weightsDoNotMatch`, listing every such name.
    public static func load(directory: URL, variant: String? = nil) throws -> UNet2DConditionModel {
        let configURL = directory.appendingPathComponent(DiffusionModelFolder.configName)
        let config = try UNet2DConditionConfig(contentsOf: configURL)
        try DiffusionModelFolder.checkClassName(config.className, expected: "UNet2DConditionModel", path: configURL.path)
        let model = try UNet2DConditionModel(config: config)
        let (file, tensors) = try DiffusionModelFolder.loadWeights(directory: directory, variant: variant)
        try DiffusionModelFolder.loadStrictly(tensors, into: model, file: file)
        return model
    }

    /// Copies diffusers-named weights into this model, strictly; `file` names their source in errors.
    public func loadWeights(_ tensors: [String: Tensor], file: String = "weights") throws {
        try DiffusionModelFolder.loadStrictly(tensors, into: self, file: file)
    }

    /// Writes the model as a diffusers folder that `from_pretrained` (and `load(directory:)`) opens.
    public func save(to directory: URL) throws {
        try DiffusionModelFolder.save(configJSON: config.jsonData(), module: self, to: directory)
    }
}

extension AutoencoderKL {
    /// Loads a diffusers VAE folder (`config.json` + `diffusion_pytorch_model.safetensors`), strictly.
    public static func load(directory: URL, variant: String? = nil) throws -> AutoencoderKL {
        let configURL = directory.appendingPathComponent(DiffusionModelFolder.configName)
        let config = try AutoencoderKLConfig(contentsOf: configURL)
        try DiffusionModelFolder.checkClassName(config.className, expected: "AutoencoderKL", path: configURL.path)
        let model = try AutoencoderKL(config: config)
        let (file, tensors) = try DiffusionModelFolder.loadWeights(directory: directory, variant: variant)
        try DiffusionModelFolder.loadStrictly(tensors, into: model, file: file)
        return model
    }

    /// Copies diffusers-named weights into this model, strictly; `file` names their source in errors.
    public func loadWeights(_ tensors: [String: Tensor], file: String = "weights") throws {
        try DiffusionModelFolder.loadStrictly(tensors, into: self, file: file)
    }

    /// Writes the model as a diffusers folder.
    public func save(to directory: URL) throws {
        try DiffusionModelFolder.save(configJSON: config.jsonData(), module: self, to: directory)
    }
}
