import Foundation

/// CLIP's text tokenizer as Hugging Face builds it (transformers' `CLIPTokenizer` on the
/// `tokenizers` backend, i.e. without ftfy): NFC → every whitespace run to one space →
/// lower-case → keep the matches of CLIP's split pattern (words, single digits, punctuation runs,
/// contractions) → byte-level symbols → BPE where each word's last symbol carries `</w>` →
/// `<|startoftext|> … <|endoftext|>`. Text encoders take rows padded / truncated to `maxLength`
/// (77), padded with `<|endoftext|>`.
public final class CLIPTokenizer: Tokenizer, @unchecked Sendable {
    let pipeline: TokenizerPipeline
    public let specialTokens: SpecialTokens
    /// The text encoder's context length (77 for every released CLIP).
    public let maxLength: Int

    public static let startOfText = "<|startoftext|>"
    public static let endOfText = "<|endoftext|>"

    init(pipeline: TokenizerPipeline, maxLength: Int) {
        self.pipeline = pipeline
        self.maxLength = maxLength
        let bos = pipeline.id(forToken: Self.startOfText), eos = pipeline.id(forToken: Self.endOfText)
        specialTokens = SpecialTokens(bos: bos, eos: eos, pad: eos, unk: eos)
    }

    /// Builds the tokenizer from CLIP's vocab.json contents and merges.
    ///
    /// - Parameters:
    ///   - vocab: token → id, byte-level tokens with `</w>` marking word ends.
    ///   - merges: "left right" pairs, rank 0 first (no "#version" header).
    ///   - source: names the data in errors.
    /// - Throws: `TokenizerError.missingToken` when `<|startoftext|>` or `<|endoftext|>` is not in
    ///   the vocabulary or a merge's parts are not; `.badMerge` for a merge that is not two tokens.
    public convenience init(vocab: [String: Int], merges: [String], maxLength: Int = 77,
                            source: String = "vocabulary") throws {
        let pairs = try merges.enumerated().map { i, line in
            try TokenizerJSON.splitMerge(line, source: source, field: "merges", line: i + 1)
        }
        for token in [Self.startOfText, Self.endOfText] where vocab[token] == nil {
            throw TokenizerError.missingToken(source: source, field: "vocab", token: token)
        }
        let model = try BPEModel(vocab: vocab, merges: pairs, unknownToken: Self.endOfText,
                                 continuingSubwordPrefix: "", endOfWordSuffix: "</w>",
                                 source: source, mergesField: "merges")
        let bos = vocab[Self.startOfText]!, eos = vocab[Self.endOfText]!
        let added = [AddedToken(content: Self.startOfText, id: bos), AddedToken(content: Self.endOfText, id: eos)]
        let normalizer = TextNormalizer.sequence([.unicode(.nfc), .replace(pattern: .whitespaceRuns, content: [" "]),
                                                  .lowercase])
        let preTokenizer = PreTokenizer.sequence([.clipSplit, .byteLevel(addPrefixSpace: false, useRegex: true)])
        let pipeline = TokenizerPipeline(added: added, normalizer: normalizer, preTokenizer: preTokenizer,
                                         model: .bpe(model), wrapping: ([bos], [eos]), decoder: .byteLevel)
        self.init(pipeline: pipeline, maxLength: maxLength)
    }

    /// Reads CLIP's `vocab.json` and `merges.txt` (a first line starting with "#version" is skipped).
    public convenience init(vocabJSON: URL, mergesTxt: URL, maxLength: Int = 77) throws {
        let vocabData: Data, mergesData: Data
        do {
            vocabData = try Data(contentsOf: vocabJSON)
        } catch {
            throw TokenizerError.unreadableFile(source: vocabJSON.path, reason: error.localizedDescription)
        }
        do {
            mergesData = try Data(contentsOf: mergesTxt)
        } catch {
            throw TokenizerError.unreadableFile(source: mergesTxt.path, reason: error.localizedDescription)
        }
        let any: Any
        do {
            any = try JSONSerialization.jsonObject(with: vocabData)
        } catch {
            throw TokenizerError.invalidJSON(source: vocabJSON.path, reason: "\(error)")
        }
        guard let dict = any as? [String: Any] else {
            throw TokenizerError.invalidJSON(source: vocabJSON.path, reason: "the top level is not an object")
        }
        var vocab: [String: Int] = [:]
        for (token, value) in dict {
            guard let id = JSONNode.integer(value), id >= 0, id <= TokenizerJSON.maxTokenId else {
                throw TokenizerError.invalidField(source: vocabJSON.path, field: token,
                                                  reason: "the id must be an integer in 0...\(TokenizerJSON.maxTokenId)")
            }
            vocab[token] = id
        }
        guard let text = String(data: mergesData, encoding: .utf8) else {
            throw TokenizerError.invalidField(source: mergesTxt.path, field: "merges.txt", reason: "not UTF-8 text")
        }
        var lines = text.unicodeScalars.split(separator: "\n", omittingEmptySubsequences: false).map {
            Array($0.last == "\r" ? $0.dropLast() : $0[...]).string
        }
        if lines.last == "" { lines.removeLast() }
        // Line numbers in errors count from the top of the file, header included.
        var merges: [String] = []
        for (i, line) in lines.enumerated() {
            if line.hasScalarPrefix("#version") { continue }
            _ = try TokenizerJSON.splitMerge(line, source: mergesTxt.path, field: "merges.txt", line: i + 1)
            merges.append(line)
        }
        try self.init(vocab: vocab, merges: merges, maxLength: maxLength, source: vocabJSON.path)
    }

    /// Reads a CLIP `tokenizer.json` (BPE with the `</w>` suffix).
    public convenience init(tokenizerJSON url: URL) throws {
        let spec = try TokenizerJSON.parse(contentsOf: url)
        guard case .bpe(let bpe) = spec.pipeline.model, bpe.endOfWordSuffix == "</w>",
              spec.pipeline.preTokenizer?.isCLIPSplit == true else {
            throw TokenizerError.unsupported(source: url.path, field: "model",
                                             value: "not CLIP (expected BPE with suffix </w> and CLIP's Split pre-tokenizer)")
        }
        self.init(pipeline: spec.pipeline, maxLength: spec.maxLength ?? 77)
    }

    public var vocabularySize: Int { pipeline.vocabularySize }
    public var addedTokens: [AddedToken] { pipeline.addedTokens }
    public var sequenceWrapping: (prefix: [Int], suffix: [Int]) { pipeline.wrapping }

    public func encode(_ text: String, addSpecialTokens: Bool) -> [Int] {
        pipeline.encode(text, addSpecialTokens: addSpecialTokens)
    }

    /// Like transformers' CLIPTokenizer: byte-level decode, every `</w>` becomes a space, then
    /// whitespace is trimmed at both ends (Python `str.strip`).
    public func decode(_ ids: [Int], skipSpecialTokens: Bool) -> String {
        let text = pipeline.decode(ids, skipSpecialTokens: skipSpecialTokens).replacingAll("</w>", with: " ")
        let scalars = Array(text.unicodeScalars)
        var lo = 0, hi = scalars.count
        while lo < hi, ScalarClass.isPythonSpace(scalars[lo]) { lo += 1 }
        while hi > lo, ScalarClass.isPythonSpace(scalars[hi - 1]) { hi -= 1 }
        return Array(scalars[lo..<hi]).string
    }

    public func id(forToken token: String) -> Int? { pipeline.id(forToken: token) }
    public func token(forId id: Int) -> String? { pipeline.token(forId: id) }

    /// The text encoder's input: each row `<|startoftext|> … <|endoftext|>` truncated to
    /// `maxLength` and padded to exactly `maxLength` with `<|endoftext|>`.
    ///
    /// - Returns: ids and attention mask, `[texts.count][maxLength]`.
    public func encodeForTextEncoder(_ texts: [String]) -> BatchEncoding {
        encodeBatch(texts, addSpecialTokens: true, maxLength: maxLength, padding: .fixed(maxLength),
                    padSide: .right, padId: specialTokens.pad)
    }
}
