/// A token matched verbatim in the input before any other processing (special tokens such as
/// `<|im_start|>` or `[CLS]`, and user-added tokens), with Hugging Face's options.
public struct AddedToken: Equatable, Sendable {
    public var content: String
    public var id: Int
    /// Special tokens are dropped by `decode(_:skipSpecialTokens: true)`.
    public var special: Bool
    /// Match only when not glued to word characters on either side.
    public var singleWord: Bool
    /// Swallow the whitespace on the left / right of a match.
    public var leftStrip: Bool
    public var rightStrip: Bool
    /// Match in the normalised text (e.g. after lower-casing) instead of the raw input.
    public var normalized: Bool

    public init(content: String, id: Int, special: Bool = true, singleWord: Bool = false,
                leftStrip: Bool = false, rightStrip: Bool = false, normalized: Bool = false) {
        self.content = content
        self.id = id
        self.special = special
        self.singleWord = singleWord
        self.leftStrip = leftStrip
        self.rightStrip = rightStrip
        self.normalized = normalized
    }
}

/// A piece of input after the added tokens have been split out.
enum TextSegment {
    case token(Int)
    /// Normalised text for the pre-tokenizer.
    case text([Unicode.Scalar])
}

/// Splits added tokens out of a text: first the raw-text ones, then (after normalising what is
/// left) the normalised ones, each pass taking leftmost-longest non-overlapping matches like the
/// Aho-Corasick automaton Hugging Face uses.
struct AddedVocabulary {
    let tokens: [AddedToken]
    private let raw: Matcher
    private let normalizedMatcher: Matcher

    init(_ tokens: [AddedToken], normalizer: TextNormalizer?) {
        self.tokens = tokens
        var rawPatterns: [([Unicode.Scalar], Int)] = []
        var normPatterns: [([Unicode.Scalar], Int)] = []
        for (index, token) in tokens.enumerated() where !token.content.isEmpty {
            let scalars = Array(token.content.unicodeScalars)
            if token.normalized {
                normPatterns.append((normalizer?.apply(scalars) ?? scalars, index))
            } else {
                rawPatterns.append((scalars, index))
            }
        }
        raw = Matcher(rawPatterns)
        normalizedMatcher = Matcher(normPatterns)
    }

    func split(_ text: [Unicode.Scalar], normalizer: TextNormalizer?) -> [TextSegment] {
        var out: [TextSegment] = []
        for first in split(text, with: raw) {
            switch first {
            case .token:
                out.append(first)
            case .text(let piece):
                let normalized = normalizer?.apply(piece) ?? piece
                out.append(contentsOf: split(normalized, with: normalizedMatcher))
            }
        }
        return out
    }

    private func split(_ s: [Unicode.Scalar], with matcher: Matcher) -> [TextSegment] {
        if matcher.isEmpty || s.isEmpty { return [.text(s)] }
        var out: [TextSegment] = []
        var emitted = 0
        for (start0, stop0, index) in matcher.matches(in: s) {
            let token = tokens[index]
            var start = start0, stop = stop0
            if token.singleWord {
                let leftOK = start == 0 || !Self.isWordScalar(s[start - 1])
                let rightOK = stop == s.count || !Self.isWordScalar(s[stop])
                if !leftOK || !rightOK { continue }
            }
            if token.leftStrip {
                var j = start
                while j > 0, ScalarClass.isWhitespace(s[j - 1]) { j -= 1 }
                start = max(j, emitted)
            }
            if token.rightStrip {
                while stop < s.count, ScalarClass.isWhitespace(s[stop]) { stop += 1 }
            }
            if emitted < start { out.append(.text(Array(s[emitted..<start]))) }
            out.append(.token(token.id))
            emitted = stop
        }
        if emitted < s.count { out.append(.text(Array(s[emitted...]))) }
        return out
    }

    /// Regex `\w`: letters, marks, numbers and connector punctuation.
    private static func isWordScalar(_ s: Unicode.Scalar) -> Bool {
        if ScalarClass.isLetter(s) || ScalarClass.isNumber(s) { return true }
        switch s.properties.generalCategory {
        case .nonspacingMark, .spacingMark, .enclosingMark, .connectorPunctuation: return true
        default: return s.properties.isJoinControl
        }
    }

    /// Leftmost-longest literal matching, indexed by first scalar.
    private struct Matcher {
        /// First scalar → (pattern, token index), longest pattern first.
        private var byFirst: [Unicode.Scalar: [([Unicode.Scalar], Int)]] = [:]

        var isEmpty: Bool { byFirst.isEmpty }

        init(_ patterns: [([Unicode.Scalar], Int)]) {
            for (pattern, index) in patterns where !pattern.isEmpty {
                byFirst[pattern[0], default: []].append((pattern, index))
            }
            for key in byFirst.keys { byFirst[key]!.sort { $0.0.count > $1.0.count } }
        }

        func matches(in s: [Unicode.Scalar]) -> [(Int, Int, Int)] {
            var found: [(Int, Int, Int)] = []
            var i = 0
            while i < s.count {
                if let candidates = byFirst[s[i]],
                   let hit = candidates.first(where: { p in
                       i + p.0.count <= s.count && s[i..<(i + p.0.count)].elementsEqual(p.0)
                   }) {
                    found.append((i, i + hit.0.count, hit.1))
                    i += hit.0.count
                } else {
                    i += 1
                }
            }
            return found
        }
    }
}
