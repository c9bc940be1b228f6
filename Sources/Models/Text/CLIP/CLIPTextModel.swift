import Foundation
import Tensor

// CLIP's text tower (transformers' `CLIPTextModel`) with transformers' parameter names, e.g.
// `text_model.encoder.layers.3.self_attn.q_proj.weight`. Pre-norm causal layers:
//   a = x + out_proj(MHA(layer_norm1(x)));  y = a + fc2(act(fc1(layer_norm2(a))))
// then `final_layer_norm`. Every Linear runs over batch × length rows at once.

/// `embeddings`: token table [V, H] plus position table [P, H] (no norm).
public final class CLIPTextEmbeddings: Module {
    @ModuleKey("token_embedding") public var tokenEmbedding: Embedding
    @ModuleKey("position_embedding") public var positionEmbedding: Embedding

    init(config c: CLIPTextConfig, factory f: inout TextParameterFactory) {
        _tokenEmbedding.wrappedValue = f.embedding(c.vocabSize, c.hiddenSize)
        _positionEmbedding.wrappedValue = f.embedding(c.maxPositionEmbeddings, c.hiddenSize)
        super.init()
    }

    /// tokens [B, L, H] (looked up or supplied) → tokens + positions 0..<L.
    func callAsFunction(tokens: Tensor) -> Tensor {
        tokens + positionEmbedding.weight.sliced(axis: 0, 0, tokens.shape[1])
    }
}

/// `self_attn`: `q_proj`, `k_proj`, `v_proj`, `out_proj`, each [H, H] with bias (declared in
/// transformers' registration order, so `namedParameters()` lists them as PyTorch does).
public final class CLIPAttention: Module {
    @ModuleKey("k_proj") public var kProj: Linear
    @ModuleKey("v_proj") public var vProj: Linear
    @ModuleKey("q_proj") public var qProj: Linear
    @ModuleKey("out_proj") public var outProj: Linear
    public let heads: Int

    init(config c: CLIPTextConfig, factory f: inout TextParameterFactory) {
        let h = c.hiddenSize
        _kProj.wrappedValue = f.linear(h, h)
        _vProj.wrappedValue = f.linear(h, h)
        _qProj.wrappedValue = f.linear(h, h)
        _outProj.wrappedValue = f.linear(h, h)
        heads = c.numAttentionHeads
        super.init()
    }

    /// x [B, L, H], additive mask broadcastable to [B, heads, L, L] → [B, L, H].
    public func callAsFunction(_ x: Tensor, mask: Tensor?) -> Tensor {
        outProj(textMultiHeadAttention(query: qProj(x), key: kProj(x), value: vProj(x), heads: heads, mask: mask))
    }
}

/// `mlp`: fc2(act(fc1(x))), H → intermediate_size → H.
public final class CLIPMLP: Module {
    public var fc1: Linear
    public var fc2: Linear
    public let activation: TextActivation

    init(config c: CLIPTextConfig, factory f: inout TextParameterFactory) {
        fc1 = f.linear(c.hiddenSize, c.intermediateSize)
        fc2 = f.linear(c.intermediateSize, c.hiddenSize)
        activation = c.hiddenAct
        super.init()
    }

    public func callAsFunction(_ x: Tensor) -> Tensor { fc2(activation(fc1(x))) }
}

/// `encoder.layers.N`: pre-norm self-attention and MLP, each with a residual.
public final class CLIPEncoderLayer: Module {
    @ModuleKey("self_attn") public var selfAttn: CLIPAttention
    @ModuleKey("layer_norm1") public var layerNorm1: LayerNorm
    public var mlp: CLIPMLP
    @ModuleKey("layer_norm2") public var layerNorm2: LayerNorm

    init(config c: CLIPTextConfig, factory f: inout TextParameterFactory) {
        _selfAttn.wrappedValue = CLIPAttention(config: c, factory: &f)
        _layerNorm1.wrappedValue = LayerNorm(c.hiddenSize, eps: Float(c.layerNormEps))
        mlp = CLIPMLP(config: c, factory: &f)
        _layerNorm2.wrappedValue = LayerNorm(c.hiddenSize, eps: Float(c.layerNormEps))
        super.init()
    }

    /// x [B, L, H] → [B, L, H].
    public func callAsFunction(_ x: Tensor, mask: Tensor?) -> Tensor {
        let a = x + selfAttn(layerNorm1(x), mask: mask)
        return a + mlp(layerNorm2(a))
    }
}

/// `encoder`: the stack `encoder.layers.0 … N−1`.
public final class CLIPEncoder: Module {
    public var layers: [CLIPEncoderLayer]

    init(config c: CLIPTextConfig, factory f: inout TextParameterFactory) {
        layers = (0..<c.numHiddenLayers).map { _ in CLIPEncoderLayer(config: c, factory: &f) }
        super.init()
    }
}

/// What the CLIP text models return.
public struct CLIPTextModelOutput {
    /// `final_layer_norm` of the last layer's tokens, [B, L, H]: Stable Diffusion's conditioning.
    public let lastHiddenState: Tensor
    /// The `lastHiddenState` row at each sequence's end-of-text position, [B, H].
    public let poolerOutput: Tensor
    /// With `outputHiddenStates`: the embeddings and every layer's output before
    /// `final_layer_norm`, num_hidden_layers + 1 tensors [B, L, H] (SD's "clip skip" reads
    /// `hiddenStates[count − 1 − skip]` and applies `finalLayerNorm`); otherwise empty.
    public let hiddenStates: [Tensor]
    /// `text_projection(poolerOutput)`, [B, projection_dim], from `CLIPTextModelWithProjection`.
    public let textEmbeds: Tensor?
}

/// transformers' `CLIPTextTransformer`, the part every CLIP text model keeps under `text_model`.
public final class CLIPTextTransformer: Module {
    public let config: CLIPTextConfig
    public var embeddings: CLIPTextEmbeddings
    public var encoder: CLIPEncoder
    @ModuleKey("final_layer_norm") public var finalLayerNorm: LayerNorm

    init(config c: CLIPTextConfig, factory f: inout TextParameterFactory) {
        config = c
        embeddings = CLIPTextEmbeddings(config: c, factory: &f)
        encoder = CLIPEncoder(config: c, factory: &f)
        _finalLayerNorm.wrappedValue = LayerNorm(c.hiddenSize, eps: Float(c.layerNormEps))
        super.init()
    }

    /// Encodes a batch of token rows; see `CLIPTextModel.callAsFunction`.
    public func callAsFunction(inputIds: [[Int]], attentionMask: [[Int]]? = nil, inputsEmbeds: Tensor? = nil,
                               outputHiddenStates: Bool = false) throws -> CLIPTextModelOutput {
        let batch = try TextTokenBatch(inputIds, vocabularySize: config.vocabSize, maxPositions: config.maxPositionEmbeddings)
        let b = batch.batch, l = batch.length
        let tokens: Tensor
        if let inputsEmbeds {
            try checkTextEmbeddings(inputsEmbeds, batch: b, length: l, width: config.hiddenSize)
            tokens = inputsEmbeds
        } else {
            tokens = try embeddings.tokenEmbedding(batch.flat, shape: [b, l])
        }
        if let attentionMask { try batch.checkMask(attentionMask) }
        let mask = CLIPTextTransformer.attentionMask(length: l, padding: attentionMask)
        var h = embeddings(tokens: tokens)
        var hidden: [Tensor] = outputHiddenStates ? [h] : []
        for layer in encoder.layers {
            h = layer(h, mask: mask)
            if outputHiddenStates { hidden.append(h) }
        }
        let last = finalLayerNorm(h)
        let positions = CLIPTextTransformer.poolingPositions(inputIds: inputIds, eosTokenId: config.eosTokenId)
        let rows = positions.enumerated().map { r, p in last.sliced(axis: 0, r, r + 1).sliced(axis: 1, p, p + 1) }
        let pooled = (b == 1 ? rows[0] : Tensor.concat(rows, axis: 0)).reshaped([b, config.hiddenSize])
        return CLIPTextModelOutput(lastHiddenState: last, poolerOutput: pooled, hiddenStates: hidden, textEmbeds: nil)
    }

    /// The additive mask: causal (key j ≤ query i), and with `padding` also blocking the keys whose
    /// mask is 0; [L, L] or [B, 1, L, L]. Blocked entries are `-Float.greatestFiniteMagnitude`
    /// (transformers' `finfo.min`), so a row with every key blocked attends uniformly, not NaN.
    static func attentionMask(length l: Int, padding: [[Int]]?) -> Tensor {
        guard let padding, padding.contains(where: { $0.contains(0) }) else {
            return Tensor(shape: [l, l], data: (0..<(l * l)).map { $0 % l > $0 / l ? textBlockedScore : 0 })
        }
        var data = [Float](repeating: 0, count: padding.count * l * l)
        for (r, row) in padding.enumerated() {
            for i in 0..<l {
                for j in 0..<l where j > i || row[j] == 0 { data[(r * l + i) * l + j] = textBlockedScore }
            }
        }
        return Tensor(shape: [padding.count, 1, l, l], data: data)
    }

    /// Where each row's `pooler_output` is read, as transformers does: for the legacy
    /// `eos_token_id` 2, the first position of the row's largest id (`<|endoftext|>` is CLIP's
    /// largest id); otherwise the first position of `eos_token_id`, or 0 when the row has none.
    public static func poolingPositions(inputIds: [[Int]], eosTokenId: Int) -> [Int] {
        inputIds.map { row in
            if eosTokenId == 2 {
                var best = 0
                for (i, id) in row.enumerated() where id > row[best] { best = i }
                return best
            }
            return row.firstIndex(of: eosTokenId) ?? 0
        }
    }
}

/// transformers' `CLIPTextModel`: the text tower of CLIP, e.g. Stable Diffusion 1.x/2.x's
/// `text_encoder`. Its parameters are named `text_model.…`.
///
/// Attention is causal. `attentionMask` (1 token, 0 padding) also blocks padded keys; Stable
/// Diffusion pipelines pass no mask (rows padded to 77 with `<|endoftext|>` attend to them
/// causally), so leave it nil to reproduce their conditioning. Parameters are trainable after
/// construction, as in PyTorch; freeze with `freeze()`, infer without a graph in `withoutGrad`.
public final class CLIPTextModel: Module {
    @ModuleKey("text_model") public var textModel: CLIPTextTransformer
    public var config: CLIPTextConfig { textModel.config }

    /// A model with random weights from `seed` (N(0, initializer_range²) weights, zero biases).
    /// - Throws: `TextModelError.invalidConfigValue` for an invalid config.
    public convenience init(config: CLIPTextConfig, seed: UInt64 = 0) throws {
        try config.validate()
        var factory = TextParameterFactory.random(seed: seed, std: config.initializerRange)
        self.init(config: config, factory: &factory)
    }

    init(config c: CLIPTextConfig, factory f: inout TextParameterFactory) {
        _textModel.wrappedValue = CLIPTextTransformer(config: c, factory: &f)
        super.init()
    }

    /// Encodes a batch of token rows.
    ///
    /// - inputIds: [B][L], one length L ≤ max_position_embeddings, ids in 0..<vocab_size; each row
    ///   should hold its end-of-text token (the tokenizer adds it), where `poolerOutput` is read.
    /// - attentionMask: [B][L] of 1 and 0 blocking padded keys; nil: causal attention only.
    /// - inputsEmbeds: [B, L, H] token vectors used instead of looking up `inputIds` (textual
    ///   inversion; gradients flow into them); the ids still decide the pooling position.
    /// - Returns: `lastHiddenState` [B, L, H], `poolerOutput` [B, H], and with
    ///   `outputHiddenStates` the layers+1 hidden states.
    /// - Throws: `TextModelError` naming the input and the position at fault.
    public func callAsFunction(inputIds: [[Int]], attentionMask: [[Int]]? = nil, inputsEmbeds: Tensor? = nil,
                               outputHiddenStates: Bool = false) throws -> CLIPTextModelOutput {
        try textModel(inputIds: inputIds, attentionMask: attentionMask, inputsEmbeds: inputsEmbeds,
                      outputHiddenStates: outputHiddenStates)
    }

    /// Encodes a tokenizer's rows, with their attention mask when `useAttentionMask`
    /// (`CLIPTokenizer.encodeForTextEncoder` rows without it reproduce Stable Diffusion).
    public func callAsFunction(_ encoding: BatchEncoding, useAttentionMask: Bool = true,
                               outputHiddenStates: Bool = false) throws -> CLIPTextModelOutput {
        try textModel(inputIds: encoding.ids, attentionMask: useAttentionMask ? encoding.attentionMask : nil,
                      outputHiddenStates: outputHiddenStates)
    }
}

/// transformers' `CLIPTextModelWithProjection` (SDXL's second text encoder): `text_model` plus
/// `text_projection` [projection_dim, H] without bias; `textEmbeds` = text_projection(pooler_output).
public final class CLIPTextModelWithProjection: Module {
    @ModuleKey("text_model") public var textModel: CLIPTextTransformer
    @ModuleKey("text_projection") public var textProjection: Linear
    public var config: CLIPTextConfig { textModel.config }

    /// A model with random weights from `seed`.
    public convenience init(config: CLIPTextConfig, seed: UInt64 = 0) throws {
        try config.validate()
        var factory = TextParameterFactory.random(seed: seed, std: config.initializerRange)
        self.init(config: config, factory: &factory)
    }

    init(config c: CLIPTextConfig, factory f: inout TextParameterFactory) {
        _textModel.wrappedValue = CLIPTextTransformer(config: c, factory: &f)
        _textProjection.wrappedValue = f.linear(c.hiddenSize, c.projectionDim, bias: false)
        super.init()
    }

    /// As `CLIPTextModel.callAsFunction`, plus `textEmbeds` [B, projection_dim].
    public func callAsFunction(inputIds: [[Int]], attentionMask: [[Int]]? = nil, inputsEmbeds: Tensor? = nil,
                               outputHiddenStates: Bool = false) throws -> CLIPTextModelOutput {
        let out = try textModel(inputIds: inputIds, attentionMask: attentionMask, inputsEmbeds: inputsEmbeds,
                                outputHiddenStates: outputHiddenStates)
        return CLIPTextModelOutput(lastHiddenState: out.lastHiddenState, poolerOutput: out.poolerOutput,
                                   hiddenStates: out.hiddenStates, textEmbeds: textProjection(out.poolerOutput))
    }

    /// Encodes a tokenizer's rows, with their attention mask when `useAttentionMask`.
    public func callAsFunction(_ encoding: BatchEncoding, useAttentionMask: Bool = true,
                               outputHiddenStates: Bool = false) throws -> CLIPTextModelOutput {
        try self(inputIds: encoding.ids, attentionMask: useAttentionMask ? encoding.attentionMask : nil,
                 outputHiddenStates: outputHiddenStates)
    }
}
