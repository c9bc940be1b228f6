import Foundation
import Tensor

// The Llama decoder (transformers' `LlamaForCausalLM`) with transformers' parameter names:
// `model.embed_tokens.weight`, `model.layers.N.self_attn.{q,k,v,o}_proj.weight`,
// `model.layers.N.mlp.{gate,up,down}_proj.weight`, `model.layers.N.{input,post_attention}_layernorm.weight`,
// `model.norm.weight`, `lm_head.weight`. Pre-norm layers:
//   h = x + o_proj(attention(RoPE(q_proj(n₁)), RoPE(k_proj(n₁)), v_proj(n₁))),  n₁ = RMSNorm(x)
//   y = h + down_proj(silu(gate_proj(n₂)) ⊙ up_proj(n₂)),                      n₂ = RMSNorm(h)
// Every projection runs over batch × length rows at once (one GEMM each).

/// What every layer needs to know about one forward call: token positions, the additive
/// attention mask (causal and padding), and the key/value cache.
public struct LlamaAttentionContext {
    public let batch: Int
    /// New tokens per row in this call.
    public let length: Int
    /// Position id of every new token, row-major [B·L].
    public let positions: [Int]
    /// Additive mask (0 = attend, blocked = −max with padding, −∞ without) broadcastable to
    /// [B, 1, L, Lk]: causal and padding together; nil when nothing is blocked (one new token
    /// and no padding).
    public let mask: Tensor?
    /// The cache that supplies earlier keys/values and stores this call's, if any.
    public let cache: LlamaKVCache?
    /// [B][L] positions and the new tokens' mask, for the cache.
    let rowPositions: [[Int]]
    let newMask: [[Int]]

    /// A context without a cache.
    /// - attentionMask: [B][L] of 1 (token) and 0 (padding), nil for none.
    /// - positionIds: [B][L]; nil derives them from the mask (each token's index among its
    ///   row's tokens, as transformers' `generate` does).
    /// - Throws: `LlamaError.invalidInput` for masks or positions of the wrong shape.
    public init(batch: Int, length: Int, attentionMask: [[Int]]? = nil, positionIds: [[Int]]? = nil) throws {
        try self.init(batch: batch, length: length, attentionMask: attentionMask, positionIds: positionIds, cache: nil)
    }

    init(batch: Int, length: Int, attentionMask: [[Int]]?, positionIds: [[Int]]?, cache: LlamaKVCache?) throws {
        self.batch = batch
        self.length = length
        self.cache = cache
        let newMask = try attentionMask.map { try LlamaAttentionContext.checked($0, name: "attention_mask", batch: batch, length: length) }
            ?? [[Int]](repeating: [Int](repeating: 1, count: length), count: batch)
        if attentionMask != nil { try LlamaAttentionContext.checkBinary(newMask) }
        let past = cache?.length ?? 0
        let start = cache?.nextPositions ?? [Int](repeating: 0, count: batch)
        var rows: [[Int]]
        if let positionIds {
            rows = try LlamaAttentionContext.checked(positionIds, name: "position_ids", batch: batch, length: length)
            if let (r, c) = rows.enumerated().lazy.compactMap({ r, row in row.firstIndex { $0 < 0 }.map { (r, $0) } }).first {
                throw LlamaError.invalidInput(name: "position_ids", message: "[\(r)][\(c)] = \(rows[r][c]) is negative")
            }
        } else {
            rows = (0..<batch).map { b in
                var next = start[b]
                return newMask[b].map { m in
                    if m == 0 { return Swift.max(next - 1, 0) }
                    defer { next += 1 }
                    return next
                }
            }
        }
        positions = rows.flatMap { $0 }
        self.rowPositions = rows
        self.newMask = newMask

        let keyMask = (0..<batch).map { (cache?.attentionMask[$0] ?? []) + newMask[$0] }
        let lk = past + length
        if keyMask.contains(where: { $0.contains(0) }) {
            // Causal and padding together; a blocked score is −max (transformers' finfo.min), so a
            // query whose every key is blocked (a left-padding position) stays finite.
            let blocked = -Float.greatestFiniteMagnitude
            let m = Tensor(zeros: [batch, 1, length, lk])
            let p = m.pointer
            for b in 0..<batch {
                for i in 0..<length {
                    let row = p + (b * length + i) * lk
                    for j in 0..<lk where j > past + i || keyMask[b][j] == 0 { row[j] = blocked }
                }
            }
            mask = m
        } else if length > 1 {
            mask = Tensor.causalMask(queries: length, keys: lk).reshaped([1, 1, length, lk])
        } else {
            mask = nil
        }
    }

    /// `mask` repeated for G stacked query heads: [B or 1, 1, G·L, Lk] (row r is position r mod L).
    func groupedMask(groups g: Int) -> Tensor? {
        guard let mask, g > 1 else { return mask }
        let s = mask.shape
        return mask.unsqueezed(2).expanded(to: [s[0], 1, g, s[2], s[3]]).reshaped([s[0], 1, g * s[2], s[3]])
    }

    private static func checked(_ rows: [[Int]], name: String, batch: Int, length: Int) throws -> [[Int]] {
        guard rows.count == batch, rows.allSatisfy({ $0.count == length }) else {
            throw LlamaError.invalidInput(name: name, message: "has shape [\(rows.count)][\(rows.first?.count ?? 0)…] but input_ids is [\(batch)][\(length)]")
        }
        return rows
    }

    private static func checkBinary(_ mask: [[Int]]) throws {
        for (r, row) in mask.enumerated() {
            if let c = row.firstIndex(where: { $0 != 0 && $0 != 1 }) {
                throw LlamaError.invalidInput(name: "attention_mask", message: "[\(r)][\(c)] = \(row[c]); a mask holds 1 for tokens and 0 for padding")
            }
        }
    }
}

/// `self_attn`: grouped-query attention with rotary embeddings.
public final class LlamaAttention: Module {
    @ModuleKey("q_proj") public var qProj: Linear
    @ModuleKey("k_proj") public var kProj: Linear
    @ModuleKey("v_proj") public var vProj: Linear
    @ModuleKey("o_proj") public var oProj: Linear
    public let heads: Int
    public let kvHeads: Int
    public let headDim: Int
    /// This layer's index, its slot in the key/value cache.
    public let layerIndex: Int
    let rotary: RotaryEmbedding

    init(config c: LlamaConfig, layerIndex: Int, rotary: RotaryEmbedding, factory f: inout LlamaParameterFactory) {
        let qWidth = c.numAttentionHeads * c.headDim, kvWidth = c.numKeyValueHeads * c.headDim
        _qProj.wrappedValue = f.linear(c.hiddenSize, qWidth, bias: c.attentionBias)
        _kProj.wrappedValue = f.linear(c.hiddenSize, kvWidth, bias: c.attentionBias)
        _vProj.wrappedValue = f.linear(c.hiddenSize, kvWidth, bias: c.attentionBias)
        _oProj.wrappedValue = f.linear(qWidth, c.hiddenSize, bias: c.attentionBias)
        heads = c.numAttentionHeads
        kvHeads = c.numKeyValueHeads
        headDim = c.headDim
        self.layerIndex = layerIndex
        self.rotary = rotary
        super.init()
    }

    /// x [B, L, D] → [B, L, D]: softmax(q·kᵀ/√d + mask)·v per head. The G = heads / kvHeads
    /// query heads that share a key/value head are stacked as G·L query rows against it, so each
    /// (batch, KV head) pair is one GEMM of G·L rows rather than G GEMMs of L rows (in decoding,
    /// G rows instead of G single-row products).
    public func callAsFunction(_ x: Tensor, context: LlamaAttentionContext) -> Tensor {
        let b = x.shape[0], l = x.shape[1], d = headDim, g = heads / kvHeads
        let q = rotary(qProj(x), positions: context.positions)                  // [B, L, H·d]
        let k = rotary(kProj(x), positions: context.positions)                  // [B, L, Hkv·d]
        let v = vProj(x)
        let query = q.reshaped([b, l, kvHeads, g, d]).permuted([0, 2, 3, 1, 4])   // [B, Hkv, G, L, d]
            .contiguous().reshaped([b, kvHeads, g * l, d])                       // rows (group head, position)
        let key: Tensor, value: Tensor                                           // [B, Hkv, Lk, d]
        if let cache = context.cache {
            (key, value) = cache.store(layer: layerIndex, keys: k, values: v)
        } else {
            key = k.reshaped([b, l, kvHeads, d]).permuted([0, 2, 1, 3])
            value = v.reshaped([b, l, kvHeads, d]).permuted([0, 2, 1, 3])
        }
        let o = Tensor.scaledDotProductAttention(query: query, key: key, value: value,
                                                 mask: context.groupedMask(groups: g))  // [B, Hkv, G·L, d]
        return oProj(o.reshaped([b, kvHeads, g, l, d]).permuted([0, 3, 1, 2, 4]).reshaped([b, l, heads * d]))
    }
}

/// `mlp`: SwiGLU, down_proj(silu(gate_proj(x)) ⊙ up_proj(x)).
public final class LlamaMLP: Module {
    @ModuleKey("gate_proj") public var gateProj: Linear
    @ModuleKey("up_proj") public var upProj: Linear
    @ModuleKey("down_proj") public var downProj: Linear

    init(config c: LlamaConfig, factory f: inout LlamaParameterFactory) {
        _gateProj.wrappedValue = f.linear(c.hiddenSize, c.intermediateSize, bias: c.mlpBias)
        _upProj.wrappedValue = f.linear(c.hiddenSize, c.intermediateSize, bias: c.mlpBias)
        _downProj.wrappedValue = f.linear(c.intermediateSize, c.hiddenSize, bias: c.mlpBias)
        super.init()
    }

    /// x [..., D] → [..., D].
    public func callAsFunction(_ x: Tensor) -> Tensor {
        downProj(gateProj(x).silu() * upProj(x))
    }
}

/// One decoder layer, `model.layers.N`.
public final class LlamaDecoderLayer: Module {
    @ModuleKey("self_attn") public var selfAttention: LlamaAttention
    public var mlp: LlamaMLP
    @ModuleKey("input_layernorm") public var inputLayerNorm: RMSNorm
    @ModuleKey("post_attention_layernorm") public var postAttentionLayerNorm: RMSNorm

    init(config c: LlamaConfig, layerIndex: Int, rotary: RotaryEmbedding, factory f: inout LlamaParameterFactory) {
        _selfAttention.wrappedValue = LlamaAttention(config: c, layerIndex: layerIndex, rotary: rotary, factory: &f)
        mlp = LlamaMLP(config: c, factory: &f)
        _inputLayerNorm.wrappedValue = f.rmsNorm(c.hiddenSize, eps: c.rmsNormEps)
        _postAttentionLayerNorm.wrappedValue = f.rmsNorm(c.hiddenSize, eps: c.rmsNormEps)
        super.init()
    }

    /// x [B, L, D] → [B, L, D].
    public func callAsFunction(_ x: Tensor, context: LlamaAttentionContext) -> Tensor {
        let h = x + selfAttention(inputLayerNorm(x), context: context)
        return h + mlp(postAttentionLayerNorm(h))
    }
}

/// `model`: the embedding table, the layer stack and the final norm.
public final class LlamaModel: Module {
    @ModuleKey("embed_tokens") public var embedTokens: Embedding
    public var layers: [LlamaDecoderLayer]
    public var norm: RMSNorm

    init(config c: LlamaConfig, rotary: RotaryEmbedding, factory f: inout LlamaParameterFactory) {
        _embedTokens.wrappedValue = Embedding(weight: f.tensor([c.vocabSize, c.hiddenSize]))
        var layers: [LlamaDecoderLayer] = []
        for i in 0..<c.numHiddenLayers { layers.append(LlamaDecoderLayer(config: c, layerIndex: i, rotary: rotary, factory: &f)) }
        self.layers = layers
        norm = f.rmsNorm(c.hiddenSize, eps: c.rmsNormEps)
        super.init()
    }
}

/// Makes the parameters: random as transformers' `_init_weights` does (N(0, initializer_range²)
/// weights, zero biases, unit norms), or uninitialised storage for weights about to be loaded.
struct LlamaParameterFactory {
    var rng: SeededGenerator?
    let std: Float

    mutating func tensor(_ shape: [Int]) -> Tensor {
        guard rng != nil else { return Tensor.uninitialized(shape) }
        return ParameterInit.normal(shape, std: std, using: &rng!)
    }

    mutating func linear(_ inFeatures: Int, _ outFeatures: Int, bias: Bool) -> Linear {
        Linear(weight: tensor([outFeatures, inFeatures]), bias: bias ? ParameterInit.constant([outFeatures], 0) : nil)
    }

    func rmsNorm(_ dim: Int, eps: Double) -> RMSNorm {
        RMSNorm(dim, eps: Float(eps))
    }
}

/// Which positions `LlamaForCausalLM` computes logits for.
public enum LlamaLogitsSelection: Sendable, Equatable {
    /// Every position: [B, L, V].
    case all
    /// The last token of each row (the last position whose mask is 1): [B, V]. What generation needs.
    case lastToken
    /// None (hidden states only).
    case none
}

/// What `LlamaForCausalLM` returns.
public struct LlamaOutput {
    /// [B, L, V] for `.all`, [B, V] for `.lastToken`, nil for `.none`.
    public let logits: Tensor?
    /// With `outputHiddenStates`, transformers' `hidden_states`: num_hidden_layers + 1 tensors
    /// [B, L, D] — [0] the embeddings, [i] the output of layer i, the last one after the final
    /// norm (equal to `lastHiddenState`). Empty otherwise.
    public let hiddenStates: [Tensor]
    /// The final norm's output [B, L, D].
    public let lastHiddenState: Tensor
}
