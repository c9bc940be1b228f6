/// The ids of a tokenizer's well-known special tokens (nil when it has none of that kind).
public struct SpecialTokens: Equatable, Sendable {
    /// Beginning of sequence (SmolLM2: 1 `<|im_start|>`; CLIP: `<|startoftext|>`).
    public var bos: Int?
    /// End of sequence; generation stops here (SmolLM2: 2 `<|im_end|>`; CLIP: `<|endoftext|>`).
    public var eos: Int?
    /// Used by `encodeBatch` when no `padId` is given.
    public var pad: Int?
    public var unk: Int?
    /// BERT's `[CLS]`, `[SEP]` and `[MASK]`.
    public var cls: Int?
    public var sep: Int?
    public var mask: Int?

    public init(bos: Int? = nil, eos: Int? = nil, pad: Int? = nil, unk: Int? = nil,
                cls: Int? = nil, sep: Int? = nil, mask: Int? = nil) {
        self.bos = bos
        self.eos = eos
        self.pad = pad
        self.unk = unk
        self.cls = cls
        self.sep = sep
        self.mask = mask
    }
}

/// Text → token ids → text, token for token equal to Hugging Face `tokenizers`.
///
/// Implementations are immutable after construction except for a merge cache guarded by a lock,
/// so one instance may be shared between threads.
public protocol Tokenizer: AnyObject, Sendable {
    /// One more than the largest id (model vocabulary and added tokens): the embedding rows needed.
    var vocabularySize: Int { get }
    var specialTokens: SpecialTokens { get }
    /// Tokens split out verbatim before normalisation, in id order.
    var addedTokens: [AddedToken] { get }
    /// The ids the post-processor puts before and after one sequence when special tokens are
    /// added (BERT: [CLS] / [SEP]; CLIP: <|startoftext|> / <|endoftext|>; SmolLM2: none).
    var sequenceWrapping: (prefix: [Int], suffix: [Int]) { get }

    /// Token ids of `text`; with `addSpecialTokens`, wrapped as `sequenceWrapping` says.
    /// Never fails: characters outside the vocabulary become the unknown token (or bytes).
    func encode(_ text: String, addSpecialTokens: Bool) -> [Int]
    /// Text of `ids`; ids outside the vocabulary are skipped, invalid UTF-8 becomes U+FFFD.
    func decode(_ ids: [Int], skipSpecialTokens: Bool) -> String
    func id(forToken token: String) -> Int?
    func token(forId id: Int) -> String?
}

extension Tokenizer {
    /// `encode(text, addSpecialTokens: true)`, Hugging Face's default.
    public func encode(_ text: String) -> [Int] { encode(text, addSpecialTokens: true) }

    /// `decode(ids, skipSpecialTokens: false)`.
    public func decode(_ ids: [Int]) -> String { decode(ids, skipSpecialTokens: false) }

    /// Encodes several texts with Hugging Face's truncation and padding.
    ///
    /// Truncation keeps the first `maxLength − (special tokens added)` ids of each text, then the
    /// special tokens are added, so no row is longer than `maxLength`. Padding then brings every
    /// row to the longest row (`.longest`) or to `n` (`.fixed(n)`, rows already longer stay as
    /// they are), with `padId` on `side`.
    ///
    /// - Returns: `ids`, `attentionMask` (1 = token, 0 = padding) and `tokenTypeIds` (all 0),
    ///   each `[texts.count][rowLength]`.
    public func encodeBatch(_ texts: [String], addSpecialTokens: Bool = true, maxLength: Int? = nil,
                            padding: PaddingStrategy = .longest, padSide: PaddingSide = .right,
                            padId: Int? = nil) -> BatchEncoding {
        let wrap = sequenceWrapping
        let extra = addSpecialTokens ? wrap.prefix.count + wrap.suffix.count : 0
        var rows: [[Int]] = texts.map { text in
            var ids = encode(text, addSpecialTokens: false)
            if let maxLength {
                let keep = max(0, maxLength - extra)
                if ids.count > keep { ids.removeSubrange(keep...) }
            }
            return addSpecialTokens ? wrap.prefix + ids + wrap.suffix : ids
        }
        var masks = rows.map { [Int](repeating: 1, count: $0.count) }
        let target: Int?
        switch padding {
        case .none: target = nil
        case .longest: target = rows.map(\.count).max() ?? 0
        case .fixed(let n): target = n
        }
        if let target {
            let pad = padId ?? specialTokens.pad ?? 0
            for r in rows.indices where rows[r].count < target {
                let n = target - rows[r].count
                let padIds = [Int](repeating: pad, count: n), zeros = [Int](repeating: 0, count: n)
                if padSide == .right {
                    rows[r] += padIds
                    masks[r] += zeros
                } else {
                    rows[r] = padIds + rows[r]
                    masks[r] = zeros + masks[r]
                }
            }
        }
        let types = rows.map { [Int](repeating: 0, count: $0.count) }
        return BatchEncoding(ids: rows, attentionMask: masks, tokenTypeIds: types)
    }
}

/// How `encodeBatch` pads.
public enum PaddingStrategy: Equatable, Sendable {
    case none
    /// To the longest row of the batch.
    case longest
    /// To this length (rows longer than it are not cut; use `maxLength` for that).
    case fixed(Int)
}

public enum PaddingSide: Equatable, Sendable {
    case left, right
}

/// The rows of `Tokenizer.encodeBatch`.
public struct BatchEncoding: Equatable, Sendable {
    public var ids: [[Int]]
    /// 1 for a real token, 0 for padding.
    public var attentionMask: [[Int]]
    /// BERT's segment ids: 0 everywhere for single sequences.
    public var tokenTypeIds: [[Int]]

    public init(ids: [[Int]], attentionMask: [[Int]], tokenTypeIds: [[Int]]) {
        self.ids = ids
        self.attentionMask = attentionMask
        self.tokenTypeIds = tokenTypeIds
    }
}
