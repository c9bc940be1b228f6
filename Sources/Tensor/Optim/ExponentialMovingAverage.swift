import Foundation

/// An exponential moving average of parameters, the weights diffusion models sample with.
///
/// After each optimizer step k (counting from 1):
///
///     d  = min(decay, (1 + k) / (10 + k))      (warm-up, as in diffusers' EMAModel with use_ema_warmup off)
///     ŝ ← d·ŝ + (1 − d)·p                      for every tracked parameter p
///
/// The shadow tensors are keyed by the parameters' dotted names, so they can be written as a
/// model state dict (`shadow`) or copied into a module of the same shape (`copy(into:)`).
public final class ExponentialMovingAverage {
    public let decay: Double
    public private(set) var updates: Int = 0
    private let tracked: [(name: String, tensor: Tensor)]
    /// name → averaged copy, same shape as the parameter.
    public private(set) var shadow: [String: Tensor]

    /// - Parameter decay: the long-run decay in [0, 1).
    /// - Throws: `OptimizerError.invalidSetting` for a decay outside [0, 1).
    public init(parameters: [(name: String, tensor: Tensor)], decay: Double) throws {
        try requireSetting("ema_decay", decay, "[0, 1)") { $0 >= 0 && $0 < 1 }
        self.decay = decay
        tracked = parameters
        shadow = Dictionary(uniqueKeysWithValues: parameters.map { ($0.name, $0.tensor.contiguousCopy()) })
    }

    /// The decay the next update uses.
    public var currentDecay: Double { min(decay, Double(1 + updates + 1) / Double(10 + updates + 1)) }

    /// Moves every shadow toward its parameter; call after each optimizer step.
    public func update() {
        let d = Float(currentDecay)
        updates += 1
        for (name, parameter) in tracked {
            let s = shadow[name]!.storage.pointer, source = parameter.contiguous()
            let p = source.storage.pointer + source.offset
            let n = parameter.count
            for i in 0..<n { s[i] = d * s[i] + (1 - d) * p[i] }
        }
    }

    /// The shadow state under `prefix` plus the update count, for a checkpoint.
    public func stateDict(prefix: String = "ema.") -> [String: Tensor] {
        var state = Dictionary(uniqueKeysWithValues: shadow.map { (prefix + $0.key, $0.value.contiguousCopy()) })
        state[prefix + "updates"] = Tensor(shape: [1], data: [Float(updates)])
        return state
    }

    /// Restores `stateDict(prefix:)`; every tracked parameter must be present with its shape.
    /// - Throws: `OptimizerError.missingStateKey` / `.stateShapeMismatch` naming the key.
    public func loadStateDict(_ state: [String: Tensor], prefix: String = "ema.") throws {
        guard let count = state[prefix + "updates"], count.count == 1 else {
            throw OptimizerError.missingStateKey(prefix + "updates")
        }
        for (name, parameter) in tracked {
            guard let saved = state[prefix + name] else {
                throw OptimizerError.missingStateKey(prefix + name)
            }
            guard saved.shape == parameter.shape else {
                throw OptimizerError.stateShapeMismatch(key: prefix + name, expected: parameter.shape, got: saved.shape)
            }
        }
        for (name, _) in tracked { shadow[name]!.assign(state[prefix + name]!) }
        updates = Int(count.item)
    }

    /// Copies the averaged weights into the tracked parameters themselves (for export or evaluation).
    public func copy(into parameters: [(name: String, tensor: Tensor)]) {
        for (name, tensor) in parameters { if let s = shadow[name] { tensor.assign(s) } }
    }
}
