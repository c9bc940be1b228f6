import Foundation

/// A learning-rate multiplier as a function of the optimizer step, matching the schedules of
/// diffusers' `get_scheduler` (and transformers' cosine-with-minimum-rate for a cosine floor).
///
/// `step` is the number of optimizer steps already taken, as `LambdaLR` counts after each
/// `scheduler.step()`: the first update uses step 0, so with warm-up it runs at rate 0 exactly
/// as diffusers' training scripts do. Negative steps count as 0. Let w = warm-up steps,
/// T = total steps, s = step, f = floor (a fraction of the base rate):
///
/// - `constant`: 1
/// - `constantWithWarmup`: s / max(1, w) while s < w, then 1
/// - `cosineWithWarmup`: s / max(1, w) while s < w, then with p = (s − w) / max(1, T − w):
///   max(0, f + (1 − f) · ½(1 + cos(2π · cycles · p)))
/// - `linearWithWarmup`: s / max(1, w) while s < w, then f + (1 − f) · max(0, (T − s) / max(1, T − w))
///
/// As a config (JSON or YAML) it reads
/// `{name: cosine, warmup_steps: 500, total_steps: 20000, num_cycles: 0.5, min_lr_ratio: 0.0}`,
/// with `name` one of `constant`, `constant_with_warmup`, `cosine`, `linear` (diffusers'
/// `--lr_scheduler` names); unknown keys and out-of-range values are decoding errors naming the key.
public enum LearningRateSchedule: Equatable, Sendable, Codable, CustomStringConvertible {
    case constant
    case constantWithWarmup(warmupSteps: Int)
    case cosineWithWarmup(warmupSteps: Int, totalSteps: Int, cycles: Double = 0.5, floor: Double = 0)
    case linearWithWarmup(warmupSteps: Int, totalSteps: Int, floor: Double = 0)

    /// The factor applied to the base learning rate after `step` optimizer steps.
    public func multiplier(atStep step: Int) -> Double {
        let s = Swift.max(0, step)
        switch self {
        case .constant:
            return 1
        case let .constantWithWarmup(w):
            return s < w ? Double(s) / Double(Swift.max(1, w)) : 1
        case let .cosineWithWarmup(w, total, cycles, floor):
            if s < w { return Double(s) / Double(Swift.max(1, w)) }
            let progress = Double(s - w) / Double(Swift.max(1, total - w))
            let cosine = 0.5 * (1.0 + cos(Double.pi * cycles * 2.0 * progress))
            return Swift.max(0, cosine * (1 - floor) + floor)
        case let .linearWithWarmup(w, total, floor):
            if s < w { return Double(s) / Double(Swift.max(1, w)) }
            let progress = Double(total - s) / Double(Swift.max(1, total - w))
            return floor + (1 - floor) * Swift.max(0, progress)
        }
    }

    /// `base · multiplier(atStep: step)`.
    public func learningRate(base: Double, atStep step: Int) -> Double {
        base * multiplier(atStep: step)
    }

    /// Checks the settings: warm-up ≥ 0, total ≥ warm-up and ≥ 1, cycles > 0, floor in [0, 1].
    /// - Throws: `OptimizerError.invalidSetting` named by the config key.
    public func validate() throws {
        switch self {
        case .constant:
            break
        case let .constantWithWarmup(w):
            try requireSetting("warmup_steps", Double(w), "≥ 0") { $0 >= 0 }
        case let .cosineWithWarmup(w, total, cycles, floor):
            try requireSetting("warmup_steps", Double(w), "≥ 0") { $0 >= 0 }
            try requireSetting("total_steps", Double(total), "≥ 1 and ≥ warmup_steps (\(w))") { $0 >= 1 && $0 >= Double(w) }
            try requireSetting("num_cycles", cycles, "> 0") { $0 > 0 }
            try requireSetting("min_lr_ratio", floor, "[0, 1]") { $0 >= 0 && $0 <= 1 }
        case let .linearWithWarmup(w, total, floor):
            try requireSetting("warmup_steps", Double(w), "≥ 0") { $0 >= 0 }
            try requireSetting("total_steps", Double(total), "≥ 1 and ≥ warmup_steps (\(w))") { $0 >= 1 && $0 >= Double(w) }
            try requireSetting("min_lr_ratio", floor, "[0, 1]") { $0 >= 0 && $0 <= 1 }
        }
    }

    /// The config name (diffusers' `--lr_scheduler` value).
    public var name: String {
        switch self {
        case .constant: return "constant"
        case .constantWithWarmup: return "constant_with_warmup"
        case .cosineWithWarmup: return "cosine"
        case .linearWithWarmup: return "linear"
        }
    }

    public var description: String {
        switch self {
        case .constant:
            return "constant"
        case let .constantWithWarmup(w):
            return "constant_with_warmup(warmup_steps: \(w))"
        case let .cosineWithWarmup(w, t, c, f):
            return "cosine(warmup_steps: \(w), total_steps: \(t), num_cycles: \(c), min_lr_ratio: \(f))"
        case let .linearWithWarmup(w, t, f):
            return "linear(warmup_steps: \(w), total_steps: \(t), min_lr_ratio: \(f))"
        }
    }

    // MARK: Codable

    private enum Key: String, CodingKey, CaseIterable {
        case name
        case warmupSteps = "warmup_steps"
        case totalSteps = "total_steps"
        case numCycles = "num_cycles"
        case minLRRatio = "min_lr_ratio"
    }

    /// Any key present in the input, so that unknown ones can be reported by name.
    private struct AnyKey: CodingKey {
        let stringValue: String
        var intValue: Int? { nil }
        init(stringValue: String) { self.stringValue = stringValue }
        init?(intValue: Int) { nil }
    }

    private static let keysByName: [String: Set<Key>] = [
        "constant": [.name],
        "constant_with_warmup": [.name, .warmupSteps],
        "cosine": [.name, .warmupSteps, .totalSteps, .numCycles, .minLRRatio],
        "linear": [.name, .warmupSteps, .totalSteps, .minLRRatio],
    ]

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: Key.self)
        let name = try c.decode(String.self, forKey: .name)
        guard let allowed = Self.keysByName[name] else {
            throw DecodingError.dataCorruptedError(
                forKey: .name, in: c,
                debugDescription: "unknown learning-rate schedule '\(name)'; allowed: \(Self.keysByName.keys.sorted().joined(separator: ", "))")
        }
        let all = try decoder.container(keyedBy: AnyKey.self)
        for key in all.allKeys.map(\.stringValue).sorted() where Key(rawValue: key).map(allowed.contains) != true {
            let keys = allowed.map(\.rawValue).sorted().joined(separator: ", ")
            throw DecodingError.dataCorrupted(DecodingError.Context(
                codingPath: decoder.codingPath + [AnyKey(stringValue: key)],
                debugDescription: "unknown key '\(key)' for learning-rate schedule '\(name)'; allowed keys: \(keys)"))
        }
        let warmup = try c.decodeIfPresent(Int.self, forKey: .warmupSteps) ?? 0
        func total() throws -> Int { try c.decode(Int.self, forKey: .totalSteps) }
        let floor = try c.decodeIfPresent(Double.self, forKey: .minLRRatio) ?? 0
        switch name {
        case "constant": self = .constant
        case "constant_with_warmup": self = .constantWithWarmup(warmupSteps: warmup)
        case "cosine":
            let cycles = try c.decodeIfPresent(Double.self, forKey: .numCycles) ?? 0.5
            self = .cosineWithWarmup(warmupSteps: warmup, totalSteps: try total(), cycles: cycles, floor: floor)
        default: self = .linearWithWarmup(warmupSteps: warmup, totalSteps: try total(), floor: floor)
        }
        do {
            try validate()
        } catch let OptimizerError.invalidSetting(field, value, allowed) {
            throw DecodingError.dataCorrupted(DecodingError.Context(
                codingPath: decoder.codingPath + [AnyKey(stringValue: field)],
                debugDescription: "learning-rate schedule '\(name)': \(field) = \(value) is invalid; allowed: \(allowed)"))
        }
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: Key.self)
        try c.encode(name, forKey: .name)
        switch self {
        case .constant:
            break
        case let .constantWithWarmup(w):
            try c.encode(w, forKey: .warmupSteps)
        case let .cosineWithWarmup(w, t, cycles, floor):
            try c.encode(w, forKey: .warmupSteps)
            try c.encode(t, forKey: .totalSteps)
            try c.encode(cycles, forKey: .numCycles)
            try c.encode(floor, forKey: .minLRRatio)
        case let .linearWithWarmup(w, t, floor):
            try c.encode(w, forKey: .warmupSteps)
            try c.encode(t, forKey: .totalSteps)
            try c.encode(floor, forKey: .minLRRatio)
        }
    }
}
