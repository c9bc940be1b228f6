/// The normalisers a `tokenizer.json` may declare that Sura implements, with Hugging Face
/// `tokenizers` semantics. Each works on Unicode scalars.
indirect enum TextNormalizer {
    /// NFC, NFD, NFKC or NFKD.
    case unicode(ScalarNormalization)
    /// Per-scalar full lower-case mapping.
    case lowercase
    /// Drops non-spacing marks (Mn); usually preceded by NFD.
    case stripAccents
    /// BERT's cleaning: drop NUL, U+FFFD and control characters, map whitespace to " ",
    /// surround CJK ideographs with spaces, optionally NFD + drop marks, optionally lower-case.
    case bert(cleanText: Bool, handleChineseChars: Bool, stripAccents: Bool, lowercase: Bool)
    /// Replace every occurrence of a literal, or every run of `\s`, by `content`.
    case replace(pattern: ReplacePattern, content: [Unicode.Scalar])
    /// Trim whitespace at the start and/or the end.
    case strip(left: Bool, right: Bool)
    /// Prefix a non-empty text with `content`.
    case prepend([Unicode.Scalar])
    case sequence([TextNormalizer])

    enum ReplacePattern {
        case literal([Unicode.Scalar])
        /// The regular expression `\s+`.
        case whitespaceRuns
    }

    func apply(_ input: [Unicode.Scalar]) -> [Unicode.Scalar] {
        switch self {
        case .unicode(let form):
            return form.apply(input)
        case .lowercase:
            var out: [Unicode.Scalar] = []
            out.reserveCapacity(input.count)
            for s in input { ScalarClass.appendLowercase(s, to: &out) }
            return out
        case .stripAccents:
            return input.filter { $0.properties.generalCategory != .nonspacingMark }
        case let .bert(cleanText, handleChineseChars, stripAccents, lowercase):
            return Self.bertNormalize(input, cleanText: cleanText, handleChineseChars: handleChineseChars,
                                      stripAccents: stripAccents, lowercase: lowercase)
        case let .replace(pattern, content):
            return Self.replace(input, pattern: pattern, content: content)
        case let .strip(left, right):
            var lo = 0, hi = input.count
            if left { while lo < hi, ScalarClass.isWhitespace(input[lo]) { lo += 1 } }
            if right { while hi > lo, ScalarClass.isWhitespace(input[hi - 1]) { hi -= 1 } }
            return Array(input[lo..<hi])
        case .prepend(let content):
            return input.isEmpty ? input : content + input
        case .sequence(let steps):
            var text = input
            for step in steps { text = step.apply(text) }
            return text
        }
    }

    private static func bertNormalize(_ input: [Unicode.Scalar], cleanText: Bool, handleChineseChars: Bool,
                                      stripAccents: Bool, lowercase: Bool) -> [Unicode.Scalar] {
        var text: [Unicode.Scalar] = []
        text.reserveCapacity(input.count)
        for s in input {
            if cleanText {
                if s.value == 0 || s.value == 0xFFFD || ScalarClass.isBertControl(s) { continue }
                // Tab, newline and carriage return are controls, but BERT counts them as spaces.
                if ScalarClass.isWhitespace(s) {
                    text.append(" ")
                    continue
                }
            }
            if handleChineseChars && ScalarClass.isCJKIdeograph(s) {
                text.append(" ")
                text.append(s)
                text.append(" ")
            } else {
                text.append(s)
            }
        }
        if stripAccents {
            text = ScalarNormalization.nfd.apply(text).filter { $0.properties.generalCategory != .nonspacingMark }
        }
        if lowercase { text = TextNormalizer.lowercase.apply(text) }
        return text
    }

    private static func replace(_ input: [Unicode.Scalar], pattern: ReplacePattern,
                                content: [Unicode.Scalar]) -> [Unicode.Scalar] {
        var out: [Unicode.Scalar] = []
        out.reserveCapacity(input.count)
        var i = 0
        switch pattern {
        case .whitespaceRuns:
            while i < input.count {
                if ScalarClass.isWhitespace(input[i]) {
                    while i < input.count, ScalarClass.isWhitespace(input[i]) { i += 1 }
                    out.append(contentsOf: content)
                } else {
                    out.append(input[i])
                    i += 1
                }
            }
        case .literal(let needle):
            guard !needle.isEmpty else { return input }
            while i < input.count {
                if i + needle.count <= input.count, input[i..<(i + needle.count)].elementsEqual(needle) {
                    out.append(contentsOf: content)
                    i += needle.count
                } else {
                    out.append(input[i])
                    i += 1
                }
            }
        }
        return out
    }
}
