import Foundation

// Activation functions as fused elementwise kernels: forward, then its derivative.
// Each is a kernel type rather than a closure so that the loops inside `parallelFor` are
// specialised for it and vectorise (a closure captured by the parallel loop is an indirect call
// per element).

/// f(x) and f'(x) for one activation.
protocol ActivationKernel {
    static var name: String { get }
    static func value(_ x: Float) -> Float
    static func derivative(_ x: Float) -> Float
}

extension Tensor {
    /// Applies `K` elementwise and records the backward g · K'(x), with K' computed from x.
    func activation<K: ActivationKernel>(_ kernel: K.Type) -> Tensor {
        let xc = contiguous()
        let out = Tensor.uninitialized(shape)
        let px = xc.pointer, po = out.storage.pointer
        parallelFor(out.count, grain: 16_384) { s, e in for i in s..<e { po[i] = K.value(px[i]) } }
        return Tensor.record(K.name, out, [self]) { g in
            let gc = g.contiguous()
            let r = Tensor.uninitialized(xc.shape)
            let pg = gc.pointer, pr = r.storage.pointer
            parallelFor(r.count, grain: 16_384) { s, e in for i in s..<e { pr[i] = pg[i] * K.derivative(px[i]) } }
            return [r]
        }
    }

    /// max(0, x). d/dx = 1 for x > 0, else 0.
    public func relu() -> Tensor { activation(ReLUKernel.self) }

    /// σ(x) = 1/(1+e⁻ˣ). d/dx = σ(x)(1−σ(x)).
    public func sigmoid() -> Tensor { activation(SigmoidKernel.self) }

    /// tanh x. d/dx = 1 − tanh²x.
    public func tanh() -> Tensor { activation(TanhKernel.self) }

    /// SiLU (swish): x·σ(x). d/dx = σ(x)(1 + x(1−σ(x))).
    public func silu() -> Tensor { activation(SiLUKernel.self) }

    /// GELU. Exact form x·Φ(x) = ½x(1 + erf(x/√2)); with `approximateTanh`,
    /// ½x(1 + tanh(√(2/π)(x + 0.044715x³))) as in PyTorch's `approximate="tanh"`.
    public func gelu(approximateTanh: Bool = false) -> Tensor {
        approximateTanh ? activation(GELUTanhKernel.self) : activation(GELUKernel.self)
    }

    /// QuickGELU (CLIP): x·σ(1.702x). d/dx = σ(1.702x)(1 + 1.702x(1−σ(1.702x))).
    public func quickGelu() -> Tensor { activation(QuickGELUKernel.self) }
}

enum ReLUKernel: ActivationKernel {
    static let name = "relu"
    @inline(__always) static func value(_ x: Float) -> Float { x > 0 ? x : 0 }
    @inline(__always) static func derivative(_ x: Float) -> Float { x > 0 ? 1 : 0 }
}

enum SigmoidKernel: ActivationKernel {
    static let name = "sigmoid"
    @inline(__always) static func value(_ x: Float) -> Float { stableSigmoid(x) }
    @inline(__always) static func derivative(_ x: Float) -> Float { let s = stableSigmoid(x); return s * (1 - s) }
}

enum TanhKernel: ActivationKernel {
    static let name = "tanh"
    @inline(__always) static func value(_ x: Float) -> Float { vectorTanh(x) }
    @inline(__always) static func derivative(_ x: Float) -> Float { let t = vectorTanh(x); return 1 - t * t }
}

enum SiLUKernel: ActivationKernel {
    static let name = "silu"
    @inline(__always) static func value(_ x: Float) -> Float { x * stableSigmoid(x) }
    @inline(__always) static func derivative(_ x: Float) -> Float { let s = stableSigmoid(x); return s * (1 + x * (1 - s)) }
}

enum GELUKernel: ActivationKernel {
    static let name = "gelu"
    // Literals, not static lets: a lazily initialised global costs a once-check inside the loop.
    @inline(__always) static func value(_ x: Float) -> Float { 0.5 * x * (1 + vectorErf(x * 0.707_106_77)) }
    @inline(__always) static func derivative(_ x: Float) -> Float {
        0.5 * (1 + vectorErf(x * 0.707_106_77)) + x * 0.398_942_28 * vectorExp(-0.5 * x * x)
    }
}

enum GELUTanhKernel: ActivationKernel {
    static let name = "gelu_tanh"
    @inline(__always) static func value(_ x: Float) -> Float { 0.5 * x * (1 + vectorTanh(0.797_884_56 * (x + 0.044715 * x * x * x))) }
    @inline(__always) static func derivative(_ x: Float) -> Float {
        let t = vectorTanh(0.797_884_56 * (x + 0.044715 * x * x * x))
        return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * 0.797_884_56 * (1 + 3 * 0.044715 * x * x)
    }
}

enum QuickGELUKernel: ActivationKernel {
    static let name = "quick_gelu"
    @inline(__always) static func value(_ x: Float) -> Float { x * stableSigmoid(1.702 * x) }
    @inline(__always) static func derivative(_ x: Float) -> Float {
        let s = stableSigmoid(1.702 * x)
        return s * (1 + 1.702 * x * (1 - s))
    }
}

// Branch-free transcendental functions built on `vectorExp`, so activation loops vectorise;
// libm's expf/erff/tanhf are calls per element and cost more than the memory traffic.

/// σ(x) = 1/(1+e⁻ˣ); e⁻ˣ saturates rather than overflowing, giving 0 for very negative x.
@inline(__always)
func stableSigmoid(_ x: Float) -> Float {
    1 / (1 + vectorExp(-x))
}

/// tanh x = sign(x)·(1 − 2/(e^{2|x|} + 1)); absolute error about 1e-7.
@inline(__always)
func vectorTanh(_ x: Float) -> Float {
    let a = Swift.min(Swift.abs(x), 44)
    let t = 1 - 2 / (vectorExp(2 * a) + 1)
    return x < 0 ? -t : t
}

/// erf x from the Chebyshev fit of erfc in Numerical Recipes (§6.2): with t = 1/(1 + |x|/2),
/// erfc|x| = t·exp(−x² − 1.26551223 + t·P(t)), fractional error below 1.2e-7 everywhere.
@inline(__always)
func vectorErf(_ x: Float) -> Float {
    let z = Swift.abs(x)
    let t = 1 / (1 + 0.5 * z)
    var p: Float = 0.17087277
    p = p * t - 0.82215223
    p = p * t + 1.48851587
    p = p * t - 1.13520398
    p = p * t + 0.27886807
    p = p * t - 0.18628806
    p = p * t + 0.09678418
    p = p * t + 0.37409196
    p = p * t + 1.00002368
    p = p * t - 1.26551223
    let erfc = t * vectorExp(-z * z + p)
    let r = 1 - erfc
    return x < 0 ? -r : r
}
