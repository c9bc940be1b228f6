import Foundation

// Reductions over any set of axes. The input is viewed as [A, R, C] (kept, reduced, kept) after
// merging adjacent dimensions; any other pattern is first permuted so the reduced axes come last.

extension Tensor {
    /// Normalised, sorted, unique axes.
    func normalizedAxes(_ axes: [Int]) -> [Int] {
        Array(Set(axes.map { axis($0) })).sorted()
    }

    /// Output shape of a reduction over `axes`.
    func reducedShape(_ axes: [Int], keepDims: Bool) -> [Int] {
        var out: [Int] = []
        for d in 0..<rank {
            if axes.contains(d) { if keepDims { out.append(1) } } else { out.append(shape[d]) }
        }
        return out
    }

    /// Views the contiguous input as [A, R, C]; nil when the reduced axes are not one block.
    func reductionBlock(_ axes: [Int]) -> (a: Int, r: Int, c: Int)? {
        guard let first = axes.first, let last = axes.last, last - first + 1 == axes.count else { return nil }
        let a = shape[..<first].reduce(1, *)
        let r = shape[first...last].reduce(1, *)
        let c = shape[(last + 1)...].reduce(1, *)
        return (a, r, c)
    }

    /// Sums the [A, R, C] view over R into [A, C], accumulating in Double.
    static func sumBlock(_ src: UnsafeMutablePointer<Float>, a: Int, r: Int, c: Int,
                         into dst: UnsafeMutablePointer<Float>) {
        if c == 1 {
            parallelFor(a, grain: Swift.max(1, 32_768 / Swift.max(r, 1))) { s, e in
                for i in s..<e {
                    let row = src + i * r
                    var acc0: Double = 0, acc1: Double = 0
                    var j = 0
                    while j + 1 < r { acc0 += Double(row[j]); acc1 += Double(row[j + 1]); j += 2 }
                    if j < r { acc0 += Double(row[j]) }
                    dst[i] = Float(acc0 + acc1)
                }
            }
            return
        }
        // Column sums: parallel over the kept outer block, or over columns when A is small.
        let work = a * c
        parallelFor(work, grain: Swift.max(1, 32_768 / Swift.max(r, 1))) { s, e in
            var acc = [Double](repeating: 0, count: 0)
            var i = s
            while i < e {
                let ai = i / c, ci = i % c
                let span = Swift.min(e - i, c - ci)
                if acc.count < span { acc = [Double](repeating: 0, count: span) }
                for k in 0..<span { acc[k] = 0 }
                let base = src + ai * r * c + ci
                for j in 0..<r {
                    let row = base + j * c
                    for k in 0..<span { acc[k] += Double(row[k]) }
                }
                for k in 0..<span { dst[i + k] = Float(acc[k]) }
                i += span
            }
        }
    }

    /// Σ over `axes`. The backward broadcasts g back over the reduced axes.
    public func sum(axes: [Int], keepDims: Bool = false) -> Tensor {
        let ax = normalizedAxes(axes)
        let outShape = reducedShape(ax, keepDims: keepDims)
        let out = Tensor(zeros: outShape)
        if count > 0 {
            let src = contiguous()
            if let (a, r, c) = src.reductionBlock(ax) {
                Tensor.sumBlock(src.pointer, a: a, r: r, c: c, into: out.storage.pointer)
            } else {
                let kept = (0..<rank).filter { !ax.contains($0) }
                let moved = permuted(kept + ax).contiguousCopy()
                let r = ax.reduce(1) { $0 * shape[$1] }
                Tensor.sumBlock(moved.pointer, a: count / Swift.max(r, 1), r: r, c: 1, into: out.storage.pointer)
            }
        }
        let inShape = shape
        let keptShape = reducedShape(ax, keepDims: true)
        return Tensor.record("sum", out, [self]) { g in
            [g.reshaped(keptShape).expanded(to: inShape).contiguous()]
        }
    }

    /// Σ of all elements, as a 0-d tensor.
    public func sum() -> Tensor { sum(axes: Array(0..<rank)) }

    /// Mean over `axes` (composite: sum / n).
    public func mean(axes: [Int], keepDims: Bool = false) -> Tensor {
        let n = normalizedAxes(axes).reduce(1) { $0 * shape[$1] }
        return sum(axes: axes, keepDims: keepDims) * (1 / Float(Swift.max(n, 1)))
    }

    /// Mean of all elements.
    public func mean() -> Tensor { mean(axes: Array(0..<rank)) }

    /// Variance over `axes` (composite): mean((x − mean x)²), divided by n − 1 when `unbiased`.
    public func variance(axes: [Int], keepDims: Bool = false, unbiased: Bool = false) -> Tensor {
        let n = normalizedAxes(axes).reduce(1) { $0 * shape[$1] }
        let centered = self - mean(axes: axes, keepDims: true)
        let ss = centered.square().sum(axes: axes, keepDims: keepDims)
        return ss * (1 / Float(Swift.max(unbiased ? n - 1 : n, 1)))
    }

    /// Maximum over `axes`. The gradient flows to the first maximal element of each group.
    public func max(axes: [Int], keepDims: Bool = false) -> Tensor {
        let ax = normalizedAxes(axes)
        precondition(ax.allSatisfy { shape[$0] > 0 }, "max over an empty axis of \(shape)")
        let kept = (0..<rank).filter { !ax.contains($0) }
        let perm = kept + ax
        let moved = permuted(perm).contiguous()
        let r = ax.reduce(1) { $0 * shape[$1] }
        let groups = count / Swift.max(r, 1)
        let out = Tensor(zeros: reducedShape(ax, keepDims: keepDims))
        var argmax = [Int](repeating: 0, count: groups)
        let src = moved.pointer, dst = out.storage.pointer
        argmax.withUnsafeMutableBufferPointer { am in
            let amp = am.baseAddress!
            parallelFor(groups, grain: Swift.max(1, 32_768 / Swift.max(r, 1))) { s, e in
                for i in s..<e {
                    let row = src + i * r
                    var best = row[0], bi = 0
                    for j in 1..<r where row[j] > best {
                        best = row[j]; bi = j
                    }
                    dst[i] = best
                    amp[i] = bi
                }
            }
        }
        let movedShape = moved.shape
        return Tensor.record("max", out, [self]) { g in
            let gc = g.contiguous()
            let scattered = Tensor(zeros: movedShape)
            let sp = scattered.storage.pointer, gp = gc.pointer
            for i in 0..<groups { sp[i * r + argmax[i]] = gp[i] }
            var inverse = [Int](repeating: 0, count: perm.count)
            for (i, p) in perm.enumerated() { inverse[p] = i }
            return [scattered.permuted(inverse).contiguous()]
        }
    }

    /// Maximum of all elements.
    public func max() -> Tensor { max(axes: Array(0..<rank)) }

    /// Index of the maximum along `axis` (no gradient), as Ints.
    public func argmax(axis: Int) -> [Int] {
        let a = self.axis(axis)
        let moved = permuted((0..<rank).filter { $0 != a } + [a]).contiguous()
        let r = shape[a]
        let groups = count / Swift.max(r, 1)
        let p = moved.pointer
        return (0..<groups).map { i in
            var best = p[i * r], bi = 0
            for j in 1..<r where p[i * r + j] > best { best = p[i * r + j]; bi = j }
            return bi
        }
    }
}
