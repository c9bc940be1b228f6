import Foundation

/// The L2 norm of all the given tensors' elements taken together: √(Σₜ ‖t‖²).
///
/// Like PyTorch's `clip_grad_norm_`, each tensor's norm is formed first (accumulated in double,
/// rounded to float32) and the total is the norm of those norms. Non-contiguous views are read
/// through a copy. An empty list has norm 0.
public func globalNorm(_ tensors: [Tensor]) -> Float {
    var total = 0.0
    for t in tensors {
        let n = Double(l2Norm(t))
        total += n * n
    }
    return Float(total.squareRoot())
}

/// Scales the gradients of `parameters` so that their global L2 norm is at most `maxNorm`,
/// with `torch.nn.utils.clip_grad_norm_` semantics, and returns the norm before clipping.
///
///     total = √(Σ ‖grad‖²),  coef = min(1, maxNorm / (total + 1e-6)),  grad ← grad · coef
///
/// Parameters without a gradient are ignored (with none at all the result is 0). When `total`
/// is NaN or infinite the gradients are left untouched and the non-finite norm is returned, so
/// the caller can skip the step (PyTorch would instead write NaN or zero into every gradient).
/// A gradient object shared by several parameters is scaled once.
///
/// `totalNorm` turns the norm of these gradients into the norm the clip uses: the identity for a
/// whole model, or √(Σ over ranks of norm²) when the model's gradients are spread over the stages
/// of a pipeline (every rank must then call it, as it is a collective).
@discardableResult
public func clipGradientNorm(_ parameters: [Tensor], maxNorm: Float) -> Float {
    clipGradientNorm(parameters, maxNorm: maxNorm, totalNorm: { $0 })
}

/// `clipGradientNorm` with `totalNorm` as described there.
@discardableResult
public func clipGradientNorm(_ parameters: [Tensor], maxNorm: Float,
                             totalNorm: (Float) throws -> Float) rethrows -> Float {
    var seen = Set<ObjectIdentifier>()
    var grads: [Tensor] = []
    for p in parameters {
        guard let g = p.grad, seen.insert(ObjectIdentifier(g)).inserted else { continue }
        grads.append(g)
    }
    let total = try totalNorm(globalNorm(grads))
    guard total.isFinite else { return total }
    // float32 arithmetic, as PyTorch does it on the 0-d norm tensor.
    let coef = Swift.min(maxNorm / (total + Float(1e-6)), 1)
    if coef == 1 { return total }
    // Each distinct gradient is scaled once; a strided one is replaced by a scaled contiguous copy
    // (shared with every parameter that pointed at it).
    var replaced: [ObjectIdentifier: Tensor] = [:]
    for p in parameters {
        guard let g = p.grad else { continue }
        let id = ObjectIdentifier(g)
        if let copy = replaced[id] {
            p.grad = copy
        } else if seen.remove(id) != nil {
            if g.isContiguous {
                scale(g.pointer, g.count, by: coef)
            } else {
                let c = g.contiguousCopy()
                scale(c.pointer, c.count, by: coef)
                replaced[id] = c
                p.grad = c
            }
        }
    }
    return total
}

/// `clipGradientNorm` over named parameters (the names are not used).
@discardableResult
public func clipGradientNorm(_ parameters: [(name: String, tensor: Tensor)], maxNorm: Float) -> Float {
    clipGradientNorm(parameters.map(\.tensor), maxNorm: maxNorm, totalNorm: { $0 })
}

/// `clipGradientNorm` over named parameters with `totalNorm`.
@discardableResult
public func clipGradientNorm(_ parameters: [(name: String, tensor: Tensor)], maxNorm: Float,
                             totalNorm: (Float) throws -> Float) rethrows -> Float {
    try clipGradientNorm(parameters.map(\.tensor), maxNorm: maxNorm, totalNorm: totalNorm)
}

/// ‖t‖₂, summed in double over fixed 64K-element blocks so the result does not depend on the
/// thread count.
private func l2Norm(_ t: Tensor) -> Float {
    let c = t.isContiguous ? t : t.contiguousCopy()
    let n = c.count
    let p = c.pointer
    let block = 65_536
    let blocks = (n + block - 1) / block
    if blocks == 0 { return 0 }
    var partial = [Double](repeating: 0, count: blocks)
    partial.withUnsafeMutableBufferPointer { out in
        let out = out
        parallelFor(blocks, grain: 1) { s, e in
            for k in s..<e {
                var sum = 0.0
                for j in (k * block)..<Swift.min(n, (k + 1) * block) {
                    let v = Double(p[j])
                    sum += v * v
                }
                out[k] = sum
            }
        }
    }
    return Float(partial.reduce(0, +).squareRoot())
}

private func scale(_ p: UnsafeMutablePointer<Float>, _ n: Int, by coef: Float) {
    parallelFor(n) { s, e in
        for j in s..<e { p[j] *= coef }
    }
}
