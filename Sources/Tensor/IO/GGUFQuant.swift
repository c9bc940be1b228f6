import Foundation

/// Turns ggml's block-quantised bytes into float32, matching ggml's `dequantize_row_*`
/// (and the `gguf` Python package) value for value.
///
/// Block layouts (all scales are IEEE half unless noted; `QK` = elements per block):
/// - Q4_0 (32): d, 16 bytes of nibbles; x[j] = d·(lo_j − 8), x[j+16] = d·(hi_j − 8).
/// - Q4_1 (32): d, m, 16 bytes; x = d·q + m.
/// - Q5_0 (32): d, u32 high bits, 16 bytes; q = nibble | bit·16, x = d·(q − 16).
/// - Q5_1 (32): d, m, u32 high bits, 16 bytes; x = d·q + m.
/// - Q8_0 (32): d, 32 × i8; x = d·q.
/// - Q4_K (256): d, dmin, 12 bytes of packed 6-bit (scale, min) for 8 sub-blocks of 32,
///   128 bytes of nibbles; x = (d·sc)·q − (dmin·m).
/// - Q5_K (256): as Q4_K plus 32 bytes of fifth bits.
/// - Q6_K (256): 128 bytes low nibbles, 64 bytes high 2-bit pairs, 16 × i8 scales, d;
///   x = (d·sc)·(q − 32).
public enum GGMLDequantizer {
    /// Whether `dequantize` handles `type`.
    public static func supports(_ type: GGMLType) -> Bool {
        switch type {
        case .f32, .f16, .bf16, .f64, .i8, .i16, .i32, .i64,
             .q4_0, .q4_1, .q5_0, .q5_1, .q8_0, .q4_K, .q5_K, .q6_K:
            return true
        default:
            return false
        }
    }

    /// Dequantises `count` elements (a multiple of the type's block size) from `src` into `dst`.
    /// `src` need not be aligned. Unsupported types leave `dst` untouched; check `supports` first.
    public static func dequantize(_ type: GGMLType, from src: UnsafeRawPointer, count: Int,
                                  into dst: UnsafeMutablePointer<Float>) {
        let (elements, bytes) = type.blockLayout
        let blocks = count / elements
        let kernel: ((UnsafeRawPointer, UnsafeMutablePointer<Float>) -> Void)?
        switch type {
        case .q4_0: kernel = q4_0
        case .q4_1: kernel = q4_1
        case .q5_0: kernel = q5_0
        case .q5_1: kernel = q5_1
        case .q8_0: kernel = q8_0
        case .q4_K: kernel = q4_K
        case .q5_K: kernel = q5_K
        case .q6_K: kernel = q6_K
        default: kernel = nil
        }
        if let kernel {
            parallelFor(blocks, grain: max(1, 16_384 / elements)) { start, end in
                for b in start..<end { kernel(src + b * bytes, dst + b * elements) }
            }
            return
        }
        parallelFor(count, grain: 1 << 16) { start, end in
            func each<T>(_: T.Type, _ f: (T) -> Float) {
                let size = MemoryLayout<T>.size
                for i in start..<end { dst[i] = f(src.loadUnaligned(fromByteOffset: i * size, as: T.self)) }
            }
            switch type {
            case .f32: memcpy(dst + start, src + start * 4, (end - start) * 4)
            case .f16: each(UInt16.self) { HalfFloat.float(fromHalf: UInt16(littleEndian: $0)) }
            case .bf16: each(UInt16.self) { HalfFloat.float(fromBFloat16: UInt16(littleEndian: $0)) }
            case .f64: each(UInt64.self) { Float(Double(bitPattern: UInt64(littleEndian: $0))) }
            case .i8: each(Int8.self) { Float($0) }
            case .i16: each(Int16.self) { Float(Int16(littleEndian: $0)) }
            case .i32: each(Int32.self) { Float(Int32(littleEndian: $0)) }
            case .i64: each(Int64.self) { Float(Int64(littleEndian: $0)) }
            default: break
            }
        }
    }

    @inline(__always)
    private static func half(_ p: UnsafeRawPointer, _ offset: Int) -> Float {
        HalfFloat.float(fromHalf: UInt16(littleEndian: p.loadUnaligned(fromByteOffset: offset, as: UInt16.self)))
    }

    @inline(__always)
    private static func bytes(_ p: UnsafeRawPointer, _ offset: Int) -> UnsafePointer<UInt8> {
        (p + offset).assumingMemoryBound(to: UInt8.self)
    }

    private static func q4_0(_ block: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = half(block, 0)
        let qs = bytes(block, 2)
        for j in 0..<16 {
            y[j] = Float(Int(qs[j] & 0x0F) - 8) * d
            y[j + 16] = Float(Int(qs[j] >> 4) - 8) * d
        }
    }

    private static func q4_1(_ block: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = half(block, 0), m = half(block, 2)
        let qs = bytes(block, 4)
        for j in 0..<16 {
            y[j] = Float(qs[j] & 0x0F) * d + m
            y[j + 16] = Float(qs[j] >> 4) * d + m
        }
    }

    private static func q5_0(_ block: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = half(block, 0)
        let qh = UInt32(littleEndian: block.loadUnaligned(fromByteOffset: 2, as: UInt32.self))
        let qs = bytes(block, 6)
        for j in 0..<16 {
            let high0 = Int((qh >> UInt32(j)) & 1) << 4
            let high1 = Int((qh >> UInt32(j + 16)) & 1) << 4
            y[j] = Float((Int(qs[j] & 0x0F) | high0) - 16) * d
            y[j + 16] = Float((Int(qs[j] >> 4) | high1) - 16) * d
        }
    }

    private static func q5_1(_ block: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = half(block, 0), m = half(block, 2)
        let qh = UInt32(littleEndian: block.loadUnaligned(fromByteOffset: 4, as: UInt32.self))
        let qs = bytes(block, 8)
        for j in 0..<16 {
            let high0 = Int((qh >> UInt32(j)) & 1) << 4
            let high1 = Int((qh >> UInt32(j + 16)) & 1) << 4
            y[j] = Float(Int(qs[j] & 0x0F) | high0) * d + m
            y[j + 16] = Float(Int(qs[j] >> 4) | high1) * d + m
        }
    }

    private static func q8_0(_ block: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = half(block, 0)
        let qs = (block + 2).assumingMemoryBound(to: Int8.self)
        for j in 0..<32 { y[j] = Float(qs[j]) * d }
    }

    /// The j-th (scale, min) pair of the 12-byte packed 6-bit table used by Q4_K and Q5_K:
    /// bytes 0–3 hold scales 0–3 (low 6 bits), bytes 4–7 mins 0–3; scales and mins 4–7 take
    /// their low 4 bits from bytes 8–11 and their top 2 bits from the spare bits of bytes 0–7.
    @inline(__always)
    private static func scaleMin(_ j: Int, _ q: UnsafePointer<UInt8>) -> (Float, Float) {
        if j < 4 {
            return (Float(q[j] & 63), Float(q[j + 4] & 63))
        }
        let sc = (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4)
        let m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4)
        return (Float(sc), Float(m))
    }

    private static func q4_K(_ block: UnsafeRawPointer, _ out: UnsafeMutablePointer<Float>) {
        let d = half(block, 0), dmin = half(block, 2)
        let scales = bytes(block, 4)
        var q = bytes(block, 16)
        var y = out
        for pair in 0..<4 {
            let (sc1, m1) = scaleMin(2 * pair, scales)
            let (sc2, m2) = scaleMin(2 * pair + 1, scales)
            let d1 = d * sc1, min1 = dmin * m1
            let d2 = d * sc2, min2 = dmin * m2
            for l in 0..<32 { y[l] = d1 * Float(q[l] & 0x0F) - min1 }
            for l in 0..<32 { y[l + 32] = d2 * Float(q[l] >> 4) - min2 }
            q += 32
            y += 64
        }
    }

    private static func q5_K(_ block: UnsafeRawPointer, _ out: UnsafeMutablePointer<Float>) {
        let d = half(block, 0), dmin = half(block, 2)
        let scales = bytes(block, 4)
        let qh = bytes(block, 16)
        var ql = bytes(block, 48)
        var y = out
        var u1: UInt8 = 1, u2: UInt8 = 2
        for pair in 0..<4 {
            let (sc1, m1) = scaleMin(2 * pair, scales)
            let (sc2, m2) = scaleMin(2 * pair + 1, scales)
            let d1 = d * sc1, min1 = dmin * m1
            let d2 = d * sc2, min2 = dmin * m2
            for l in 0..<32 { y[l] = d1 * Float((ql[l] & 0x0F) + (qh[l] & u1 != 0 ? 16 : 0)) - min1 }
            for l in 0..<32 { y[l + 32] = d2 * Float((ql[l] >> 4) + (qh[l] & u2 != 0 ? 16 : 0)) - min2 }
            ql += 32
            y += 64
            u1 <<= 2
            u2 <<= 2
        }
    }

    private static func q6_K(_ block: UnsafeRawPointer, _ out: UnsafeMutablePointer<Float>) {
        var ql = bytes(block, 0)
        var qh = bytes(block, 128)
        var sc = (block + 192).assumingMemoryBound(to: Int8.self)
        let d = half(block, 208)
        var y = out
        for _ in 0..<2 {
            for l in 0..<32 {
                let s = l / 16
                let q1 = Int((ql[l] & 0x0F) | ((qh[l] & 3) << 4)) - 32
                let q2 = Int((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) - 32
                let q3 = Int((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32
                let q4 = Int((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32
                y[l] = d * Float(sc[s]) * Float(q1)
                y[l + 32] = d * Float(sc[s + 2]) * Float(q2)
                y[l + 64] = d * Float(sc[s + 4]) * Float(q3)
                y[l + 96] = d * Float(sc[s + 6]) * Float(q4)
            }
            y += 128
            ql += 64
            qh += 32
            sc += 8
        }
    }
}
