import Foundation
import Tensor

/// transformers' `LlamaForCausalLM`: a Llama-family decoder with its language-model head, e.g.
/// SmolLM2-135M-Instruct.
///
/// Inputs are rows of token ids of one length with an attention mask of 1 for tokens and 0 for
/// padding; padding may sit on the left or on the right. Padded keys receive no attention and
/// position ids count real tokens only, so every real token's result equals the one computed for
/// its prompt alone. With a `LlamaKVCache`, a call appends its tokens to those already cached
/// (prefill, then one token at a time), which is how `generate` runs.
///
/// `ropeLayout` says how Q and K rows are laid out: `.rotateHalf` for transformers checkpoints
/// (and GGUF files un-permuted on load, the default), `.adjacentPairs` for GGUF weights used as
/// llama.cpp stores them. Parameters are trainable after construction, as in PyTorch; a frozen
/// decoder is `freeze()`, and inference without a graph runs under `withoutGrad { … }`.
public final class LlamaForCausalLM: Module {
    public let config: LlamaConfig
    public var model: LlamaModel
    /// [vocab, hidden]; the same tensor as `model.embedTokens.weight` when embeddings are tied.
    @ModuleKey("lm_head") public var lmHead: Linear
    /// The rotary embedding every layer applies to its queries and keys.
    public let rotary: RotaryEmbedding

    /// A model with random weights, initialised as transformers does (N(0, initializer_range²)
    /// weights, zero biases, unit norms) from `seed`.
    /// - Throws: `LlamaError.invalidConfigValue` for an invalid config.
    public convenience init(config: LlamaConfig, seed: UInt64 = 0, ropeLayout: RotaryLayout = .rotateHalf) throws {
        try config.validate()
        var factory = LlamaParameterFactory(rng: SeededGenerator(seed: seed), std: Float(config.initializerRange))
        self.init(config: config, ropeLayout: ropeLayout, factory: &factory)
    }

    init(config c: LlamaConfig, ropeLayout: RotaryLayout, factory f: inout LlamaParameterFactory) {
        config = c
        rotary = RotaryEmbedding(headDim: c.headDim, base: c.ropeTheta, layout: ropeLayout)
        model = LlamaModel(config: c, rotary: rotary, factory: &f)
        _lmHead.wrappedValue = c.tieWordEmbeddings ? Linear(weight: model.embedTokens.weight)
            : f.linear(c.hiddenSize, c.vocabSize, bias: false)
        super.init()
    }

    /// The layout of the Q/K rows this model was built for.
    public var ropeLayout: RotaryLayout { rotary.layout }

    // MARK: Forward

    /// Runs the decoder on a padded batch of token ids.
    ///
    /// - inputIds: [B][L], ids in 0..<vocab_size. With a cache, L is the number of new tokens.
    /// - attentionMask: [B][L] of 1 (token) and 0 (padding), for the new tokens; nil means all 1.
    /// - positionIds: [B][L]; nil counts each row's real tokens (continuing from the cache).
    /// - cache: earlier keys/values to attend to; this call's are appended to it.
    /// - outputHiddenStates: also return transformers' `hidden_states` (layers + 1 tensors).
    /// - logits: which positions get logits.
    /// - Throws: `LlamaError` naming the input and position at fault, or `sequenceTooLong` when
    ///   cached plus new positions exceed max_position_embeddings.
    public func callAsFunction(inputIds: [[Int]], attentionMask: [[Int]]? = nil, positionIds: [[Int]]? = nil,
                               cache: LlamaKVCache? = nil, outputHiddenStates: Bool = false,
                               logits: LlamaLogitsSelection = .all) throws -> LlamaOutput {
        let (b, l) = try checkIds(inputIds)
        let embeds = try model.embedTokens(inputIds.flatMap { $0 }, shape: [b, l])
        return try run(embeds, attentionMask: attentionMask, positionIds: positionIds, cache: cache,
                       collect: outputHiddenStates ? Set(0...config.numHiddenLayers) : [],
                       stopAfter: config.numHiddenLayers, logits: logits).output
    }

    /// Runs the decoder on token vectors supplied by the caller (transformers' `inputs_embeds`,
    /// [B, L, D]) instead of looking up ids; gradients flow back into them.
    public func callAsFunction(inputsEmbeds: Tensor, attentionMask: [[Int]]? = nil, positionIds: [[Int]]? = nil,
                               cache: LlamaKVCache? = nil, outputHiddenStates: Bool = false,
                               logits: LlamaLogitsSelection = .all) throws -> LlamaOutput {
        guard inputsEmbeds.rank == 3, inputsEmbeds.shape[0] > 0, inputsEmbeds.shape[1] > 0,
              inputsEmbeds.shape[2] == config.hiddenSize else {
            throw LlamaError.invalidInput(name: "inputs_embeds", message: "has shape \(inputsEmbeds.shape); expected [batch, length, \(config.hiddenSize)]")
        }
        return try run(inputsEmbeds, attentionMask: attentionMask, positionIds: positionIds, cache: cache,
                       collect: outputHiddenStates ? Set(0...config.numHiddenLayers) : [],
                       stopAfter: config.numHiddenLayers, logits: logits).output
    }

    /// Hidden states in transformers' numbering — 0 the embeddings, i (1 ≤ i < N) the output of
    /// layer i, N = num_hidden_layers the output after the final norm; negative indices count
    /// from the end (−1 is N) — computing only the layers up to the deepest one requested
    /// (features for an adapter need no logits and often not the last layers).
    ///
    /// - Returns: one [B, L, D] tensor per entry of `layers`, in that order.
    /// - Throws: `LlamaError.invalidInput` for an index outside −(N+1)...N, and what
    ///   `callAsFunction` throws for bad ids or masks.
    public func hiddenStates(inputIds: [[Int]], attentionMask: [[Int]]? = nil, positionIds: [[Int]]? = nil,
                             layers: [Int]) throws -> [Tensor] {
        let n = config.numHiddenLayers
        let indices = try layers.map { i -> Int in
            guard i >= -(n + 1) && i <= n else {
                throw LlamaError.invalidInput(name: "layer", message: "\(i) is outside -\(n + 1)...\(n) (0 = embeddings, \(n) = after the final norm)")
            }
            return i < 0 ? i + n + 1 : i
        }
        let (b, l) = try checkIds(inputIds)
        let embeds = try model.embedTokens(inputIds.flatMap { $0 }, shape: [b, l])
        let states = try run(embeds, attentionMask: attentionMask, positionIds: positionIds, cache: nil,
                             collect: Set(indices), stopAfter: indices.max() ?? 0, logits: .none).states
        return indices.map { states[$0]! }
    }

    /// The hidden state `layer` (see `hiddenStates`), [B, L, D].
    public func hiddenState(inputIds: [[Int]], attentionMask: [[Int]]? = nil, layer: Int) throws -> Tensor {
        try hiddenStates(inputIds: inputIds, attentionMask: attentionMask, layers: [layer])[0]
    }

    /// Validates ids: a non-empty rectangle with every id in 0..<vocab_size.
    private func checkIds(_ ids: [[Int]]) throws -> (Int, Int) {
        guard let first = ids.first, !first.isEmpty else {
            throw LlamaError.invalidInput(name: "input_ids", message: "needs at least one row of at least one token")
        }
        if let r = ids.firstIndex(where: { $0.count != first.count }) {
            throw LlamaError.invalidInput(name: "input_ids", message: "row \(r) has \(ids[r].count) tokens but row 0 has \(first.count); pad the rows to one length")
        }
        for (r, row) in ids.enumerated() {
            if let c = row.firstIndex(where: { $0 < 0 || $0 >= config.vocabSize }) {
                throw LlamaError.tokenIdOutOfRange(input: "input_ids", id: row[c], row: r, column: c, limit: config.vocabSize)
            }
        }
        return (ids.count, first.count)
    }

    /// The shared forward: layers 1...stopAfter, keeping the states whose indices are in `collect`.
    private func run(_ embeds: Tensor, attentionMask: [[Int]]?, positionIds: [[Int]]?, cache: LlamaKVCache?,
                     collect: Set<Int>, stopAfter: Int, logits selection: LlamaLogitsSelection)
        throws -> (output: LlamaOutput, states: [Int: Tensor]) {
        let b = embeds.shape[0], l = embeds.shape[1], n = config.numHiddenLayers
        if let cache {
            guard cache.batch == b, cache.layers == n, cache.kvHeads == config.numKeyValueHeads, cache.headDim == config.headDim else {
                throw LlamaError.invalidInput(name: "cache", message: "was made for batch \(cache.batch), \(cache.layers) layers, "
                    + "\(cache.kvHeads) KV heads of \(cache.headDim); this call has batch \(b) for a model with \(n) layers, "
                    + "\(config.numKeyValueHeads) KV heads of \(config.headDim)")
            }
        }
        let total = (cache?.length ?? 0) + l
        if total > config.maxPositionEmbeddings {
            throw LlamaError.sequenceTooLong(length: total, limit: config.maxPositionEmbeddings, key: "max_position_embeddings")
        }
        let context = try LlamaAttentionContext(batch: b, length: l, attentionMask: attentionMask,
                                                positionIds: positionIds, cache: cache)
        if let p = context.positions.max(), p >= config.maxPositionEmbeddings {
            throw LlamaError.sequenceTooLong(length: p + 1, limit: config.maxPositionEmbeddings, key: "max_position_embeddings")
        }
        var states: [Int: Tensor] = [:]
        var hiddenList: [Tensor] = []
        var h = embeds
        if collect.contains(0) { states[0] = h }
        let depth = Swift.min(stopAfter, n)
        // The cache must see every layer of the call, so a cached forward always runs them all.
        let layerCount = cache == nil ? depth : n
        for i in 0..<layerCount {
            h = model.layers[i](h, context: context)
            if i + 1 == n { h = model.norm(h) }
            if collect.contains(i + 1) { states[i + 1] = h }
        }
        cache?.commit(mask: context.newMask, positions: context.rowPositions)
        if collect.count == n + 1 { hiddenList = (0...n).map { states[$0]! } }
        var logits: Tensor? = nil
        if layerCount == n {
            switch selection {
            case .all:
                logits = lmHead(h)
            case .lastToken:
                logits = lmHead(lastTokens(h, mask: context.newMask))
            case .none:
                break
            }
        }
        return (LlamaOutput(logits: logits, hiddenStates: hiddenList, lastHiddenState: h), states)
    }

    /// Each row's vector at its last position whose mask is 1 (the last position when all are
    /// padding): [B, L, D] → [B, D].
    private func lastTokens(_ h: Tensor, mask: [[Int]]) -> Tensor {
        let b = h.shape[0], l = h.shape[1]
        let index = mask.map { row in row.lastIndex(of: 1) ?? (l - 1) }
        if index.allSatisfy({ $0 == l - 1 }) { return h.sliced(axis: 1, l - 1, l).reshaped([b, h.shape[2]]) }
        let rows = (0..<b).map { r in h.sliced(axis: 0, r, r + 1).sliced(axis: 1, index[r], index[r] + 1) }
        return Tensor.concat(rows, axis: 0).reshaped([b, h.shape[2]])
    }

    /// A cache sized for this model and `batch` rows.
    public func makeCache(batch: Int, capacity: Int = 0) -> LlamaKVCache {
        LlamaKVCache(config: config, batch: batch, capacity: capacity)
    }
}
