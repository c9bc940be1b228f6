import Foundation
import Tensor

/// Multi-head scaled dot-product attention over already projected tokens.
///
/// q [N, Lq, H·d], k [N, Lk, H·d], v [N, Lk, H·d]: softmax(q·kᵀ/√d + mask)·v per head. Heads
/// of width ≤ 64 (with not too many keys) use the fused kernel (`fusedMultiHeadAttention`); wider heads are viewed
/// (without copying) as [N, H, L, d] for `Tensor.scaledDotProductAttention` and merged back.
/// - mask: additive, broadcastable to [N, H, Lq, Lk] (e.g. [N, 1, 1, Lk] for padded keys).
/// - Returns: [N, Lq, H·d].
func attendHeads(query: Tensor, key: Tensor, value: Tensor, heads: Int, mask: Tensor?) -> Tensor {
    let n = query.shape[0], lq = query.shape[1], inner = query.shape[2], lk = key.shape[1]
    let d = inner / heads
    // Small heads (every UNet transformer of a practical size) take the fused kernel; a mask must
    // then be a per-key bias [N, 1, 1, Lk].
    if fusedAttentionApplies(headDim: d, keys: lk) && (mask == nil || mask!.shape == [n, 1, 1, lk]) {
        return fusedMultiHeadAttention(query: query, key: key, value: value, heads: heads,
                                       keyBias: mask?.reshaped([n, lk]))
    }
    let q = query.reshaped([n, lq, heads, d]).permuted([0, 2, 1, 3])
    let k = key.reshaped([n, lk, heads, d]).permuted([0, 2, 1, 3])
    let v = value.reshaped([n, lk, heads, d]).permuted([0, 2, 1, 3])
    let o = Tensor.scaledDotProductAttention(query: q, key: k, value: v, mask: mask)   // [N, H, Lq, d]
    if heads == 1 { return o.reshaped([n, lq, inner]) }
    return o.permuted([0, 2, 1, 3]).reshaped([n, lq, inner])
}

/// diffusers' `Attention` as used by `BasicTransformerBlock`: self-attention (`attn1`) or
/// cross-attention to conditioning tokens (`attn2`).
///
///     out = to_out.0( MHA( to_q(x), to_k(c), to_v(c) ) ),  c = context ?? x
///
/// Parameters: `to_q` [H·d, queryDim], `to_k`/`to_v` [H·d, crossAttentionDim ?? queryDim]
/// (biases only with `bias`), `to_out.0` [queryDim, H·d] with bias. `to_out.1` is a dropout with
/// no parameters in diffusers and is left out. Attention is computed in float32 throughout, so
/// diffusers' `upcast_attention` has nothing to change.
public final class DiffusionAttention: Module {
    @ModuleKey("to_q") public var toQ: Linear
    @ModuleKey("to_k") public var toK: Linear
    @ModuleKey("to_v") public var toV: Linear
    @ModuleKey("to_out") public var toOut: [Linear]
    public let heads: Int
    public let headDim: Int
    /// Width of the context tokens, or nil for self-attention.
    public let crossAttentionDim: Int?

    public init(queryDim: Int, crossAttentionDim: Int? = nil, heads: Int, headDim: Int, bias: Bool = false,
                outBias: Bool = true, rng: inout SeededGenerator) {
        let inner = heads * headDim
        let kvDim = crossAttentionDim ?? queryDim
        _toQ.wrappedValue = Linear(queryDim, inner, bias: bias, rng: &rng)
        _toK.wrappedValue = Linear(kvDim, inner, bias: bias, rng: &rng)
        _toV.wrappedValue = Linear(kvDim, inner, bias: bias, rng: &rng)
        _toOut.wrappedValue = [Linear(inner, queryDim, bias: outBias, rng: &rng)]
        self.heads = heads
        self.headDim = headDim
        self.crossAttentionDim = crossAttentionDim
        super.init()
    }

    /// - x: [N, Lq, queryDim].
    /// - context: [N, Lk, crossAttentionDim] for cross-attention; nil attends x to itself.
    /// - mask: additive bias broadcastable to [N, heads, Lq, Lk].
    /// - Returns: [N, Lq, queryDim].
    public func callAsFunction(_ x: Tensor, context: Tensor? = nil, mask: Tensor? = nil) -> Tensor {
        let c = context ?? x
        let o = attendHeads(query: toQ(x), key: toK(c), value: toV(c), heads: heads, mask: mask)
        return toOut[0](o)
    }
}

/// diffusers' `GEGLU`: a projection to twice the width followed by the gated GELU,
/// out = a·GELU(b) with [a, b] = proj(x) split in half. Parameters: `proj` [2·dimOut, dimIn].
public final class GEGLUProjection: Module {
    public var proj: Linear

    public init(dimIn: Int, dimOut: Int, rng: inout SeededGenerator) {
        proj = Linear(dimIn, 2 * dimOut, rng: &rng)
        super.init()
    }

    /// x [..., dimIn] → [..., dimOut].
    public func callAsFunction(_ x: Tensor) -> Tensor { proj(x).gegluGate() }
}

/// diffusers' `FeedForward` with the default GEGLU activation:
/// `net.0` = GEGLU(dim → 4·dim), `net.1` = dropout (no parameters), `net.2` = Linear(4·dim → dim).
public final class DiffusionFeedForward: Module {
    /// [GEGLUProjection, Dropout, Linear], numbered like diffusers' `nn.ModuleList`.
    public var net: [Module]
    public let innerDim: Int

    public init(dim: Int, mult: Int = 4, dropout: Float = 0, rng: inout SeededGenerator) {
        innerDim = dim * mult
        net = [GEGLUProjection(dimIn: dim, dimOut: innerDim, rng: &rng), Dropout(dropout),
               Linear(innerDim, dim, rng: &rng)]
        super.init()
    }

    // Typed views of `net`; the array itself is what reflection names (`net.0.proj`, `net.2`).
    private var gate: GEGLUProjection { net[0] as! GEGLUProjection }
    private var drop: Dropout { net[1] as! Dropout }
    private var output: Linear { net[2] as! Linear }

    /// x [..., dim] → [..., dim].
    public func callAsFunction(_ x: Tensor) -> Tensor {
        var h = gate(x)
        if drop.p > 0 && drop.training { h = drop(h) }   // untouched generator in evaluation
        return output(h)
    }
}
