import Foundation

// Nearest-neighbour upsampling by integer factors; its backward sums each block.

extension Tensor {
    /// out[n, c, i, j] = x[n, c, ⌊i/sh⌋, ⌊j/sw⌋] (PyTorch `F.interpolate(mode="nearest")` with
    /// integer scale factors).
    /// - x (self) [N, C, H, W] → [N, C, H·sh, W·sw].
    /// - Backward: dx[n, c, i, j] = Σ of g over the sh×sw block that copies x[n, c, i, j].
    public func upsampleNearest(scale: (Int, Int) = (2, 2)) -> Tensor {
        precondition(rank == 4, "upsampleNearest: input must be [N, C, H, W], got \(shape)")
        precondition(scale.0 >= 1 && scale.1 >= 1, "upsampleNearest: scale \(scale) must be ≥ 1")
        let (sh, sw) = scale
        let (planes, h, w) = (shape[0] * shape[1], shape[2], shape[3])
        let (ho, wo) = (h * sh, w * sw)
        let x = contiguousValues()                                   // [N, C, H, W]
        let out = Tensor(zeros: [shape[0], shape[1], ho, wo])        // [N, C, H·sh, W·sw]
        let src = x.pointer, dst = out.storage.pointer
        parallelFor(planes, grain: Swift.max(1, 16_384 / Swift.max(ho * wo, 1))) { s, e in
            for p in s..<e {
                let sp = src + p * h * w, dp = dst + p * ho * wo
                for i in 0..<h {
                    let row = dp + i * sh * wo, srow = sp + i * w
                    for j in 0..<w {
                        let v = srow[j]
                        for k in 0..<sw { row[j * sw + k] = v }
                    }
                    for r in 1..<sh { (row + r * wo).update(from: row, count: wo) }
                }
            }
        }
        let inShape = shape
        return Tensor.record("upsample_nearest", out, [self]) { g in
            let gc = g.contiguousValues()
            let dx = Tensor(zeros: inShape)                          // [N, C, H, W]
            let gp = gc.pointer, dp = dx.storage.pointer
            parallelFor(planes, grain: Swift.max(1, 16_384 / Swift.max(ho * wo, 1))) { s, e in
                for p in s..<e {
                    let gplane = gp + p * ho * wo, dplane = dp + p * h * w
                    for i in 0..<ho {
                        let grow = gplane + i * wo, drow = dplane + (i / sh) * w
                        for j in 0..<wo { drow[j / sw] += grow[j] }
                    }
                }
            }
            return [dx]
        }
    }
}
