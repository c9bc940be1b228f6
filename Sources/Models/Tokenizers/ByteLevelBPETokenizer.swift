import Foundation

/// GPT-2-style byte-level BPE (SmolLM2, GPT-2, Llama 3, Qwen …).
///
/// encode: split out added tokens (`<|im_start|>`, `<|im_end|>`, `<|endoftext|>` …) → pre-tokenize
/// (SmolLM2: every digit alone, then the GPT-2 pattern) → each piece's UTF-8 bytes as byte-level
/// symbols → merges by rank → ids. decode: tokens → bytes → UTF-8 with U+FFFD for invalid bytes.
public final class ByteLevelBPETokenizer: Tokenizer, @unchecked Sendable {
    let pipeline: TokenizerPipeline
    public let specialTokens: SpecialTokens

    /// How text is cut into pieces before the merges, by llama.cpp's `tokenizer.ggml.pre` name.
    public enum PreTokenization: String, Sendable {
        /// The GPT-2 pattern alone (`tokenizer.ggml.pre` "gpt2", "mpt", "olmo", "jais").
        case gpt2
        /// Every `\p{N}` scalar alone, then the GPT-2 pattern (SmolLM2, StarCoder: "smollm",
        /// "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva").
        case individualDigits

        /// The pre-tokenization llama.cpp's `tokenizer.ggml.pre` value names.
        /// - Throws: `TokenizerError.unsupported` for any other value.
        public init(ggmlPre: String, source: String = "GGUF metadata") throws {
            switch ggmlPre {
            case "gpt2", "mpt", "olmo", "jais": self = .gpt2
            case "smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva":
                self = .individualDigits
            default:
                throw TokenizerError.unsupported(source: source, field: "tokenizer.ggml.pre", value: ggmlPre)
            }
        }

        var preTokenizer: PreTokenizer {
            let byteLevel = PreTokenizer.byteLevel(addPrefixSpace: false, useRegex: true)
            switch self {
            case .gpt2: return byteLevel
            case .individualDigits: return .sequence([.digits(individual: true), byteLevel])
            }
        }
    }

    init(pipeline: TokenizerPipeline, specialTokens: SpecialTokens) {
        self.pipeline = pipeline
        self.specialTokens = specialTokens
    }

    /// Builds the tokenizer from the arrays a GGUF file stores (`tokenizer.ggml.tokens`,
    /// `.merges`, `.token_type`).
    ///
    /// - Parameters:
    ///   - tokens: the vocabulary in id order, in byte-level form (`Ġ` for a space).
    ///   - merges: "left right" pairs, rank 0 first.
    ///   - tokenTypes: llama.cpp token types; 3 (control) become special added tokens and 4
    ///     (user-defined) plain added tokens, both matched verbatim in the text. Ignored when
    ///     `addedTokens` is given.
    ///   - specialTokens: bos / eos / pad / unk ids (`tokenizer.ggml.bos_token_id` …).
    ///   - addBosToken: prefix every encoding with `specialTokens.bos` (`tokenizer.ggml.add_bos_token`).
    ///   - source: names the data in errors, e.g. the GGUF path.
    /// - Throws: `TokenizerError.badMerge` for a merge that is not two tokens, `.missingToken`
    ///   for a merge whose parts or result are not in `tokens`, `.invalidField` for mismatched arrays.
    public convenience init(tokens: [String], merges: [String], tokenTypes: [Int]? = nil,
                            addedTokens: [AddedToken]? = nil, specialTokens: SpecialTokens = SpecialTokens(),
                            preTokenization: PreTokenization = .gpt2, addBosToken: Bool = false,
                            source: String = "arrays") throws {
        if let tokenTypes, tokenTypes.count != tokens.count {
            throw TokenizerError.invalidField(source: source, field: "tokenizer.ggml.token_type",
                                              reason: "\(tokenTypes.count) types for \(tokens.count) tokens")
        }
        var vocab: [String: Int] = [:]
        vocab.reserveCapacity(tokens.count)
        for (id, token) in tokens.enumerated() { vocab[token] = id }
        let pairs = try merges.enumerated().map { i, line in
            try TokenizerJSON.splitMerge(line, source: source, field: "tokenizer.ggml.merges", line: i)
        }
        let model = try BPEModel(vocab: vocab, merges: pairs, source: source, mergesField: "tokenizer.ggml.merges")
        var added = addedTokens ?? []
        for (i, token) in added.enumerated() where token.id < 0 || token.id > TokenizerJSON.maxTokenId {
            throw TokenizerError.invalidField(source: source, field: "addedTokens[\(i)].id",
                                              reason: "must be in 0...\(TokenizerJSON.maxTokenId)")
        }
        if addedTokens == nil, let tokenTypes {
            for (id, type) in tokenTypes.enumerated() where type == 3 || type == 4 {
                added.append(AddedToken(content: tokens[id], id: id, special: type == 3))
            }
        }
        var prefix: [Int] = []
        if addBosToken {
            guard let bos = specialTokens.bos, bos >= 0, bos < tokens.count else {
                throw TokenizerError.invalidField(source: source, field: "tokenizer.ggml.bos_token_id",
                                                  reason: "add_bos_token is set but the bos id is missing or out of range")
            }
            prefix = [bos]
        }
        let pipeline = TokenizerPipeline(added: added, normalizer: nil, preTokenizer: preTokenization.preTokenizer,
                                         model: .bpe(model), wrapping: (prefix, []), decoder: .byteLevel)
        self.init(pipeline: pipeline, specialTokens: specialTokens)
    }

    /// Reads a `tokenizer.json` whose model is BPE. A tokenizer.json does not say which tokens
    /// are bos / eos / pad (tokenizer_config.json does), so pass them in `specialTokens`.
    public convenience init(tokenizerJSON url: URL, specialTokens: SpecialTokens = SpecialTokens()) throws {
        let spec = try TokenizerJSON.parse(contentsOf: url)
        guard case .bpe = spec.pipeline.model else {
            throw TokenizerError.unsupported(source: url.path, field: "model.type", value: "WordPiece (expected BPE)")
        }
        self.init(pipeline: spec.pipeline, specialTokens: specialTokens)
    }

    public var vocabularySize: Int { pipeline.vocabularySize }
    public var addedTokens: [AddedToken] { pipeline.addedTokens }
    public var sequenceWrapping: (prefix: [Int], suffix: [Int]) { pipeline.wrapping }

    public func encode(_ text: String, addSpecialTokens: Bool) -> [Int] {
        pipeline.encode(text, addSpecialTokens: addSpecialTokens)
    }

    public func decode(_ ids: [Int], skipSpecialTokens: Bool) -> String {
        pipeline.decode(ids, skipSpecialTokens: skipSpecialTokens)
    }

    public func id(forToken token: String) -> Int? { pipeline.id(forToken: token) }
    public func token(forId id: Int) -> String? { pipeline.token(forId: id) }
}
