import Foundation

/// WordPiece: greedy longest-match-first over one word, continuation pieces carrying `##`;
/// a word with no full segmentation, or longer than `maxInputCharsPerWord` scalars, is `[UNK]`.
final class WordPieceModel: @unchecked Sendable {
    let vocab: [String: Int]
    let unknownId: Int
    let prefix: String
    let maxInputCharsPerWord: Int
    /// The longest vocabulary entry in scalars: no longer piece can match, so the greedy search
    /// starts there instead of at the end of the word (same result, linear time).
    private let longestEntry: Int

    init(vocab: [String: Int], unknownToken: String, prefix: String = "##", maxInputCharsPerWord: Int = 100,
         source: String, unknownField: String) throws {
        guard let unk = vocab[unknownToken] else {
            throw TokenizerError.missingToken(source: source, field: unknownField, token: unknownToken)
        }
        self.vocab = vocab
        unknownId = unk
        self.prefix = prefix
        self.maxInputCharsPerWord = maxInputCharsPerWord
        longestEntry = vocab.keys.map { $0.unicodeScalars.count }.max() ?? 0
    }

    func tokenize(_ word: [Unicode.Scalar]) -> [Int] {
        if word.isEmpty { return [] }
        if word.count > maxInputCharsPerWord { return [unknownId] }
        var ids: [Int] = []
        var start = 0
        while start < word.count {
            var end = min(word.count, start + longestEntry)
            var found: Int?
            while start < end {
                var candidate = start > 0 ? prefix : ""
                candidate.unicodeScalars.append(contentsOf: word[start..<end])
                if let id = vocab[candidate] {
                    found = id
                    break
                }
                end -= 1
            }
            guard let id = found else { return [unknownId] }
            ids.append(id)
            start = end
        }
        return ids
    }
}

/// BERT's uncased WordPiece tokenizer (all-MiniLM-L6-v2 and friends):
/// BertNormalizer (drop control characters, whitespace → " ", spaces around CJK ideographs,
/// NFD + drop accents, lower-case) → split on whitespace and punctuation → WordPiece →
/// `[CLS] … [SEP]`. Decoding joins pieces, glues `##` continuations and removes the space before
/// `. , ! ?` and in contractions.
public final class WordPieceTokenizer: Tokenizer, @unchecked Sendable {
    let pipeline: TokenizerPipeline
    public let specialTokens: SpecialTokens
    /// `truncation.max_length` of the tokenizer.json it came from, if any (MiniLM: 128).
    public let modelMaxLength: Int?

    init(pipeline: TokenizerPipeline, modelMaxLength: Int?) {
        self.pipeline = pipeline
        self.modelMaxLength = modelMaxLength
        let id = { pipeline.id(forToken: $0) }
        specialTokens = SpecialTokens(pad: id("[PAD]"), unk: id("[UNK]"), cls: id("[CLS]"), sep: id("[SEP]"),
                                      mask: id("[MASK]"))
    }

    /// Builds BERT's tokenizer from a vocabulary listed one token per line (line n is id n).
    ///
    /// - Parameters:
    ///   - lowercase: BERT "uncased" (also strips accents, as BertNormalizer does by default).
    ///   - source: names the vocabulary in errors.
    /// - Throws: `TokenizerError.missingToken` when `[UNK]`, `[CLS]` or `[SEP]` is not in the vocabulary.
    public convenience init(vocabulary: [String], lowercase: Bool = true, source: String = "vocabulary") throws {
        var vocab: [String: Int] = [:]
        // A repeated line keeps its last index, as both Hugging Face readers do.
        for (i, token) in vocabulary.enumerated() { vocab[token] = i }
        for required in ["[CLS]", "[SEP]"] where vocab[required] == nil {
            throw TokenizerError.missingToken(source: source, field: "special tokens", token: required)
        }
        let model = try WordPieceModel(vocab: vocab, unknownToken: "[UNK]", source: source, unknownField: "unk_token")
        let added = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"].compactMap { token in
            vocab[token].map { AddedToken(content: token, id: $0) }
        }
        let normalizer = TextNormalizer.bert(cleanText: true, handleChineseChars: true, stripAccents: lowercase,
                                             lowercase: lowercase)
        let pipeline = TokenizerPipeline(
            added: added, normalizer: normalizer, preTokenizer: .bert, model: .wordPiece(model),
            wrapping: ([vocab["[CLS]"]!], [vocab["[SEP]"]!]), decoder: .wordPiece(prefix: "##", cleanup: true))
        self.init(pipeline: pipeline, modelMaxLength: nil)
    }

    /// Reads a BERT `vocab.txt` (one token per line, UTF-8).
    public convenience init(vocabTxt url: URL, lowercase: Bool = true) throws {
        let data: Data
        do {
            data = try Data(contentsOf: url)
        } catch {
            throw TokenizerError.unreadableFile(source: url.path, reason: error.localizedDescription)
        }
        guard let text = String(data: data, encoding: .utf8) else {
            throw TokenizerError.invalidField(source: url.path, field: "vocab.txt", reason: "not UTF-8 text")
        }
        var lines = text.unicodeScalars.split(separator: "\n", omittingEmptySubsequences: false).map {
            Array($0.last == "\r" ? $0.dropLast() : $0[...]).string
        }
        if lines.last == "" { lines.removeLast() }
        let tokens = lines
        try self.init(vocabulary: tokens, lowercase: lowercase, source: url.path)
    }

    /// Reads a `tokenizer.json` whose model is WordPiece.
    public convenience init(tokenizerJSON url: URL) throws {
        let spec = try TokenizerJSON.parse(contentsOf: url)
        guard case .wordPiece = spec.pipeline.model else {
            throw TokenizerError.unsupported(source: url.path, field: "model.type", value: "BPE (expected WordPiece)")
        }
        self.init(pipeline: spec.pipeline, modelMaxLength: spec.maxLength)
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
