import Foundation

// Activation functions as fused elementwise kernels: forward, then its derivative.

extension Tensor {
    /// Applies `f` and records the backward g · f'(x), with f' computed from x.
    @inline(__always)
    func activation(_ name: String, _ f: (Float) -> Float,
                    derivative: @escaping (Float) -> Float) -> Tensor {
        let out = Tensor.mapApply(self, f)
        let x = self
        return Tensor.record(name, out, [self]) { g in
            let gc = g.contiguous(), xc = x.contiguous()
            let r = Tensor.uninitialized(x.shape)
            let pg = gc.pointer, px = xc.pointer, pr = r.storage.pointer
            parallelFor(r.count, grain: 16_384) { s, e in for i in s..<e { pr[i] = pg[i] * derivative(px[i]) } }
            return [r]
        }
    }

    /// max(0, x). d/dx = 1 for x > 0, else 0.
    public func relu() -> Tensor {
        activation("relu", { Swift.max($0, 0) }, derivative: { $0 > 0 ? 1 : 0 })
    }

    /// σ(x) = 1/(1+e⁻ˣ). d/dx = σ(x)(1−σ(x)).
    public func sigmoid() -> Tensor {
        activation("sigmoid", stableSigmoid, derivative: { let s = stableSigmoid($0); return s * (1 - s) })
    }

    /// tanh x. d/dx = 1 − tanh²x.
    public func tanh() -> Tensor {
        activation("tanh", vectorTanh, derivative: { let t = vectorTanh($0); return 1 - t * t })
    }

    /// SiLU (swish): x·σ(x). d/dx = σ(x)(1 + x(1−σ(x))).
    public func silu() -> Tensor {
        activation("silu", { $0 * stableSigmoid($0) },
                   derivative: { let s = stableSigmoid($0); return s * (1 + $0 * (1 - s)) })
    }

    /// GELU. Exact form x·Φ(x) = ½x(1 + erf(x/√2)); with `approximateTanh`,
    /// ½x(1 + tanh(√(2/π)(x + 0.044715x³))) as in PyTorch's `approximate="tanh"`.
    public func gelu(approximateTanh: Bool = false) -> Tensor {
        if approximateTanh {
            let k: Float = (2 / Float.pi).squareRoot()
            return activation("gelu_tanh", { x in
                0.5 * x * (1 + vectorTanh(k * (x + 0.044715 * x * x * x)))
            }, derivative: { x in
                let u = k * (x + 0.044715 * x * x * x)
                let t = vectorTanh(u)
                return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * k * (1 + 3 * 0.044715 * x * x)
            })
        }
        let invSqrt2: Float = 1 / Float(2).squareRoot()
        let invSqrt2Pi: Float = 1 / (2 * Float.pi).squareRoot()
        return activation("gelu", { x in 0.5 * x * (1 + vectorErf(x * invSqrt2)) },
                          derivative: { x in 0.5 * (1 + vectorErf(x * invSqrt2)) + x * invSqrt2Pi * vectorExp(-0.5 * x * x) })
    }

    /// QuickGELU (CLIP): x·σ(1.702x). d/dx = σ(1.702x)(1 + 1.702x(1−σ(1.702x))).
    public func quickGelu() -> Tensor {
        activation("quick_gelu", { $0 * stableSigmoid(1.702 * $0) },
                   derivative: { let s = stableSigmoid(1.702 * $0); return s * (1 + 1.702 * $0 * (1 - s)) })
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
