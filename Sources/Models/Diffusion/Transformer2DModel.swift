import Foundation
import Tensor

/// diffusers' `BasicTransformerBlock` (layer-norm variant, GEGLU feed-forward):
///
///     x = x + attn1(norm1(x))               self-attention
///     x = x + attn2(norm2(x), context)      cross-attention to the conditioning
///     x = x + ff(norm3(x))
///
/// Parameters under `norm1`, `attn1`, `norm2`, `attn2`, `norm3`, `ff.net.0.proj`, `ff.net.2`.
public final class BasicTransformerBlock: Module {
    public var norm1: LayerNorm
    public var attn1: DiffusionAttention
    public var norm2: LayerNorm
    public var attn2: DiffusionAttention
    public var norm3: LayerNorm
    public var ff: DiffusionFeedForward

    /// - dim: token width (heads · headDim in the UNet).
    /// - crossAttentionDim: width of the conditioning tokens.
    public init(dim: Int, heads: Int, headDim: Int, crossAttentionDim: Int, normEps: Float = 1e-5,
                rng: inout SeededGenerator) {
        norm1 = LayerNorm(dim, eps: normEps)
        attn1 = DiffusionAttention(queryDim: dim, heads: heads, headDim: headDim, rng: &rng)
        norm2 = LayerNorm(dim, eps: normEps)
        attn2 = DiffusionAttention(queryDim: dim, crossAttentionDim: crossAttentionDim, heads: heads, headDim: headDim, rng: &rng)
        norm3 = LayerNorm(dim, eps: normEps)
        ff = DiffusionFeedForward(dim: dim, rng: &rng)
        super.init()
    }

    /// - x: [N, L, dim] image tokens.
    /// - context: [N, Lc, crossAttentionDim] conditioning tokens.
    /// - contextMask: additive bias broadcastable to [N, heads, L, Lc], or nil.
    public func callAsFunction(_ x: Tensor, context: Tensor, contextMask: Tensor? = nil) -> Tensor {
        var h = attn1(norm1(x)) + x
        h = attn2(norm2(h), context: context, mask: contextMask) + h
        return ff(norm3(h)) + h
    }
}

/// diffusers' `Transformer2DModel` on continuous inputs (the spatial transformer of the UNet):
/// GroupNorm (eps 1e-6) → `proj_in` → `transformer_blocks` over the H·W tokens → `proj_out`,
/// plus the input as a residual.
///
/// `proj_in`/`proj_out` are `Linear` layers when `useLinearProjection`, otherwise 1×1
/// convolutions (weights [out, in, 1, 1]); both are computed as one GEMM per sample on the
/// token view of the feature map, so neither variant copies the map into token order and back.
public final class Transformer2DModel: Module {
    public var norm: GroupNorm
    /// `Linear(C, inner)` or `Conv2d(C, inner, 1)`.
    @ModuleKey("proj_in") public var projIn: Module
    @ModuleKey("transformer_blocks") public var transformerBlocks: [BasicTransformerBlock]
    /// `Linear(inner, C)` or `Conv2d(inner, C, 1)`.
    @ModuleKey("proj_out") public var projOut: Module
    public let useLinearProjection: Bool
    public let inChannels: Int
    public let innerDim: Int

    public init(heads: Int, headDim: Int, inChannels: Int, layers: Int = 1, crossAttentionDim: Int, normGroups: Int,
                useLinearProjection: Bool, rng: inout SeededGenerator) {
        let inner = heads * headDim
        norm = GroupNorm(groups: normGroups, channels: inChannels, eps: 1e-6)
        if useLinearProjection {
            _projIn.wrappedValue = Linear(inChannels, inner, rng: &rng)
        } else {
            _projIn.wrappedValue = Conv2d(inChannels, inner, kernelSize: 1, rng: &rng)
        }
        _transformerBlocks.wrappedValue = (0..<layers).map { _ in
            BasicTransformerBlock(dim: inner, heads: heads, headDim: headDim, crossAttentionDim: crossAttentionDim, rng: &rng)
        }
        if useLinearProjection {
            _projOut.wrappedValue = Linear(inner, inChannels, rng: &rng)
        } else {
            _projOut.wrappedValue = Conv2d(inner, inChannels, kernelSize: 1, rng: &rng)
        }
        self.useLinearProjection = useLinearProjection
        self.inChannels = inChannels
        self.innerDim = inner
        super.init()
    }

    /// The [out, in] matrix and bias of a Linear or 1×1 Conv2d projection.
    private static func matrix(of layer: Module) -> (weight: Tensor, bias: Tensor?) {
        if let linear = layer as? Linear { return (linear.weight, linear.bias) }
        let conv = layer as! Conv2d
        return (conv.weight.reshaped([conv.weight.shape[0], conv.weight.shape[1]]), conv.bias)
    }

    /// - x: [N, C, H, W] feature map.
    /// - context: [N, Lc, crossAttentionDim] conditioning tokens.
    /// - contextMask: additive bias broadcastable to [N, heads, H·W, Lc], or nil.
    /// - Returns: [N, C, H, W].
    public func callAsFunction(_ x: Tensor, context: Tensor, contextMask: Tensor? = nil) -> Tensor {
        let n = x.shape[0], c = x.shape[1], hgt = x.shape[2], wid = x.shape[3]
        let normed = norm(x).reshaped([n, c, hgt * wid])
        // Tokens [N, HW, C] as a transposed view; proj_in reads it as a transposed GEMM operand.
        let (wIn, bIn) = Self.matrix(of: projIn)
        var tokens = normed.transposed(1, 2).linear(weight: wIn, bias: bIn)            // [N, HW, inner]
        for block in transformerBlocks { tokens = block(tokens, context: context, contextMask: contextMask) }
        // proj_out straight into channel-first order: [C, inner] · tokensᵀ [N, inner, HW] → [N, C, HW].
        let (wOut, bOut) = Self.matrix(of: projOut)
        var out = wOut.matmul(tokens.transposed(1, 2))
        if let bOut { out = out + bOut.reshaped([c, 1]) }
        return out.reshaped([n, c, hgt, wid]) + x
    }
}
