import Foundation

/// A byte-pair-encoding model: splits one pre-tokenized piece into vocabulary ids by applying
/// merges in rank order, exactly as Hugging Face `tokenizers` does (a min-heap of candidate pairs
/// keyed by (rank, position), stale entries skipped when the pair at that position no longer
/// produces the same merged token). Results for pieces shorter than 256 scalars are cached.
final class BPEModel: @unchecked Sendable {
    let vocab: [String: Int]
    let unknownId: Int?
    let continuingSubwordPrefix: String?
    let endOfWordSuffix: String?
    let fuseUnknown: Bool
    let byteFallback: Bool
    let ignoreMerges: Bool

    /// (left id, right id) packed as `left << 32 | right` → (rank, merged id).
    private let merges: [UInt64: (rank: Int32, id: Int32)]
    /// Ids of single-scalar vocabulary entries, the common case of the first symbols of a word.
    private let scalarIds: [Unicode.Scalar: Int32]
    private var cache: [[Unicode.Scalar]: [Int]] = [:]
    private let cacheLock = NSLock()
    private static let cacheCapacity = 10_000
    private static let cacheableLength = 256

    /// - Parameters:
    ///   - merges: pairs in rank order (rank 0 first).
    ///   - source/mergesField: where the data came from, for error messages.
    init(vocab: [String: Int], merges: [(String, String)], unknownToken: String? = nil,
         continuingSubwordPrefix: String? = nil, endOfWordSuffix: String? = nil,
         fuseUnknown: Bool = false, byteFallback: Bool = false, ignoreMerges: Bool = false,
         source: String, mergesField: String) throws {
        self.vocab = vocab
        self.continuingSubwordPrefix = continuingSubwordPrefix.flatMap { $0.isEmpty ? nil : $0 }
        self.endOfWordSuffix = endOfWordSuffix.flatMap { $0.isEmpty ? nil : $0 }
        self.fuseUnknown = fuseUnknown
        self.byteFallback = byteFallback
        self.ignoreMerges = ignoreMerges
        if let unk = unknownToken {
            guard let id = vocab[unk] else {
                throw TokenizerError.missingToken(source: source, field: "model.unk_token", token: unk)
            }
            unknownId = id
        } else {
            unknownId = nil
        }
        var table: [UInt64: (rank: Int32, id: Int32)] = [:]
        table.reserveCapacity(merges.count)
        let prefix = self.continuingSubwordPrefix
        for (rank, (a, b)) in merges.enumerated() {
            guard let aId = vocab[a] else {
                throw TokenizerError.missingToken(source: source, field: "\(mergesField)[\(rank)]", token: a)
            }
            guard let bId = vocab[b] else {
                throw TokenizerError.missingToken(source: source, field: "\(mergesField)[\(rank)]", token: b)
            }
            let right = (prefix != nil && b.hasScalarPrefix(prefix!)) ? b.droppingScalars(prefix!.unicodeScalars.count) : b
            let merged = a + right
            guard let newId = vocab[merged] else {
                throw TokenizerError.missingToken(source: source, field: "\(mergesField)[\(rank)]", token: merged)
            }
            // A repeated pair keeps its last rank, as a Rust HashMap collected in order does.
            table[Self.key(Int32(aId), Int32(bId))] = (Int32(rank), Int32(newId))
        }
        self.merges = table
        var single: [Unicode.Scalar: Int32] = [:]
        for (token, id) in vocab {
            var it = token.unicodeScalars.makeIterator()
            if let s = it.next(), it.next() == nil { single[s] = Int32(id) }
        }
        scalarIds = single
    }

    @inline(__always)
    private static func key(_ a: Int32, _ b: Int32) -> UInt64 {
        UInt64(UInt32(bitPattern: a)) << 32 | UInt64(UInt32(bitPattern: b))
    }

    /// The ids of one piece (already mapped to byte-level symbols when the tokenizer is byte-level).
    func tokenize(_ piece: [Unicode.Scalar]) -> [Int] {
        if piece.isEmpty { return [] }
        if ignoreMerges, let id = vocab[piece.string] { return [id] }
        let cacheable = piece.count < Self.cacheableLength
        if cacheable {
            cacheLock.lock()
            let hit = cache[piece]
            cacheLock.unlock()
            if let hit { return hit }
        }
        let ids = merge(initialSymbols(piece))
        if cacheable {
            cacheLock.lock()
            if cache.count < Self.cacheCapacity { cache[piece] = ids }
            cacheLock.unlock()
        }
        return ids
    }

    /// One symbol per scalar (with the continuing-subword prefix on all but the first and the
    /// end-of-word suffix on the last); unknown scalars become byte tokens, the unknown token
    /// (fused into one when `fuseUnknown`), or nothing.
    private func initialSymbols(_ piece: [Unicode.Scalar]) -> [Int32] {
        var symbols: [Int32] = []
        symbols.reserveCapacity(piece.count)
        var pendingUnknown = false
        for (i, s) in piece.enumerated() {
            let isFirst = i == 0, isLast = i == piece.count - 1
            let usePrefix = !isFirst && continuingSubwordPrefix != nil
            let useSuffix = isLast && endOfWordSuffix != nil
            let id: Int32?
            if !usePrefix && !useSuffix {
                id = scalarIds[s]
            } else {
                var text = usePrefix ? continuingSubwordPrefix! : ""
                text.unicodeScalars.append(s)
                if useSuffix { text += endOfWordSuffix! }
                id = vocab[text].map { Int32($0) }
            }
            if let id {
                if pendingUnknown, let unk = unknownId { symbols.append(Int32(unk)) }
                pendingUnknown = false
                symbols.append(id)
                continue
            }
            if byteFallback {
                let byteIds = s.utf8.map { vocab[String(format: "<0x%02X>", $0)] }
                if byteIds.allSatisfy({ $0 != nil }) {
                    symbols.append(contentsOf: byteIds.map { Int32($0!) })
                    continue
                }
            }
            if let unk = unknownId {
                if pendingUnknown && !fuseUnknown { symbols.append(Int32(unk)) }
                pendingUnknown = true
            }
        }
        if pendingUnknown, let unk = unknownId { symbols.append(Int32(unk)) }
        return symbols
    }

    private struct Candidate {
        var rank: Int32
        var pos: Int32
        var id: Int32

        @inline(__always)
        static func < (l: Candidate, r: Candidate) -> Bool {
            l.rank != r.rank ? l.rank < r.rank : l.pos < r.pos
        }
    }

    private func merge(_ start: [Int32]) -> [Int] {
        let n = start.count
        if n < 2 { return start.map(Int.init) }
        var symbol = start
        var prev = [Int32](repeating: -1, count: n)
        var next = [Int32](repeating: -1, count: n)
        var alive = [Bool](repeating: true, count: n)
        for i in 0..<n {
            prev[i] = Int32(i - 1)
            next[i] = i + 1 < n ? Int32(i + 1) : -1
        }
        var heap: [Candidate] = []
        heap.reserveCapacity(n)
        for i in 0..<(n - 1) {
            if let m = merges[Self.key(symbol[i], symbol[i + 1])] {
                Self.push(Candidate(rank: m.rank, pos: Int32(i), id: m.id), into: &heap)
            }
        }
        while let top = Self.pop(&heap) {
            let p = Int(top.pos)
            guard alive[p], next[p] >= 0 else { continue }
            let r = Int(next[p])
            guard let m = merges[Self.key(symbol[p], symbol[r])], m.id == top.id else { continue }
            symbol[p] = top.id
            alive[r] = false
            next[p] = next[r]
            if next[r] >= 0 { prev[Int(next[r])] = Int32(p) }
            if prev[p] >= 0, let left = merges[Self.key(symbol[Int(prev[p])], symbol[p])] {
                Self.push(Candidate(rank: left.rank, pos: prev[p], id: left.id), into: &heap)
            }
            if next[p] >= 0, let right = merges[Self.key(symbol[p], symbol[Int(next[p])])] {
                Self.push(Candidate(rank: right.rank, pos: Int32(p), id: right.id), into: &heap)
            }
        }
        var out: [Int] = []
        out.reserveCapacity(n)
        var i: Int32 = 0
        while i >= 0 {
            out.append(Int(symbol[Int(i)]))
            i = next[Int(i)]
        }
        return out
    }

    // A binary min-heap on (rank, position).
    @inline(__always)
    private static func push(_ c: Candidate, into heap: inout [Candidate]) {
        heap.append(c)
        var i = heap.count - 1
        while i > 0 {
            let parent = (i - 1) / 2
            guard heap[i] < heap[parent] else { break }
            heap.swapAt(i, parent)
            i = parent
        }
    }

    @inline(__always)
    private static func pop(_ heap: inout [Candidate]) -> Candidate? {
        guard let last = heap.popLast() else { return nil }
        guard !heap.isEmpty else { return last }
        let top = heap[0]
        heap[0] = last
        var i = 0
        let n = heap.count
        while true {
            let l = 2 * i + 1, r = l + 1
            var smallest = i
            if l < n && heap[l] < heap[smallest] { smallest = l }
            if r < n && heap[r] < heap[smallest] { smallest = r }
            if smallest == i { break }
            heap.swapAt(i, smallest)
            i = smallest
        }
        return top
    }
}
