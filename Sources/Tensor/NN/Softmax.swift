import Foundation

// Softmax and log-softmax along any axis, fused and numerically stable (the row maximum is
// subtracted before exponentiating). The tensor is viewed as [A, R, C] with R the softmax axis;
// C == 1 (the last axis) is the fast path with contiguous rows.

/// The [A, R, C] view of a softmax along one axis.
struct SoftmaxLayout {
    let a: Int, r: Int, c: Int

    init(_ shape: [Int], axis: Int) {
        a = shape[..<axis].reduce(1, *)
        r = shape[axis]
        c = shape[(axis + 1)...].reduce(1, *)
    }

    /// Calls `body(base, span)` for runs of up to `span` adjacent columns that share one outer
    /// index; element t of column k in the run is at base + t·c + k.
    @inline(__always)
    func forEachColumnRun(_ body: (Int, Int) -> Void) {
        let work = a * c
        parallelFor(work, grain: Swift.max(1, 16_384 / Swift.max(r, 1))) { s, e in
            var i = s
            while i < e {
                let ai = i / c, ci = i % c
                let span = Swift.min(e - i, c - ci)
                body(ai * r * c + ci, span)
                i += span
            }
        }
    }
}

extension Tensor {
    /// Writes softmax (or log-softmax) of `x` into `y`, both laid out as `layout`.
    static func softmaxForward(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, _ layout: SoftmaxLayout, log: Bool) {
        let r = layout.r, c = layout.c
        if r == 0 { return }
        if c == 1 {
            parallelFor(layout.a, grain: Swift.max(1, 8_192 / Swift.max(r, 1))) { s, e in
                for row in s..<e {
                    let xr = x + row * r, yr = y + row * r
                    let m = rowMaximum(xr, r)
                    let sum = exponentiate(xr, minus: m, into: yr, r)
                    if log {
                        // (x − m) − log Σ keeps the digits that x − (m + log Σ) would lose for large x.
                        let logSum = Float(Foundation.log(sum))
                        for k in 0..<r { yr[k] = (xr[k] - m) - logSum }
                    } else {
                        let inv = Float(1 / sum)
                        for k in 0..<r { yr[k] *= inv }
                    }
                }
            }
            return
        }
        layout.forEachColumnRun { base, span in
            // Per-column running maximum and sum for the run, in scratch buffers.
            let m = UnsafeMutablePointer<Float>.allocate(capacity: span)
            let sum = UnsafeMutablePointer<Double>.allocate(capacity: span)
            defer { m.deallocate(); sum.deallocate() }
            m.update(from: x + base, count: span)
            sum.initialize(repeating: 0, count: span)
            for t in 1..<r {
                let xr = x + base + t * c
                for k in 0..<span { m[k] = Swift.max(m[k], xr[k]) }
            }
            for t in 0..<r {
                let xr = x + base + t * c, yr = y + base + t * c
                for k in 0..<span { yr[k] = vectorExp(xr[k] - m[k]) }
                for k in 0..<span { sum[k] += Double(yr[k]) }
            }
            if log {
                for k in 0..<span { sum[k] = Foundation.log(sum[k]) }
                for t in 0..<r {
                    let xr = x + base + t * c, yr = y + base + t * c
                    for k in 0..<span { yr[k] = (xr[k] - m[k]) - Float(sum[k]) }
                }
            } else {
                for k in 0..<span { sum[k] = 1 / sum[k] }
                for t in 0..<r {
                    let yr = y + base + t * c
                    for k in 0..<span { yr[k] *= Float(sum[k]) }
                }
            }
        }
    }

    /// dx for softmax (y ⊙ (g − Σ g⊙y)) or log-softmax (g − eʸ·Σ g), sums along the axis.
    static func softmaxBackward(_ g: UnsafePointer<Float>, _ y: UnsafePointer<Float>, _ dx: UnsafeMutablePointer<Float>,
                                _ layout: SoftmaxLayout, log: Bool) {
        let r = layout.r, c = layout.c
        if r == 0 { return }
        if c == 1 {
            parallelFor(layout.a, grain: Swift.max(1, 8_192 / Swift.max(r, 1))) { s, e in
                for row in s..<e {
                    let gr = g + row * r, yr = y + row * r, dr = dx + row * r
                    if log {
                        let total = Float(sumInDouble(gr, r))
                        for k in 0..<r { dr[k] = gr[k] - vectorExp(yr[k]) * total }
                    } else {
                        let dot = Float(dotInDouble(gr, yr, r))
                        for k in 0..<r { dr[k] = yr[k] * (gr[k] - dot) }
                    }
                }
            }
            return
        }
        layout.forEachColumnRun { base, span in
            var acc = [Double](repeating: 0, count: span)
            for t in 0..<r {
                let gr = g + base + t * c, yr = y + base + t * c
                if log {
                    for k in 0..<span { acc[k] += Double(gr[k]) }
                } else {
                    for k in 0..<span { acc[k] += Double(gr[k] * yr[k]) }
                }
            }
            let total = acc.map { Float($0) }
            for t in 0..<r {
                let gr = g + base + t * c, yr = y + base + t * c, dr = dx + base + t * c
                if log {
                    for k in 0..<span { dr[k] = gr[k] - vectorExp(yr[k]) * total[k] }
                } else {
                    for k in 0..<span { dr[k] = yr[k] * (gr[k] - total[k]) }
                }
            }
        }
    }

    func softmaxOp(axis: Int, log: Bool) -> Tensor {
        let layout = SoftmaxLayout(shape, axis: self.axis(axis))
        let x = contiguousValues()       // [A, R, C]
        let out = Tensor(zeros: shape)   // [A, R, C]
        Tensor.softmaxForward(x.pointer, out.storage.pointer, layout, log: log)
        return Tensor.record(log ? "log_softmax" : "softmax", out, [self]) { g in
            let gc = g.contiguousValues()
            let dx = Tensor(zeros: out.shape)   // [A, R, C]
            Tensor.softmaxBackward(gc.pointer, out.pointer, dx.storage.pointer, layout, log: log)
            return [dx]
        }
    }

    /// softmax(x)ᵢ = e^(xᵢ − m) / Σⱼ e^(xⱼ − m) along `axis`, m the maximum along it.
    /// Same shape as x. Backward: dx = y ⊙ (g − Σ g⊙y).
    public func softmax(axis: Int = -1) -> Tensor { softmaxOp(axis: axis, log: false) }

    /// log softmax(x)ᵢ = xᵢ − m − log Σⱼ e^(xⱼ − m) along `axis`.
    /// Same shape as x. Backward: dx = g − softmax(x)·Σ g.
    public func logSoftmax(axis: Int = -1) -> Tensor { softmaxOp(axis: axis, log: true) }
}
