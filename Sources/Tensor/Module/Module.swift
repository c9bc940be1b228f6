import Foundation

/// The base class of every layer and model: a tree of modules holding parameter and buffer
/// tensors, discovered by reflection so that subclasses only declare stored properties.
///
/// **What reflection finds.** Every stored property of a subclass (superclass levels first,
/// then in declaration order) whose value is
/// - a `Tensor` (or `Tensor?`) — a parameter, unless wrapped in `@Buffer`;
/// - a `[Tensor]` or `[String: Tensor]` — a group of parameters (or buffers), ordered like a child
///   module, as PyTorch's `ParameterList`/`ParameterDict`;
/// - a `Module` (or `Module?`, `[Module]`, `[String: Module]`) — a child module.
/// Arrays are numbered like PyTorch's `ModuleList`/`ParameterList` (`resnets.0`, `resnets.1`);
/// dictionaries are visited in sorted key order. Anything else (ints, configs, closures, structs)
/// is ignored, so modules must be stored directly, not inside structs or tuples.
///
/// **Names.** A property's checkpoint key is its Swift name unless it carries `@ModuleKey`,
/// `@ParameterKey` or `@Buffer("key")`. Full names are PyTorch's dotted paths, e.g.
/// `down_blocks.0.resnets.1.conv1.weight`.
///
/// **Order.** Like PyTorch: for each module its own tensors first (declaration order, parameters
/// before buffers), then its children depth-first (declaration order) — PyTorch lists a module's
/// direct parameters before its submodules' regardless of registration order.
///
/// **Sharing.** A module or tensor reachable under several names (tied weights) is listed once,
/// under its first name, by `namedParameters()` and `namedModules()`; `stateDict()` lists every
/// name, as PyTorch's `state_dict()` does. Reference cycles between modules are not followed.
///
/// ```swift
/// final class ResnetBlock: Module {
///     let norm1: GroupNorm                                  // "norm1.weight", "norm1.bias"
///     @ModuleKey("time_emb_proj") var timeEmbProj: Linear  // "time_emb_proj.weight", …
///     @ModuleKey("conv_shortcut") var convShortcut: Conv2d? // absent when nil
///     @Buffer(persistent: false) var cache: Tensor?         // never a parameter, never saved
///     init(rng: inout SeededGenerator) {
///         norm1 = GroupNorm(groups: 32, channels: 320)
///         _timeEmbProj.wrappedValue = Linear(1280, 320, rng: &rng)  // wrapped: set via `_name` before super.init
///         _convShortcut.wrappedValue = nil
///         _cache.wrappedValue = nil
///         super.init()
///     }
/// }
/// ```
open class Module {
    /// Training mode (true after construction). Layers such as `Dropout` read it; set it for the
    /// whole tree with `train()` / `eval()`.
    public private(set) var training: Bool = true

    public init() {}

    // MARK: Reflection

    /// A tensor found by reflection, with its role.
    enum TensorRole: Equatable {
        case parameter
        case buffer(persistent: Bool)
    }

    /// One direct child: a module, or a group of tensors from an array or dictionary property
    /// (PyTorch's `ParameterList`/`ParameterDict`, which are child modules there).
    enum Child {
        case module(Module)
        case tensors([(name: String, tensor: Tensor)], TensorRole)
    }

    /// The direct contents of one module, with local names (relative to this module): its own
    /// tensors (parameters before buffers, as PyTorch's `state_dict()` orders them) and its children.
    struct OwnContents {
        var tensors: [(name: String, tensor: Tensor, role: TensorRole)] = []
        var children: [(name: String, child: Child)] = []

        var childModules: [(name: String, module: Module)] {
            children.compactMap { entry in
                if case .module(let m) = entry.child { return (entry.name, m) }
                return nil
            }
        }
    }

    /// Joins dotted name parts; an empty part adds nothing (used for spliced children).
    static func join(_ a: String, _ b: String) -> String {
        if a.isEmpty { return b }
        if b.isEmpty { return a }
        return a + "." + b
    }

    /// Reflects over this module's stored properties (all subclass levels, base first).
    func ownContents() -> OwnContents {
        var levels: [Mirror] = []
        var mirror: Mirror? = Mirror(reflecting: self)
        while let m = mirror, m.subjectType != Module.self {
            levels.append(m)
            mirror = m.superclassMirror
        }
        var contents = OwnContents()
        for level in levels.reversed() {
            for child in level.children {
                guard let label = child.label, !label.contains("$") else { continue }  // lazy storage
                Module.collect(label: label, value: child.value, into: &contents)
            }
        }
        let parameters = contents.tensors.filter { $0.role == .parameter }
        contents.tensors = parameters + contents.tensors.filter { $0.role != .parameter }
        return contents
    }

    private static func collect(label: String, value: Any, into contents: inout OwnContents) {
        var key = label
        var role = TensorRole.parameter
        var payload: Any = value
        if let wrapped = value as? CheckpointKeyedProperty {
            guard let v = wrapped.reflectedValue else { return }  // never set
            payload = v
            if let buffer = wrapped as? BufferProperty {
                role = .buffer(persistent: buffer.isPersistent)
                key = buffer.checkpointKey.isEmpty ? String(label.dropFirst()) : buffer.checkpointKey
            } else {
                key = wrapped.checkpointKey
            }
        }
        if let tensor = payload as? Tensor {
            contents.tensors.append((key, tensor, role))
        } else if let module = payload as? Module {
            contents.children.append((key, .module(module)))
        } else if let modules = payload as? [Module] {
            for (i, m) in modules.enumerated() { contents.children.append((join(key, String(i)), .module(m))) }
        } else if let tensors = payload as? [Tensor] {
            let items = tensors.enumerated().map { (name: String($0.offset), tensor: $0.element) }
            if !items.isEmpty { contents.children.append((key, .tensors(items, role))) }
        } else if let modules = payload as? [String: Module] {
            for name in modules.keys.sorted() { contents.children.append((join(key, name), .module(modules[name]!))) }
        } else if let tensors = payload as? [String: Tensor] {
            let items = tensors.keys.sorted().map { (name: $0, tensor: tensors[$0]!) }
            if !items.isEmpty { contents.children.append((key, .tensors(items, role))) }
        }
    }

    /// Depth-first walk in PyTorch order. `visitModule` sees every module occurrence (with its
    /// full path) and returns whether to descend; `visitTensor` sees each tensor occurrence.
    /// Cycles (a module that contains one of its ancestors) are cut.
    func walk(prefix: String = "",
              visitModule: (String, Module) -> Bool,
              visitTensor: (String, Tensor, TensorRole) -> Void) {
        var ancestors = Set<ObjectIdentifier>()
        func visit(_ module: Module, _ path: String) {
            let id = ObjectIdentifier(module)
            guard !ancestors.contains(id), visitModule(path, module) else { return }
            ancestors.insert(id)
            defer { ancestors.remove(id) }
            let contents = module.ownContents()
            for t in contents.tensors { visitTensor(Module.join(path, t.name), t.tensor, t.role) }
            for c in contents.children {
                let childPath = Module.join(path, c.name)
                switch c.child {
                case .module(let m):
                    visit(m, childPath)
                case .tensors(let items, let role):
                    for item in items { visitTensor(Module.join(childPath, item.name), item.tensor, role) }
                }
            }
        }
        visit(self, prefix)
    }

    // MARK: Parameters

    /// Every parameter with its dotted name, in PyTorch order; a tensor shared under several
    /// names is listed once (first name). Buffers are not parameters.
    public func namedParameters() -> [(String, Tensor)] {
        var seen = Set<ObjectIdentifier>()
        var result: [(String, Tensor)] = []
        walk(visitModule: { _, _ in true }, visitTensor: { name, tensor, role in
            guard role == .parameter, seen.insert(ObjectIdentifier(tensor)).inserted else { return }
            result.append((name, tensor))
        })
        return result
    }

    /// Every parameter, in `namedParameters()` order.
    public func parameters() -> [Tensor] { namedParameters().map { $0.1 } }

    /// The parameters that currently require a gradient (not frozen), with their names.
    public func namedTrainableParameters() -> [(String, Tensor)] {
        namedParameters().filter { $0.1.requiresGrad }
    }

    /// The parameters that currently require a gradient (not frozen).
    public func trainableParameters() -> [Tensor] { namedTrainableParameters().map { $0.1 } }

    /// Every buffer (persistent or not) with its dotted name; shared tensors listed once.
    public func namedBuffers() -> [(String, Tensor)] {
        var seen = Set<ObjectIdentifier>()
        var result: [(String, Tensor)] = []
        walk(visitModule: { _, _ in true }, visitTensor: { name, tensor, role in
            guard role != .parameter, seen.insert(ObjectIdentifier(tensor)).inserted else { return }
            result.append((name, tensor))
        })
        return result
    }

    /// Total number of parameter elements (shared tensors counted once).
    public var parameterCount: Int { parameters().reduce(0) { $0 + $1.count } }

    /// Number of parameter elements that are not frozen.
    public var trainableParameterCount: Int { trainableParameters().reduce(0) { $0 + $1.count } }

    /// The parameter or buffer with dotted name `name`, or nil.
    public func tensor(named name: String) -> Tensor? {
        var found: Tensor?
        walk(visitModule: { path, _ in found == nil && (path.isEmpty || name.hasPrefix(path + ".")) },
             visitTensor: { n, t, _ in if found == nil && n == name { found = t } })
        return found
    }

    /// Whether `name` lies under `prefix` on a dot boundary (`prefix` nil or empty: everything).
    static func name(_ name: String, isUnder prefix: String?) -> Bool {
        guard let prefix, !prefix.isEmpty else { return true }
        let p = prefix.hasSuffix(".") ? String(prefix.dropLast()) : prefix
        return name == p || name.hasPrefix(p + ".")
    }

    /// Stops gradients to the parameters under `prefix` (all when nil), e.g. `freeze(prefix:
    /// "text_model")` or `freeze(prefix: "layers.3")`; a prefix matches whole dotted parts.
    /// Frozen parameters keep their values and drop any accumulated gradient.
    public func freeze(prefix: String? = nil) {
        for (name, p) in namedParameters() where Module.name(name, isUnder: prefix) {
            p.requiresGrad = false
            p.grad = nil
        }
    }

    /// Makes the parameters under `prefix` (all when nil) trainable again.
    public func unfreeze(prefix: String? = nil) {
        for (name, p) in namedParameters() where Module.name(name, isUnder: prefix) {
            p.requiresGrad = true
        }
    }

    /// Drops the accumulated gradient of every parameter.
    public func zeroGrad() {
        for p in parameters() { p.grad = nil }
    }

    // MARK: Modules

    /// This module (named "") and every descendant with its dotted path, pre-order; a module
    /// reachable under several paths is listed once.
    public func namedModules() -> [(String, Module)] {
        var seen = Set<ObjectIdentifier>()
        var result: [(String, Module)] = []
        walk(visitModule: { path, module in
            guard seen.insert(ObjectIdentifier(module)).inserted else { return false }
            result.append((path, module))
            return true
        }, visitTensor: { _, _, _ in })
        return result
    }

    /// The direct children with their local names; array elements are direct children
    /// (`resnets.0`, `resnets.1`), since Sura has no separate ModuleList object.
    public func namedChildren() -> [(String, Module)] {
        ownContents().childModules.map { ($0.name, $0.module) }
    }

    /// The direct children, in declaration order.
    public var children: [Module] { namedChildren().map { $0.1 } }

    /// The descendant module at dotted path `path` ("" is self), or nil.
    public func module(named path: String) -> Module? {
        namedModules().first { $0.0 == path }?.1
    }

    /// Calls `body` on this module and every descendant (pre-order, each once).
    public func apply(_ body: (Module) -> Void) {
        for (_, m) in namedModules() { body(m) }
    }

    // MARK: Mode

    /// Sets training mode (`true`) or evaluation mode (`false`) on this module and all descendants.
    public func train(_ on: Bool = true) {
        apply { $0.training = on }
    }

    /// Evaluation mode for the whole tree: dropout becomes the identity.
    public func eval() { train(false) }

    /// One line per parameter and persistent buffer: name, shape and whether it trains.
    public var parameterSummary: String {
        let parameterIDs = Set(parameters().map(ObjectIdentifier.init))
        var lines: [String] = []
        for (name, t) in namedStateTensors() {
            let kind = parameterIDs.contains(ObjectIdentifier(t)) ? (t.requiresGrad ? "trainable" : "frozen") : "buffer"
            lines.append("\(name) \(t.shape) \(kind)")
        }
        lines.append("parameters: \(parameterCount) (trainable \(trainableParameterCount))")
        return lines.joined(separator: "\n")
    }
}

/// A layer that maps one tensor to one tensor; what `Sequential` chains.
public protocol UnaryLayer: Module {
    func callAsFunction(_ x: Tensor) -> Tensor
}
