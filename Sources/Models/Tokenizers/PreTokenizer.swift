/// The pre-tokenizers a `tokenizer.json` may declare that Sura implements. Each step splits every
/// piece the previous step produced, as Hugging Face `tokenizers` does.
///
/// The regular expressions are hand-written scanners over Unicode scalars (Swift's `Regex` is far
/// too slow here); each one reproduces the backtracking regex's leftmost-first alternation exactly.
indirect enum PreTokenizer {
    /// GPT-2 byte-level: optionally prefix a space, split with the GPT-2 pattern
    /// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+` (pieces keep
    /// every character), then (in the model) map UTF-8 bytes to the byte-level alphabet.
    case byteLevel(addPrefixSpace: Bool, useRegex: Bool)
    /// Split numbers out: each `\p{N}` scalar alone (individual) or each run of them.
    case digits(individual: Bool)
    /// CLIP's split: keep the matches of
    /// `<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+`,
    /// drop everything between them (whitespace).
    case clipSplit
    /// BERT: drop whitespace, isolate each punctuation scalar.
    case bert
    /// Drop whitespace.
    case whitespaceSplit
    case sequence([PreTokenizer])

    /// Whether CLIP's split is one of the steps.
    var isCLIPSplit: Bool {
        switch self {
        case .clipSplit: return true
        case .sequence(let steps): return steps.contains { $0.isCLIPSplit }
        default: return false
        }
    }

    /// Whether the pieces must be turned into byte-level symbols before the model sees them.
    var isByteLevel: Bool {
        switch self {
        case .byteLevel: return true
        case .sequence(let steps): return steps.contains { $0.isByteLevel }
        default: return false
        }
    }

    func split(_ pieces: [[Unicode.Scalar]]) -> [[Unicode.Scalar]] {
        var out: [[Unicode.Scalar]] = []
        out.reserveCapacity(pieces.count * 4)
        switch self {
        case .sequence(let steps):
            var current = pieces
            for step in steps { current = step.split(current) }
            return current
        case let .byteLevel(addPrefixSpace, useRegex):
            for piece in pieces {
                let text = (addPrefixSpace && piece.first != " ") ? [" "] + piece : piece
                if useRegex {
                    Self.gpt2Split(text, into: &out)
                } else if !text.isEmpty {
                    out.append(text)
                }
            }
        case .digits(let individual):
            for piece in pieces { Self.digitsSplit(piece, individual: individual, into: &out) }
        case .clipSplit:
            for piece in pieces { Self.clipSplit(piece, into: &out) }
        case .bert:
            for piece in pieces { Self.bertSplit(piece, into: &out) }
        case .whitespaceSplit:
            for piece in pieces { Self.whitespaceSplit(piece, into: &out) }
        }
        return out
    }

    // MARK: - Scanners

    /// Length of the GPT-2 contraction (`'s 't 're 've 'm 'll 'd`, case-sensitive) at `i`, or nil.
    @inline(__always)
    private static func contractionLength(_ s: [Unicode.Scalar], _ i: Int) -> Int? {
        guard s[i] == "'", i + 1 < s.count else { return nil }
        switch s[i + 1] {
        case "s", "t", "m", "d": return 2
        case "r", "v":
            return i + 2 < s.count && s[i + 2] == "e" ? 3 : nil
        case "l":
            return i + 2 < s.count && s[i + 2] == "l" ? 3 : nil
        default:
            return nil
        }
    }

    @inline(__always)
    private static func run(_ s: [Unicode.Scalar], from i: Int, _ test: (Unicode.Scalar) -> Bool) -> Int {
        var j = i
        while j < s.count, test(s[j]) { j += 1 }
        return j
    }

    /// The GPT-2 pattern; every scalar ends up in exactly one piece.
    static func gpt2Split(_ s: [Unicode.Scalar], into out: inout [[Unicode.Scalar]]) {
        var i = 0
        let n = s.count
        while i < n {
            let c = s[i]
            var end: Int
            if let k = contractionLength(s, i) {
                end = i + k
            } else {
                // ` ?X+`: an optional single ASCII space, then a run of the class of the next scalar.
                let head = (c == " " && i + 1 < n) ? i + 1 : i
                let h = s[head]
                if ScalarClass.isLetter(h) {
                    end = run(s, from: head + 1, ScalarClass.isLetter)
                } else if ScalarClass.isNumber(h) {
                    end = run(s, from: head + 1, ScalarClass.isNumber)
                } else if !ScalarClass.isWhitespace(h) {
                    end = run(s, from: head + 1, ScalarClass.isOtherSymbol)
                } else {
                    // Whitespace at `i`. `\s+(?!\S)` takes the run minus its last scalar when a
                    // non-space follows (that scalar may then lead the next word); `\s+` takes a
                    // lone whitespace scalar before a non-space.
                    let k = run(s, from: i + 1, ScalarClass.isWhitespace)
                    end = (k < n && k - i >= 2) ? k - 1 : k
                }
            }
            out.append(Array(s[i..<end]))
            i = end
        }
    }

    private static func digitsSplit(_ s: [Unicode.Scalar], individual: Bool, into out: inout [[Unicode.Scalar]]) {
        var i = 0
        while i < s.count {
            let end: Int
            if ScalarClass.isNumber(s[i]) {
                end = individual ? i + 1 : run(s, from: i + 1, ScalarClass.isNumber)
            } else {
                end = run(s, from: i + 1) { !ScalarClass.isNumber($0) }
            }
            out.append(Array(s[i..<end]))
            i = end
        }
    }

    private static let startOfText = Array("<|startoftext|>".unicodeScalars)
    private static let endOfText = Array("<|endoftext|>".unicodeScalars)

    private static func hasLiteral(_ s: [Unicode.Scalar], at i: Int, _ literal: [Unicode.Scalar]) -> Bool {
        i + literal.count <= s.count && s[i..<(i + literal.count)].elementsEqual(literal)
    }

    private static func clipSplit(_ s: [Unicode.Scalar], into out: inout [[Unicode.Scalar]]) {
        var i = 0
        while i < s.count {
            let c = s[i]
            let end: Int
            if c == "<" && hasLiteral(s, at: i, startOfText) {
                end = i + startOfText.count
            } else if c == "<" && hasLiteral(s, at: i, endOfText) {
                end = i + endOfText.count
            } else if let k = contractionLength(s, i) {
                end = i + k
            } else if ScalarClass.isLetter(c) {
                end = run(s, from: i + 1, ScalarClass.isLetter)
            } else if ScalarClass.isNumber(c) {
                end = i + 1
            } else if !ScalarClass.isWhitespace(c) {
                end = run(s, from: i + 1, ScalarClass.isOtherSymbol)
            } else {
                i += 1
                continue
            }
            out.append(Array(s[i..<end]))
            i = end
        }
    }

    private static func bertSplit(_ s: [Unicode.Scalar], into out: inout [[Unicode.Scalar]]) {
        var i = 0
        while i < s.count {
            let c = s[i]
            if ScalarClass.isWhitespace(c) {
                i += 1
            } else if ScalarClass.isBertPunctuation(c) {
                out.append([c])
                i += 1
            } else {
                let end = run(s, from: i + 1) { !ScalarClass.isWhitespace($0) && !ScalarClass.isBertPunctuation($0) }
                out.append(Array(s[i..<end]))
                i = end
            }
        }
    }

    private static func whitespaceSplit(_ s: [Unicode.Scalar], into out: inout [[Unicode.Scalar]]) {
        var i = 0
        while i < s.count {
            if ScalarClass.isWhitespace(s[i]) {
                i += 1
            } else {
                let end = run(s, from: i + 1) { !ScalarClass.isWhitespace($0) }
                out.append(Array(s[i..<end]))
                i = end
            }
        }
    }
}
