import Foundation
import Tensor

/// Which two coordinates of a head rotate together in a rotary position embedding.
public enum RotaryLayout: String, Sendable, CaseIterable {
    /// Hugging Face transformers' `rotate_half` (GGML's "NeoX" mode): coordinate i pairs with
    /// i + d/2. The layout of transformers checkpoints.
    case rotateHalf
    /// Meta's original layout and GGML's normal mode: coordinates 2i and 2i+1 pair. llama.cpp's
    /// converter permutes the rows of Q and K per head into this layout when it writes a GGUF.
    case adjacentPairs
}

/// Rotary position embedding (RoPE, Su et al. 2021) over one head width d with base b.
///
/// For a token at position p, pair i (0 ≤ i < d/2) of every head is rotated by the angle
/// θᵢ = p·b^(−2i/d):  (x₁, x₂) ↦ (x₁·cos θᵢ − x₂·sin θᵢ, x₂·cos θᵢ + x₁·sin θᵢ), where
/// (x₁, x₂) = (x[i], x[i + d/2]) in the `rotateHalf` layout and (x[2i], x[2i+1]) in the
/// `adjacentPairs` layout. Query and key rotations by p and p′ leave q·k depending on p − p′ only.
///
/// The map is linear and orthogonal, so its backward is the inverse rotation (angle −θᵢ)
/// applied to the gradient. The inverse frequencies are computed as transformers computes them
/// (float32 b^(2i/d), then 1/x), and cos/sin tables are cached per position, thread-safely.
public final class RotaryEmbedding: @unchecked Sendable {
    public let headDim: Int
    public let base: Double
    public let layout: RotaryLayout
    /// 1 / b^(2i/d) for i in 0..<d/2, in float32 like transformers' `inv_freq`.
    public let inverseFrequencies: [Float]

    private let lock = NSLock()
    /// cos and sin of θᵢ for positions 0..<cachedPositions, row-major [position, d/2].
    private var cosTable: [Float] = []
    private var sinTable: [Float] = []
    private var cachedPositions = 0

    public init(headDim: Int, base: Double, layout: RotaryLayout = .rotateHalf) {
        precondition(headDim > 0 && headDim % 2 == 0, "RotaryEmbedding: head width \(headDim) must be even and positive")
        self.headDim = headDim
        self.base = base
        self.layout = layout
        let b = Float(base)
        inverseFrequencies = (0..<(headDim / 2)).map { i in
            let exponent = Float(2 * i) / Float(headDim)
            return 1 / Float(Foundation.pow(Double(b), Double(exponent)))
        }
    }

    /// The (cos, sin) tables covering at least `positions` positions.
    private func tables(covering positions: Int) -> (cos: [Float], sin: [Float]) {
        lock.lock()
        defer { lock.unlock() }
        if positions > cachedPositions {
            var n = Swift.max(64, cachedPositions)
            while n < positions { n *= 2 }
            let half = headDim / 2
            var c = [Float](repeating: 0, count: n * half), s = c
            for p in 0..<n {
                for i in 0..<half {
                    // transformers multiplies in float32: angle = float(p) · inv_freq[i].
                    let angle = Double(Float(p) * inverseFrequencies[i])
                    c[p * half + i] = Float(Foundation.cos(angle))
                    s[p * half + i] = Float(Foundation.sin(angle))
                }
            }
            cosTable = c
            sinTable = s
            cachedPositions = n
        }
        return (cosTable, sinTable)
    }

    /// Rotates every head of every token.
    ///
    /// - x: [..., d] whose elements group into `positions.count` tokens of H heads each, in order
    ///   (e.g. a projection output [B, L, H·d] or [B, L, H, d], tokens row-major over B, L).
    /// - positions: one position ≥ 0 per token.
    /// - Returns: the rotated tensor, contiguous, with x's shape. Differentiable.
    public func callAsFunction(_ x: Tensor, positions: [Int]) -> Tensor {
        let d = headDim
        precondition(x.count % Swift.max(positions.count * d, 1) == 0 && (x.count == 0 || !positions.isEmpty),
                     "RotaryEmbedding: \(x.shape) does not hold \(positions.count) tokens of heads of \(d)")
        precondition(positions.allSatisfy { $0 >= 0 }, "RotaryEmbedding: negative position")
        let out = rotate(x, positions: positions, inverse: false)
        return Tensor.record("rotaryEmbedding", out, [x]) { [self] g in
            [rotate(g, positions: positions, inverse: true)]
        }
    }

    /// The rotation (or its inverse) of `x`'s values, outside the graph.
    func rotate(_ x: Tensor, positions: [Int], inverse: Bool) -> Tensor {
        let src = x.isContiguous ? x : x.contiguousCopy()
        let out = Tensor.uninitialized(x.shape)
        let tokens = positions.count
        guard tokens > 0, x.count > 0 else { return out }
        let d = headDim, half = d / 2
        let heads = x.count / (tokens * d)
        let (cosT, sinT) = tables(covering: (positions.max() ?? 0) + 1)
        let sign: Float = inverse ? -1 : 1
        let pairStride = layout == .rotateHalf ? half : 1
        let pairStep = layout == .rotateHalf ? 1 : 2
        let input = src.pointer, output = out.pointer
        cosT.withUnsafeBufferPointer { cp in
            sinT.withUnsafeBufferPointer { sp in
                positions.withUnsafeBufferPointer { pp in
                    parallelFor(tokens * heads, grain: Swift.max(1, 8192 / d)) { start, end in
                        for row in start..<end {
                            let p = pp[row / heads]
                            let c = cp.baseAddress! + p * half, s = sp.baseAddress! + p * half
                            let xi = input + row * d, yo = output + row * d
                            for i in 0..<half {
                                let a = i * pairStep, b = a + pairStride
                                let x1 = xi[a], x2 = xi[b]
                                let sn = sign * s[i]
                                yo[a] = x1 * c[i] - x2 * sn
                                yo[b] = x2 * c[i] + x1 * sn
                            }
                        }
                    }
                }
            }
        }
        return out
    }
}

extension RotaryLayout {
    /// Reorders the rows of a Q or K projection ([heads·d, in] weight or [heads·d] bias) from this
    /// layout to `target`, head by head, so that attention scores stay the same when RoPE runs
    /// in `target`'s layout. Rotate-half row (half, i) is adjacent-pair row (i, half):
    /// llama.cpp's converter `permute` goes rotateHalf → adjacentPairs; the reverse undoes it.
    public func convertRows(_ w: Tensor, heads: Int, to target: RotaryLayout) -> Tensor {
        if self == target { return w }
        let rows = w.shape[0]
        precondition(heads > 0 && rows % (2 * heads) == 0, "convertRows: \(rows) rows do not split into \(heads) heads of even width")
        let inner = w.count / rows
        let d = rows / heads, half = d / 2
        let src = w.contiguousCopy()
        let out = Tensor.uninitialized(w.shape)
        for h in 0..<heads {
            for part in 0..<2 {
                for i in 0..<half {
                    let halfRow = h * d + part * half + i       // rotate-half index
                    let pairRow = h * d + 2 * i + part         // adjacent-pair index
                    let (from, to) = self == .rotateHalf ? (halfRow, pairRow) : (pairRow, halfRow)
                    (out.pointer + to * inner).update(from: src.pointer + from * inner, count: inner)
                }
            }
        }
        return out
    }
}
