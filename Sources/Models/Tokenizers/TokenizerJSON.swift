import Foundation

/// Reads Hugging Face `tokenizer.json` files.
///
/// Supported parts (anything else is a `TokenizerError.unsupported` naming the field):
/// - model: `BPE` (vocab, merges as "a b" strings or [a, b] pairs, unk_token,
///   continuing_subword_prefix, end_of_word_suffix, fuse_unk, byte_fallback, ignore_merges) and
///   `WordPiece` (vocab, unk_token, continuing_subword_prefix, max_input_chars_per_word);
/// - normalizer: Sequence, NFC/NFD/NFKC/NFKD, Lowercase, StripAccents, BertNormalizer,
///   Replace (a string, or the regex `\s+`), Strip, Prepend;
/// - pre_tokenizer: Sequence, ByteLevel, Digits, BertPreTokenizer, WhitespaceSplit, and Split
///   with CLIP's pattern;
/// - post_processor: TemplateProcessing (single sequence), RobertaProcessing, BertProcessing,
///   ByteLevel, Sequence;
/// - decoder: ByteLevel, WordPiece, BPEDecoder, Sequence;
/// - added_tokens with single_word / lstrip / rstrip / normalized / special.
public enum TokenizerJSON {
    /// Loads a tokenizer.json as the tokenizer type its model implies: WordPiece →
    /// `WordPieceTokenizer`; BPE with CLIP's split pattern and the `</w>` end-of-word suffix →
    /// `CLIPTokenizer`; any other BPE → `ByteLevelBPETokenizer` (which runs whatever supported
    /// normaliser / pre-tokenizer / decoder the file declares, byte-level or not).
    public static func load(contentsOf url: URL) throws -> any Tokenizer {
        let spec = try parse(contentsOf: url)
        switch spec.pipeline.model {
        case .wordPiece:
            return WordPieceTokenizer(pipeline: spec.pipeline, modelMaxLength: spec.maxLength)
        case .bpe(let bpe):
            if bpe.endOfWordSuffix == "</w>", spec.pipeline.preTokenizer?.isCLIPSplit == true {
                return CLIPTokenizer(pipeline: spec.pipeline, maxLength: spec.maxLength ?? 77)
            }
            return ByteLevelBPETokenizer(pipeline: spec.pipeline, specialTokens: SpecialTokens())
        }
    }

    struct Spec {
        var pipeline: TokenizerPipeline
        /// `truncation.max_length`, when the file sets one.
        var maxLength: Int?
    }

    static func parse(contentsOf url: URL) throws -> Spec {
        let data: Data
        do {
            data = try Data(contentsOf: url)
        } catch {
            throw TokenizerError.unreadableFile(source: url.path, reason: error.localizedDescription)
        }
        return try parse(data: data, source: url.path)
    }

    static func parse(data: Data, source: String) throws -> Spec {
        let any: Any
        do {
            any = try JSONSerialization.jsonObject(with: data)
        } catch {
            throw TokenizerError.invalidJSON(source: source, reason: "\(error)")
        }
        guard let dict = any as? [String: Any] else {
            throw TokenizerError.invalidJSON(source: source, reason: "the top level is not an object")
        }
        let root = JSONNode(dict: dict, path: "", source: source)
        let normalizer = try root.optionalObject("normalizer").map(parseNormalizer)
        let preTokenizer = try root.optionalObject("pre_tokenizer").map(parsePreTokenizer)
        let model = try parseModel(root.object("model"))
        let added = try parseAddedTokens(root)
        let vocab = model.vocab
        let wrapping = try root.optionalObject("post_processor").map { try parsePostProcessor($0, vocab: vocab, added: added) }
        let decoder = try root.optionalObject("decoder").map(parseDecoder)
        let maxLength = try root.optionalObject("truncation")?.optionalInt("max_length")
        let pipeline = TokenizerPipeline(added: added, normalizer: normalizer, preTokenizer: preTokenizer, model: model,
                                         wrapping: wrapping ?? ([], []), decoder: decoder)
        return Spec(pipeline: pipeline, maxLength: maxLength)
    }

    // MARK: - Model

    private static func parseModel(_ node: JSONNode) throws -> TokenModel {
        let type = try node.optionalString("type") ?? (node.has("merges") ? "BPE" : "WordPiece")
        guard type == "BPE" || type == "WordPiece" else {
            throw TokenizerError.unsupported(source: node.source, field: node.field("type"), value: type)
        }
        let vocab = try parseVocab(node)
        switch type {
        case "BPE":
            if let dropout = try node.optionalDouble("dropout"), dropout != 0 {
                throw TokenizerError.unsupported(source: node.source, field: node.field("dropout"), value: "\(dropout)")
            }
            let merges = try parseMerges(node)
            return .bpe(try BPEModel(
                vocab: vocab, merges: merges, unknownToken: node.optionalString("unk_token"),
                continuingSubwordPrefix: node.optionalString("continuing_subword_prefix"),
                endOfWordSuffix: node.optionalString("end_of_word_suffix"),
                fuseUnknown: node.bool("fuse_unk", default: false), byteFallback: node.bool("byte_fallback", default: false),
                ignoreMerges: node.bool("ignore_merges", default: false),
                source: node.source, mergesField: node.field("merges")))
        case "WordPiece":
            return .wordPiece(try WordPieceModel(
                vocab: vocab, unknownToken: node.optionalString("unk_token") ?? "[UNK]",
                prefix: node.optionalString("continuing_subword_prefix") ?? "##",
                maxInputCharsPerWord: node.optionalInt("max_input_chars_per_word") ?? 100,
                source: node.source, unknownField: node.field("unk_token")))
        default:
            throw TokenizerError.unsupported(source: node.source, field: node.field("type"), value: type)
        }
    }

    /// Largest id accepted (4M; real vocabularies stay under 300k), so a corrupt file cannot make
    /// the id tables huge.
    static let maxTokenId = 4_194_303

    private static func parseVocab(_ node: JSONNode) throws -> [String: Int] {
        let raw = try node.object("vocab")
        var vocab: [String: Int] = [:]
        vocab.reserveCapacity(raw.dict.count)
        for (token, value) in raw.dict {
            guard let id = JSONNode.integer(value), id >= 0, id <= maxTokenId else {
                throw TokenizerError.invalidField(source: node.source, field: raw.field(token),
                                                  reason: "the id must be an integer in 0...\(maxTokenId)")
            }
            vocab[token] = id
        }
        return vocab
    }

    private static func parseMerges(_ node: JSONNode) throws -> [(String, String)] {
        let items = try node.array("merges")
        var merges: [(String, String)] = []
        merges.reserveCapacity(items.count)
        let field = node.field("merges")
        for (i, item) in items.enumerated() {
            if let line = item as? String {
                merges.append(try splitMerge(line, source: node.source, field: field, line: i))
            } else if let pair = item as? [Any], pair.count == 2, let a = pair[0] as? String, let b = pair[1] as? String {
                merges.append((a, b))
            } else {
                throw TokenizerError.badMerge(source: node.source, field: field, line: i, text: "\(item)")
            }
        }
        return merges
    }

    /// "a b" → ("a", "b"); anything but exactly two parts around one space is an error.
    static func splitMerge(_ line: String, source: String, field: String, line number: Int) throws -> (String, String) {
        // Split on scalars: a space followed by a combining mark is one `Character`.
        let parts = line.unicodeScalars.split(separator: " ", omittingEmptySubsequences: false)
        guard parts.count == 2 else {
            throw TokenizerError.badMerge(source: source, field: field, line: number, text: line)
        }
        return (String(parts[0]), String(parts[1]))
    }

    private static func parseAddedTokens(_ root: JSONNode) throws -> [AddedToken] {
        guard root.has("added_tokens") else { return [] }
        var out: [AddedToken] = []
        for (i, item) in try root.array("added_tokens").enumerated() {
            guard let dict = item as? [String: Any] else {
                throw TokenizerError.invalidField(source: root.source, field: "added_tokens[\(i)]", reason: "not an object")
            }
            let node = JSONNode(dict: dict, path: "added_tokens[\(i)]", source: root.source)
            guard let id = try node.optionalInt("id"), id >= 0, id <= maxTokenId else {
                throw TokenizerError.invalidField(source: root.source, field: node.field("id"),
                                                  reason: "must be an integer in 0...\(maxTokenId)")
            }
            out.append(AddedToken(
                content: try node.string("content"), id: id, special: try node.bool("special", default: false),
                singleWord: try node.bool("single_word", default: false), leftStrip: try node.bool("lstrip", default: false),
                rightStrip: try node.bool("rstrip", default: false), normalized: try node.bool("normalized", default: true)))
        }
        return out
    }

    // MARK: - Normalizer, pre-tokenizer, post-processor, decoder

    private static func parseNormalizer(_ node: JSONNode) throws -> TextNormalizer {
        let type = try node.string("type")
        switch type {
        case "Sequence":
            return .sequence(try node.objects("normalizers").map(parseNormalizer))
        case "NFC": return .unicode(.nfc)
        case "NFD": return .unicode(.nfd)
        case "NFKC": return .unicode(.nfkc)
        case "NFKD": return .unicode(.nfkd)
        case "Lowercase": return .lowercase
        case "StripAccents": return .stripAccents
        case "BertNormalizer":
            let lowercase = try node.bool("lowercase", default: true)
            return .bert(cleanText: try node.bool("clean_text", default: true),
                         handleChineseChars: try node.bool("handle_chinese_chars", default: true),
                         stripAccents: try node.optionalBool("strip_accents") ?? lowercase, lowercase: lowercase)
        case "Replace":
            let pattern = try node.object("pattern")
            let content = Array(try node.string("content").unicodeScalars)
            if let literal = try pattern.optionalString("String") {
                return .replace(pattern: .literal(Array(literal.unicodeScalars)), content: content)
            }
            let regex = try pattern.string("Regex")
            guard regex == #"\s+"# else {
                throw TokenizerError.unsupported(source: node.source, field: pattern.field("Regex"), value: regex)
            }
            return .replace(pattern: .whitespaceRuns, content: content)
        case "Strip":
            return .strip(left: try node.bool("strip_left", default: true), right: try node.bool("strip_right", default: true))
        case "Prepend":
            return .prepend(Array(try node.string("prepend").unicodeScalars))
        default:
            throw TokenizerError.unsupported(source: node.source, field: node.field("type"), value: type)
        }
    }

    static let clipSplitPattern = #"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"#

    private static func parsePreTokenizer(_ node: JSONNode) throws -> PreTokenizer {
        let type = try node.string("type")
        switch type {
        case "Sequence":
            return .sequence(try node.objects("pretokenizers").map(parsePreTokenizer))
        case "ByteLevel":
            return .byteLevel(addPrefixSpace: try node.bool("add_prefix_space", default: true),
                              useRegex: try node.bool("use_regex", default: true))
        case "Digits":
            return .digits(individual: try node.bool("individual_digits", default: false))
        case "BertPreTokenizer":
            return .bert
        case "WhitespaceSplit":
            return .whitespaceSplit
        case "Split":
            let pattern = try node.object("pattern")
            let regex = try pattern.optionalString("Regex") ?? pattern.string("String")
            let behavior = try node.string("behavior")
            let invert = try node.bool("invert", default: false)
            guard regex == clipSplitPattern, behavior == "Removed", invert else {
                throw TokenizerError.unsupported(source: node.source, field: node.field("pattern"),
                                                 value: "\(regex) (behavior \(behavior), invert \(invert))")
            }
            return .clipSplit
        default:
            throw TokenizerError.unsupported(source: node.source, field: node.field("type"), value: type)
        }
    }

    private static func parsePostProcessor(_ node: JSONNode, vocab: [String: Int],
                                           added: [AddedToken]) throws -> (prefix: [Int], suffix: [Int]) {
        let type = try node.string("type")
        switch type {
        case "ByteLevel":
            return ([], [])
        case "Sequence":
            var prefix: [Int] = [], suffix: [Int] = []
            for step in try node.objects("processors") {
                let (p, s) = try parsePostProcessor(step, vocab: vocab, added: added)
                prefix = p + prefix
                suffix += s
            }
            return (prefix, suffix)
        case "RobertaProcessing", "BertProcessing":
            func tokenId(_ key: String) throws -> Int {
                let pair = try node.array(key)
                guard pair.count == 2, let id = JSONNode.integer(pair[1]) else {
                    throw TokenizerError.invalidField(source: node.source, field: node.field(key),
                                                      reason: "expected [token, id]")
                }
                return id
            }
            return ([try tokenId("cls")], [try tokenId("sep")])
        case "TemplateProcessing":
            let specials = try node.optionalObject("special_tokens")
            var prefix: [Int] = [], suffix: [Int] = []
            var seenSequence = false
            for (i, item) in try node.array("single").enumerated() {
                let field = node.field("single[\(i)]")
                guard let dict = item as? [String: Any] else {
                    throw TokenizerError.invalidField(source: node.source, field: field, reason: "not an object")
                }
                if dict["Sequence"] != nil {
                    seenSequence = true
                    continue
                }
                guard let special = dict["SpecialToken"] as? [String: Any], let name = special["id"] as? String else {
                    throw TokenizerError.invalidField(source: node.source, field: field,
                                                      reason: "expected Sequence or SpecialToken")
                }
                var ids: [Int]
                if let entry = specials?.dict[name] as? [String: Any], let list = entry["ids"] as? [Any] {
                    ids = list.compactMap(JSONNode.integer)
                } else if let id = added.first(where: { $0.content == name })?.id ?? vocab[name] {
                    ids = [id]
                } else {
                    throw TokenizerError.missingToken(source: node.source, field: field, token: name)
                }
                if seenSequence { suffix += ids } else { prefix += ids }
            }
            return (prefix, suffix)
        default:
            throw TokenizerError.unsupported(source: node.source, field: node.field("type"), value: type)
        }
    }

    private static func parseDecoder(_ node: JSONNode) throws -> TokenDecoder {
        let type = try node.string("type")
        switch type {
        case "ByteLevel": return .byteLevel
        case "WordPiece":
            return .wordPiece(prefix: try node.optionalString("prefix") ?? "##", cleanup: try node.bool("cleanup", default: true))
        case "BPEDecoder":
            return .bpeSuffix(try node.optionalString("suffix") ?? "</w>")
        case "Sequence":
            return .sequence(try node.objects("decoders").map(parseDecoder))
        default:
            throw TokenizerError.unsupported(source: node.source, field: node.field("type"), value: type)
        }
    }
}

/// A JSON object with its dotted path, so every error names the field.
struct JSONNode {
    let dict: [String: Any]
    let path: String
    let source: String

    func field(_ key: String) -> String { path.isEmpty ? key : "\(path).\(key)" }

    func has(_ key: String) -> Bool {
        guard let v = dict[key] else { return false }
        return !(v is NSNull)
    }

    static func integer(_ value: Any) -> Int? {
        if let n = value as? NSNumber {
            let d = n.doubleValue
            guard d == d.rounded(), abs(d) < 1e15 else { return nil }
            return n.intValue
        }
        return value as? Int
    }

    private func value(_ key: String) throws -> Any {
        guard let v = dict[key], !(v is NSNull) else {
            throw TokenizerError.missingField(source: source, field: field(key))
        }
        return v
    }

    private func wrongType(_ key: String, _ expected: String) -> TokenizerError {
        .invalidField(source: source, field: field(key), reason: "expected \(expected)")
    }

    func object(_ key: String) throws -> JSONNode {
        guard let d = try value(key) as? [String: Any] else { throw wrongType(key, "an object") }
        return JSONNode(dict: d, path: field(key), source: source)
    }

    func optionalObject(_ key: String) throws -> JSONNode? {
        has(key) ? try object(key) : nil
    }

    func objects(_ key: String) throws -> [JSONNode] {
        try array(key).enumerated().map { i, item in
            guard let d = item as? [String: Any] else { throw wrongType("\(key)[\(i)]", "an object") }
            return JSONNode(dict: d, path: field("\(key)[\(i)]"), source: source)
        }
    }

    func array(_ key: String) throws -> [Any] {
        guard let a = try value(key) as? [Any] else { throw wrongType(key, "an array") }
        return a
    }

    func string(_ key: String) throws -> String {
        guard let s = try value(key) as? String else { throw wrongType(key, "a string") }
        return s
    }

    func optionalString(_ key: String) throws -> String? {
        has(key) ? try string(key) : nil
    }

    func optionalInt(_ key: String) throws -> Int? {
        guard has(key) else { return nil }
        guard let i = JSONNode.integer(dict[key]!) else { throw wrongType(key, "an integer") }
        return i
    }

    func optionalDouble(_ key: String) throws -> Double? {
        guard has(key) else { return nil }
        guard let n = dict[key] as? NSNumber else { throw wrongType(key, "a number") }
        return n.doubleValue
    }

    func optionalBool(_ key: String) throws -> Bool? {
        guard has(key) else { return nil }
        guard let b = dict[key] as? Bool else { throw wrongType(key, "true or false") }
        return b
    }

    func bool(_ key: String, default fallback: Bool) throws -> Bool {
        try optionalBool(key) ?? fallback
    }
}
