import Foundation

/// A parameter or buffer whose checkpoint tensor has a different shape.
public struct ShapeMismatch: Equatable, Sendable, CustomStringConvertible {
    /// The checkpoint key.
    public let name: String
    /// The module's shape.
    public let expected: [Int]
    /// The checkpoint's shape.
    public let found: [Int]

    public init(name: String, expected: [Int], found: [Int]) {
        self.name = name
        self.expected = expected
        self.found = found
    }

    public var description: String { "\(name): module has \(expected), checkpoint has \(found)" }
}

/// A checkpoint that does not fit a module: every problem, found in one pass.
///
/// Names are checkpoint keys, i.e. with the `prefix` passed to `load` in front.
public struct StateDictError: Error, Equatable, CustomStringConvertible {
    /// Names the module expects that the checkpoint lacks.
    public let missing: [String]
    /// Names in the checkpoint that the module does not have.
    public let unexpected: [String]
    /// Names present in both with different shapes.
    public let mismatched: [ShapeMismatch]
    /// The prefix passed to `load` ("" for none).
    public let prefix: String

    public init(missing: [String], unexpected: [String], mismatched: [ShapeMismatch], prefix: String = "") {
        self.missing = missing
        self.unexpected = unexpected
        self.mismatched = mismatched
        self.prefix = prefix
    }

    public var description: String {
        var lines = ["checkpoint does not match the module\(prefix.isEmpty ? "" : " (under prefix '\(prefix)')"): "
            + "\(missing.count) missing, \(unexpected.count) unexpected, \(mismatched.count) with the wrong shape"]
        for name in missing { lines.append("  missing: \(name)") }
        for name in unexpected { lines.append("  unexpected: \(name)") }
        for m in mismatched { lines.append("  wrong shape: \(m)") }
        return lines.joined(separator: "\n")
    }
}

/// What a successful `load` did.
public struct StateDictLoadReport: Sendable {
    /// Checkpoint keys whose values were copied into the module.
    public let loaded: [String]
    /// Names the module expects that the checkpoint lacked (always empty for strict loads).
    public let missing: [String]
    /// Checkpoint keys the module has no place for (always empty for strict loads).
    public let unexpected: [String]
}

/// A module that rewrites checkpoint entries before they are matched against its parameters:
/// renamed keys of an older format, a fused tensor to split, a transposed layout.
///
/// `load` calls the hook on every adopting module, outermost first. The hook receives the
/// entries under the module's own path with that path removed (`weight`, not `encoder.fc.weight`)
/// and returns the entries to use instead; whatever it returns is matched strictly like the rest.
public protocol CheckpointRemapping: Module {
    func remapCheckpoint(_ weights: [String: Tensor]) throws -> [String: Tensor]
}

extension Module {
    /// Parameters and persistent buffers with their dotted names, in PyTorch `state_dict()` order.
    /// A tensor shared under several names appears under each. Non-persistent buffers are left out.
    public func namedStateTensors() -> [(String, Tensor)] {
        var result: [(String, Tensor)] = []
        walk(visitModule: { _, _ in true }, visitTensor: { name, tensor, role in
            if role == .buffer(persistent: false) { return }
            result.append((name, tensor))
        })
        return result
    }

    /// The live parameter and persistent-buffer tensors by dotted name (not copies: write them out
    /// before changing the module). Ordered access: `namedStateTensors()`.
    public func stateDict() -> [String: Tensor] {
        Dictionary(namedStateTensors(), uniquingKeysWith: { first, _ in first })
    }

    /// Copies checkpoint values into this module's parameters and persistent buffers, in place:
    /// tensor identities are kept, so optimizers and other holders of a parameter see the new values.
    ///
    /// - Parameters:
    ///   - weights: checkpoint tensors by key.
    ///   - prefix: load only the keys that start with `prefix` + "." (that part removed), e.g.
    ///     `"unet"` to load a `unet.…` sub-tree of a larger checkpoint into this module; other keys
    ///     are ignored. Empty: the whole checkpoint.
    ///   - strict: when true every expected name must be present and every key used.
    ///     Shape mismatches are always errors (as in PyTorch).
    /// - Throws: `StateDictError` listing all missing, unexpected and mis-shaped names together.
    ///   Nothing is copied when it throws. Errors from `CheckpointRemapping` hooks pass through.
    ///
    /// A name that is missing but shares its tensor with a name that is present (tied weights) is
    /// satisfied by that name.
    @discardableResult
    public func load(_ weights: [String: Tensor], prefix: String = "", strict: Bool = true) throws -> StateDictLoadReport {
        let normalizedPrefix = prefix.hasSuffix(".") ? String(prefix.dropLast()) : prefix
        var selected: [String: Tensor]
        if normalizedPrefix.isEmpty {
            selected = weights
        } else {
            let p = normalizedPrefix + "."
            selected = [:]
            for (key, value) in weights where key.hasPrefix(p) { selected[String(key.dropFirst(p.count))] = value }
        }
        selected = try applyCheckpointRemapping(selected)

        func checkpointName(_ name: String) -> String { Module.join(normalizedPrefix, name) }

        let expected = namedStateTensors()
        var expectedNames = Set<String>()
        var provided = Set<ObjectIdentifier>()
        for (name, tensor) in expected where selected[name] != nil { provided.insert(ObjectIdentifier(tensor)) }

        var missing: [String] = []
        var mismatched: [ShapeMismatch] = []
        var copies: [(String, Tensor, Tensor)] = []
        for (name, tensor) in expected {
            expectedNames.insert(name)
            guard let source = selected[name] else {
                if !provided.contains(ObjectIdentifier(tensor)) { missing.append(checkpointName(name)) }
                continue
            }
            if source.shape != tensor.shape {
                mismatched.append(ShapeMismatch(name: checkpointName(name), expected: tensor.shape, found: source.shape))
            } else {
                copies.append((name, tensor, source))
            }
        }
        let unexpected = selected.keys.filter { !expectedNames.contains($0) }.sorted().map(checkpointName)

        if !mismatched.isEmpty || (strict && (!missing.isEmpty || !unexpected.isEmpty)) {
            throw StateDictError(missing: missing, unexpected: unexpected, mismatched: mismatched, prefix: normalizedPrefix)
        }
        for (_, tensor, source) in copies where tensor !== source { tensor.assign(source) }
        return StateDictLoadReport(loaded: copies.map { checkpointName($0.0) }, missing: missing, unexpected: unexpected)
    }

    /// Runs the `CheckpointRemapping` hooks, outermost module first, each on the entries under its path.
    private func applyCheckpointRemapping(_ weights: [String: Tensor]) throws -> [String: Tensor] {
        var current = weights
        for (path, module) in namedModules() {
            guard let remapper = module as? CheckpointRemapping else { continue }
            let p = path.isEmpty ? "" : path + "."
            var inside: [String: Tensor] = [:]
            var outside: [String: Tensor] = [:]
            for (key, value) in current {
                if key.hasPrefix(p) { inside[String(key.dropFirst(p.count))] = value } else { outside[key] = value }
            }
            for (key, value) in try remapper.remapCheckpoint(inside) { outside[p + key] = value }
            current = outside
        }
        return current
    }
}
