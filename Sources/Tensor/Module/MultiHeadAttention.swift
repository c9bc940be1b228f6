import Foundation

/// An attention mask in one of PyTorch's two forms.
public enum AttentionMask {
    /// Nonzero where attention is NOT allowed — PyTorch's boolean masks (`True` = blocked).
    /// Blocked positions get −∞ before the softmax, so a query row with every key blocked yields
    /// NaN, as in PyTorch.
    case blocked(Tensor)
    /// Added to the attention scores — PyTorch's float masks (−∞ or a large negative blocks).
    case additive(Tensor)

    public var shape: [Int] {
        switch self {
        case .blocked(let t), .additive(let t): return t.shape
        }
    }

    /// The mask as values to add to the scores.
    public var additiveValues: Tensor {
        switch self {
        case .additive(let t):
            return t
        case .blocked(let t):
            return Tensor(shape: t.shape, data: t.scalars.map { $0 != 0 ? -Float.infinity : 0 })
        }
    }
}

/// PyTorch's `nn.MultiheadAttention`, with its parameter names:
/// - `in_proj_weight` [3E, E] (rows q | k | v) when the key and value widths equal E, otherwise
///   `q_proj_weight` [E, E], `k_proj_weight` [E, kdim], `v_proj_weight` [E, vdim];
/// - `in_proj_bias` [3E] and `out_proj.weight` [E, E], `out_proj.bias` [E] (with `bias`).
///
/// Per head h (E = heads · d): softmax(q_h·k_hᵀ/√d + mask)·v_h, heads concatenated, then out_proj.
/// Inputs are [L, N, E] (or [N, L, E] with `batchFirst`, or unbatched [L, E]); keys/values have
/// length S. Initialisation as in PyTorch: projections xavier-uniform, biases zero, `out_proj.weight`
/// kaiming-uniform(a = √5). `add_bias_kv` and `add_zero_attn` are not supported.
open class MultiHeadAttention: Module {
    public let embedDim: Int
    public let numHeads: Int
    public let headDim: Int
    public let keyDim: Int
    public let valueDim: Int
    public let batchFirst: Bool
    /// Dropout on the attention probabilities, in training mode only.
    public let dropout: Float
    public var generator: SeededGenerator

    @ParameterKey("in_proj_weight") public var inProjWeight: Tensor?
    @ParameterKey("q_proj_weight") public var qProjWeight: Tensor?
    @ParameterKey("k_proj_weight") public var kProjWeight: Tensor?
    @ParameterKey("v_proj_weight") public var vProjWeight: Tensor?
    @ParameterKey("in_proj_bias") public var inProjBias: Tensor?
    @ModuleKey("out_proj") public var outProj: Linear

    public init(embedDim: Int, numHeads: Int, dropout: Float = 0, bias: Bool = true, kdim: Int? = nil,
                vdim: Int? = nil, batchFirst: Bool = false, rng: inout SeededGenerator) {
        precondition(embedDim > 0 && numHeads > 0 && embedDim % numHeads == 0,
                     "MultiHeadAttention: embedDim \(embedDim) must be divisible by numHeads \(numHeads)")
        precondition(dropout >= 0 && dropout <= 1, "MultiHeadAttention: dropout \(dropout) outside [0, 1]")
        let e = embedDim, kd = kdim ?? embedDim, vd = vdim ?? embedDim
        self.embedDim = e
        self.numHeads = numHeads
        self.headDim = e / numHeads
        self.keyDim = kd
        self.valueDim = vd
        self.batchFirst = batchFirst
        self.dropout = dropout
        if kd == e && vd == e {
            _inProjWeight.wrappedValue = ParameterInit.xavierUniform([3 * e, e], fanIn: e, fanOut: 3 * e, using: &rng)
            _qProjWeight.wrappedValue = nil
            _kProjWeight.wrappedValue = nil
            _vProjWeight.wrappedValue = nil
        } else {
            _inProjWeight.wrappedValue = nil
            _qProjWeight.wrappedValue = ParameterInit.xavierUniform([e, e], fanIn: e, fanOut: e, using: &rng)
            _kProjWeight.wrappedValue = ParameterInit.xavierUniform([e, kd], fanIn: kd, fanOut: e, using: &rng)
            _vProjWeight.wrappedValue = ParameterInit.xavierUniform([e, vd], fanIn: vd, fanOut: e, using: &rng)
        }
        _inProjBias.wrappedValue = bias ? ParameterInit.constant([3 * e], 0) : nil
        let out = Linear(e, e, bias: bias, rng: &rng)
        out.bias?.fill(0)
        _outProj.wrappedValue = out
        self.generator = SeededGenerator(seed: rng.next())
        super.init()
    }

    /// Attention output: [L, N, E] ([N, L, E] with `batchFirst`; [L, E] unbatched).
    ///
    /// - Parameters:
    ///   - query: [L, N, E]; key: [S, N, kdim]; value: [S, N, vdim] (batch first when `batchFirst`).
    ///   - keyPaddingMask: [N, S] ([S] unbatched), marking padded keys.
    ///   - attentionMask: [L, S] or [N·heads, L, S] ([heads, L, S] unbatched).
    ///   - causal: also block key j > i + (S − L) for query i.
    open func callAsFunction(_ query: Tensor, _ key: Tensor, _ value: Tensor, keyPaddingMask: AttentionMask? = nil,
                             attentionMask: AttentionMask? = nil, causal: Bool = false) -> Tensor {
        forward(query, key, value, keyPaddingMask: keyPaddingMask, attentionMask: attentionMask, causal: causal,
                needWeights: false, averageWeights: true).output
    }

    /// The output and the attention probabilities (PyTorch's `need_weights=True`): weights are
    /// [N, L, S] averaged over heads, or [N, heads, L, S] when `averageWeights` is false (without N
    /// for unbatched input). In training mode they are taken after dropout, as in PyTorch.
    open func attentionWithWeights(_ query: Tensor, _ key: Tensor, _ value: Tensor, keyPaddingMask: AttentionMask? = nil,
                                   attentionMask: AttentionMask? = nil, causal: Bool = false,
                                   averageWeights: Bool = true) -> (output: Tensor, weights: Tensor) {
        let r = forward(query, key, value, keyPaddingMask: keyPaddingMask, attentionMask: attentionMask, causal: causal,
                        needWeights: true, averageWeights: averageWeights)
        return (r.output, r.weights!)
    }

    /// The q, k, v projection weights [E, E], [E, kdim], [E, vdim] and biases, whichever form is stored.
    private func projections() -> (weights: [Tensor], biases: [Tensor?]) {
        let e = embedDim
        let weights: [Tensor]
        if let packed = inProjWeight {
            weights = packed.split([e, e, e], axis: 0)
        } else {
            weights = [qProjWeight!, kProjWeight!, vProjWeight!]
        }
        let biases: [Tensor?] = inProjBias.map { $0.split([e, e, e], axis: 0) } ?? [nil, nil, nil]
        return (weights, biases)
    }

    private func forward(_ query: Tensor, _ key: Tensor, _ value: Tensor, keyPaddingMask: AttentionMask?,
                         attentionMask: AttentionMask?, causal: Bool, needWeights: Bool,
                         averageWeights: Bool) -> (output: Tensor, weights: Tensor?) {
        let batched = query.rank == 3
        precondition(query.rank == 2 || query.rank == 3, "MultiHeadAttention: query must be rank 2 or 3, got \(query.shape)")
        precondition(key.rank == query.rank && value.rank == query.rank,
                     "MultiHeadAttention: query \(query.shape), key \(key.shape) and value \(value.shape) differ in rank")
        // Work batch-first: [N, L, E].
        func batchFirstView(_ t: Tensor) -> Tensor {
            batched ? (batchFirst ? t : t.transposed(0, 1)) : t.unsqueezed(0)
        }
        let q = batchFirstView(query), k = batchFirstView(key), v = batchFirstView(value)
        let n = q.shape[0], l = q.shape[1], s = k.shape[1], h = numHeads, d = headDim
        precondition(q.shape[2] == embedDim && k.shape[2] == keyDim && v.shape[2] == valueDim,
                     "MultiHeadAttention: widths query \(q.shape[2]), key \(k.shape[2]), value \(v.shape[2]); expected \(embedDim), \(keyDim), \(valueDim)")
        precondition(k.shape[0] == n && v.shape[0] == n && v.shape[1] == s,
                     "MultiHeadAttention: batch or length mismatch between query \(query.shape), key \(key.shape), value \(value.shape)")

        let (w, b) = projections()
        func heads(_ x: Tensor, _ i: Int, _ length: Int) -> Tensor {
            x.linear(weight: w[i], bias: b[i]).reshaped([n, length, h, d]).permuted([0, 2, 1, 3])
        }
        let qh = heads(q, 0, l), kh = heads(k, 1, s), vh = heads(v, 2, s)

        // One additive mask broadcastable to [N, H, L, S].
        var mask: Tensor? = nil
        if let kpm = keyPaddingMask {
            precondition(kpm.shape == (batched ? [n, s] : [s]),
                         "MultiHeadAttention: key padding mask \(kpm.shape), expected \(batched ? [n, s] : [s])")
            mask = kpm.additiveValues.reshaped([n, 1, 1, s])
        }
        if let am = attentionMask {
            let values: Tensor
            if am.shape == [l, s] {
                values = am.additiveValues
            } else {
                precondition(am.shape == [n * h, l, s],
                             "MultiHeadAttention: attention mask \(am.shape), expected [\(l), \(s)] or [\(n * h), \(l), \(s)]")
                values = am.additiveValues.reshaped([n, h, l, s])
            }
            mask = mask.map { $0 + values } ?? values
        }

        let attended: Tensor
        var weights: Tensor? = nil
        let dropping = training && dropout > 0
        if needWeights || dropping {
            var scores = qh.matmul(kh.transposed(-2, -1)) * (1 / Float(d).squareRoot())
            if let mask { scores = scores + mask }
            if causal { scores = scores + Tensor.causalMask(queries: l, keys: s) }
            var probabilities = scores.softmax(axis: -1)
            if dropping { probabilities = probabilities.dropout(p: dropout, training: true, using: &generator) }
            attended = probabilities.matmul(vh)
            if needWeights {
                let full = batched ? probabilities : probabilities.squeezed(0)
                weights = averageWeights ? full.mean(axes: [batched ? 1 : 0]) : full
            }
        } else {
            attended = Tensor.scaledDotProductAttention(query: qh, key: kh, value: vh, mask: mask, causal: causal)
        }
        let merged = outProj(attended.permuted([0, 2, 1, 3]).reshaped([n, l, embedDim]))
        let output = batched ? (batchFirst ? merged : merged.transposed(0, 1)) : merged.squeezed(0)
        return (output, weights)
    }
}
