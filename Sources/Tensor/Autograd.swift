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
    /// Increases with every node recorded in the process; backward runs later nodes first.
    let sequence: Int

    init(name: String, inputs: [Tensor], backward: @escaping (Tensor) -> [Tensor?]) {
        self.name = name
        self.inputs = inputs
        self.backward = backward
        sequence = GradNode.nextSequence()
    }

    private static let counterLock = NSLock()
    nonisolated(unsafe) private static var counter = 0

    private static func nextSequence() -> Int {
        counterLock.lock()
        defer { counterLock.unlock() }
        counter += 1
        return counter
    }
}

/// The nodes whose consumers have all run, as a max-heap on `GradNode.sequence`.
struct ReadyNodes {
    private var heap: [Tensor] = []

    mutating func push(_ t: Tensor) {
        heap.append(t)
        var i = heap.count - 1
        while i > 0 {
            let parent = (i - 1) / 2
            guard Self.key(heap[i]) > Self.key(heap[parent]) else { break }
            heap.swapAt(i, parent)
            i = parent
        }
    }

    mutating func pop() -> Tensor? {
        guard !heap.isEmpty else { return nil }
        heap.swapAt(0, heap.count - 1)
        let top = heap.removeLast()
        var i = 0
        while true {
            let l = 2 * i + 1, r = l + 1
            var largest = i
            if l < heap.count && Self.key(heap[l]) > Self.key(heap[largest]) { largest = l }
            if r < heap.count && Self.key(heap[r]) > Self.key(heap[largest]) { largest = r }
            if largest == i { break }
            heap.swapAt(i, largest)
            i = largest
        }
        return top
    }

    private static func key(_ t: Tensor) -> Int { t.node!.sequence }
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
    ///
    /// Order, as in PyTorch's engine: a node runs once all its consumers have run, and among the
    /// nodes ready to run the most recently recorded goes first. So backward walks the layers
    /// from the last to the first, a leaf's gradient is accumulated as soon as it is complete
    /// (the last layer's parameters first, which lets gradient hooks start reducing them while
    /// backward continues), and contributions to a tensor are summed in that order.
    public func backward(_ gradient: Tensor? = nil) {
        precondition(requiresGrad, "backward() on a tensor that does not require grad")
        let seed = gradient ?? Tensor.ones(shape)
        precondition(seed.shape == shape, "gradient shape \(seed.shape) does not match \(shape)")

        // Count each tensor's consumers by an iterative depth-first walk (deep graphs must not
        // overflow the stack).
        var pending: [ObjectIdentifier: Int] = [:]
        var visited: Set<ObjectIdentifier> = [ObjectIdentifier(self)]
        var stack: [Tensor] = [self]
        while let t = stack.popLast() {
            guard let node = t.node else { continue }
            for input in node.inputs where input.requiresGrad {
                let iid = ObjectIdentifier(input)
                pending[iid, default: 0] += 1
                if visited.insert(iid).inserted { stack.append(input) }
            }
        }

        GradMode.withoutGrad {
            var grads: [ObjectIdentifier: Tensor] = [ObjectIdentifier(self): seed]
            var ready = ReadyNodes()
            if node == nil {
                accumulateGrad(seed)
                return
            }
            ready.push(self)
            while let t = ready.pop() {
                let node = t.node!
                let g = grads.removeValue(forKey: ObjectIdentifier(t))
                var inputGrads: [Tensor?] = Array(repeating: nil, count: node.inputs.count)
                if let g {
                    if t.retainsGrad { t.accumulateGrad(g) }
                    inputGrads = node.backward(g)
                    precondition(inputGrads.count == node.inputs.count, "\(node.name): backward returned \(inputGrads.count) grads for \(node.inputs.count) inputs")
                    t.node = nil
                }
                for (input, ig) in zip(node.inputs, inputGrads) where input.requiresGrad {
                    let iid = ObjectIdentifier(input)
                    if let ig {
                        precondition(ig.shape == input.shape, "\(node.name): gradient shape \(ig.shape) != input shape \(input.shape)")
                        if let existing = grads[iid] {
                            grads[iid] = existing + ig
                        } else {
                            grads[iid] = ig
                        }
                    }
                    pending[iid]! -= 1
                    guard pending[iid]! == 0 else { continue }
                    if input.node != nil {
                        ready.push(input)
                    } else if let complete = grads.removeValue(forKey: iid) {
                        input.accumulateGrad(complete)    // a leaf: its gradient is complete
                    }
                }
            }
        }
    }

    /// Adds `g` into `grad` (on first use a copy, into `gradientBuffer` when set), the way PyTorch accumulates leaf gradients,
    /// then tells this thread's gradient observer, if any.
    func accumulateGrad(_ g: Tensor) {
        if let existing = grad {
            existing.addInPlace(g)
        } else if let buffer = gradientBuffer {
            g.copyStrided(into: buffer.pointer)
            grad = buffer
        } else {
            grad = g.contiguousCopy()
        }
        GradientObservation.notify(self)
    }

    /// Runs `body` with `observer` called on this thread right after a `backward` has added a
    /// tensor's contribution into its `grad` (leaves, and intermediates with `retainsGrad`).
    ///
    /// Within one `backward` every path to a tensor is summed before it is accumulated, so each
    /// tensor is reported once per `backward`, and its `grad` is then final for that pass:
    /// PyTorch's post-accumulate-grad hook. Data-parallel training uses it to start reducing a
    /// gradient bucket while backward still runs. The observer must not start another `backward`.
    /// Observers nest; only the innermost one is called, and the previous one is restored after.
    public static func observingGradientAccumulation<T>(_ observer: @escaping (Tensor) -> Void,
                                                        _ body: () throws -> T) rethrows -> T {
        try GradientObservation.with(observer, body)
    }

    /// Drops the accumulated gradient.
    public func zeroGrad() { grad = nil }

    /// A tensor with the same values that is cut from the graph.
    public func detached() -> Tensor {
        Tensor(storage: storage, shape: shape, strides: strides, offset: offset)
    }
}

/// The per-thread observer of `Tensor.observingGradientAccumulation`, kept in thread-local
/// storage so that backwards running at the same time on other threads (one per rank in
/// in-process tests) are not seen.
enum GradientObservation {
    final class Box {
        let observer: (Tensor) -> Void
        init(_ observer: @escaping (Tensor) -> Void) { self.observer = observer }
    }

    private static let key: pthread_key_t = {
        var k = pthread_key_t()
        pthread_key_create(&k, nil)
        return k
    }()

    static func with<T>(_ observer: @escaping (Tensor) -> Void, _ body: () throws -> T) rethrows -> T {
        let box = Box(observer)
        let previous = pthread_getspecific(key)
        pthread_setspecific(key, Unmanaged.passUnretained(box).toOpaque())
        defer {
            pthread_setspecific(key, previous)
            withExtendedLifetime(box) {}
        }
        return try body()
    }

    @inline(__always)
    static func notify(_ tensor: Tensor) {
        guard let raw = pthread_getspecific(key) else { return }
        Unmanaged<Box>.fromOpaque(raw).takeUnretainedValue().observer(tensor)
    }
}
