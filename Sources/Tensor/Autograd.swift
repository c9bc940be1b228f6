import Foundation

/// Whether operations record their backward functions on the current thread.
///
/// Gradient recording is on by default; `withoutGrad` turns it off for inference, for optimizer
/// updates and while backward itself runs (Sura computes first-order gradients only).
public enum GradMode {
    private static let key: pthread_key_t = {
        var k = pthread_key_t()
        pthread_key_create(&k, nil)
        return k
    }()

    /// True when new operations record a backward function on this thread.
    public static var isEnabled: Bool { pthread_getspecific(key) == nil }

    /// Runs `body` with recording off on this thread, restoring the previous mode afterwards.
    public static func withoutGrad<T>(_ body: () throws -> T) rethrows -> T {
        let previous = pthread_getspecific(key)
        pthread_setspecific(key, UnsafeRawPointer(bitPattern: 1))
        defer { pthread_setspecific(key, previous) }
        return try body()
    }
}

/// Shorthand for `GradMode.withoutGrad`.
public func withoutGrad<T>(_ body: () throws -> T) rethrows -> T {
    try GradMode.withoutGrad(body)
}

/// One recorded operation: its inputs and the function mapping the output gradient to the
/// input gradients (nil where an input needs none).
final class GradNode {
    let name: String
    let inputs: [Tensor]
    let backward: (Tensor) -> [Tensor?]

    init(name: String, inputs: [Tensor], backward: @escaping (Tensor) -> [Tensor?]) {
        self.name = name
        self.inputs = inputs
        self.backward = backward
    }
}

extension Tensor {
    /// Attaches a backward function to `result` when recording is on and an input needs a gradient.
    /// This is also how code outside the Tensor module defines a fused op with its own backward.
    ///
    /// Every op calls this right after computing its forward value; `backward` receives dL/d(result)
    /// with `result`'s shape and returns dL/d(input) with each input's shape, in order.
    @inline(__always)
    public static func record(_ name: String, _ result: Tensor, _ inputs: [Tensor],
                       _ backward: @escaping (Tensor) -> [Tensor?]) -> Tensor {
        guard GradMode.isEnabled, inputs.contains(where: { $0.requiresGrad }) else { return result }
        result.requiresGrad = true
        result.node = GradNode(name: name, inputs: inputs, backward: backward)
        return result
    }

    /// Reverse-mode differentiation from this tensor.
    ///
    /// Leaves with `requiresGrad` accumulate into `grad` (gradients add up across calls until
    /// `zeroGrad`). `gradient` defaults to ones, which for a scalar loss is dL/dL = 1.
    /// The graph is released afterwards.
    public func backward(_ gradient: Tensor? = nil) {
        precondition(requiresGrad, "backward() on a tensor that does not require grad")
        let seed = gradient ?? Tensor.ones(shape)
        precondition(seed.shape == shape, "gradient shape \(seed.shape) does not match \(shape)")

        // Topological order by iterative depth-first search (deep graphs must not overflow the stack).
        var order: [Tensor] = []
        var visited = Set<ObjectIdentifier>()
        var stack: [(Tensor, Bool)] = [(self, false)]
        while let (t, expanded) = stack.popLast() {
            if expanded { order.append(t); continue }
            let id = ObjectIdentifier(t)
            if visited.contains(id) { continue }
            visited.insert(id)
            stack.append((t, true))
            if let node = t.node {
                for input in node.inputs where input.requiresGrad && !visited.contains(ObjectIdentifier(input)) {
                    stack.append((input, false))
                }
            }
        }

        GradMode.withoutGrad {
            var grads: [ObjectIdentifier: Tensor] = [ObjectIdentifier(self): seed]
            for t in order.reversed() {
                let id = ObjectIdentifier(t)
                guard let g = grads.removeValue(forKey: id) else { continue }
                guard let node = t.node else {
                    t.accumulateGrad(g)
                    continue
                }
                if t.retainsGrad { t.accumulateGrad(g) }
                let inputGrads = node.backward(g)
                precondition(inputGrads.count == node.inputs.count, "\(node.name): backward returned \(inputGrads.count) grads for \(node.inputs.count) inputs")
                for (input, ig) in zip(node.inputs, inputGrads) {
                    guard input.requiresGrad, let ig else { continue }
                    precondition(ig.shape == input.shape, "\(node.name): gradient shape \(ig.shape) != input shape \(input.shape)")
                    let iid = ObjectIdentifier(input)
                    if let existing = grads[iid] {
                        grads[iid] = existing + ig
                    } else {
                        grads[iid] = ig
                    }
                }
                t.node = nil
            }
        }
    }

    /// Adds `g` into `grad` (allocating it on first use), the way PyTorch accumulates leaf gradients.
    func accumulateGrad(_ g: Tensor) {
        if let existing = grad {
            existing.addInPlace(g)
        } else {
            grad = g.contiguousCopy()
        }
    }

    /// Drops the accumulated gradient.
    public func zeroGrad() { grad = nil }

    /// A tensor with the same values that is cut from the graph.
    public func detached() -> Tensor {
        Tensor(storage: storage, shape: shape, strides: strides, offset: offset)
    }
}
