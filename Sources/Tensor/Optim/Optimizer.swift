import Foundation

/// An optimizer that updates named parameters in place from their accumulated gradients.
///
/// Parameters are given as `[(name: String, tensor: Tensor)]`, the form `namedParameters()`
/// returns, with the PyTorch dotted names; the names key the optimizer state so that a
/// checkpoint can be matched against a model by name. Every parameter must be a contiguous
/// tensor that owns its layout (a leaf made with `asParameter()` or loaded from a file).
///
/// A training step is: `backward()`, optionally `clipGradientNorm`, then
/// `optimizer.learningRate = schedule.learningRate(base: lr, atStep: optimizer.stepCount)`,
/// `try optimizer.step()`, `optimizer.zeroGrad()`.
public protocol Optimizer: AnyObject {
    /// The parameters in the order given at creation.
    var parameters: [(name: String, tensor: Tensor)] { get }
    /// The learning rate used by the next `step()`; a schedule sets it before each step.
    var learningRate: Double { get set }
    /// How many times `step()` has run (restored by `loadStateDict`).
    var stepCount: Int { get }
    /// Updates every parameter that has a gradient, in place; parameters without one are left
    /// alone and their state does not advance (as in PyTorch).
    /// Throws before touching anything: `OptimizerError.gradientShapeMismatch` when a gradient's
    /// shape differs from its parameter's, `.invalidSetting` when `learningRate` is negative or NaN.
    func step() throws
    /// Drops every parameter's gradient (`grad = nil`, PyTorch's `set_to_none=True`).
    func zeroGrad()
    /// The optimizer state as fresh tensors keyed by name: `step` (shape [1], `stepCount`, exact
    /// below 2^24 steps) and per-parameter buffers named `<buffer>.<parameter name>`.
    /// The tensors are copies, safe to write out while training goes on.
    func stateDict() -> [String: Tensor]
    /// Restores a state written by `stateDict()` of an optimizer of the same kind over parameters
    /// with the same names and shapes. All keys are checked before anything changes; an unknown,
    /// missing, mis-shaped or invalid entry throws an `OptimizerError` naming the key.
    func loadStateDict(_ state: [String: Tensor]) throws
}

extension Optimizer {
    public func zeroGrad() {
        for p in parameters { p.tensor.grad = nil }
    }
}

/// Why an optimizer could not be built, stepped or restored. Every case names the culprit.
public enum OptimizerError: Error, Equatable, CustomStringConvertible {
    /// A hyperparameter outside its allowed range.
    case invalidSetting(name: String, value: Double, allowed: String)
    /// Two parameters share a name.
    case duplicateParameterName(String)
    /// The same tensor object is listed under two names (it would be updated twice).
    case sharedParameter(name: String, alsoNamed: String)
    /// A parameter is a strided view; optimizers update storage directly.
    case nonContiguousParameter(String)
    /// A parameter's gradient has a different shape from the parameter.
    case gradientShapeMismatch(parameter: String, expected: [Int], got: [Int])
    /// A state key that this optimizer does not write (unknown buffer or parameter name).
    case unexpectedStateKey(String)
    /// A state key that must be present is not.
    case missingStateKey(String)
    /// A state tensor whose shape does not match its parameter.
    case stateShapeMismatch(key: String, expected: [Int], got: [Int])
    /// A state tensor with an impossible value (negative or fractional step, NaN, …).
    case invalidStateValue(key: String, reason: String)

    public var description: String {
        switch self {
        case let .invalidSetting(name, value, allowed):
            return "optimizer setting '\(name)' = \(value) is invalid; allowed: \(allowed)"
        case let .duplicateParameterName(name):
            return "parameter name '\(name)' is given twice to the optimizer"
        case let .sharedParameter(name, other):
            return "parameter '\(name)' is the same tensor as '\(other)'; pass shared tensors once"
        case let .nonContiguousParameter(name):
            return "parameter '\(name)' is not contiguous; optimizers need contiguous leaf tensors"
        case let .gradientShapeMismatch(name, expected, got):
            return "gradient of '\(name)' has shape \(got), parameter has shape \(expected)"
        case let .unexpectedStateKey(key):
            return "optimizer state has unexpected key '\(key)'"
        case let .missingStateKey(key):
            return "optimizer state is missing key '\(key)'"
        case let .stateShapeMismatch(key, expected, got):
            return "optimizer state '\(key)' has shape \(got), expected \(expected)"
        case let .invalidStateValue(key, reason):
            return "optimizer state '\(key)' is invalid: \(reason)"
        }
    }
}

/// The validated parameter list shared by the optimizers.
struct ParameterTable {
    let names: [String]
    let tensors: [Tensor]
    let index: [String: Int]

    init(_ parameters: [(name: String, tensor: Tensor)]) throws {
        var index: [String: Int] = [:]
        var owner: [ObjectIdentifier: String] = [:]
        for (i, p) in parameters.enumerated() {
            if index[p.name] != nil { throw OptimizerError.duplicateParameterName(p.name) }
            if let other = owner[ObjectIdentifier(p.tensor)] {
                throw OptimizerError.sharedParameter(name: p.name, alsoNamed: other)
            }
            if !p.tensor.isContiguous { throw OptimizerError.nonContiguousParameter(p.name) }
            index[p.name] = i
            owner[ObjectIdentifier(p.tensor)] = p.name
        }
        self.names = parameters.map(\.name)
        self.tensors = parameters.map(\.tensor)
        self.index = index
    }

    var named: [(name: String, tensor: Tensor)] { zip(names, tensors).map { (name: $0, tensor: $1) } }

    /// The contiguous gradients of parameter `i`, or nil when it has none; throws on a shape mismatch.
    func gradient(_ i: Int) throws -> Tensor? {
        guard let g = tensors[i].grad else { return nil }
        if g.shape != tensors[i].shape {
            throw OptimizerError.gradientShapeMismatch(parameter: names[i], expected: tensors[i].shape, got: g.shape)
        }
        return g.isContiguous ? g : g.contiguousCopy()
    }

    /// All gradients, checked before any parameter changes so a bad one leaves the step undone.
    func gradients() throws -> [Tensor?] {
        try (0..<tensors.count).map { try gradient($0) }
    }
}

/// Checks an optimizer setting, throwing `OptimizerError.invalidSetting` with its name.
func requireSetting(_ name: String, _ value: Double, _ allowed: String, _ ok: (Double) -> Bool) throws {
    if !value.isFinite || !ok(value) { throw OptimizerError.invalidSetting(name: name, value: value, allowed: allowed) }
}

/// A fresh contiguous one-element tensor holding a step count.
func stepTensor(_ n: Int) -> Tensor { Tensor(shape: [1], data: [Float(n)]) }

/// Reads an optimizer state dictionary, remembering which keys were used so leftovers can be
/// reported as unexpected. Returned tensors are fresh copies, never the caller's objects.
struct StateDictReader {
    let state: [String: Tensor]
    private(set) var used: Set<String> = []

    init(_ state: [String: Tensor]) { self.state = state }

    func has(_ key: String) -> Bool { state[key] != nil }

    /// A count stored as a one-element tensor: a whole number ≥ `minimum` below 2^24 (exact in float32).
    mutating func count(_ key: String, minimum: Int = 0) throws -> Int {
        guard let t = state[key] else { throw OptimizerError.missingStateKey(key) }
        used.insert(key)
        guard t.count == 1, t.rank <= 1 else {
            throw OptimizerError.stateShapeMismatch(key: key, expected: [1], got: t.shape)
        }
        let v = t.item
        guard v.isFinite, v == v.rounded(), v >= Float(minimum), v < 16_777_216 else {
            throw OptimizerError.invalidStateValue(key: key, reason: "expected a whole number ≥ \(minimum), got \(v)")
        }
        return Int(v)
    }

    /// A buffer of exactly `shape` with finite values (and no negatives when `nonNegative`).
    mutating func buffer(_ key: String, shape: [Int], nonNegative: Bool = false) throws -> Tensor {
        guard let t = state[key] else { throw OptimizerError.missingStateKey(key) }
        used.insert(key)
        guard t.shape == shape else {
            throw OptimizerError.stateShapeMismatch(key: key, expected: shape, got: t.shape)
        }
        let copy = t.contiguousCopy()
        let p = copy.pointer
        for i in 0..<copy.count {
            let v = p[i]
            if !v.isFinite || (nonNegative && v < 0) {
                throw OptimizerError.invalidStateValue(
                    key: key, reason: "element \(i) is \(v); expected a finite\(nonNegative ? ", non-negative" : "") value")
            }
        }
        return copy
    }

    /// Throws for the first (in sorted order) key that was never read.
    func rejectUnused() throws {
        if let key = state.keys.filter({ !used.contains($0) }).sorted().first {
            throw OptimizerError.unexpectedStateKey(key)
        }
    }
}
