/// Broadcasting: NumPy/PyTorch rules, plus the strided iteration that elementwise kernels share.
extension Tensor {
    /// The shape two shapes broadcast to, aligned from the right; nil when they are incompatible.
    public static func broadcastShape(_ a: [Int], _ b: [Int]) -> [Int]? {
        let r = Swift.max(a.count, b.count)
        var out = [Int](repeating: 1, count: r)
        for i in 0..<r {
            let da = i < r - a.count ? 1 : a[i - (r - a.count)]
            let db = i < r - b.count ? 1 : b[i - (r - b.count)]
            if da == db || db == 1 { out[i] = da } else if da == 1 { out[i] = db } else { return nil }
        }
        return out
    }

    /// Strides that read this tensor as if it had `target` shape (0 where a dimension is broadcast).
    func broadcastStrides(to target: [Int]) -> [Int] {
        let pad = target.count - rank
        precondition(pad >= 0, "cannot broadcast \(shape) to \(target)")
        var out = [Int](repeating: 0, count: target.count)
        for i in 0..<rank {
            let n = shape[i]
            precondition(n == target[i + pad] || n == 1, "cannot broadcast \(shape) to \(target)")
            out[i + pad] = n == 1 ? 0 : strides[i]
        }
        return out
    }

    /// Sums a broadcast gradient back down to `target` shape (the adjoint of broadcasting).
    public func sumTo(_ target: [Int]) -> Tensor {
        if shape == target { return self }
        let pad = rank - target.count
        precondition(pad >= 0, "sumTo: \(shape) cannot reduce to \(target)")
        var axes: [Int] = Array(0..<pad)
        for i in 0..<target.count where target[i] == 1 && shape[i + pad] != 1 { axes.append(i + pad) }
        let s = axes.isEmpty ? self : sum(axes: axes, keepDims: true)
        return s.reshaped(target)
    }
}

/// Merges adjacent dimensions that every operand walks contiguously, so that a broadcast over
/// [N, C, H, W] with a [1, C, 1, 1] bias becomes a 3-d loop over [N, C, H·W].
func coalesce(shape: [Int], strides: [[Int]]) -> ([Int], [[Int]]) {
    var outShape: [Int] = []
    var outStrides: [[Int]] = Array(repeating: [], count: strides.count)
    for d in 0..<shape.count where shape[d] != 1 {
        if let last = outShape.last,
           strides.indices.allSatisfy({ outStrides[$0].last! == strides[$0][d] * shape[d] }) {
            outShape[outShape.count - 1] = last * shape[d]
            for k in strides.indices { outStrides[k][outStrides[k].count - 1] = strides[k][d] }
        } else {
            outShape.append(shape[d])
            for k in strides.indices { outStrides[k].append(strides[k][d]) }
        }
    }
    if outShape.isEmpty { return ([1], strides.map { _ in [0] }) }
    return (outShape, outStrides)
}

/// Calls `row(outOffset, aOffset, bOffset, count, aStride, bStride)` for every innermost row of a
/// broadcast binary operation whose output is contiguous with `shape`.
@inline(__always)
func forEachBroadcastRow(shape: [Int], aStrides: [Int], bStrides: [Int],
                         _ row: (Int, Int, Int, Int, Int, Int) -> Void) {
    let outStrides = Tensor.contiguousStrides(shape)
    let (cs, st) = coalesce(shape: shape, strides: [outStrides, aStrides, bStrides])
    let r = cs.count
    let inner = cs[r - 1]
    let outer = cs.dropLast().reduce(1, *)
    let sa = st[1][r - 1], sb = st[2][r - 1]
    parallelFor(outer, grain: Swift.max(1, 32_768 / Swift.max(inner, 1))) { start, end in
        var index = [Int](repeating: 0, count: Swift.max(r - 1, 1))
        var rem = start
        for d in stride(from: r - 2, through: 0, by: -1) {
            index[d] = rem % cs[d]
            rem /= cs[d]
        }
        for rowIndex in start..<end {
            var oa = 0, ob = 0
            for d in 0..<(r - 1) {
                oa += index[d] * st[1][d]
                ob += index[d] * st[2][d]
            }
            row(rowIndex * inner, oa, ob, inner, sa, sb)
            var d = r - 2
            while d >= 0 {
                index[d] += 1
                if index[d] < cs[d] { break }
                index[d] = 0
                d -= 1
            }
        }
    }
}
