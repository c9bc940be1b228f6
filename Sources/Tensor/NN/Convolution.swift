// 2-D convolution as im2col + sgemm (the standard CPU lowering).
//
// The work is cut into tiles: several whole samples when their columns fit a budget of 1 MB
// per thread (at most 4 MB), so the GEMM is wide even for small feature maps, otherwise bands
// of output rows of one sample (so a large image never needs its whole column matrix at once).
// Measured on [4, 64, 32, 32] ⊛ 3×3 and the small UNet: one thread is 10% faster with 1 MB
// tiles than 4 MB (they stay in its L2), while two threads splitting one GEMM want the wider
// 2–4 MB tiles; larger tiles fall out of cache, smaller ones starve the GEMM. A tile's patches are
// unfolded into a column matrix
//   col [C·kh·kw, T]   (T = tile columns: row (c, ki, kj), column (sample, oh, ow))
// so that each group's output is one GEMM  Y_g [Og, T] = W_g [Og, Kg] · col_g [Kg, T].
// Backward reuses the same layout: dW_g += dY_g · col_gᵀ, dcol_g = W_gᵀ · dY_g, then col2im.
// A 1×1, stride-1, unpadded convolution reads the input itself as the column matrix.

/// Samples [n0, n0 + nb) and, within them, output rows [oh0, oh1): either whole samples
/// (oh0 = 0, oh1 = Ho) or one band of rows of a single sample.
struct ConvTile {
    let n0: Int, nb: Int, oh0: Int, oh1: Int
    var rows: Int { oh1 - oh0 }
}

/// Sizes of one convolution, shared by forward and backward.
struct ConvGeometry {
    let n: Int, c: Int, h: Int, w: Int
    let o: Int, kh: Int, kw: Int
    let sh: Int, sw: Int, ph: Int, pw: Int, dh: Int, dw: Int
    let groups: Int
    let ho: Int, wo: Int

    var cg: Int { c / groups }
    var og: Int { o / groups }
    /// Rows of one group's column matrix (and columns of its weight matrix).
    var kg: Int { cg * kh * kw }
    /// Rows of the whole column matrix.
    var colRows: Int { c * kh * kw }
    /// Output positions per sample.
    var l: Int { ho * wo }
    var inputPlane: Int { h * w }
    /// The input is already its own column matrix.
    var isPointwise: Bool { kh == 1 && kw == 1 && sh == 1 && sw == 1 && ph == 0 && pw == 0 }

    /// GEMM columns of a tile.
    func columns(_ t: ConvTile) -> Int { t.nb * t.rows * wo }

    /// The tiles covering the batch, each needing at most 2¹⁸ column floats per thread, 2²⁰ in
    /// all (one output row of one sample at the least); 2²⁰ whatever the threads when
    /// `Threads.deterministic`.
    func tiles() -> [ConvTile] {
        if isPointwise { return (0..<n).map { ConvTile(n0: $0, nb: 1, oh0: 0, oh1: ho) } }
        // Tiles change the GEMMs' shapes (and so their bits) and the order weight gradients add up in.
        let budget = Threads.deterministic ? 1 << 20 : Swift.min(1 << 20, (1 << 18) * Threads.count)
        let perRow = Swift.max(colRows * wo, 1), perSample = perRow * ho
        var out: [ConvTile] = []
        if perSample <= budget {
            let nb = Swift.max(1, Swift.min(n, budget / perSample))
            for n0 in stride(from: 0, to: n, by: nb) { out.append(ConvTile(n0: n0, nb: Swift.min(nb, n - n0), oh0: 0, oh1: ho)) }
        } else {
            let band = Swift.max(1, budget / perRow)
            for n0 in 0..<n {
                for oh0 in stride(from: 0, to: ho, by: band) { out.append(ConvTile(n0: n0, nb: 1, oh0: oh0, oh1: Swift.min(ho, oh0 + band))) }
            }
        }
        return out
    }

    /// Unfolds a tile of `x` [N, C, H, W] into `col` [C·kh·kw, T].
    ///
    /// Index arithmetic is wrapping (`&*`, `&+`): every index is bounded by the tensor sizes
    /// checked in `conv2d`, and the overflow checks otherwise cost more than the copying for
    /// the short rows of small feature maps.
    func im2col(_ x: UnsafePointer<Float>, _ t: ConvTile, into col: UnsafeMutablePointer<Float>) {
        let ld = columns(t), span = t.rows &* wo, nb = t.nb
        let sampleSize = c &* inputPlane, kernelArea = kh &* kw
        let (h, w, wo, sh, sw, ph, dh) = (h, w, wo, sh, sw, ph, dh)
        parallelFor(colRows &* nb, grain: Swift.max(1, 16_384 / Swift.max(span, 1))) { s, e in
            for idx in s..<e {
                let r = idx / nb, j = idx % nb
                let ch = r / kernelArea, ki = (r / kw) % kh, kj = r % kw
                let src = x + ((t.n0 &+ j) &* sampleSize &+ ch &* inputPlane)
                var drow = col + (r &* ld &+ j &* span)
                let iw0 = kj &* dw &- pw
                // Output columns whose input column lies inside the image (stride-1 fast path).
                let lo = Swift.min(Swift.max(-iw0, 0), wo), hi = Swift.max(Swift.min(w &- iw0, wo), lo)
                var ih = t.oh0 &* sh &- ph &+ ki &* dh
                for _ in t.oh0..<t.oh1 {
                    defer { drow += wo; ih &+= sh }
                    if ih < 0 || ih >= h {
                        drow.update(repeating: 0, count: wo)
                        continue
                    }
                    let srow = src + ih &* w
                    if sw == 1 {
                        // Rows are short (Wo), where a memmove call costs more than the copy, and
                        // the compiler cannot rule out overlap to vectorise a plain loop: eight at a time.
                        var ow = 0
                        while ow < lo { drow[ow] = 0; ow &+= 1 }
                        let shifted = UnsafeRawPointer(srow + iw0), target = UnsafeMutableRawPointer(drow)
                        while ow &+ 8 <= hi {
                            target.storeBytes(of: shifted.loadUnaligned(fromByteOffset: ow &* 4, as: SIMD8<Float>.self),
                                              toByteOffset: ow &* 4, as: SIMD8<Float>.self)
                            ow &+= 8
                        }
                        while ow < hi { drow[ow] = srow[ow &+ iw0]; ow &+= 1 }
                        while ow < wo { drow[ow] = 0; ow &+= 1 }
                    } else {
                        var iw = iw0
                        for ow in 0..<wo {
                            drow[ow] = (iw >= 0 && iw < w) ? srow[iw] : 0
                            iw &+= sw
                        }
                    }
                }
            }
        }
    }

    /// Folds `col` [C·kh·kw, T] of a tile back onto `dx` [N, C, H, W], adding overlapping
    /// patches. Parallel over (sample, channel) planes, which no two threads share.
    func col2im(_ col: UnsafePointer<Float>, _ t: ConvTile, into dx: UnsafeMutablePointer<Float>) {
        let ld = columns(t), span = t.rows * wo, nb = t.nb
        let sampleSize = c * inputPlane
        parallelFor(nb * c, grain: Swift.max(1, 16_384 / Swift.max(span * kh * kw, 1))) { s, e in
            for p in s..<e {
                let j = p / c, ch = p % c
                let dst = dx + (t.n0 + j) * sampleSize + ch * inputPlane
                for ki in 0..<kh {
                    for kj in 0..<kw {
                        let r = (ch * kh + ki) * kw + kj
                        let src = col + r * ld + j * span
                        let iw0 = kj * dw - pw
                        let lo = Swift.min(Swift.max(-iw0, 0), wo), hi = Swift.max(Swift.min(w - iw0, wo), lo)
                        for oh in t.oh0..<t.oh1 {
                            let ih = oh * sh - ph + ki * dh
                            if ih < 0 || ih >= h { continue }
                            let drow = dst + ih * w, srow = src + (oh - t.oh0) * wo
                            if sw == 1 {
                                let d = drow + iw0
                                for ow in lo..<hi { d[ow] += srow[ow] }
                            } else {
                                for ow in 0..<wo {
                                    let iw = ow * sw + iw0
                                    if iw >= 0 && iw < w { drow[iw] += srow[ow] }
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// Copies `staging` [O, nb·L] (GEMM layout of a whole-sample tile) into `tensor` [N, O, L],
    /// or the reverse when `gather` is true.
    func shuffle(_ staging: UnsafeMutablePointer<Float>, _ tensor: UnsafeMutablePointer<Float>, _ t: ConvTile, gather: Bool) {
        let nb = t.nb
        parallelFor(o * nb, grain: Swift.max(1, 16_384 / Swift.max(l, 1))) { s, e in
            for p in s..<e {
                let oc = p / nb, j = p % nb
                let gemmRow = staging + oc * nb * l + j * l
                let tensorRow = tensor + ((t.n0 + j) * o + oc) * l
                if gather { gemmRow.update(from: tensorRow, count: l) } else { tensorRow.update(from: gemmRow, count: l) }
            }
        }
    }
}

extension Tensor {
    /// 2-D convolution (cross-correlation, as in PyTorch) in NCHW layout:
    ///
    ///     out[n, o, i, j] = b[o] + Σ_{c∈group(o), ki, kj} x[n, c, i·sh − ph + ki·dh, j·sw − pw + kj·dw] · w[o, c mod Cg, ki, kj]
    ///
    /// - x (self) [N, C, H, W], weight [O, C/groups, kh, kw], bias [O]? → [N, O, Ho, Wo] with
    ///   Ho = ⌊(H + 2·ph − dh·(kh − 1) − 1) / sh⌋ + 1 (likewise Wo).
    /// - Backward: dx by col2im of Wᵀ·dY, dW = dY·colᵀ, db = Σ dY over N, Ho, Wo.
    public func conv2d(weight: Tensor, bias: Tensor?, stride: (Int, Int) = (1, 1), padding: (Int, Int) = (0, 0),
                       dilation: (Int, Int) = (1, 1), groups: Int = 1) -> Tensor {
        precondition(rank == 4, "conv2d: input must be [N, C, H, W], got \(shape)")
        precondition(weight.rank == 4, "conv2d: weight must be [O, C/groups, kh, kw], got \(weight.shape)")
        precondition(groups >= 1 && shape[1] % groups == 0 && weight.shape[0] % groups == 0,
                     "conv2d: \(groups) groups must divide input channels \(shape[1]) and output channels \(weight.shape[0])")
        precondition(weight.shape[1] * groups == shape[1],
                     "conv2d: weight \(weight.shape) expects \(weight.shape[1] * groups) input channels, input \(shape) has \(shape[1])")
        precondition(stride.0 >= 1 && stride.1 >= 1 && dilation.0 >= 1 && dilation.1 >= 1 && padding.0 >= 0 && padding.1 >= 0,
                     "conv2d: stride \(stride) and dilation \(dilation) must be ≥ 1, padding \(padding) ≥ 0")
        if let bias { precondition(bias.shape == [weight.shape[0]], "conv2d: bias \(bias.shape) for \(weight.shape[0]) output channels") }
        let (kh, kw) = (weight.shape[2], weight.shape[3])
        let ho = (shape[2] + 2 * padding.0 - dilation.0 * (kh - 1) - 1) / stride.0 + 1
        let wo = (shape[3] + 2 * padding.1 - dilation.1 * (kw - 1) - 1) / stride.1 + 1
        precondition(ho >= 1 && wo >= 1 && shape[2] + 2 * padding.0 >= dilation.0 * (kh - 1) + 1
                     && shape[3] + 2 * padding.1 >= dilation.1 * (kw - 1) + 1,
                     "conv2d: kernel \(kh)×\(kw) (dilation \(dilation)) is larger than the padded input \(shape)")
        let geo = ConvGeometry(n: shape[0], c: shape[1], h: shape[2], w: shape[3], o: weight.shape[0], kh: kh, kw: kw,
                               sh: stride.0, sw: stride.1, ph: padding.0, pw: padding.1, dh: dilation.0, dw: dilation.1,
                               groups: groups, ho: ho, wo: wo)
        let x = contiguousValues()                 // [N, C, H, W]
        let wt = weight.contiguousValues()         // [O, Kg] as a matrix
        // Every tile's GEMM writes its outputs with β = 0, so the output needs no clearing.
        let out = Tensor.uninitialized([geo.n, geo.o, ho, wo])   // [N, O, Ho, Wo]
        Tensor.conv2dForward(x.pointer, wt.pointer, bias?.contiguousValues().pointer, geo, out.storage.pointer)

        let inputs = bias.map { [self, weight, $0] } ?? [self, weight]
        let needX = requiresGrad, needW = weight.requiresGrad, needB = bias?.requiresGrad ?? false
        return Tensor.record("conv2d", out, inputs) { g in
            let grads = Tensor.conv2dBackward(g.contiguousValues(), x, wt, geo, needX: needX, needW: needW, needB: needB)
            return bias == nil ? [grads.dx, grads.dw] : [grads.dx, grads.dw, grads.db]
        }
    }

    /// out [N, O, L] = conv(x [N, C, H, W], w [O, Kg]) + b [O].
    static func conv2dForward(_ x: UnsafeMutablePointer<Float>, _ w: UnsafeMutablePointer<Float>,
                              _ b: UnsafeMutablePointer<Float>?, _ geo: ConvGeometry, _ out: UnsafeMutablePointer<Float>) {
        let tiles = geo.tiles()
        let maxColumns = tiles.map { geo.columns($0) }.max() ?? 0
        let needsStaging = tiles.contains { $0.nb > 1 }
        let pool = WorkspacePool.shared
        pool.withBuffer(count: geo.isPointwise ? 0 : geo.colRows * maxColumns) { col in      // [C·kh·kw, T]
            pool.withBuffer(count: needsStaging ? geo.o * maxColumns : 0) { staging in         // [O, T]
                for t in tiles {
                    let ld = geo.columns(t)
                    // B = col [C·kh·kw, T], or the sample itself [C, L] when pointwise.
                    let colPointer = geo.isPointwise ? x + t.n0 * geo.c * geo.inputPlane : col
                    if !geo.isPointwise { geo.im2col(x, t, into: col) }
                    // C = Y [O, T]: straight into the output rows of one sample (row stride L),
                    // or into staging for a multi-sample tile.
                    let direct = t.nb == 1
                    let y = direct ? out + t.n0 * geo.o * geo.l + t.oh0 * geo.wo : staging
                    let ldY = direct ? geo.l : ld
                    for gi in 0..<geo.groups {
                        parallelSgemm(transA: false, transB: false, m: geo.og, n: ld, k: geo.kg,
                                      w + gi * geo.og * geo.kg, lda: geo.kg, colPointer + gi * geo.kg * ld, ldb: ld,
                                      beta: 0, y + gi * geo.og * ldY, ldc: ldY)
                    }
                    if !direct { geo.shuffle(staging, out, t, gather: false) }
                }
            }
        }
        if let b {
            let l = geo.l, o = geo.o
            parallelFor(geo.n * o, grain: Swift.max(1, 32_768 / Swift.max(l, 1))) { s, e in
                for p in s..<e {
                    let v = b[p % o], row = out + p * l
                    for i in 0..<l { row[i] += v }
                }
            }
        }
    }

    /// Gradients of conv2d for dY [N, O, Ho, Wo]; nil where not needed.
    static func conv2dBackward(_ g: Tensor, _ x: Tensor, _ w: Tensor, _ geo: ConvGeometry,
                               needX: Bool, needW: Bool, needB: Bool) -> (dx: Tensor?, dw: Tensor?, db: Tensor?) {
        let dy = g.pointer
        var db: Tensor? = nil
        if needB {
            let sums = Tensor(zeros: [geo.o])                                  // [O]
            let d = sums.storage.pointer, l = geo.l, o = geo.o, n = geo.n
            parallelFor(o, grain: Swift.max(1, 32_768 / Swift.max(n * l, 1))) { s, e in
                for oc in s..<e {
                    var acc: Double = 0
                    for ni in 0..<n {
                        let row = dy + (ni * o + oc) * l
                        var part: Float = 0
                        for i in 0..<l { part += row[i] }
                        acc += Double(part)
                    }
                    d[oc] = Float(acc)
                }
            }
            db = sums
        }
        if !needX && !needW { return (nil, nil, db) }

        let dx = needX ? Tensor(zeros: [geo.n, geo.c, geo.h, geo.w]) : nil     // [N, C, H, W]
        let dw = needW ? Tensor(zeros: [geo.o, geo.cg, geo.kh, geo.kw]) : nil  // [O, Cg, kh, kw] = [O, Kg]
        let tiles = geo.tiles()
        let maxColumns = tiles.map { geo.columns($0) }.max() ?? 0
        let needsStaging = tiles.contains { $0.nb > 1 }
        let colCount = geo.isPointwise ? 0 : geo.colRows * maxColumns
        let pool = WorkspacePool.shared
        pool.withBuffer(count: needW ? colCount : 0) { col in                                  // [C·kh·kw, T]
            pool.withBuffer(count: needX ? colCount : 0) { dcol in                             // [C·kh·kw, T]
                pool.withBuffer(count: needsStaging ? geo.o * maxColumns : 0) { staging in     // [O, T]
                    for t in tiles {
                        let ld = geo.columns(t)
                        // dY of the tile as a GEMM operand [O, T]: in place for one sample
                        // (row stride L), gathered for a multi-sample tile.
                        let direct = t.nb == 1
                        let gy = direct ? dy + t.n0 * geo.o * geo.l + t.oh0 * geo.wo : staging
                        let ldG = direct ? geo.l : ld
                        if !direct { geo.shuffle(staging, dy, t, gather: true) }
                        if let dw {
                            let colPointer = geo.isPointwise ? x.pointer + t.n0 * geo.c * geo.inputPlane : col
                            if !geo.isPointwise { geo.im2col(x.pointer, t, into: col) }
                            for gi in 0..<geo.groups {
                                // dW_g [Og, Kg] += dY_g [Og, T] · col_gᵀ [T, Kg]
                                parallelSgemm(transA: false, transB: true, m: geo.og, n: geo.kg, k: ld,
                                              gy + gi * geo.og * ldG, lda: ldG, colPointer + gi * geo.kg * ld, ldb: ld,
                                              beta: 1, dw.storage.pointer + gi * geo.og * geo.kg, ldc: geo.kg)
                            }
                        }
                        if let dx {
                            // dcol_g [Kg, T] = W_gᵀ [Kg, Og] · dY_g [Og, T]; pointwise writes dx directly.
                            let target = geo.isPointwise ? dx.storage.pointer + t.n0 * geo.c * geo.inputPlane : dcol
                            for gi in 0..<geo.groups {
                                parallelSgemm(transA: true, transB: false, m: geo.kg, n: ld, k: geo.og,
                                              w.pointer + gi * geo.og * geo.kg, lda: geo.kg, gy + gi * geo.og * ldG, ldb: ldG,
                                              beta: 0, target + gi * geo.kg * ld, ldc: ld)
                            }
                            if !geo.isPointwise { geo.col2im(dcol, t, into: dx.storage.pointer) }
                        }
                    }
                }
            }
        }
        return (dx, dw, db)
    }
}
