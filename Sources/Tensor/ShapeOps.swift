// Shape and layout operations. Views share storage; their backward maps the gradient back
// through the inverse view.

extension Tensor {
    /// The same elements with a new shape (one −1 is inferred). A view when contiguous.
    public func reshaped(_ newShape: [Int]) -> Tensor {
        var target = newShape
        if let i = target.firstIndex(of: -1) {
            let known = target.enumerated().filter { $0.offset != i }.reduce(1) { $0 * $1.element }
            precondition(known > 0 && count % known == 0, "reshape \(shape) to \(newShape)")
            target[i] = count / known
        }
        precondition(Tensor.count(target) == count, "reshape \(shape) (\(count) elements) to \(newShape)")
        if target == shape { return self }
        let base = contiguous()
        let out = Tensor(storage: base.storage, shape: target, offset: base.offset)
        let inShape = shape
        return Tensor.record("reshape", out, [base]) { g in [g.reshaped(inShape)] }
    }

    /// Collapses dimensions `start...end` into one.
    public func flattened(from start: Int = 0, to end: Int = -1) -> Tensor {
        let s = axis(start), e = axis(end)
        let merged = shape[s...e].reduce(1, *)
        return reshaped(Array(shape[..<s]) + [merged] + Array(shape[(e + 1)...]))
    }

    /// Inserts a dimension of size 1 at `axis` (which may equal `rank`).
    public func unsqueezed(_ axis: Int) -> Tensor {
        let a = axis < 0 ? axis + rank + 1 : axis
        var s = shape
        s.insert(1, at: a)
        return reshaped(s)
    }

    /// Removes a dimension of size 1.
    public func squeezed(_ axis: Int) -> Tensor {
        let a = self.axis(axis)
        precondition(shape[a] == 1, "squeeze axis \(axis) of \(shape)")
        var s = shape
        s.remove(at: a)
        return reshaped(s)
    }

    /// A view with dimensions reordered: out.shape[i] = shape[dims[i]].
    public func permuted(_ dims: [Int]) -> Tensor {
        let d = dims.map { axis($0) }
        precondition(Set(d).count == rank && d.count == rank, "permute \(dims) of rank \(rank)")
        if d == Array(0..<rank) { return self }
        let out = Tensor(storage: storage, shape: d.map { shape[$0] }, strides: d.map { strides[$0] }, offset: offset)
        var inverse = [Int](repeating: 0, count: rank)
        for (i, p) in d.enumerated() { inverse[p] = i }
        return Tensor.record("permute", out, [self]) { g in [g.permuted(inverse)] }
    }

    /// A view with two dimensions swapped.
    public func transposed(_ a: Int = -2, _ b: Int = -1) -> Tensor {
        var d = Array(0..<rank)
        d.swapAt(axis(a), axis(b))
        return permuted(d)
    }

    /// A view of `start..<end` along `axis`. The backward pads the gradient with zeros.
    public func sliced(axis: Int, _ start: Int, _ end: Int) -> Tensor {
        let a = self.axis(axis)
        precondition(start >= 0 && end <= shape[a] && start <= end, "slice \(start)..<\(end) of axis \(axis) (size \(shape[a]))")
        var s = shape
        s[a] = end - start
        let out = Tensor(storage: storage, shape: s, strides: strides, offset: offset + start * strides[a])
        let inShape = shape
        return Tensor.record("slice", out, [self]) { g in
            let full = Tensor(zeros: inShape)
            full.sliceView(axis: a, start, end).assignStrided(g)
            return [full]
        }
    }

    /// A graph-free view for writing into part of a fresh tensor.
    func sliceView(axis a: Int, _ start: Int, _ end: Int) -> Tensor {
        var s = shape
        s[a] = end - start
        return Tensor(storage: storage, shape: s, strides: strides, offset: offset + start * strides[a])
    }

    /// Writes `source` into this strided view (same shape), outside the graph.
    func assignStrided(_ source: Tensor) {
        precondition(source.shape == shape)
        if isContiguous { assign(source); return }
        // Copy through a contiguous buffer of the source, then scatter with the view's strides.
        let src = source.contiguous()
        let p = src.pointer
        var index = [Int](repeating: 0, count: rank)
        for i in 0..<count {
            var o = offset
            for d in 0..<rank { o += index[d] * strides[d] }
            storage.pointer[o] = p[i]
            var d = rank - 1
            while d >= 0 {
                index[d] += 1
                if index[d] < shape[d] { break }
                index[d] = 0
                d -= 1
            }
        }
    }

    /// A view that repeats size-1 dimensions (stride 0) to reach `target`.
    public func expanded(to target: [Int]) -> Tensor {
        if target == shape { return self }
        let out = Tensor(storage: storage, shape: target, strides: broadcastStrides(to: target), offset: offset)
        let inShape = shape
        return Tensor.record("expand", out, [self]) { g in [g.sumTo(inShape)] }
    }

    /// Joins tensors along `axis`; all other dimensions must match.
    public static func concat(_ tensors: [Tensor], axis: Int) -> Tensor {
        precondition(!tensors.isEmpty, "concat of no tensors")
        let first = tensors[0]
        let a = first.axis(axis)
        for t in tensors {
            precondition(t.rank == first.rank && (0..<t.rank).allSatisfy { $0 == a || t.shape[$0] == first.shape[$0] },
                         "concat along \(axis): shapes \(tensors.map(\.shape))")
        }
        var outShape = first.shape
        outShape[a] = tensors.reduce(0) { $0 + $1.shape[a] }
        let out = Tensor.uninitialized(outShape)   // the pieces cover every element
        var starts: [Int] = []
        var at = 0
        for t in tensors {
            starts.append(at)
            out.sliceView(axis: a, at, at + t.shape[a]).assignStrided(t)
            at += t.shape[a]
        }
        return record("concat", out, tensors) { g in
            zip(tensors, starts).map { t, s in g.sliced(axis: a, s, s + t.shape[a]).contiguous() }
        }
    }

    /// Splits along `axis` into pieces of the given sizes (views).
    public func split(_ sizes: [Int], axis: Int) -> [Tensor] {
        let a = self.axis(axis)
        precondition(sizes.reduce(0, +) == shape[a], "split sizes \(sizes) do not add up to \(shape[a])")
        var at = 0
        return sizes.map { n in
            defer { at += n }
            return sliced(axis: a, at, at + n)
        }
    }

    /// Splits along `axis` into `parts` equal pieces.
    public func chunked(_ parts: Int, axis: Int) -> [Tensor] {
        let n = shape[self.axis(axis)]
        precondition(parts > 0 && n % parts == 0, "cannot split size \(n) into \(parts) chunks")
        return split([Int](repeating: n / parts, count: parts), axis: axis)
    }
}
