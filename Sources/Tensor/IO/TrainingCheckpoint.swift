import Foundation

/// A training checkpoint in one safetensors file: parameters under `model.<name>`, optimizer
/// state under `optimizer.<key>`, and string metadata (step, generator state, data position,
/// config digest) in the header's `__metadata__`. Written to a temporary file and renamed into
/// place, so a crash mid-write never leaves a broken checkpoint behind.
public struct TrainingCheckpoint {
    public static let modelPrefix = "model."
    public static let optimizerPrefix = "optimizer."
    /// Other training state kept with the weights (e.g. an EMA of them).
    public static let statePrefix = "state."
    public static let formatKey = "sura.checkpoint.format"
    public static let formatVersion = "1"

    /// Parameter values by name (without the prefix).
    public var parameters: [String: Tensor]
    /// Optimizer state by key (without the prefix), as `Optimizer.stateDict()` returns it.
    public var optimizerState: [String: Tensor]
    /// Free-form string metadata; `formatKey` is reserved.
    public var metadata: [String: String]
    /// Further tensors of the training state (written under `state.`), e.g. EMA weights.
    public var extraState: [String: Tensor]

    public init(parameters: [String: Tensor], optimizerState: [String: Tensor] = [:], metadata: [String: String] = [:],
                extraState: [String: Tensor] = [:]) {
        self.parameters = parameters
        self.optimizerState = optimizerState
        self.metadata = metadata
        self.extraState = extraState
    }

    /// Writes the checkpoint atomically.
    public func write(to url: URL) throws {
        var tensors: [(String, Tensor)] = []
        for (name, t) in parameters { tensors.append((TrainingCheckpoint.modelPrefix + name, t)) }
        for (key, t) in optimizerState { tensors.append((TrainingCheckpoint.optimizerPrefix + key, t)) }
        for (key, t) in extraState { tensors.append((TrainingCheckpoint.statePrefix + key, t)) }
        var meta = metadata
        meta[TrainingCheckpoint.formatKey] = TrainingCheckpoint.formatVersion
        try SafeTensorsWriter.write(tensors, metadata: meta, to: url)
    }

    /// Reads a checkpoint written by `write(to:)`; a file that is not one names itself and the
    /// offending tensor.
    public init(contentsOf url: URL) throws {
        let file = try SafeTensorsFile(contentsOf: url)
        guard file.metadata[TrainingCheckpoint.formatKey] == TrainingCheckpoint.formatVersion else {
            throw FileFormatError.invalidHeader(
                file: url.path,
                reason: "not a Sura training checkpoint (metadata key '\(TrainingCheckpoint.formatKey)' is \(file.metadata[TrainingCheckpoint.formatKey].map { "'\($0)'" } ?? "missing"), expected '\(TrainingCheckpoint.formatVersion)')")
        }
        var parameters: [String: Tensor] = [:], optimizer: [String: Tensor] = [:], extra: [String: Tensor] = [:]
        for (name, tensor) in try file.loadAll() {
            if name.hasPrefix(TrainingCheckpoint.modelPrefix) {
                parameters[String(name.dropFirst(TrainingCheckpoint.modelPrefix.count))] = tensor
            } else if name.hasPrefix(TrainingCheckpoint.optimizerPrefix) {
                optimizer[String(name.dropFirst(TrainingCheckpoint.optimizerPrefix.count))] = tensor
            } else if name.hasPrefix(TrainingCheckpoint.statePrefix) {
                extra[String(name.dropFirst(TrainingCheckpoint.statePrefix.count))] = tensor
            } else {
                throw FileFormatError.invalidEntry(file: url.path, key: name,
                                                   reason: "checkpoint tensors must start with 'model.', 'optimizer.' or 'state.'")
            }
        }
        var meta = file.metadata
        meta.removeValue(forKey: TrainingCheckpoint.formatKey)
        self.init(parameters: parameters, optimizerState: optimizer, metadata: meta, extraState: extra)
    }

    /// Captures a module's trainable parameters (or all, when `trainableOnly` is false) and an
    /// optimizer's state.
    public init(module: Module, optimizer: Optimizer?, trainableOnly: Bool = true, metadata: [String: String] = [:]) {
        let named = trainableOnly ? module.namedTrainableParameters() : module.namedParameters()
        self.init(parameters: Dictionary(named, uniquingKeysWith: { a, _ in a }),
                  optimizerState: optimizer?.stateDict() ?? [:], metadata: metadata)
    }

    /// Loads the parameters into `module` (non-strict over the module's other parameters, since
    /// frozen ones are not saved; every checkpoint name must exist with its shape) and the
    /// optimizer state into `optimizer`.
    public func restore(into module: Module, optimizer: Optimizer?) throws {
        let report = try module.load(parameters, strict: false)
        if !report.unexpected.isEmpty {
            throw StateDictError(missing: [], unexpected: report.unexpected, mismatched: [], prefix: "")
        }
        if let optimizer { try optimizer.loadStateDict(optimizerState) }
    }
}
