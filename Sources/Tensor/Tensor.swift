import Foundation

/// A float32 N-dimensional tensor: a shared storage viewed through a shape, strides and an offset.
///
/// Tensors are reference types so that the autograd graph can point at them; views
/// (`reshaped`, `permuted`, `transposed`, `sliced`, `expanded`) share storage with their base.
/// Operations return new tensors and record their backward functions while `GradMode` is on.
public final class Tensor: CustomStringConvertible, @unchecked Sendable {
    public let storage: TensorStorage
    public let shape: [Int]
    public let strides: [Int]
    public let offset: Int

    /// Whether gradients flow to (or through) this tensor.
    public var requiresGrad: Bool = false
    /// Accumulated dL/d(self) after `backward`, for leaves (and for tensors with `retainsGrad`).
    public var grad: Tensor?
    /// Keep the gradient of an intermediate tensor (like PyTorch's `retain_grad()`).
    public var retainsGrad: Bool = false
    /// Where the first gradient accumulated after `zeroGrad` is written: a contiguous tensor of
    /// this shape, such as a view into a data-parallel gradient bucket (PyTorch DDP's
    /// `gradient_as_bucket_view`). `grad` then becomes this tensor instead of a fresh copy, so the
    /// bucket needs no copy in before its allreduce nor out after it. Whoever sets it owns the
    /// values there: the next first accumulation overwrites them.
    public var gradientBuffer: Tensor? {
        didSet {
            if let buffer = gradientBuffer {
                precondition(buffer.shape == shape && buffer.isContiguous,
                             "gradientBuffer must be contiguous with shape \(shape), got \(buffer.shape)")
            }
        }
    }
    var node: GradNode?

    /// A view of `storage`.
    public init(storage: TensorStorage, shape: [Int], strides: [Int]? = nil, offset: Int = 0) {
        self.storage = storage
        self.shape = shape
        self.strides = strides ?? Tensor.contiguousStrides(shape)
        self.offset = offset
    }

    /// A new contiguous tensor holding `data` (row-major) with `shape`.
    public convenience init(shape: [Int], data: [Float]) {
        precondition(shape.allSatisfy { $0 >= 0 }, "negative dimension in \(shape)")
        precondition(Tensor.count(shape) == data.count, "shape \(shape) needs \(Tensor.count(shape)) values, got \(data.count)")
        self.init(storage: TensorStorage(data), shape: shape)
    }

    /// A new contiguous tensor with `shape`, filled with zeros.
    public convenience init(zeros shape: [Int]) {
        precondition(shape.allSatisfy { $0 >= 0 }, "negative dimension in \(shape)")
        self.init(storage: TensorStorage(count: Tensor.count(shape)), shape: shape)
    }

    /// A 0-d tensor.
    public convenience init(scalar: Float) {
        self.init(shape: [], data: [scalar])
    }

    public static func zeros(_ shape: [Int]) -> Tensor { Tensor(zeros: shape) }
    public static func ones(_ shape: [Int]) -> Tensor { full(shape, 1) }
    public static func full(_ shape: [Int], _ value: Float) -> Tensor {
        let t = Tensor(zeros: shape)
        if value != 0 { t.storage.pointer.update(repeating: value, count: t.count) }
        return t
    }
    public static func zeros(like t: Tensor) -> Tensor { Tensor(zeros: t.shape) }

    /// A new contiguous tensor whose values are garbage: only for kernels that write every element.
    public static func uninitialized(_ shape: [Int]) -> Tensor {
        Tensor(storage: TensorStorage(uninitializedCount: count(shape)), shape: shape)
    }

    /// [0, 1, …, n−1] as floats.
    public static func arange(_ n: Int) -> Tensor {
        Tensor(shape: [n], data: (0..<n).map(Float.init))
    }

    // MARK: Shape facts

    public static func count(_ shape: [Int]) -> Int { shape.reduce(1, *) }
    public static func contiguousStrides(_ shape: [Int]) -> [Int] {
        var strides = [Int](repeating: 1, count: shape.count)
        var s = 1
        for i in stride(from: shape.count - 1, through: 0, by: -1) {
            strides[i] = s
            s *= shape[i]
        }
        return strides
    }

    public var rank: Int { shape.count }
    public var count: Int { Tensor.count(shape) }

    /// True when elements lie row-major and gap-free from `offset`.
    public var isContiguous: Bool {
        var expected = 1
        for i in stride(from: shape.count - 1, through: 0, by: -1) where shape[i] != 1 {
            if strides[i] != expected { return false }
            expected *= shape[i]
        }
        return true
    }

    /// Normalises a possibly negative axis.
    public func axis(_ a: Int) -> Int {
        let r = a < 0 ? a + rank : a
        precondition(r >= 0 && r < Swift.max(rank, 1), "axis \(a) out of range for rank \(rank)")
        return r
    }

    /// Pointer to the first element (`offset` applied). Valid while `self` is alive.
    public var pointer: UnsafeMutablePointer<Float> { storage.pointer + offset }

    // MARK: Values

    /// All elements in row-major order.
    public var scalars: [Float] {
        let c = contiguous()
        return Array(UnsafeBufferPointer(start: c.pointer, count: c.count))
    }

    /// The value of a one-element tensor.
    public var item: Float {
        precondition(count == 1, "item on a tensor of shape \(shape)")
        return pointer[0]
    }

    /// The element at a full index.
    public subscript(index: Int...) -> Float {
        precondition(index.count == rank, "index \(index) for shape \(shape)")
        var o = offset
        for (i, (ix, n)) in zip(index, shape).enumerated() {
            precondition(ix >= 0 && ix < n, "index \(index) out of bounds for \(shape)")
            o += ix * strides[i]
        }
        return storage.pointer[o]
    }

    public var description: String {
        let values = scalars
        let shown = values.prefix(8).map { String(format: "%.4g", $0) }.joined(separator: ", ")
        return "Tensor(shape: \(shape), [\(shown)\(values.count > 8 ? ", …" : "")])"
    }

    // MARK: Layout

    /// Self when contiguous, otherwise a contiguous copy (recorded in the graph).
    public func contiguous() -> Tensor {
        if isContiguous { return self }
        let out = contiguousCopy()
        return Tensor.record("contiguous", out, [self]) { g in [g] }
    }

    /// A fresh contiguous copy of the values, outside the graph.
    public func contiguousCopy() -> Tensor {
        let out = Tensor.uninitialized(shape)
        copyStrided(into: out.storage.pointer)
        return out
    }

    /// `copyStrided` for a view whose last two dimensions are a transposed matrix (rows at stride 1,
    /// columns at a large stride: the weight gradient of `linear`, a `transposed(-1, -2)` view).
    /// Element by element, every read lands on another cache line and usually another page. Going
    /// through a 32 × 32 tile buffer, the reads run down the source's contiguous axis and the writes
    /// along the destination's: both stream whole cache lines. (Writing the tile straight into the
    /// destination would touch 32 lines one row apart, which for power-of-two widths all fall in one
    /// L1 set and evict each other.)
    private func copyTransposedMatrices(into dst: UnsafeMutablePointer<Float>) {
        let r = rank
        let rows = shape[r - 2], cols = shape[r - 1], columnStride = strides[r - 1]
        let matrices = count / (rows * cols)
        let tile = 32
        let rowTiles = (rows + tile - 1) / tile
        let src = storage.pointer, shape = self.shape, strides = self.strides, offset = self.offset
        parallelFor(matrices * rowTiles, grain: Swift.max(1, 8_192 / Swift.max(1, tile * cols))) { start, end in
            let buffer = UnsafeMutablePointer<Float>.allocate(capacity: tile * tile)   // [j - j0][i - i0]
            defer { buffer.deallocate() }
            for item in start ..< end {
                let matrix = item / rowTiles, i0 = (item % rowTiles) * tile, height = Swift.min(tile, rows - i0)
                // Offset of this matrix from its index over the leading dimensions.
                var base = offset, rem = matrix
                for d in stride(from: r - 3, through: 0, by: -1) {
                    base += (rem % shape[d]) * strides[d]
                    rem /= shape[d]
                }
                let out = dst + matrix * rows * cols + i0 * cols
                var j0 = 0
                while j0 < cols {
                    let width = Swift.min(tile, cols - j0)
                    for j in 0 ..< width {
                        let column: UnsafeMutablePointer<Float> = src + (base &+ i0 &+ (j0 &+ j) &* columnStride)
                        (buffer + j &* tile).update(from: column, count: height)
                    }
                    for i in 0 ..< height {
                        let row = out + (i &* cols &+ j0)
                        for j in 0 ..< width { row[j] = buffer[j &* tile &+ i] }
                    }
                    j0 += width
                }
            }
        }
    }

    /// Writes the elements in row-major order into `dst`.
    public func copyStrided(into dst: UnsafeMutablePointer<Float>) {
        let n = count
        if n == 0 { return }
        if isContiguous {
            dst.update(from: pointer, count: n)
            return
        }
        let src = storage.pointer
        let r = rank
        let inner = shape[r - 1]
        let innerStride = strides[r - 1]
        if r >= 2 && strides[r - 2] == 1 && innerStride != 1 && shape[r - 2] > 1 {
            copyTransposedMatrices(into: dst)
            return
        }
        let outer = n / inner
        let shape = self.shape, strides = self.strides, offset = self.offset
        parallelFor(outer, grain: Swift.max(1, 16_384 / Swift.max(inner, 1))) { start, end in
            var index = [Int](repeating: 0, count: r)
            // Decompose `start` into an index over the outer dims.
            var rem = start
            for d in stride(from: r - 2, through: 0, by: -1) {
                index[d] = rem % shape[d]
                rem /= shape[d]
            }
            for row in start..<end {
                var o = offset
                for d in 0..<(r - 1) { o += index[d] * strides[d] }
                let out = dst + row * inner
                if innerStride == 1 {
                    out.update(from: src + o, count: inner)
                } else {
                    for j in 0..<inner { out[j] = src[o + j * innerStride] }
                }
                var d = r - 2
                while d >= 0 {
                    index[d] += 1
                    if index[d] < shape[d] { break }
                    index[d] = 0
                    d -= 1
                }
            }
        }
    }

    /// Copies `source`'s values (same element count) into this tensor's storage, in place and
    /// outside the graph; for optimizers and checkpoint loading.
    public func assign(_ source: Tensor) {
        precondition(source.count == count, "assign: \(source.shape) into \(shape)")
        precondition(isContiguous, "assign into a non-contiguous view")
        source.copyStrided(into: pointer)
    }

    /// Sets every element of this (contiguous) tensor to `value`, outside the graph.
    public func fill(_ value: Float) {
        precondition(isContiguous, "fill on a non-contiguous view")
        pointer.update(repeating: value, count: count)
    }

    /// self += other, elementwise, outside the graph (shapes must match).
    public func addInPlace(_ other: Tensor) {
        precondition(other.shape == shape, "addInPlace: \(other.shape) into \(shape)")
        precondition(isContiguous, "addInPlace into a non-contiguous view")
        let o = other.contiguous()
        let a = pointer, b = o.pointer
        parallelFor(count) { s, e in for i in s..<e { a[i] += b[i] } }
    }

    /// A leaf copy that requires a gradient: the usual way to make a parameter.
    public func asParameter() -> Tensor {
        let t = contiguousCopy()
        t.requiresGrad = true
        return t
    }
}
