/// How a buffer of `count` elements is cut into `parts` contiguous chunks: the first
/// `count % parts` chunks hold one element more than the rest, so sizes differ by at most one and
/// chunks may be empty when `count < parts`. The ring, the in-process group and reduce-scatter
/// all use this one layout.
public enum ChunkLayout {
    /// Element range of chunk `index` (0 ..< parts).
    public static func range(of index: Int, count: Int, parts: Int) -> Range<Int> {
        let base = count / parts
        let extra = count % parts
        let start = index * base + Swift.min(index, extra)
        return start ..< start + base + (index < extra ? 1 : 0)
    }
}

/// Element-wise combining kernels. The order of operands is fixed (`accumulated ∘ incoming`) so
/// a chunk reduced along the same path always gives the same bits.
enum Reduction {
    /// `accumulated[i] ← accumulated[i] ∘ incoming[i]` for i in 0 ..< count; `average` adds
    /// (the division happens once, at the end, in `finish`).
    @inline(__always)
    static func accumulate<T: FloatingPoint>(_ accumulated: UnsafeMutablePointer<T>,
                                             _ incoming: UnsafePointer<T>, count: Int,
                                             op: ReduceOperation) {
        switch op {
        case .sum, .average:
            for i in 0 ..< count { accumulated[i] += incoming[i] }
        case .min:
            for i in 0 ..< count where incoming[i] < accumulated[i] { accumulated[i] = incoming[i] }
        case .max:
            for i in 0 ..< count where incoming[i] > accumulated[i] { accumulated[i] = incoming[i] }
        }
    }

    /// Float specialisation, the hot path of the ring (kept non-generic so debug builds and
    /// unspecialised callers still get a tight loop).
    static func accumulateFloats(_ accumulated: UnsafeMutablePointer<Float>,
                                 _ incoming: UnsafePointer<Float>, count: Int, op: ReduceOperation) {
        switch op {
        case .sum, .average:
            for i in 0 ..< count { accumulated[i] += incoming[i] }
        case .min:
            for i in 0 ..< count where incoming[i] < accumulated[i] { accumulated[i] = incoming[i] }
        case .max:
            for i in 0 ..< count where incoming[i] > accumulated[i] { accumulated[i] = incoming[i] }
        }
    }

    /// Turns a finished sum into an average: `values[i] ← values[i] / ranks`.
    static func finish<T: FloatingPoint>(_ values: UnsafeMutablePointer<T>, count: Int,
                                         op: ReduceOperation, ranks: Int) {
        guard op == .average, ranks > 1 else { return }
        let divisor = T(ranks)
        for i in 0 ..< count { values[i] /= divisor }
    }
}
