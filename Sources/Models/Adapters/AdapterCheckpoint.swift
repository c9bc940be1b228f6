import Foundation
import Tensor

/// The adapter types Sura trains, by the name configs and checkpoints use.
public enum AdapterType: String, CaseIterable, Sendable {
    case surAdapter = "sur_adapter"
    case crossAdapter = "cross_adapter"
    case vokenMapper = "voken_mapper"
    case ella = "ella"
}

/// An adapter whose config is a Codable value with snake_case keys, so it can be built from a
/// YAML/JSON mapping and written into a checkpoint's metadata.
public protocol ConfigurableAdapter: ConditioningAdapter {
    associatedtype Configuration: Codable
    /// The config the adapter was built from.
    var configuration: Configuration { get }
    /// A randomly initialised adapter (as its paper initialises it).
    init(configuration: Configuration, rng: inout SeededGenerator) throws
}

/// Builds adapters by type name from a JSON object of config keys.
public enum AdapterFactory {
    /// A fresh adapter of `type` from `json` (an object of its config keys; missing keys keep
    /// their defaults; unknown keys are rejected, naming the key).
    /// - Throws: `AdapterError.invalidConfig` naming the key at fault.
    public static func make(_ type: AdapterType, json: Data, rng: inout SeededGenerator) throws -> any ConditioningAdapter {
        switch type {
        case .surAdapter: return try build(SURAdapter.self, json: json, rng: &rng)
        case .crossAdapter: return try build(CrossAdapterModule.self, json: json, rng: &rng)
        case .vokenMapper: return try build(VokenMapper.self, json: json, rng: &rng)
        case .ella: return try build(ELLAConnector.self, json: json, rng: &rng)
        }
    }

    /// The config of `adapter` as a JSON object.
    public static func configJSON(of adapter: any ConditioningAdapter) throws -> Data {
        func encode<A: ConfigurableAdapter>(_ a: A) throws -> Data {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys]
            return try encoder.encode(a.configuration)
        }
        guard let configurable = adapter as? any ConfigurableAdapter else {
            throw AdapterError.invalidConfig(key: "type", value: String(describing: Swift.type(of: adapter)), allowed: "a configurable adapter")
        }
        return try encode(configurable)
    }

    static func build<A: ConfigurableAdapter>(_ kind: A.Type, json: Data, rng: inout SeededGenerator) throws -> A {
        let object = (try? JSONSerialization.jsonObject(with: json)) as? [String: Any] ?? [:]
        let configuration: A.Configuration
        do {
            configuration = try JSONDecoder().decode(A.Configuration.self, from: json.isEmpty ? Data("{}".utf8) : json)
        } catch let DecodingError.typeMismatch(_, context), let DecodingError.valueNotFound(_, context) {
            let key = context.codingPath.map(\.stringValue).joined(separator: ".")
            throw AdapterError.invalidConfig(key: key, value: "\(object[key] ?? "null")", allowed: context.debugDescription)
        } catch {
            throw AdapterError.invalidConfig(key: "config", value: "?", allowed: "a mapping of \(A.typeName) keys (\(error))")
        }
        // Codable ignores keys it does not know; a misspelt key must not pass silently.
        let known = Set(((try? JSONSerialization.jsonObject(with: JSONEncoder().encode(configuration))) as? [String: Any] ?? [:]).keys)
            .union(A.optionalConfigKeys)
        if let unknown = object.keys.sorted().first(where: { !known.contains($0) }) {
            throw AdapterError.invalidConfig(key: unknown, value: "\(object[unknown]!)",
                                             allowed: "a key of \(A.typeName): \(known.sorted().joined(separator: ", "))")
        }
        return try A(configuration: configuration, rng: &rng)
    }
}

extension ConfigurableAdapter {
    /// Config keys whose default is null (so encoding the default config omits them).
    public static var optionalConfigKeys: Set<String> { [] }
}

/// A trained adapter on disk: its trainable tensors under their checkpoint names, and metadata
/// `format` = "sura-adapter", `type`, `config` (JSON), plus what it was trained against
/// (`base_model`, `llm`, `llm_layer`, `llm_max_length`, `step`).
public struct AdapterCheckpoint {
    public static let format = "sura-adapter"
    public var type: AdapterType
    public var adapter: any ConditioningAdapter
    public var metadata: [String: String]
    /// Tensors that travel with the adapter but are not its parameters (the voken mapper's voken
    /// embeddings, `vokens` [V, D_llm]); stored under `sura.<name>`.
    public var extraTensors: [String: Tensor] = [:]

    public init(type: AdapterType, adapter: any ConditioningAdapter, metadata: [String: String] = [:]) {
        self.type = type
        self.adapter = adapter
        self.metadata = metadata
    }

    /// Writes every parameter of the adapter (atomically) with its type and config.
    public func write(to url: URL) throws {
        var meta = metadata
        meta["format"] = Self.format
        meta["type"] = type.rawValue
        meta["config"] = String(decoding: try AdapterFactory.configJSON(of: adapter), as: UTF8.self)
        try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
        let tensors = adapter.namedParameters().map { ($0.0, $0.1) } + extraTensors.map { ("sura.\($0.key)", $0.value) }
        try SafeTensorsWriter.write(tensors, metadata: meta, to: url)
    }

    /// Reads a checkpoint written by `write(to:)`.
    /// - Throws: `AdapterError.invalidConfig` naming the file and the metadata key or tensor at fault.
    public init(contentsOf url: URL) throws {
        let file = try SafeTensorsFile(contentsOf: url)
        guard file.metadata["format"] == Self.format else {
            throw AdapterError.invalidConfig(key: "\(url.path): format", value: file.metadata["format"] ?? "none",
                                             allowed: "\(Self.format) (an adapter exported by `train`)")
        }
        guard let typeName = file.metadata["type"], let type = AdapterType(rawValue: typeName) else {
            throw AdapterError.invalidConfig(key: "\(url.path): type", value: file.metadata["type"] ?? "none",
                                             allowed: AdapterType.allCases.map(\.rawValue).joined(separator: ", "))
        }
        var rng = SeededGenerator(seed: 0)
        let adapter = try AdapterFactory.make(type, json: Data((file.metadata["config"] ?? "{}").utf8), rng: &rng)
        var tensors = try file.loadAll()
        var extra: [String: Tensor] = [:]
        for name in tensors.keys where name.hasPrefix("sura.") {
            extra[String(name.dropFirst(5))] = tensors.removeValue(forKey: name)
        }
        do {
            _ = try adapter.load(tensors, strict: true)
        } catch {
            throw AdapterError.invalidConfig(key: "\(url.path): tensors", value: "\(error)", allowed: "the tensors of a \(typeName) with this config")
        }
        adapter.freeze()
        self.init(type: type, adapter: adapter, metadata: file.metadata)
        extraTensors = extra
    }
}

// Each adapter's config is its `config`; these make them buildable by type name.

extension SURAdapter: ConfigurableAdapter {
    public var configuration: SURAdapterConfig { config }
    public convenience init(configuration: SURAdapterConfig, rng: inout SeededGenerator) throws {
        try self.init(config: configuration, rng: &rng)
    }
    public static var optionalConfigKeys: Set<String> { ["llm_dim"] }
}

extension CrossAdapterModule: ConfigurableAdapter {
    public var configuration: CrossAdapterModuleConfig { config }
    public convenience init(configuration: CrossAdapterModuleConfig, rng: inout SeededGenerator) throws {
        try self.init(config: configuration, rng: &rng)
    }
}

extension VokenMapper: ConfigurableAdapter {
    public var configuration: VokenMapperConfig { config }
    public convenience init(configuration: VokenMapperConfig, rng: inout SeededGenerator) throws {
        try self.init(config: configuration, rng: &rng)
    }
    public static var optionalConfigKeys: Set<String> { ["dim_feedforward"] }
}

extension ELLAConnector: ConfigurableAdapter {
    public var configuration: ELLAConnectorConfig { config }
    public convenience init(configuration: ELLAConnectorConfig, rng: inout SeededGenerator) throws {
        try self.init(config: configuration, rng: &rng)
    }
    public static var optionalConfigKeys: Set<String> { ["output_dim"] }
}
