import Foundation
import Tensor

// MiniGPT-5 adds V generative tokens [IMG0..IMG(V-1)] to the LLM's vocabulary and trains only
// their rows, so the frozen LLM learns *where* an image belongs: its language-model loss on
// interleaved documents (text, then the vokens where the image sits) rewards a high voken logit
// after text that describes a picture and a low one everywhere else.
//
// Sura keeps the voken *input* rows at their MiniGPT-5 initialisation (the mean of the input
// embeddings) and trains the voken *output* rows, the new rows of the LM head. Why: with fixed
// input rows every hidden state of the frozen LLM is fixed too, so the voken states the mapper
// reads and every position's text logits are computed once per prompt; the LM loss then only
// needs h·Wᵥᵀ per position and no backward pass through the 135M-parameter LLM. Where to emit
// an image is decided by IMG0's output row alone (IMG1… follow it by construction at generation,
// as in MiniGPT-5), so it is the output rows that carry what the LM loss teaches.

/// The voken rows of the LM head, `weight` [V, D]: voken logits are h·Wᵀ, appended to the frozen
/// vocabulary's logits.
///
/// The loss of one position with hidden state h, frozen text logits z (vocabulary size |T|) and
/// voken logits u = Wh is the cross-entropy over the extended vocabulary,
///
///     ℓ = log(Σⱼ exp zⱼ + Σₖ exp uₖ) − (target logit).
///
/// The text part enters only through two constants per position, so the full |T|-wide logits are
/// never recomputed in training (`LMExampleRows` stores them):
///
///     text target t:    a = z_t,             b = log Σ_{j≠t} exp zⱼ,   class 0
///     voken target k:   a = log Σⱼ exp zⱼ,   b = −∞ (a large negative), class 2 + k
///
/// and ℓ = crossEntropy([a, b, u₀ … u_{V−1}], class) exactly.
public final class VokenLanguageHead: Module {
    /// [V, D], checkpoint key `weight` (the adapter checkpoint stores it as `voken_lm_head`).
    @ParameterKey("weight") public var weight: Tensor

    /// Rows initialised to `initial` [V, D] (MiniGPT-5: the mean of the LM head's rows).
    public init(initial: Tensor) {
        _weight.wrappedValue = initial.asParameter()
        super.init()
    }

    public var vokenCount: Int { weight.shape[0] }
    public var width: Int { weight.shape[1] }

    /// The voken logits u = h·Wᵀ: hidden [N, D] → [N, V].
    public func logits(_ hidden: Tensor) -> Tensor { hidden.matmul(weight.transposed()) }

    /// The mean cross-entropy of the valid rows of `rows` [N, D + 4] (`LMExampleRows` layout);
    /// nil when no row is valid.
    public func loss(rows: Tensor) -> Tensor? { Self.loss(rows: rows, weight: weight) }

    /// `loss(rows:)` for explicit voken rows `weight` [V, D] (what the gradient check probes).
    public static func loss(rows: Tensor, weight: Tensor) -> Tensor? {
        let d = weight.shape[1]
        precondition(rows.rank == 2 && rows.shape[1] == d + LMExampleRows.extraChannels, "VokenLanguageHead.loss: rows \(rows.shape)")
        let values = rows.contiguous()
        let n = rows.shape[0]
        let p = values.pointer
        let valid = (0..<n).filter { p[$0 * (d + 4) + d + 3] > 0.5 }
        guard !valid.isEmpty else { return nil }
        // [N', D] hidden states and [N', 2] text constants of the valid positions.
        var hidden = [Float](), constants = [Float](), targets = [Int]()
        hidden.reserveCapacity(valid.count * d)
        for i in valid {
            let row = p + i * (d + 4)
            hidden.append(contentsOf: UnsafeBufferPointer(start: row, count: d))
            constants.append(row[d])
            constants.append(row[d + 1])
            targets.append(Int(row[d + 2]))
        }
        let h = Tensor(shape: [valid.count, d], data: hidden)
        // [N', 2 + V]
        let logits = Tensor.concat([Tensor(shape: [valid.count, 2], data: constants), h.matmul(weight.transposed())], axis: 1)
        return Loss.crossEntropy(logits: logits, targets: targets)
    }
}

/// Per-position LM examples of documents "prompt [IMG0] … [IMG(V−1)]", one row per position that
/// predicts a next token, `extraChannels` = 4 channels after the hidden state:
///
///     [h (D) | a | b | class | valid]
///
/// (see `VokenLanguageHead` for a, b and class). A prompt of n tokens gives n − 1 text targets,
/// the position predicting IMG0 (its last token) and V − 1 positions predicting IMG1…; rows
/// beyond those are zero with valid = 0, so every prompt has `positions(maxLength:vokens:)` rows.
public enum LMExampleRows {
    public static let extraChannels = 4

    /// Rows per prompt: (maxLength − 1) text targets at most, plus V voken targets.
    public static func positions(maxLength: Int, vokens: Int) -> Int { maxLength - 1 + vokens }

    /// One frozen pass over the documents "prompt [IMG0] … [IMG(V−1)]": the voken states at the
    /// encoder's layer [B, V, D] (what the voken mapper reads) and the LM example rows
    /// [B, positions, D + 4].
    /// - Throws: what `LLMPromptEncoder.vokenForward` throws.
    public static func encode(_ prompts: [String], encoder: LLMPromptEncoder, vokens: Tensor) throws -> (states: Tensor, rows: Tensor) {
        try withoutGrad {
            let pass = try encoder.vokenForward(prompts, vokens: vokens)
            let v = vokens.shape[0]
            // [B, V, D]
            let states = pass.states[encoder.layer].sliced(axis: 1, pass.longest, pass.longest + v).contiguous()
            // [B, longest + V, D] and its text logits [B, longest + V, |T|]
            let final = pass.states[encoder.llm.config.numHiddenLayers]
            let textLogits = encoder.llm.lmHead(final)
            return (states, make(final: final, textLogits: textLogits, rows: pass.rows, maxLength: encoder.maxLength, vokens: v))
        }
    }

    /// Builds the rows of one batch from the frozen LLM's final states.
    /// - Parameters:
    ///   - final: [B, T, D], the states after the final norm, T = longest + V, each prompt left
    ///     padded so that its n tokens sit at longest − n ..< longest and the vokens after them.
    ///   - textLogits: [B, T, |T|], the frozen LM head applied to `final`.
    ///   - rows: each prompt's token ids.
    ///   - maxLength: the encoder's token limit (sets the row count).
    public static func make(final: Tensor, textLogits: Tensor, rows: [[Int]], maxLength: Int, vokens v: Int) -> Tensor {
        let b = final.shape[0], t = final.shape[1], d = final.shape[2], vocab = textLogits.shape[2]
        let longest = t - v
        let positions = positions(maxLength: maxLength, vokens: v)
        let width = d + extraChannels
        let h = final.contiguous(), z = textLogits.contiguous()
        var out = [Float](repeating: 0, count: b * positions * width)
        for (r, tokens) in rows.enumerated() {
            let start = longest - tokens.count
            var k = 0
            func add(position: Int, a: Double, bValue: Double, target: Int) {
                let o = (r * positions + k) * width
                let source = h.pointer + (r * t + position) * d
                for c in 0..<d { out[o + c] = source[c] }
                out[o + d] = Float(a)
                out[o + d + 1] = Float(bValue)
                out[o + d + 2] = Float(target)
                out[o + d + 3] = 1
                k += 1
            }
            for position in start ..< longest + v - 1 {
                let logits = UnsafeBufferPointer(start: z.pointer + (r * t + position) * vocab, count: vocab)
                let top = Double(logits.max() ?? 0)
                var total = 0.0
                for x in logits { total += Foundation.exp(Double(x) - top) }
                if position + 1 < longest {
                    // A text target: a is its logit, b the log-sum of every other text logit.
                    let target = Double(logits[tokens[position + 1 - start]])
                    let rest = Swift.max(total - Foundation.exp(target - top), 1e-30)
                    add(position: position, a: target, bValue: top + Foundation.log(rest), target: 0)
                } else {
                    // A voken target (IMG0 from the last token, IMG(k+1) from IMG k): all text in a.
                    add(position: position, a: top + Foundation.log(total), bValue: -1e4, target: 2 + (position + 1 - longest))
                }
            }
        }
        return Tensor(shape: [b, positions, width], data: out)
    }
}
