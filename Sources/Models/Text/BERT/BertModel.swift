import Foundation
import Tensor

// BERT's encoder (transformers' `BertModel`) with transformers' parameter names, e.g.
// `encoder.layer.3.attention.self.query.weight`. Post-norm layers:
//   a = LayerNorm(x + dense(MHA(x)));  y = LayerNorm(a + dense(act(dense(a))))
// Every Linear runs over batch × length rows at once (one GEMM per projection).

/// `embeddings`: LayerNorm(word + position + token type), tables [V, H], [P, H], [T, H].
public final class BertEmbeddings: Module {
    @ModuleKey("word_embeddings") public var wordEmbeddings: Embedding
    @ModuleKey("position_embeddings") public var positionEmbeddings: Embedding
    @ModuleKey("token_type_embeddings") public var tokenTypeEmbeddings: Embedding
    @ModuleKey("LayerNorm") public var layerNorm: LayerNorm

    init(config c: BertConfig, factory f: inout TextParameterFactory) {
        _wordEmbeddings.wrappedValue = f.embedding(c.vocabSize, c.hiddenSize, paddingIndex: c.padTokenId)
        _positionEmbeddings.wrappedValue = f.embedding(c.maxPositionEmbeddings, c.hiddenSize)
        _tokenTypeEmbeddings.wrappedValue = f.embedding(c.typeVocabSize, c.hiddenSize)
        _layerNorm.wrappedValue = LayerNorm(c.hiddenSize, eps: Float(c.layerNormEps))
        super.init()
    }

    /// words [B, L, H] (looked up, or supplied by the caller), token types [B·L] → [B, L, H].
    func callAsFunction(words: Tensor, tokenTypes: [Int]) throws -> Tensor {
        let b = words.shape[0], l = words.shape[1]
        let positions = positionEmbeddings.weight.sliced(axis: 0, 0, l)            // [L, H]
        let types = try tokenTypeEmbeddings(tokenTypes, shape: [b, l])              // [B, L, H]
        return layerNorm(words + types + positions)
    }
}

/// `attention.self`: the query, key and value projections [H, H] with biases.
public final class BertSelfAttention: Module {
    public var query: Linear
    public var key: Linear
    public var value: Linear
    public let heads: Int

    init(config c: BertConfig, factory f: inout TextParameterFactory) {
        query = f.linear(c.hiddenSize, c.hiddenSize)
        key = f.linear(c.hiddenSize, c.hiddenSize)
        value = f.linear(c.hiddenSize, c.hiddenSize)
        heads = c.numAttentionHeads
        super.init()
    }

    /// x [B, L, H], additive mask [B, 1, 1, L]? → softmax(q·kᵀ/√d + mask)·v per head, [B, L, H].
    public func callAsFunction(_ x: Tensor, mask: Tensor?) -> Tensor {
        textMultiHeadAttention(query: query(x), key: key(x), value: value(x), heads: heads, mask: mask)
    }
}

/// `attention.output`: LayerNorm(input + dense(h)).
public final class BertSelfOutput: Module {
    public var dense: Linear
    @ModuleKey("LayerNorm") public var layerNorm: LayerNorm

    init(inFeatures: Int, config c: BertConfig, factory f: inout TextParameterFactory) {
        dense = f.linear(inFeatures, c.hiddenSize)
        _layerNorm.wrappedValue = LayerNorm(c.hiddenSize, eps: Float(c.layerNormEps))
        super.init()
    }

    /// h [B, L, in], input [B, L, H] → [B, L, H].
    public func callAsFunction(_ h: Tensor, input: Tensor) -> Tensor {
        layerNorm(dense(h) + input)
    }
}

/// `attention`: self-attention followed by its output projection and residual LayerNorm.
public final class BertAttention: Module {
    @ModuleKey("self") public var selfAttention: BertSelfAttention
    public var output: BertSelfOutput

    init(config c: BertConfig, factory f: inout TextParameterFactory) {
        _selfAttention.wrappedValue = BertSelfAttention(config: c, factory: &f)
        output = BertSelfOutput(inFeatures: c.hiddenSize, config: c, factory: &f)
        super.init()
    }

    public func callAsFunction(_ x: Tensor, mask: Tensor?) -> Tensor {
        output(selfAttention(x, mask: mask), input: x)
    }
}

/// `intermediate`: act(dense(x)), [B, L, H] → [B, L, intermediate_size].
public final class BertIntermediate: Module {
    public var dense: Linear
    public let activation: TextActivation

    init(config c: BertConfig, factory f: inout TextParameterFactory) {
        dense = f.linear(c.hiddenSize, c.intermediateSize)
        activation = c.hiddenAct
        super.init()
    }

    public func callAsFunction(_ x: Tensor) -> Tensor { activation(dense(x)) }
}

/// One encoder layer, `encoder.layer.N`: attention, then the feed-forward block
/// (`intermediate`, `output`) with its residual LayerNorm.
public final class BertLayer: Module {
    public var attention: BertAttention
    public var intermediate: BertIntermediate
    /// transformers' `BertOutput`: LayerNorm(a + dense(intermediate)).
    public var output: BertSelfOutput

    init(config c: BertConfig, factory f: inout TextParameterFactory) {
        attention = BertAttention(config: c, factory: &f)
        intermediate = BertIntermediate(config: c, factory: &f)
        output = BertSelfOutput(inFeatures: c.intermediateSize, config: c, factory: &f)
        super.init()
    }

    /// x [B, L, H], mask [B, 1, 1, L]? → [B, L, H].
    public func callAsFunction(_ x: Tensor, mask: Tensor?) -> Tensor {
        let a = attention(x, mask: mask)
        return output(intermediate(a), input: a)
    }
}

/// `encoder`: the stack `encoder.layer.0 … N−1`.
public final class BertEncoder: Module {
    @ModuleKey("layer") public var layers: [BertLayer]

    init(config c: BertConfig, factory f: inout TextParameterFactory) {
        var layers: [BertLayer] = []
        for _ in 0..<c.numHiddenLayers { layers.append(BertLayer(config: c, factory: &f)) }
        _layers.wrappedValue = layers
        super.init()
    }
}

/// `pooler`: tanh(dense(h[:, 0])), the [CLS] summary used by BERT's classification heads.
public final class BertPooler: Module {
    public var dense: Linear

    init(config c: BertConfig, factory f: inout TextParameterFactory) {
        dense = f.linear(c.hiddenSize, c.hiddenSize)
        super.init()
    }

    /// h [B, L, H] → [B, H].
    public func callAsFunction(_ h: Tensor) -> Tensor {
        dense(h.sliced(axis: 1, 0, 1).squeezed(1)).tanh()
    }
}

/// What `BertModel` returns.
public struct BertModelOutput {
    /// The last layer's token vectors, [B, L, H].
    public let lastHiddenState: Tensor
    /// tanh(dense([CLS] vector)), [B, H]; nil for a model built without the pooler.
    public let poolerOutput: Tensor?
    /// With `outputHiddenStates`: the embeddings' output and every layer's output,
    /// num_hidden_layers + 1 tensors [B, L, H] (the last is `lastHiddenState`); otherwise empty.
    public let hiddenStates: [Tensor]
}

/// transformers' `BertModel`: a BERT encoder with optional pooler, e.g. all-MiniLM-L6-v2.
///
/// Inputs are token id rows of one length (pad them; `Tokenizer.encodeBatch` does) with an
/// attention mask of 1 for tokens and 0 for padding: padded keys receive no attention, so every
/// real token's vector equals the one computed without the padding. Sentence embeddings as
/// sentence-transformers computes them are `sentenceEmbeddings`.
///
/// Parameters are trainable after construction, as in PyTorch; a frozen encoder is
/// `freeze()` (or `freeze(prefix: "encoder.layer.0")` for part of it), and inference without a
/// graph runs under `withoutGrad { … }`.
public final class BertModel: Module {
    public let config: BertConfig
    public var embeddings: BertEmbeddings
    public var encoder: BertEncoder
    /// nil when built with `addPoolingLayer: false` (sentence-transformers' checkpoints often have none).
    public var pooler: BertPooler?

    /// A model with random weights, initialised as transformers does (N(0, initializer_range²)
    /// weights, zero biases, unit LayerNorms) from `seed`.
    /// - Throws: `TextModelError.invalidConfigValue` for an invalid config.
    public convenience init(config: BertConfig, addPoolingLayer: Bool = true, seed: UInt64 = 0) throws {
        try config.validate()
        var factory = TextParameterFactory.random(seed: seed, std: config.initializerRange)
        self.init(config: config, addPoolingLayer: addPoolingLayer, factory: &factory)
    }

    init(config c: BertConfig, addPoolingLayer: Bool, factory f: inout TextParameterFactory) {
        config = c
        embeddings = BertEmbeddings(config: c, factory: &f)
        encoder = BertEncoder(config: c, factory: &f)
        pooler = addPoolingLayer ? BertPooler(config: c, factory: &f) : nil
        super.init()
    }

    /// Encodes a padded batch of token ids.
    ///
    /// - inputIds: [B][L], every row the same length L ≤ max_position_embeddings, ids in 0..<vocab_size.
    /// - attentionMask: [B][L] of 1 (token) and 0 (padding); nil means every position is a token.
    /// - tokenTypeIds: [B][L] segment ids in 0..<type_vocab_size; nil means all 0.
    /// - Returns: `lastHiddenState` [B, L, H], `poolerOutput` [B, H]?, and with
    ///   `outputHiddenStates` the layers+1 hidden states.
    /// - Throws: `TextModelError` naming the input and position at fault.
    public func callAsFunction(inputIds: [[Int]], attentionMask: [[Int]]? = nil, tokenTypeIds: [[Int]]? = nil,
                               outputHiddenStates: Bool = false) throws -> BertModelOutput {
        let batch = try TextTokenBatch(inputIds, vocabularySize: config.vocabSize, maxPositions: config.maxPositionEmbeddings)
        let words = try embeddings.wordEmbeddings(batch.flat, shape: [batch.batch, batch.length])
        return try run(words: words, batch: batch, attentionMask: attentionMask, tokenTypeIds: tokenTypeIds,
                       outputHiddenStates: outputHiddenStates)
    }

    /// Encodes the rows of a tokenizer's `encodeBatch` (ids, attention mask, token types).
    public func callAsFunction(_ encoding: BatchEncoding, outputHiddenStates: Bool = false) throws -> BertModelOutput {
        try self(inputIds: encoding.ids, attentionMask: encoding.attentionMask, tokenTypeIds: encoding.tokenTypeIds,
                 outputHiddenStates: outputHiddenStates)
    }

    /// Encodes word vectors supplied by the caller (transformers' `inputs_embeds`) instead of
    /// looking up ids: positions, token types and the LayerNorm are added as usual, and
    /// gradients flow back into `inputsEmbeds` [B, L, H].
    public func callAsFunction(inputsEmbeds: Tensor, attentionMask: [[Int]]? = nil, tokenTypeIds: [[Int]]? = nil,
                               outputHiddenStates: Bool = false) throws -> BertModelOutput {
        guard inputsEmbeds.rank == 3, inputsEmbeds.shape[0] > 0, inputsEmbeds.shape[1] > 0 else {
            throw TextModelError.invalidInput(name: "inputs_embeds", message: "has shape \(inputsEmbeds.shape); expected [batch, length, \(config.hiddenSize)]")
        }
        let b = inputsEmbeds.shape[0], l = inputsEmbeds.shape[1]
        try checkTextEmbeddings(inputsEmbeds, batch: b, length: l, width: config.hiddenSize)
        let placeholder = [[Int]](repeating: [Int](repeating: 0, count: l), count: b)
        let batch = try TextTokenBatch(placeholder, vocabularySize: 1, maxPositions: config.maxPositionEmbeddings)
        return try run(words: inputsEmbeds, batch: batch, attentionMask: attentionMask, tokenTypeIds: tokenTypeIds,
                       outputHiddenStates: outputHiddenStates)
    }

    private func run(words: Tensor, batch: TextTokenBatch, attentionMask: [[Int]]?, tokenTypeIds: [[Int]]?,
                     outputHiddenStates: Bool) throws -> BertModelOutput {
        var types = [Int](repeating: 0, count: batch.batch * batch.length)
        if let tokenTypeIds {
            try batch.checkShape(tokenTypeIds, name: "token_type_ids")
            try TextTokenBatch.checkRange(tokenTypeIds, name: "token_type_ids", limit: config.typeVocabSize, key: "type_vocab_size")
            types = tokenTypeIds.flatMap { $0 }
        }
        var mask: Tensor? = nil
        if let attentionMask {
            try batch.checkMask(attentionMask)
            // An all-ones mask changes nothing; skip the additions.
            if attentionMask.contains(where: { $0.contains(0) }) { mask = textPaddingMask(attentionMask) }
        }
        var h = try embeddings(words: words, tokenTypes: types)
        var hidden: [Tensor] = outputHiddenStates ? [h] : []
        for layer in encoder.layers {
            h = layer(h, mask: mask)
            if outputHiddenStates { hidden.append(h) }
        }
        return BertModelOutput(lastHiddenState: h, poolerOutput: pooler.map { $0(h) }, hiddenStates: hidden)
    }

    // MARK: Sentence embeddings

    /// Sentence embeddings as sentence-transformers computes them (e.g. all-MiniLM-L6-v2):
    /// the mean of the last hidden state over the tokens whose mask is 1, then, with `normalize`,
    /// divided by its Euclidean norm. Returns [B, H].
    public func sentenceEmbeddings(_ encoding: BatchEncoding, normalize: Bool = true) throws -> Tensor {
        let out = try self(inputIds: encoding.ids, attentionMask: encoding.attentionMask,
                           tokenTypeIds: encoding.tokenTypeIds)
        let pooled = try TokenPooling.mean(out.lastHiddenState, attentionMask: encoding.attentionMask)
        return normalize ? TokenPooling.l2Normalized(pooled) : pooled
    }

    /// Tokenizes `texts` (truncated to `maxLength` tokens including [CLS] and [SEP]; nil means
    /// max_position_embeddings — all-MiniLM-L6-v2's sentence-transformers setting is 256),
    /// pads them to the longest and returns their sentence embeddings [texts.count, H].
    public func sentenceEmbeddings(_ texts: [String], tokenizer: any Tokenizer, maxLength: Int? = nil,
                                   normalize: Bool = true) throws -> Tensor {
        let limit = Swift.min(maxLength ?? config.maxPositionEmbeddings, config.maxPositionEmbeddings)
        let pad = tokenizer.specialTokens.pad ?? config.padTokenId ?? 0
        let encoding = tokenizer.encodeBatch(texts, maxLength: limit, padding: .longest, padId: pad)
        return try sentenceEmbeddings(encoding, normalize: normalize)
    }
}
