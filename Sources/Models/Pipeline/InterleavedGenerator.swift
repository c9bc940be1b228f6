import Foundation
import Tensor

/// One piece of an interleaved document: generated text, or the voken states where the LLM chose
/// to put an image.
public enum InterleavedPart {
    case text(String)
    /// [1, V, D]: the LLM's states at the V voken positions (the encoder's layer), the voken
    /// mapper's input.
    case image(vokenStates: Tensor)
}

/// MiniGPT-5's interleaved generation: the frozen LLM continues a prompt over the vocabulary
/// extended with the vokens [IMG0..IMG(V−1)]; when it picks IMG0 the remaining vokens follow
/// (MiniGPT-5 appends them rather than trusting the model to spell all V), their states become an
/// image's conditioning through the voken mapper, and text generation resumes after them (at
/// least one text token before the next image).
///
/// Scores at each step are [text logits (|T|) | h·Wᵥᵀ (V)] with Wᵥ the trained `VokenLanguageHead`
/// rows; `LlamaLogitsProcessor` applies the usual repetition penalty, temperature, top-k and top-p
/// to the whole row. Documents are the raw continuation of the prompt, as the head was trained on
/// raw "prompt [IMG0] … [IMG(V−1)]" documents.
public final class InterleavedGenerator {
    public let encoder: LLMPromptEncoder
    /// The voken input rows [V, D] (fixed; `AdapterTask` keeps them at the embeddings' mean).
    public let vokens: Tensor
    public let head: VokenLanguageHead

    /// - Throws: `LlamaError.invalidInput` naming `vokens` or `voken_lm_head` when their shapes
    ///   are not [V, D] with the LLM's width and one V.
    public init(encoder: LLMPromptEncoder, vokens: Tensor, head: VokenLanguageHead) throws {
        let d = encoder.width
        guard vokens.rank == 2, vokens.shape[1] == d, vokens.shape[0] >= 1 else {
            throw LlamaError.invalidInput(name: "vokens", message: "has shape \(vokens.shape); expected [V, \(d)]")
        }
        guard head.weight.shape == vokens.shape else {
            throw LlamaError.invalidInput(name: "voken_lm_head", message: "has shape \(head.weight.shape); expected \(vokens.shape), one row per voken")
        }
        self.encoder = encoder
        self.vokens = vokens
        self.head = head
    }

    /// Generates a document after `prompt`: at most `maxNewTokens` text tokens and `maxImages`
    /// images (after that the vokens are masked out); stops early at an end-of-sequence token.
    /// `config` supplies sampling, repetition penalty and seed (its `maxNewTokens` is ignored).
    /// - Throws: `LlamaError` for a prompt that tokenizes to nothing or outgrows the context.
    public func generate(prompt: String, maxNewTokens: Int, maxImages: Int,
                         config: LlamaGenerationConfig = LlamaGenerationConfig()) throws -> [InterleavedPart] {
        let llm = encoder.llm
        let ids = encoder.tokenizer.encode(prompt, addSpecialTokens: true)
        guard !ids.isEmpty else { throw LlamaError.invalidInput(name: "prompt", message: "tokenizes to no tokens") }
        let vocab = llm.config.vocabSize, v = vokens.shape[0], d = encoder.width
        let eos = Set(config.eosTokenIds ?? llm.config.eosTokenIds)
        let processor = LlamaLogitsProcessor(config: config)
        var rng = SeededGenerator(seed: config.seed)
        let cache = llm.makeCache(batch: 1)
        var parts: [InterleavedPart] = []
        var pending: [Int] = []
        var history = ids
        var images = 0, produced = 0

        return try withoutGrad {
            var output = try llm(inputIds: [ids], cache: cache, logits: .lastToken)
            func flushText() {
                guard !pending.isEmpty else { return }
                parts.append(.text(encoder.tokenizer.decode(pending, skipSpecialTokens: true)))
                pending.removeAll()
            }
            while produced < maxNewTokens {
                // [1, D] state of the last position, [|T|] text logits, [V] voken logits.
                let last = output.lastHiddenState.sliced(axis: 1, output.lastHiddenState.shape[1] - 1, output.lastHiddenState.shape[1])
                    .reshaped([1, d])
                var scores = output.logits!.contiguous().scalars
                let vokenScores = head.logits(last).contiguous().scalars
                // No image right after an image: the state after [IMG(V−1)] still looks like the end
                // of a picture's description, and would open image after image.
                let afterImage: Bool
                if case .image? = parts.last, pending.isEmpty { afterImage = true } else { afterImage = false }
                let allowed = images < maxImages && !afterImage
                scores += allowed ? vokenScores : [Float](repeating: -.infinity, count: v)
                let next = processor.choose(processor.process(scores, previous: history), rng: &rng)
                if next >= vocab {
                    // IMG0 (or any voken) opens an image: all V vokens go in, their states are kept.
                    flushText()
                    let embeds = vokens.reshaped([1, v, d])
                    output = try llm(inputsEmbeds: embeds, cache: cache, outputHiddenStates: true, logits: .lastToken)
                    parts.append(.image(vokenStates: output.hiddenStates[encoder.layer].contiguousCopy()))
                    images += 1
                    continue
                }
                if eos.contains(next) { break }
                pending.append(next)
                history.append(next)
                produced += 1
                output = try llm(inputIds: [[next]], cache: cache, logits: .lastToken)
            }
            flushText()
            return parts
        }
    }
}
