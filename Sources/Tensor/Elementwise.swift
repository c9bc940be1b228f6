import Foundation

// Elementwise primitives. Each forward is followed by its backward; gradients of broadcast
// operands are summed back to the operand's shape (`sumTo`).

extension Tensor {
    /// out[i] = f(a[i], b[i]) over the broadcast shape; contiguous result, outside the graph.
    @inline(__always)
    static func broadcastApply(_ a: Tensor, _ b: Tensor, _ op: String,
                               _ f: (Float, Float) -> Float) -> Tensor {
        guard let shape = broadcastShape(a.shape, b.shape) else {
            preconditionFailure("\(op): shapes \(a.shape) and \(b.shape) do not broadcast")
        }
        let out = Tensor.uninitialized(shape)
        let n = out.count
        if n == 0 { return out }
        let o = out.storage.pointer
        if a.shape == b.shape && a.isContiguous && b.isContiguous {
            let pa = a.pointer, pb = b.pointer
            parallelFor(n) { s, e in for i in s..<e { o[i] = f(pa[i], pb[i]) } }
            return out
        }
        let pa = a.storage.pointer + a.offset, pb = b.storage.pointer + b.offset
        forEachBroadcastRow(shape: shape, aStrides: a.broadcastStrides(to: shape),
                            bStrides: b.broadcastStrides(to: shape)) { oo, oa, ob, count, sa, sb in
            let po = o + oo, qa = pa + oa, qb = pb + ob
            if sa == 1 && sb == 1 {
                for j in 0..<count { po[j] = f(qa[j], qb[j]) }
            } else if sa == 1 && sb == 0 {
                let v = qb[0]
                for j in 0..<count { po[j] = f(qa[j], v) }
            } else if sa == 0 && sb == 1 {
                let v = qa[0]
                for j in 0..<count { po[j] = f(v, qb[j]) }
            } else {
                for j in 0..<count { po[j] = f(qa[j * sa], qb[j * sb]) }
            }
        }
        return out
    }

    /// out[i] = f(a[i]); contiguous result, outside the graph.
    @inline(__always)
    static func mapApply(_ a: Tensor, _ f: (Float) -> Float) -> Tensor {
        let src = a.contiguous()
        let out = Tensor.uninitialized(a.shape)
        let pa = src.pointer, o = out.storage.pointer
        parallelFor(out.count, grain: 16_384) { s, e in for i in s..<e { o[i] = f(pa[i]) } }
        return out
    }

    // MARK: Binary arithmetic

    /// a + b with broadcasting. d/da = 1, d/db = 1.
    public static func + (a: Tensor, b: Tensor) -> Tensor {
        let out = broadcastApply(a, b, "add") { $0 + $1 }
        return record("add", out, [a, b]) { g in [g.sumTo(a.shape), g.sumTo(b.shape)] }
    }

    /// a − b with broadcasting. d/da = 1, d/db = −1.
    public static func - (a: Tensor, b: Tensor) -> Tensor {
        let out = broadcastApply(a, b, "sub") { $0 - $1 }
        return record("sub", out, [a, b]) { g in [g.sumTo(a.shape), (-g).sumTo(b.shape)] }
    }

    /// a · b elementwise with broadcasting. d/da = b, d/db = a.
    public static func * (a: Tensor, b: Tensor) -> Tensor {
        let out = broadcastApply(a, b, "mul") { $0 * $1 }
        return record("mul", out, [a, b]) { g in
            [a.requiresGrad ? (g * b).sumTo(a.shape) : nil, b.requiresGrad ? (g * a).sumTo(b.shape) : nil]
        }
    }

    /// a / b elementwise with broadcasting. d/da = 1/b, d/db = −a/b².
    public static func / (a: Tensor, b: Tensor) -> Tensor {
        let out = broadcastApply(a, b, "div") { $0 / $1 }
        return record("div", out, [a, b]) { g in
            [a.requiresGrad ? (g / b).sumTo(a.shape) : nil,
             b.requiresGrad ? (-(g * out) / b).sumTo(b.shape) : nil]
        }
    }

    /// max(a, b) elementwise; the gradient goes to the larger operand (to `a` on ties).
    public static func maximum(_ a: Tensor, _ b: Tensor) -> Tensor {
        let out = broadcastApply(a, b, "maximum") { Swift.max($0, $1) }
        return record("maximum", out, [a, b]) { g in
            let aWins = broadcastApply(a, b, "maximum") { $0 >= $1 ? 1 : 0 }
            return [(g * aWins).sumTo(a.shape), (g * (1 - aWins)).sumTo(b.shape)]
        }
    }

    // MARK: Scalar arithmetic

    /// a + s. d/da = 1.
    public static func + (a: Tensor, s: Float) -> Tensor {
        let out = mapApply(a) { $0 + s }
        return record("add_scalar", out, [a]) { g in [g] }
    }
    public static func + (s: Float, a: Tensor) -> Tensor { a + s }
    public static func - (a: Tensor, s: Float) -> Tensor { a + (-s) }

    /// s − a. d/da = −1.
    public static func - (s: Float, a: Tensor) -> Tensor {
        let out = mapApply(a) { s - $0 }
        return record("rsub_scalar", out, [a]) { g in [-g] }
    }

    /// a · s. d/da = s.
    public static func * (a: Tensor, s: Float) -> Tensor {
        let out = mapApply(a) { $0 * s }
        return record("mul_scalar", out, [a]) { g in [g * s] }
    }
    public static func * (s: Float, a: Tensor) -> Tensor { a * s }
    public static func / (a: Tensor, s: Float) -> Tensor { a * (1 / s) }

    /// −a. d/da = −1.
    public static prefix func - (a: Tensor) -> Tensor {
        let out = mapApply(a) { -$0 }
        return record("neg", out, [a]) { g in [-g] }
    }

    // MARK: Unary functions

    /// eˣ. d/dx = eˣ.
    public func exp() -> Tensor {
        let out = Tensor.mapApply(self) { Foundation.exp($0) }
        return Tensor.record("exp", out, [self]) { g in [g * out] }
    }

    /// ln x. d/dx = 1/x.
    public func log() -> Tensor {
        let out = Tensor.mapApply(self) { Foundation.log($0) }
        return Tensor.record("log", out, [self]) { g in [g / self] }
    }

    /// √x. d/dx = 1/(2√x).
    public func sqrt() -> Tensor {
        let out = Tensor.mapApply(self) { $0.squareRoot() }
        return Tensor.record("sqrt", out, [self]) { g in [g / (out * 2)] }
    }

    /// xᵖ for a constant p. d/dx = p·xᵖ⁻¹.
    public func pow(_ p: Float) -> Tensor {
        let out = Tensor.mapApply(self) { Foundation.pow($0, p) }
        return Tensor.record("pow", out, [self]) { g in [g * (self.pow(p - 1) * p)] }
    }

    /// x². d/dx = 2x.
    public func square() -> Tensor {
        let out = Tensor.mapApply(self) { $0 * $0 }
        return Tensor.record("square", out, [self]) { g in [g * self * 2] }
    }

    /// |x|. d/dx = sign(x) (0 at 0).
    public func abs() -> Tensor {
        let out = Tensor.mapApply(self) { Swift.abs($0) }
        return Tensor.record("abs", out, [self]) { g in
            [g * Tensor.mapApply(self) { $0 > 0 ? 1 : ($0 < 0 ? -1 : 0) }]
        }
    }

    /// sin x, elementwise. d/dx = cos x.
    public func sin() -> Tensor {
        let out = Tensor.mapApply(self) { Foundation.sin($0) }
        return Tensor.record("sin", out, [self]) { g in [g * self.cos()] }
    }

    /// cos x, elementwise. d/dx = −sin x.
    public func cos() -> Tensor {
        let out = Tensor.mapApply(self) { Foundation.cos($0) }
        return Tensor.record("cos", out, [self]) { g in [-(g * self.sin())] }
    }

    /// min(max(x, lo), hi). d/dx = 1 inside the range, 0 outside.
    public func clamp(min lo: Float, max hi: Float) -> Tensor {
        let out = Tensor.mapApply(self) { Swift.min(Swift.max($0, lo), hi) }
        return Tensor.record("clamp", out, [self]) { g in
            [g * Tensor.mapApply(self) { ($0 >= lo && $0 <= hi) ? 1 : 0 }]
        }
    }

    /// Elementwise out = cond ? a : b where `mask` holds 1 for true and 0 for false (broadcasting a, b
    /// and mask together). The mask receives no gradient.
    public static func select(_ mask: Tensor, _ a: Tensor, _ b: Tensor) -> Tensor {
        (a * mask) + (b * (1 - mask))
    }
}
