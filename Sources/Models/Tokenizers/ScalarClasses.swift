import Foundation

/// The Unicode classes the tokenizers split and clean on, decided per Unicode scalar.
///
/// The reference tokenizers (Hugging Face `tokenizers`, Rust `char`, Oniguruma) work on code
/// points, never on grapheme clusters, so nothing here looks at `Character`.
enum ScalarClass {
    /// Bit flags for ASCII, so the hot loops avoid a Unicode property lookup for plain text.
    private static let asciiFlags: [UInt8] = {
        var t = [UInt8](repeating: 0, count: 128)
        for v in 0..<128 {
            let s = Unicode.Scalar(UInt8(v))
            if s.properties.isWhitespace { t[v] |= 1 }
            if (65...90).contains(v) || (97...122).contains(v) { t[v] |= 2 }
            if (48...57).contains(v) { t[v] |= 4 }
        }
        return t
    }()

    /// `\p{L}`: general category Lu, Ll, Lt, Lm or Lo.
    @inline(__always)
    static func isLetter(_ s: Unicode.Scalar) -> Bool {
        if s.value < 128 { return asciiFlags[Int(s.value)] & 2 != 0 }
        switch s.properties.generalCategory {
        case .uppercaseLetter, .lowercaseLetter, .titlecaseLetter, .modifierLetter, .otherLetter:
            return true
        default:
            return false
        }
    }

    /// `\p{N}` and Rust's `char::is_numeric`: general category Nd, Nl or No.
    @inline(__always)
    static func isNumber(_ s: Unicode.Scalar) -> Bool {
        if s.value < 128 { return asciiFlags[Int(s.value)] & 4 != 0 }
        switch s.properties.generalCategory {
        case .decimalNumber, .letterNumber, .otherNumber: return true
        default: return false
        }
    }

    /// Oniguruma's Unicode `\s` and Rust's `char::is_whitespace`: the White_Space property
    /// (U+0009–000D, U+0020, U+0085, U+00A0, U+1680, U+2000–200A, U+2028/9, U+202F, U+205F, U+3000).
    @inline(__always)
    static func isWhitespace(_ s: Unicode.Scalar) -> Bool {
        if s.value < 128 { return asciiFlags[Int(s.value)] & 1 != 0 }
        return s.properties.isWhitespace
    }

    /// `[^\s\p{L}\p{N}]`: everything the GPT-2 pattern groups as "punctuation-like".
    @inline(__always)
    static func isOtherSymbol(_ s: Unicode.Scalar) -> Bool {
        !isWhitespace(s) && !isLetter(s) && !isNumber(s)
    }

    /// BERT's punctuation: any ASCII punctuation (which includes `$+<=>^`|~`) or category P*.
    static func isBertPunctuation(_ s: Unicode.Scalar) -> Bool {
        let v = s.value
        if (33...47).contains(v) || (58...64).contains(v) || (91...96).contains(v) || (123...126).contains(v) {
            return true
        }
        if v < 128 { return false }
        switch s.properties.generalCategory {
        case .connectorPunctuation, .dashPunctuation, .openPunctuation, .closePunctuation,
             .initialPunctuation, .finalPunctuation, .otherPunctuation:
            return true
        default:
            return false
        }
    }

    /// BERT's "control" test: category C* (Cc, Cf, Cn, Co, Cs) except tab, newline, carriage return.
    static func isBertControl(_ s: Unicode.Scalar) -> Bool {
        if s == "\t" || s == "\n" || s == "\r" { return false }
        if s.value < 128 { return s.value < 32 || s.value == 127 }
        switch s.properties.generalCategory {
        case .control, .format, .unassigned, .privateUse, .surrogate: return true
        default: return false
        }
    }

    /// BERT's "Chinese character": the CJK Unified Ideographs blocks and their extensions.
    static func isCJKIdeograph(_ s: Unicode.Scalar) -> Bool {
        switch s.value {
        case 0x4E00...0x9FFF, 0x3400...0x4DBF, 0x20000...0x2A6DF, 0x2A700...0x2B73F,
             0x2B740...0x2B81F, 0x2B920...0x2CEAF, 0xF900...0xFAFF, 0x2F800...0x2FA1F:
            return true
        default:
            return false
        }
    }

    /// Python's `str.isspace`, which `str.strip()` uses (it also counts U+001C–001F).
    static func isPythonSpace(_ s: Unicode.Scalar) -> Bool {
        if (0x1C...0x1F).contains(s.value) { return true }
        return isWhitespace(s)
    }

    /// The per-scalar full lower-case mapping (so "İ" becomes "i̇"; no final-sigma context rule).
    static func appendLowercase(_ s: Unicode.Scalar, to out: inout [Unicode.Scalar]) {
        if s.value < 128 {
            out.append((65...90).contains(s.value) ? Unicode.Scalar(s.value + 32)! : s)
            return
        }
        let mapped = s.properties.lowercaseMapping
        out.append(contentsOf: mapped.unicodeScalars)
    }
}

/// Unicode normalisation forms, on scalar arrays.
enum ScalarNormalization {
    case nfc, nfd, nfkc, nfkd

    func apply(_ scalars: [Unicode.Scalar]) -> [Unicode.Scalar] {
        // Pure ASCII is invariant under every form.
        if scalars.allSatisfy({ $0.value < 128 }) { return scalars }
        var view = String.UnicodeScalarView()
        view.append(contentsOf: scalars)
        let text = String(view)
        let result: String
        switch self {
        case .nfc: result = text.precomposedStringWithCanonicalMapping
        case .nfd: result = text.decomposedStringWithCanonicalMapping
        case .nfkc: result = text.precomposedStringWithCompatibilityMapping
        case .nfkd: result = text.decomposedStringWithCompatibilityMapping
        }
        return Array(result.unicodeScalars)
    }
}

extension String {
    /// Prefix test on Unicode scalars: `hasPrefix` compares grapheme clusters, so "##ि" (a
    /// combining vowel sign after "#") would not start with "##".
    func hasScalarPrefix(_ prefix: String) -> Bool {
        unicodeScalars.starts(with: prefix.unicodeScalars)
    }

    /// The string without its first `count` Unicode scalars.
    func droppingScalars(_ count: Int) -> String {
        String(unicodeScalars.dropFirst(count))
    }
}

extension Array where Element == Unicode.Scalar {
    /// The scalars as a `String`, without any normalisation.
    var string: String {
        var view = String.UnicodeScalarView()
        view.append(contentsOf: self)
        return String(view)
    }
}
