import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A whole file mapped read-only into memory; unmapped when the last reference goes away.
///
/// Model files are hundreds of megabytes: mapping lets a reader touch only the tensors it
/// loads, and lets the kernel share the pages between processes on one host.
final class MappedFile: @unchecked Sendable {
    /// The path as given, used in every error message.
    let path: String
    let base: UnsafeRawPointer
    let size: Int
    private let mapped: Bool

    init(url: URL) throws {
        path = url.path
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else {
            throw FileFormatError.unreadable(file: path, reason: String(cString: strerror(errno)))
        }
        defer { close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0 else {
            throw FileFormatError.unreadable(file: path, reason: String(cString: strerror(errno)))
        }
        guard (info.st_mode & S_IFMT) == S_IFREG else {
            throw FileFormatError.unreadable(file: path, reason: "not a regular file")
        }
        size = Int(info.st_size)
        if size == 0 {
            // mmap refuses zero lengths; an empty file still needs a valid (never read) base.
            base = UnsafeRawPointer(UnsafeMutableRawPointer.allocate(byteCount: 1, alignment: 16))
            mapped = false
            return
        }
        let p = mmap(nil, size, PROT_READ, MAP_PRIVATE, fd, 0)
        guard let p, p != MAP_FAILED else {
            throw FileFormatError.unreadable(file: path, reason: "mmap: \(String(cString: strerror(errno)))")
        }
        base = UnsafeRawPointer(p)
        mapped = true
    }

    deinit {
        if mapped {
            munmap(UnsafeMutableRawPointer(mutating: base), size)
        } else {
            UnsafeMutableRawPointer(mutating: base).deallocate()
        }
    }
}

/// A bounds-checked little-endian reader over a mapped file; every read names its context.
struct ByteCursor {
    let file: MappedFile
    var position: Int

    init(_ file: MappedFile, at position: Int = 0) {
        self.file = file
        self.position = position
    }

    var remaining: Int { file.size - position }

    mutating func require(_ count: Int, _ context: @autoclosure () -> String) throws {
        if count < 0 || count > remaining {
            throw FileFormatError.truncated(file: file.path, context: context(), needed: count, available: remaining)
        }
    }

    mutating func read<T: FixedWidthInteger>(_ type: T.Type, _ context: @autoclosure () -> String) throws -> T {
        try require(MemoryLayout<T>.size, context())
        let v = file.base.loadUnaligned(fromByteOffset: position, as: T.self)
        position += MemoryLayout<T>.size
        return T(littleEndian: v)
    }

    mutating func readFloat(_ context: @autoclosure () -> String) throws -> Float {
        Float(bitPattern: try read(UInt32.self, context()))
    }

    mutating func readDouble(_ context: @autoclosure () -> String) throws -> Double {
        Double(bitPattern: try read(UInt64.self, context()))
    }

    /// A u64-length-prefixed string; invalid UTF-8 is repaired rather than refused.
    mutating func readString(_ context: @autoclosure () -> String) throws -> String {
        let length = try read(UInt64.self, context())
        guard length <= UInt64(remaining) else {
            throw FileFormatError.stringOverrun(file: file.path, context: context(), length: length, remaining: remaining)
        }
        let n = Int(length)
        let bytes = UnsafeRawBufferPointer(start: file.base + position, count: n).bindMemory(to: UInt8.self)
        position += n
        return String(decoding: bytes, as: UTF8.self)
    }
}

/// Writes a file by streaming into a temporary sibling, then renaming it over `url`, so that a
/// crash never leaves a half-written checkpoint under the real name (DESIGN.md §4).
struct AtomicFileWriter {
    let url: URL
    private let temporaryPath: String
    private var handle: UnsafeMutablePointer<FILE>?

    init(url: URL) throws {
        self.url = url
        let dir = url.deletingLastPathComponent().path
        let name = url.lastPathComponent
        temporaryPath = (dir.isEmpty ? "." : dir) + "/.\(name).tmp-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        guard let h = fopen(temporaryPath, "wb") else {
            throw FileFormatError.writeFailed(file: url.path, reason: String(cString: strerror(errno)))
        }
        handle = h
    }

    mutating func write(_ bytes: UnsafeRawBufferPointer) throws {
        guard let handle, let base = bytes.baseAddress, bytes.count > 0 else { return }
        if fwrite(base, 1, bytes.count, handle) != bytes.count {
            let reason = String(cString: strerror(errno))
            discard()
            throw FileFormatError.writeFailed(file: url.path, reason: reason)
        }
    }

    mutating func write(_ bytes: [UInt8]) throws {
        try bytes.withUnsafeBytes { try write($0) }
    }

    /// Flushes, syncs and renames into place.
    mutating func commit() throws {
        guard let h = handle else { return }
        handle = nil
        let ok = fflush(h) == 0 && fsync(fileno(h)) == 0
        let reason = ok ? "" : String(cString: strerror(errno))
        if fclose(h) != 0 || !ok {
            unlink(temporaryPath)
            throw FileFormatError.writeFailed(file: url.path, reason: reason.isEmpty ? "close failed" : reason)
        }
        if rename(temporaryPath, url.path) != 0 {
            let reason = String(cString: strerror(errno))
            unlink(temporaryPath)
            throw FileFormatError.writeFailed(file: url.path, reason: "rename: \(reason)")
        }
    }

    /// Abandons the temporary file.
    mutating func discard() {
        if let h = handle { fclose(h) }
        handle = nil
        unlink(temporaryPath)
    }
}

/// IEEE half and bfloat16 conversions, written out so they behave the same on every platform
/// (Swift's `Float16` is missing on Intel macOS).
public enum HalfFloat {
    /// Exact half → float, including subnormals, infinities and NaNs.
    @inline(__always)
    public static func float(fromHalf h: UInt16) -> Float {
        let sign = UInt32(h & 0x8000) << 16
        let exponent = UInt32(h >> 10) & 0x1F
        let mantissa = UInt32(h & 0x3FF)
        if exponent == 0x1F {
            return Float(bitPattern: sign | 0x7F80_0000 | (mantissa << 13))
        }
        if exponent == 0 {
            // Subnormal: mantissa × 2⁻²⁴, exact in float.
            let magnitude = Float(mantissa) * (1.0 / 16_777_216.0)
            return sign != 0 ? -magnitude : magnitude
        }
        return Float(bitPattern: sign | ((exponent + 112) << 23) | (mantissa << 13))
    }

    /// Float → half, rounding to nearest-even like numpy's `astype(float16)`; overflow gives ±inf.
    @inline(__always)
    public static func half(from f: Float) -> UInt16 {
        let x = f.bitPattern
        let sign = UInt16((x >> 16) & 0x8000)
        let magnitude = x & 0x7FFF_FFFF
        if magnitude >= 0x7F80_0000 {
            // Keep NaNs NaN (quiet bit set); infinities stay infinite.
            return magnitude > 0x7F80_0000 ? sign | 0x7E00 | UInt16((magnitude >> 13) & 0x1FF) : sign | 0x7C00
        }
        if magnitude >= 0x477F_F000 { return sign | 0x7C00 }  // ≥ 65520 rounds to infinity
        if magnitude < 0x3880_0000 {
            // Below 2⁻¹⁴: half subnormal in units of 2⁻²⁴; scaling by 2²⁴ is exact.
            let units = (Float(bitPattern: magnitude) * 16_777_216.0).rounded(.toNearestOrEven)
            return sign | UInt16(units)
        }
        var h = (magnitude - 0x3800_0000) >> 13
        let rest = magnitude & 0x1FFF
        if rest > 0x1000 || (rest == 0x1000 && (h & 1) == 1) { h += 1 }
        return sign | UInt16(h)
    }

    @inline(__always)
    public static func float(fromBFloat16 b: UInt16) -> Float {
        Float(bitPattern: UInt32(b) << 16)
    }

    /// Float → bfloat16 with round-to-nearest-even, as PyTorch does; NaNs stay quiet NaNs.
    @inline(__always)
    public static func bfloat16(from f: Float) -> UInt16 {
        let x = f.bitPattern
        if (x & 0x7FFF_FFFF) > 0x7F80_0000 { return UInt16(x >> 16) | 0x0040 }
        let rounded = (UInt64(x) + 0x7FFF + UInt64((x >> 16) & 1)) >> 16
        return UInt16(truncatingIfNeeded: rounded)
    }
}
