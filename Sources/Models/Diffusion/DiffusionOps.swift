import Foundation
import Tensor

// Fused kernels used by the diffusion models where composing the primitive ops would cost extra
// passes over large activations. Each forward is followed by its backward.

/// Φ(x) = ½(1 + erf(x/√2)), the standard normal CDF, in a branch-free form that loops vectorise:
/// erf by Abramowitz & Stegun 7.1.26 (absolute error below 1.5e-7) on |z| with the sign restored.
@inline(__always)
func fastNormalCDF(_ x: Float) -> Float {
    let z = x * 0.707_106_77
    let a = z < 0 ? -z : z
    let t = 1 / (1 + 0.327_591_1 * a)
    var poly: Float = 1.061_405_429
    poly = poly * t - 1.453_152_027
    poly = poly * t + 1.421_413_741
    poly = poly * t - 0.284_496_736
    poly = poly * t + 0.254_829_592
    let erfAbs = 1 - poly * t * fastNegativeExp(-a * a)
    return 0.5 + 0.5 * (z < 0 ? -erfAbs : erfAbs)
}

extension Tensor {
    /// Self when contiguous, otherwise a contiguous copy made outside the graph (the fused ops
    /// below record the original tensor as their graph input).
    fileprivate var denseValues: Tensor { isContiguous ? self : contiguousCopy() }

    /// GEGLU gating (diffusers' `GEGLU` after its projection): the last dimension [2I] is split into
    /// value a = x[..., :I] and gate b = x[..., I:], and out = a · GELU(b) with the exact (erf) GELU,
    /// GELU(b) = b·Φ(b), Φ evaluated to within 1e-7 by `fastNormalCDF`.
    ///
    /// - x (self) [..., 2I] → [..., I].
    /// - Backward: da = g·GELU(b), db = g·a·GELU′(b) with GELU′(b) = Φ(b) + b·φ(b).
    public func gegluGate() -> Tensor {
        precondition(rank >= 1 && shape[rank - 1] % 2 == 0, "gegluGate: last dimension of \(shape) must be even")
        let width = shape[rank - 1] / 2
        let rows = width == 0 ? 0 : count / (2 * width)
        let x = denseValues
        let out = Tensor.uninitialized(Array(shape.dropLast()) + [width])
        let px = x.pointer, po = out.pointer
        parallelFor(rows, grain: Swift.max(1, 8_192 / Swift.max(width, 1))) { s, e in
            for r in s..<e {
                let a = px + r * 2 * width, b = a + width, o = po + r * width
                for j in 0..<width {
                    let gate = b[j]
                    o[j] = a[j] * (gate * fastNormalCDF(gate))
                }
            }
        }
        let inShape = shape
        return Tensor.record("geglu", out, [self]) { g in
            let gc = g.isContiguous ? g : g.contiguousCopy()
            let dx = Tensor.uninitialized(inShape)
            let px = x.pointer, pg = gc.pointer, pd = dx.pointer
            let invSqrt2Pi: Float = 1 / (2 * Float.pi).squareRoot()
            parallelFor(rows, grain: Swift.max(1, 8_192 / Swift.max(width, 1))) { s, e in
                for r in s..<e {
                    let a = px + r * 2 * width, b = a + width, gr = pg + r * width
                    let da = pd + r * 2 * width, db = da + width
                    for j in 0..<width {
                        let gate = b[j]
                        let cdf = fastNormalCDF(gate)
                        let pdf = invSqrt2Pi * fastNegativeExp(-0.5 * gate * gate)
                        da[j] = gr[j] * gate * cdf
                        db[j] = gr[j] * a[j] * (cdf + gate * pdf)
                    }
                }
            }
            return [dx]
        }
    }

    /// Concatenation of two [N, C, H, W] maps along channels (the UNet's skip connections):
    /// [N, Ca, H, W] ‖ [N, Cb, H, W] → [N, Ca + Cb, H, W], one block copy per sample and input.
    /// - Backward: each input receives its channel slice of the gradient.
    public static func concatChannels(_ a: Tensor, _ b: Tensor) -> Tensor {
        precondition(a.rank == 4 && b.rank == 4 && a.shape[0] == b.shape[0] && a.shape[2] == b.shape[2] && a.shape[3] == b.shape[3],
                     "concatChannels: \(a.shape) and \(b.shape) must be [N, C, H, W] with equal N, H, W")
        let n = a.shape[0], ca = a.shape[1], cb = b.shape[1], plane = a.shape[2] * a.shape[3]
        let c = ca + cb
        let av = a.denseValues, bv = b.denseValues
        let out = Tensor.uninitialized([n, c, a.shape[2], a.shape[3]])
        let pa = av.pointer, pb = bv.pointer, po = out.pointer
        parallelFor(2 * n, grain: Swift.max(1, 32_768 / Swift.max(c * plane / 2, 1))) { s, e in
            for job in s..<e {
                let i = job / 2
                if job % 2 == 0 {
                    (po + i * c * plane).update(from: pa + i * ca * plane, count: ca * plane)
                } else {
                    (po + (i * c + ca) * plane).update(from: pb + i * cb * plane, count: cb * plane)
                }
            }
        }
        let aShape = a.shape, bShape = b.shape
        return Tensor.record("concat_channels", out, [a, b]) { g in
            let gc = g.isContiguous ? g : g.contiguousCopy()
            let pg = gc.pointer
            func slice(_ shape: [Int], from start: Int, width: Int) -> Tensor {
                let t = Tensor.uninitialized(shape)
                let pt = t.pointer
                parallelFor(n, grain: Swift.max(1, 32_768 / Swift.max(width * plane, 1))) { s, e in
                    for i in s..<e { (pt + i * width * plane).update(from: pg + (i * c + start) * plane, count: width * plane) }
                }
                return t
            }
            return [a.requiresGrad ? slice(aShape, from: 0, width: ca) : nil,
                    b.requiresGrad ? slice(bShape, from: ca, width: cb) : nil]
        }
    }

    /// Zero padding of one row at the bottom and one column at the right of [N, C, H, W]
    /// (PyTorch `F.pad(x, (0, 1, 0, 1))`), used before the VAE encoder's unpadded stride-2 conv.
    /// - Backward: the gradient with the padded row and column cut off.
    public func padBottomRight() -> Tensor {
        precondition(rank == 4, "padBottomRight: input must be [N, C, H, W], got \(shape)")
        let planes = shape[0] * shape[1], h = shape[2], w = shape[3]
        let x = denseValues
        let out = Tensor(zeros: [shape[0], shape[1], h + 1, w + 1])
        let px = x.pointer, po = out.pointer
        parallelFor(planes, grain: Swift.max(1, 16_384 / Swift.max(h * w, 1))) { s, e in
            for p in s..<e {
                for i in 0..<h { (po + (p * (h + 1) + i) * (w + 1)).update(from: px + (p * h + i) * w, count: w) }
            }
        }
        let inShape = shape
        return Tensor.record("pad_bottom_right", out, [self]) { g in
            let gc = g.isContiguous ? g : g.contiguousCopy()
            let dx = Tensor.uninitialized(inShape)
            let pg = gc.pointer, pd = dx.pointer
            parallelFor(planes, grain: Swift.max(1, 16_384 / Swift.max(h * w, 1))) { s, e in
                for p in s..<e {
                    for i in 0..<h { (pd + (p * h + i) * w).update(from: pg + (p * (h + 1) + i) * (w + 1), count: w) }
                }
            }
            return [dx]
        }
    }
}
