import Foundation

/// A frozen `Linear` with a trainable low-rank update (LoRA, Hu et al. 2021, eq. 3):
///
///     y = x·Wᵀ + b + (α/r) · (x·Aᵀ)·Bᵀ,   A [r, in], B [out, r]
///
/// `weight` and `bias` keep the wrapped layer's tensors and names (so a checkpoint of the base
/// model still loads into it) and stop requiring grad; `lora_A.weight` and `lora_B.weight` are
/// named as PEFT names them. B starts at zero, so the layer starts as exactly the base layer;
/// A starts kaiming-uniform as PEFT does. Gradients come from the composite of two linears.
public final class LoRALinear: Linear {
    /// [rank, in]
    @ModuleKey("lora_A") public var loraA: Linear
    /// [out, rank]
    @ModuleKey("lora_B") public var loraB: Linear
    /// α / r.
    public let scaling: Float

    public var rank: Int { loraA.outFeatures }

    /// Wraps `base` (its tensors are shared, not copied, and frozen).
    /// - Precondition: rank ≥ 1.
    public init(wrapping base: Linear, rank: Int, alpha: Float, rng: inout SeededGenerator) {
        precondition(rank >= 1, "LoRA rank must be ≥ 1, got \(rank)")
        base.weight.requiresGrad = false
        base.bias?.requiresGrad = false
        _loraA.wrappedValue = Linear(weight: ParameterInit.kaimingUniform([rank, base.inFeatures], fanIn: base.inFeatures, using: &rng))
        _loraB.wrappedValue = Linear(weight: ParameterInit.constant([base.outFeatures, rank], 0))
        scaling = alpha / Float(rank)
        super.init(weight: base.weight, bias: base.bias)
    }

    /// x [..., in] → [..., out].
    public override func callAsFunction(_ x: Tensor) -> Tensor {
        let base = x.linear(weight: weight, bias: bias)                 // [..., out]
        let update = loraB(loraA(x))                                     // [..., out]
        return base + update * scaling
    }

    /// W + (α/r)·B·A [out, in]: the merged weight, for inference without the extra matmuls.
    public func mergedWeight() -> Tensor {
        withoutGrad { (weight + loraB.weight.matmul(loraA.weight) * scaling).contiguousCopy() }
    }
}
