/// The model that turns one pre-tokenized piece into ids.
enum TokenModel {
    case bpe(BPEModel)
    case wordPiece(WordPieceModel)

    var vocab: [String: Int] {
        switch self {
        case .bpe(let m): return m.vocab
        case .wordPiece(let m): return m.vocab
        }
    }
}

/// Hugging Face decoders: how tokens become text again.
indirect enum TokenDecoder {
    /// Byte-level symbols back to bytes, then UTF-8 with replacement characters.
    case byteLevel
    /// Join with spaces except before `prefix`-continued pieces (prefix removed); `cleanup`
    /// removes the space before `. ? ! ,` and in contractions, token by token.
    case wordPiece(prefix: String, cleanup: Bool)
    /// Replace the end-of-word suffix with a space (nothing after the last token).
    case bpeSuffix(String)
    case sequence([TokenDecoder])

    func decodeChain(_ tokens: [String]) -> [String] {
        switch self {
        case .byteLevel:
            return [ByteLevel.decode(tokens)]
        case let .wordPiece(prefix, cleanup):
            return tokens.enumerated().map { i, token in
                var t = token
                if i != 0 {
                    t = t.hasScalarPrefix(prefix) ? t.droppingScalars(prefix.unicodeScalars.count) : " " + t
                }
                return cleanup ? Self.wordPieceCleanup(t) : t
            }
        case .bpeSuffix(let suffix):
            return tokens.enumerated().map { i, token in
                token.replacingAll(suffix, with: i == tokens.count - 1 ? "" : " ")
            }
        case .sequence(let steps):
            var current = tokens
            for step in steps { current = step.decodeChain(current) }
            return current
        }
    }

    private static func wordPieceCleanup(_ s: String) -> String {
        s.replacingAll(" .", with: ".")
            .replacingAll(" ?", with: "?")
            .replacingAll(" !", with: "!")
            .replacingAll(" ,", with: ",")
            .replacingAll(" ' ", with: "'")
            .replacingAll(" n't", with: "n't")
            .replacingAll(" 'm", with: "'m")
            .replacingAll(" do not", with: " don't")
            .replacingAll(" 's", with: "'s")
            .replacingAll(" 've", with: "'ve")
            .replacingAll(" 're", with: "'re")
    }
}

extension String {
    /// Replaces every non-overlapping occurrence, left to right, comparing Unicode scalars
    /// (Foundation's `replacingOccurrences` compares grapheme clusters, which is not what Rust does).
    func replacingAll(_ needle: String, with replacement: String) -> String {
        let hay = Array(unicodeScalars), pat = Array(needle.unicodeScalars)
        guard !pat.isEmpty, hay.count >= pat.count else { return self }
        var out = String.UnicodeScalarView()
        var i = 0
        var changed = false
        while i < hay.count {
            if hay[i] == pat[0], i + pat.count <= hay.count, hay[i..<(i + pat.count)].elementsEqual(pat) {
                out.append(contentsOf: replacement.unicodeScalars)
                i += pat.count
                changed = true
            } else {
                out.append(hay[i])
                i += 1
            }
        }
        return changed ? String(out) : self
    }
}

/// Everything between a text and its ids: added-token splitting, normaliser, pre-tokenizer,
/// model, post-processor wrapping, and the decoder. The public tokenizers are thin layers on it.
final class TokenizerPipeline: @unchecked Sendable {
    let added: AddedVocabulary
    let normalizer: TextNormalizer?
    let preTokenizer: PreTokenizer?
    let model: TokenModel
    /// Ids the post-processor adds around one sequence.
    let wrapping: (prefix: [Int], suffix: [Int])
    let decoder: TokenDecoder?
    let vocabularySize: Int

    private let byteLevel: Bool
    private let idToToken: [String?]
    /// Normalised added tokens decode in their normalised form (Hugging Face's `normalized_cache`).
    private let decodeForms: [Int: String]
    private let tokenToId: [String: Int]
    private let specialIds: Set<Int>

    init(added: [AddedToken], normalizer: TextNormalizer?, preTokenizer: PreTokenizer?, model: TokenModel,
         wrapping: (prefix: [Int], suffix: [Int]), decoder: TokenDecoder?) {
        self.added = AddedVocabulary(added, normalizer: normalizer)
        self.normalizer = normalizer
        self.preTokenizer = preTokenizer
        self.model = model
        self.wrapping = wrapping
        self.decoder = decoder
        byteLevel = preTokenizer?.isByteLevel ?? false
        var toId = model.vocab
        var maxId = toId.values.max() ?? -1
        for token in added {
            toId[token.content] = token.id
            maxId = max(maxId, token.id)
        }
        var table = [String?](repeating: nil, count: maxId + 1)
        for (token, id) in model.vocab { table[id] = token }
        // Added tokens win on decode, as `simple_id_to_token` is consulted first.
        for token in added { table[token.id] = token.content }
        idToToken = table
        var forms: [Int: String] = [:]
        if let normalizer {
            for token in added where token.normalized {
                let normalized = normalizer.apply(Array(token.content.unicodeScalars)).string
                if !normalized.unicodeScalars.elementsEqual(token.content.unicodeScalars) { forms[token.id] = normalized }
            }
        }
        decodeForms = forms
        tokenToId = toId
        specialIds = Set(added.filter(\.special).map(\.id))
        vocabularySize = maxId + 1
    }

    func encode(_ text: String, addSpecialTokens: Bool) -> [Int] {
        var ids: [Int] = []
        for segment in added.split(Array(text.unicodeScalars), normalizer: normalizer) {
            switch segment {
            case .token(let id):
                ids.append(id)
            case .text(let scalars):
                if scalars.isEmpty { continue }
                let pieces = preTokenizer?.split([scalars]) ?? [scalars]
                for piece in pieces {
                    let symbols = byteLevel ? ByteLevel.symbols(of: piece) : piece
                    switch model {
                    case .bpe(let bpe): ids.append(contentsOf: bpe.tokenize(symbols))
                    case .wordPiece(let wp): ids.append(contentsOf: wp.tokenize(symbols))
                    }
                }
            }
        }
        return addSpecialTokens ? wrapping.prefix + ids + wrapping.suffix : ids
    }

    func decode(_ ids: [Int], skipSpecialTokens: Bool) -> String {
        var tokens: [String] = []
        tokens.reserveCapacity(ids.count)
        for id in ids {
            guard let token = decodeForms[id] ?? token(forId: id) else { continue }
            if skipSpecialTokens && specialIds.contains(id) { continue }
            tokens.append(token)
        }
        guard let decoder else { return tokens.joined(separator: " ") }
        return decoder.decodeChain(tokens).joined()
    }

    func token(forId id: Int) -> String? {
        id >= 0 && id < idToToken.count ? idToToken[id] : nil
    }

    func id(forToken token: String) -> Int? { tokenToId[token] }

    var addedTokens: [AddedToken] { added.tokens.sorted { $0.id < $1.id } }
}
