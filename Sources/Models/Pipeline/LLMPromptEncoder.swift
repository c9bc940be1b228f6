import Foundation
import Tensor

/// A frozen decoder LLM (SmolLM2) read as a prompt encoder: one hidden layer of every prompt, the
/// input the LLM-side adapters (Cross-Adapter Module, ELLA's connector, the voken mapper, and
/// SUR-adapter's distillation target) consume.
///
/// Every prompt comes out at the same length `maxLength` so batches and cached tables line up:
///
///     hidden [B, maxLength, D]   the layer's states, zero at padding
///     mask   [B, maxLength]      1 for a token, 0 for padding (right padding)
///
/// Prompts longer than `maxLength` tokens are truncated. The empty prompt, which SmolLM2's
/// tokenizer turns into no tokens at all, is encoded as the single end-of-text token, so the
/// unconditional branch (LLM("") in ELLA and LLM4GEN) is a real, finite state.
public final class LLMPromptEncoder {
    public let llm: LlamaForCausalLM
    public let tokenizer: any Tokenizer
    /// The hidden state read, in transformers' numbering (0 = embeddings, N = after the final norm).
    public let layer: Int
    public let maxLength: Int
    /// Where the LLM came from (a .gguf file or a transformers folder), for checkpoints' metadata.
    public let source: URL

    /// Loads the LLM and its tokenizer and freezes the LLM.
    /// - Parameters:
    ///   - layer: −(N+1)…N; negative counts from the end (−1 = after the final norm).
    ///   - maxLength: tokens kept per prompt, 1…max_position_embeddings.
    /// - Throws: `LlamaError.invalidInput` naming `layer` or `max_length` when out of range; the
    ///   loader's errors naming the file.
    public convenience init(model: URL, layer: Int, maxLength: Int) throws {
        let llm = try LlamaForCausalLM.load(from: model)
        let tokenizer = try LlamaTokenizerLoader.tokenizer(for: model)
        try self.init(llm: llm, tokenizer: tokenizer, layer: layer, maxLength: maxLength, source: model)
    }

    public init(llm: LlamaForCausalLM, tokenizer: any Tokenizer, layer: Int, maxLength: Int, source: URL) throws {
        let n = llm.config.numHiddenLayers
        guard layer >= -(n + 1) && layer <= n else {
            throw LlamaError.invalidInput(name: "layer", message: "\(layer) is beyond the LLM's \(n) layers: use 0...\(n) (0 = embeddings, \(n) = after the final norm) or -\(n + 1)...-1")
        }
        guard maxLength >= 1 && maxLength <= llm.config.maxPositionEmbeddings else {
            throw LlamaError.invalidInput(name: "max_length", message: "\(maxLength) must be between 1 and max_position_embeddings = \(llm.config.maxPositionEmbeddings)")
        }
        llm.freeze()
        self.llm = llm
        self.tokenizer = tokenizer
        self.layer = layer < 0 ? layer + n + 1 : layer
        self.maxLength = maxLength
        self.source = source
    }

    /// How many decoder layers a forward pass runs to reach `layer` (the layers LoRA can act on).
    public var decoderLayersRun: Int { min(layer, llm.config.numHiddenLayers) }

    /// D, the LLM's hidden size.
    public var width: Int { llm.config.hiddenSize }

    /// The id used for padding and for the empty prompt.
    var fillerToken: Int { llm.config.eosTokenIds.first ?? llm.config.padTokenId ?? 0 }

    /// Token ids of `prompt` as encoded here: at most `maxLength`, never empty.
    public func tokens(_ prompt: String) -> [Int] {
        let ids = tokenizer.encode(prompt, addSpecialTokens: true)
        return ids.isEmpty ? [fillerToken] : Array(ids.prefix(maxLength))
    }

    /// hidden [B, maxLength, D] (zero at padding) and mask [B, maxLength], without a graph.
    /// - Throws: `LlamaError.invalidInput` for an empty prompt list.
    public func encode(_ prompts: [String]) throws -> (hidden: Tensor, mask: Tensor) {
        let batch = try tokenize(prompts)
        let states = try withoutGrad { layers(0..<layer, try embeddings(batch), batch: batch) }
        return pack(states, batch: batch)
    }

    /// Prompts tokenized for the decoder: right-padded ids and the attention context every layer
    /// of the batch uses. Cheap (no model compute), so each pipeline stage makes its own.
    public struct TokenizedBatch {
        /// Each prompt's real tokens.
        public let rows: [[Int]]
        /// The batch's padded length (its longest prompt).
        public let longest: Int
        public let context: LlamaAttentionContext
        let padded: [[Int]]
    }

    /// - Throws: `LlamaError.invalidInput` for an empty prompt list.
    public func tokenize(_ prompts: [String]) throws -> TokenizedBatch {
        guard !prompts.isEmpty else { throw LlamaError.invalidInput(name: "prompts", message: "at least one prompt is needed") }
        let rows = prompts.map(tokens)
        let longest = rows.map(\.count).max()!
        let padded = rows.map { $0 + [Int](repeating: fillerToken, count: longest - $0.count) }
        let rowMask = rows.map { [Int](repeating: 1, count: $0.count) + [Int](repeating: 0, count: longest - $0.count) }
        let context = try LlamaAttentionContext(batch: rows.count, length: longest, attentionMask: rowMask)
        return TokenizedBatch(rows: rows, longest: longest, context: context, padded: padded)
    }

    /// The input embeddings of a batch: [B, longest, D].
    public func embeddings(_ batch: TokenizedBatch) throws -> Tensor {
        try llm.model.embedTokens(batch.padded.flatMap { $0 }, shape: [batch.rows.count, batch.longest])
    }

    /// Decoder layers `range` (0-based; layer i's output is hidden state i + 1) applied to `h`
    /// [B, longest, D], with the final norm after the model's last layer, as transformers'
    /// `hidden_states[N]` has it. A pipeline stage runs its own range.
    public func layers(_ range: Range<Int>, _ h: Tensor, batch: TokenizedBatch) -> Tensor {
        var h = h
        for i in range {
            h = llm.model.layers[i](h, context: batch.context)
            if i + 1 == llm.config.numHiddenLayers { h = llm.model.norm(h) }
        }
        return h
    }

    /// The states [B, longest, D] as the fixed-length result: hidden [B, maxLength, D] (zero at
    /// padding) and mask [B, maxLength].
    public func pack(_ states: Tensor, batch: TokenizedBatch) -> (hidden: Tensor, mask: Tensor) {
        let d = width, count = batch.rows.count, longest = batch.longest
        let source = states.contiguousCopy()
        let hidden = Tensor(zeros: [count, maxLength, d])
        for (b, row) in batch.rows.enumerated() {
            // Real tokens only: padded positions stay zero whatever the LLM computed there.
            (hidden.storage.pointer + b * maxLength * d)
                .update(from: source.storage.pointer + b * longest * d, count: row.count * d)
        }
        return (hidden, Tensor(shape: [count, maxLength], data: Self.tokenMask(batch, length: maxLength)))
    }

    /// 1 at each row's real tokens and 0 after them, rows `length` wide: [B · length].
    private static func tokenMask(_ batch: TokenizedBatch, length: Int) -> [Float] {
        var mask = [Float](repeating: 0, count: batch.rows.count * length)
        for (b, row) in batch.rows.enumerated() {
            for j in 0..<row.count { mask[b * length + j] = 1 }
        }
        return mask
    }

    /// `pack` that keeps the graph, so gradients reach the states (and the LLM's LoRA through
    /// them): states · mask [B, longest, 1], then zero rows up to maxLength. Equal to `pack`'s
    /// values (a padded position is x·0 instead of 0).
    public func packKeepingGraph(_ states: Tensor, batch: TokenizedBatch) -> (hidden: Tensor, mask: Tensor) {
        let d = width, count = batch.rows.count, longest = batch.longest
        let keep = Tensor(shape: [count, longest, 1], data: Self.tokenMask(batch, length: longest))
        var hidden = states * keep                                                  // [B, longest, D]
        if longest < maxLength {
            hidden = Tensor.concat([hidden, Tensor(zeros: [count, maxLength - longest, d])], axis: 1)  // [B, maxLength, D]
        }
        return (hidden, Tensor(shape: [count, maxLength], data: Self.tokenMask(batch, length: maxLength)))
    }

    /// hidden [B, maxLength, D] and mask [B, maxLength] with the graph kept: what `encode`
    /// computes, for training the LLM's LoRA.
    public func encodeKeepingGraph(_ prompts: [String]) throws -> (hidden: Tensor, mask: Tensor) {
        let batch = try tokenize(prompts)
        return packKeepingGraph(layers(0..<layer, try embeddings(batch), batch: batch), batch: batch)
    }

    /// MiniGPT-5's voken states: each prompt followed by the voken embeddings `vokens` [V, D]
    /// (rows the vocabulary does not have; left padding so they sit at the same positions in
    /// every row), and the layer's states at those V positions: [B, V, D]. Gradients flow into
    /// `vokens` when it requires them (the LLM itself stays frozen).
    /// - Throws: `LlamaError.invalidInput` naming `vokens` when it is not [V, D].
    public func vokenStates(_ prompts: [String], vokens: Tensor) throws -> Tensor {
        let pass = try vokenForward(prompts, vokens: vokens)
        return pass.states[layer].sliced(axis: 1, pass.longest, pass.longest + vokens.shape[0])
    }

    /// The forward pass behind `vokenStates`: every hidden state (transformers' numbering, each
    /// [B, longest + V, D]) of the left-padded documents "prompt [IMG0] … [IMG(V−1)]", each
    /// prompt's token ids, and the padded prompt length (the vokens sit at longest ..< longest + V).
    /// - Throws: `LlamaError.invalidInput` naming `vokens` when it is not [V, D].
    public func vokenForward(_ prompts: [String], vokens: Tensor) throws -> (states: [Tensor], rows: [[Int]], longest: Int) {
        guard vokens.rank == 2, vokens.shape[1] == width, vokens.shape[0] >= 1 else {
            throw LlamaError.invalidInput(name: "vokens", message: "has shape \(vokens.shape); expected [V, \(width)]")
        }
        guard !prompts.isEmpty else { throw LlamaError.invalidInput(name: "prompts", message: "at least one prompt is needed") }
        let v = vokens.shape[0], d = width
        let rows = prompts.map(tokens)
        let longest = rows.map(\.count).max()!
        let padded = rows.map { [Int](repeating: fillerToken, count: longest - $0.count) + $0 }
        let b = prompts.count
        // [B, longest, D] token embeddings of the (frozen) vocabulary.
        let text = try withoutGrad { try llm.model.embedTokens(padded.flatMap { $0 }, shape: [b, longest]) }
        // [B, longest + V, D]
        let embeds = Tensor.concat([text, vokens.reshaped([1, v, d]).expanded(to: [b, v, d])], axis: 1)
        let mask = rows.map { [Int](repeating: 0, count: longest - $0.count) + [Int](repeating: 1, count: $0.count + v) }
        let output = try llm(inputsEmbeds: embeds, attentionMask: mask, outputHiddenStates: true, logits: .none)
        guard layer < output.hiddenStates.count else {
            throw LlamaError.invalidInput(name: "layer", message: "\(layer) has no hidden state")
        }
        return (output.hiddenStates, rows, longest)
    }
}
