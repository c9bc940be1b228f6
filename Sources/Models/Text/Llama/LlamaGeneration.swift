import Foundation
import Tensor

/// How `LlamaForCausalLM.generate` picks tokens; the fields and defaults are transformers'
/// `GenerationConfig` ones.
public struct LlamaGenerationConfig: Sendable, Equatable {
    /// Most tokens generated per prompt (the end-of-sequence token not counted).
    public var maxNewTokens: Int
    /// false: greedy decoding (argmax after the repetition penalty); true: sampling.
    public var doSample: Bool
    /// Logits are divided by it before top-k / top-p when sampling.
    public var temperature: Float
    /// Keep only the k most likely tokens when sampling (0 turns it off).
    public var topK: Int
    /// Keep the smallest set of most likely tokens whose probability reaches p (1 turns it off).
    public var topP: Float
    /// transformers' rule: the logit of every token already in the prompt or the output is
    /// divided by the penalty when positive, multiplied when negative (1 turns it off).
    public var repetitionPenalty: Float
    /// Generation of a row stops at any of these; nil takes the model config's `eos_token_id`.
    public var eosTokenIds: [Int]?
    /// Seed of the sampling generator (the same seed gives the same tokens).
    public var seed: UInt64

    public init(maxNewTokens: Int = 64, doSample: Bool = false, temperature: Float = 1, topK: Int = 50,
                topP: Float = 1, repetitionPenalty: Float = 1, eosTokenIds: [Int]? = nil, seed: UInt64 = 0) {
        self.maxNewTokens = maxNewTokens
        self.doSample = doSample
        self.temperature = temperature
        self.topK = topK
        self.topP = topP
        self.repetitionPenalty = repetitionPenalty
        self.eosTokenIds = eosTokenIds
        self.seed = seed
    }

    /// Greedy decoding of up to `maxNewTokens` tokens.
    public static func greedy(maxNewTokens: Int = 64) -> LlamaGenerationConfig {
        LlamaGenerationConfig(maxNewTokens: maxNewTokens)
    }

    /// Throws `LlamaError.invalidInput` naming the first setting out of range.
    public func validate() throws {
        func bad(_ name: String, _ message: String) -> LlamaError { .invalidInput(name: name, message: message) }
        if maxNewTokens < 0 { throw bad("max_new_tokens", "\(maxNewTokens) must be ≥ 0") }
        if !(temperature > 0) || !temperature.isFinite { throw bad("temperature", "\(temperature) must be a positive number") }
        if topK < 0 { throw bad("top_k", "\(topK) must be ≥ 0 (0 turns it off)") }
        if !(topP > 0 && topP <= 1) { throw bad("top_p", "\(topP) must be in (0, 1]") }
        if !(repetitionPenalty > 0) || !repetitionPenalty.isFinite {
            throw bad("repetition_penalty", "\(repetitionPenalty) must be a positive number")
        }
    }
}

/// Why a row stopped.
public enum LlamaFinishReason: String, Sendable, Equatable {
    /// It produced an end-of-sequence token.
    case endOfSequence
    /// It reached `maxNewTokens`.
    case maxNewTokens
    /// The batch reached the model's max_position_embeddings.
    case contextLimit
}

/// One prompt's continuation.
public struct LlamaGeneration: Sendable, Equatable {
    /// The new tokens, without the end-of-sequence token.
    public let tokens: [Int]
    public let finishReason: LlamaFinishReason

    public init(tokens: [Int], finishReason: LlamaFinishReason) {
        self.tokens = tokens
        self.finishReason = finishReason
    }
}

/// transformers' logits processors, in `generate`'s order: repetition penalty, then (when
/// sampling) temperature, top-k and top-p. Removed tokens get −∞.
public struct LlamaLogitsProcessor: Sendable {
    public let config: LlamaGenerationConfig

    public init(config: LlamaGenerationConfig) { self.config = config }

    /// The processed scores of one row; `previous` are the ids already in the sequence.
    public func process(_ scores: [Float], previous: [Int]) -> [Float] {
        var s = scores
        if config.repetitionPenalty != 1 {
            let p = config.repetitionPenalty
            for id in Set(previous) where id >= 0 && id < s.count { s[id] = s[id] < 0 ? s[id] * p : s[id] / p }
        }
        guard config.doSample else { return s }
        if config.temperature != 1 { for i in s.indices { s[i] /= config.temperature } }
        if config.topK > 0 && config.topK < s.count {
            // Everything below the k-th largest value goes (ties with it stay, as in transformers).
            let kth = s.sorted(by: >)[config.topK - 1]
            for i in s.indices where s[i] < kth { s[i] = -.infinity }
        }
        if config.topP < 1 {
            // Ascending order; drop the prefix whose cumulative probability is ≤ 1 − p, keeping the top token.
            let order = s.indices.sorted { s[$0] != s[$1] ? s[$0] < s[$1] : $0 < $1 }
            let m = s.max() ?? 0
            let exps = order.map { s[$0] == -.infinity ? 0 : Foundation.exp(Double(s[$0] - m)) }
            let total = exps.reduce(0, +)
            var cumulative = 0.0
            for (rank, index) in order.enumerated() where rank < order.count - 1 {
                cumulative += exps[rank] / total
                if cumulative <= 1 - Double(config.topP) { s[index] = -.infinity } else { break }
            }
        }
        return s
    }

    /// The next token: argmax (greedy) or a draw from softmax(scores).
    public func choose(_ scores: [Float], rng: inout SeededGenerator) -> Int {
        guard config.doSample else {
            var best = 0
            for i in scores.indices where scores[i] > scores[best] { best = i }
            return best
        }
        let m = scores.max() ?? 0
        let weights = scores.map { $0 == -.infinity ? 0 : Foundation.exp(Double($0 - m)) }
        let total = weights.reduce(0, +)
        let u = Double(rng.next() >> 11) * (1.0 / 9_007_199_254_740_992.0) * total
        var cumulative = 0.0
        for (i, w) in weights.enumerated() where w > 0 {
            cumulative += w
            if u < cumulative { return i }
        }
        return weights.lastIndex { $0 > 0 } ?? 0
    }
}

extension LlamaForCausalLM {
    /// Continues every prompt: the prompts are left-padded into one batch, run once through the
    /// model filling a key/value cache (prefill), then one token per row per step, each row
    /// stopping at an end-of-sequence token or after `maxNewTokens`.
    ///
    /// Every row's tokens equal those of its prompt generated alone (up to float rounding).
    /// Runs without recording gradients.
    /// - prompts: token ids, each non-empty, ids in 0..<vocab_size.
    /// - onToken: called with (row, token) for every new token as it is chosen (not for EOS).
    /// - Throws: `LlamaError.invalidInput` for empty prompts or bad settings,
    ///   `.tokenIdOutOfRange`, and `.sequenceTooLong` when a prompt exceeds max_position_embeddings.
    public func generate(prompts: [[Int]], config generation: LlamaGenerationConfig = LlamaGenerationConfig(),
                         onToken: ((_ row: Int, _ token: Int) -> Void)? = nil) throws -> [LlamaGeneration] {
        try generation.validate()
        guard !prompts.isEmpty else { throw LlamaError.invalidInput(name: "prompts", message: "needs at least one prompt") }
        if let r = prompts.firstIndex(where: \.isEmpty) {
            throw LlamaError.invalidInput(name: "prompts[\(r)]", message: "is empty; a prompt needs at least one token")
        }
        let longest = prompts.map(\.count).max()!
        if longest > config.maxPositionEmbeddings {
            throw LlamaError.sequenceTooLong(length: longest, limit: config.maxPositionEmbeddings, key: "max_position_embeddings")
        }
        let eos = Set(generation.eosTokenIds ?? config.eosTokenIds)
        let pad = config.padTokenId ?? config.eosTokenIds.first ?? 0
        let b = prompts.count
        let ids = prompts.map { [Int](repeating: pad, count: longest - $0.count) + $0 }
        let mask = prompts.map { [Int](repeating: 0, count: longest - $0.count) + [Int](repeating: 1, count: $0.count) }
        let processor = LlamaLogitsProcessor(config: generation)
        var rng = SeededGenerator(seed: generation.seed)
        var history = prompts
        var produced = [[Int]](repeating: [], count: b)
        var reasons = [LlamaFinishReason?](repeating: nil, count: b)
        if generation.maxNewTokens == 0 {
            return prompts.map { _ in LlamaGeneration(tokens: [], finishReason: .maxNewTokens) }
        }

        return try withoutGrad {
            let cache = makeCache(batch: b, capacity: Swift.min(longest + generation.maxNewTokens, config.maxPositionEmbeddings))
            var logits = try self(inputIds: ids, attentionMask: mask, cache: cache, logits: .lastToken).logits!
            while true {
                let v = config.vocabSize
                let values = logits.contiguous().scalars
                var next = [Int](repeating: pad, count: b)
                for r in 0..<b where reasons[r] == nil {
                    let row = Array(values[(r * v)..<((r + 1) * v)])
                    let token = processor.choose(processor.process(row, previous: history[r]), rng: &rng)
                    next[r] = token
                    if eos.contains(token) {
                        reasons[r] = .endOfSequence
                        continue
                    }
                    produced[r].append(token)
                    history[r].append(token)
                    onToken?(r, token)
                    if produced[r].count >= generation.maxNewTokens { reasons[r] = .maxNewTokens }
                }
                if reasons.allSatisfy({ $0 != nil }) { break }
                if cache.length + 1 > config.maxPositionEmbeddings {
                    for r in 0..<b where reasons[r] == nil { reasons[r] = .contextLimit }
                    break
                }
                logits = try self(inputIds: next.map { [$0] }, cache: cache, logits: .lastToken).logits!
            }
            return (0..<b).map { LlamaGeneration(tokens: produced[$0], finishReason: reasons[$0]!) }
        }
    }

    /// Tokenizes `texts` (without added special tokens: put a chat template's markers in the
    /// text), generates, and decodes each continuation without special tokens.
    public func generate(texts: [String], tokenizer: any Tokenizer,
                         config generation: LlamaGenerationConfig = LlamaGenerationConfig()) throws -> [String] {
        let prompts = texts.map { tokenizer.encode($0, addSpecialTokens: false) }
        return try generate(prompts: prompts, config: generation).map { tokenizer.decode($0.tokens, skipSpecialTokens: true) }
    }

    /// Answers a conversation: renders it with `template` (adding the assistant prompt),
    /// generates and decodes the reply.
    public func complete(_ messages: [ChatMessage], tokenizer: any Tokenizer, template: ChatTemplate = .smolLM2,
                         config generation: LlamaGenerationConfig = LlamaGenerationConfig()) throws -> String {
        let ids = tokenizer.encodeChat(messages, template: template, addGenerationPrompt: true)
        let result = try generate(prompts: [ids], config: generation)[0]
        return tokenizer.decode(result.tokens, skipSpecialTokens: true)
    }
}
