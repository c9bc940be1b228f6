import Foundation

// Row kernels shared by softmax and cross-entropy. A libm `expf` call per element keeps the
// compiler from vectorising the loop and dominated softmax time; `vectorExp` is branch-free
// so that loops over it become SIMD code.

/// eˣ to within about 2 ulp, branch-free: x = n·ln2 + r with |r| ≤ ln2/2, eʳ from a degree-6
/// polynomial (the Cephes expf coefficients), 2ⁿ built in the exponent bits.
/// Results below 2⁻¹²⁶ (x < −87.33, including −∞) are 0; NaN stays NaN; x > 88.37 saturates
/// at e^88.37 (softmax only ever passes x ≤ 0).
@inline(__always)
func vectorExp(_ x: Float) -> Float {
    let xc = Swift.min(Swift.max(x, -87.33), 88.37)
    // Adding 1.5·2²³ rounds to the nearest integer in the FPU (no rint call, which baseline
    // x86-64 lacks as an instruction) and leaves that integer in the low mantissa bits.
    let t = xc * 1.442_695_04 + 12_582_912
    let n = t - 12_582_912
    let r = (xc - n * 0.693_359_375) - n * -2.121_944_4e-4
    var p: Float = 1.987_569_15e-4
    p = p * r + 1.398_199_95e-3
    p = p * r + 8.333_451_9e-3
    p = p * r + 4.166_579_6e-2
    p = p * r + 1.666_666_55e-1
    p = p * r + 5.000_000_1e-1
    p = p * (r * r) + r + 1
    let bits = t.bitPattern &- 0x4B40_0000          // n, two's complement
    let scale = Float(bitPattern: (bits &+ 127) &<< 23)
    let y = p * scale
    return x < -87.33 ? 0 : (x.isNaN ? x : y)
}

/// Maximum of `count` (> 0) floats, with eight independent running maxima (m > v ? m : v
/// compiles to one maxss each).
@inline(__always)
func rowMaximum(_ p: UnsafePointer<Float>, _ count: Int) -> Float {
    var m = (p[0], p[0], p[0], p[0], p[0], p[0], p[0], p[0])
    var k = 0
    while k + 8 <= count {
        m.0 = m.0 > p[k] ? m.0 : p[k]; m.1 = m.1 > p[k + 1] ? m.1 : p[k + 1]
        m.2 = m.2 > p[k + 2] ? m.2 : p[k + 2]; m.3 = m.3 > p[k + 3] ? m.3 : p[k + 3]
        m.4 = m.4 > p[k + 4] ? m.4 : p[k + 4]; m.5 = m.5 > p[k + 5] ? m.5 : p[k + 5]
        m.6 = m.6 > p[k + 6] ? m.6 : p[k + 6]; m.7 = m.7 > p[k + 7] ? m.7 : p[k + 7]
        k += 8
    }
    while k < count {
        m.0 = m.0 > p[k] ? m.0 : p[k]
        k += 1
    }
    return Swift.max(Swift.max(Swift.max(m.0, m.1), Swift.max(m.2, m.3)), Swift.max(Swift.max(m.4, m.5), Swift.max(m.6, m.7)))
}

/// Writes y[k] = e^(x[k] − shift) and returns Σ y[k] accumulated in Double.
@inline(__always)
func exponentiate(_ x: UnsafePointer<Float>, minus shift: Float, into y: UnsafeMutablePointer<Float>, _ count: Int) -> Double {
    for k in 0..<count { y[k] = vectorExp(x[k] - shift) }
    return sumInDouble(y, count)
}

/// Σ p[k] in Double with four independent accumulators (a single chain is latency-bound).
@inline(__always)
func sumInDouble(_ p: UnsafePointer<Float>, _ count: Int) -> Double {
    var a0: Double = 0, a1: Double = 0, a2: Double = 0, a3: Double = 0
    var k = 0
    while k + 4 <= count {
        a0 += Double(p[k]); a1 += Double(p[k + 1]); a2 += Double(p[k + 2]); a3 += Double(p[k + 3])
        k += 4
    }
    while k < count { a0 += Double(p[k]); k += 1 }
    return (a0 + a1) + (a2 + a3)
}

/// Σ e^(x[k] − shift) in Double, without storing the terms.
@inline(__always)
func sumOfExponentials(_ x: UnsafePointer<Float>, minus shift: Float, _ count: Int) -> Double {
    var a0: Double = 0, a1: Double = 0, a2: Double = 0, a3: Double = 0
    var k = 0
    while k + 4 <= count {
        a0 += Double(vectorExp(x[k] - shift)); a1 += Double(vectorExp(x[k + 1] - shift))
        a2 += Double(vectorExp(x[k + 2] - shift)); a3 += Double(vectorExp(x[k + 3] - shift))
        k += 4
    }
    while k < count { a0 += Double(vectorExp(x[k] - shift)); k += 1 }
    return (a0 + a1) + (a2 + a3)
}

/// Σ (p[k] − mean)² in Double with four independent accumulators.
@inline(__always)
func sumOfSquaredDeviations(_ p: UnsafePointer<Float>, _ count: Int, mean: Double) -> Double {
    var a0: Double = 0, a1: Double = 0, a2: Double = 0, a3: Double = 0
    var k = 0
    while k + 4 <= count {
        let v0 = Double(p[k]) - mean, v1 = Double(p[k + 1]) - mean
        let v2 = Double(p[k + 2]) - mean, v3 = Double(p[k + 3]) - mean
        a0 += v0 * v0; a1 += v1 * v1; a2 += v2 * v2; a3 += v3 * v3
        k += 4
    }
    while k < count { let v = Double(p[k]) - mean; a0 += v * v; k += 1 }
    return (a0 + a1) + (a2 + a3)
}

/// Σ a[k]·b[k] with products and sums in Double (callers subtract large terms from it).
@inline(__always)
func dotInDouble(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ count: Int) -> Double {
    var a0: Double = 0, a1: Double = 0, a2: Double = 0, a3: Double = 0
    var k = 0
    while k + 4 <= count {
        a0 += Double(a[k]) * Double(b[k]); a1 += Double(a[k + 1]) * Double(b[k + 1])
        a2 += Double(a[k + 2]) * Double(b[k + 2]); a3 += Double(a[k + 3]) * Double(b[k + 3])
        k += 4
    }
    while k < count { a0 += Double(a[k]) * Double(b[k]); k += 1 }
    return (a0 + a1) + (a2 + a3)
}
