import Foundation

/// A reference-counted, 64-byte-aligned buffer of `Float`s shared by a tensor and its views.
public final class TensorStorage: @unchecked Sendable {
    /// Start of the buffer; valid for `count` elements while the storage is alive.
    public let pointer: UnsafeMutablePointer<Float>
    public let count: Int

    /// Allocates `count` floats, zero-filled.
    public convenience init(count: Int) {
        self.init(uninitializedCount: count)
        pointer.update(repeating: 0, count: Swift.max(count, 1))
    }

    /// Keeps large blocks on the heap. glibc serves blocks above its mmap threshold (at most
    /// 32 MB) with a fresh mmap and returns them with munmap, so every large tensor would pay a page
    /// fault per 4 KB on first touch — more than the arithmetic of an elementwise op — and
    /// concurrent faults serialise on the address-space lock. Freed heap blocks are reused instead.
    private static let heapConfigured: Bool = {
        let mmapThreshold: Int32 = -3, trimThreshold: Int32 = -1  // M_MMAP_THRESHOLD, M_TRIM_THRESHOLD
        _ = glibcMallopt(mmapThreshold, Int32.max)
        _ = glibcMallopt(trimThreshold, 1 << 30)
        return true
    }()

    /// Allocates `count` floats without clearing them, for outputs a kernel overwrites entirely.
    public init(uninitializedCount count: Int) {
        _ = TensorStorage.heapConfigured
        precondition(count >= 0, "negative storage size")
        var raw: UnsafeMutableRawPointer? = nil
        // posix_memalign with a zero size may return nil; always ask for at least one element.
        let bytes = max(count, 1) * MemoryLayout<Float>.stride
        guard posix_memalign(&raw, 64, bytes) == 0, let raw else {
            fatalError("Sura: out of memory allocating \(bytes) bytes")
        }
        pointer = raw.bindMemory(to: Float.self, capacity: max(count, 1))
        self.count = count
    }

    /// Allocates and copies `values`.
    public convenience init(_ values: [Float]) {
        self.init(count: values.count)
        values.withUnsafeBufferPointer { buf in
            if let base = buf.baseAddress { pointer.update(from: base, count: values.count) }
        }
    }

    deinit { free(pointer) }
}

/// glibc's `mallopt(int, int)`; Swift's Glibc module does not import malloc.h.
@_silgen_name("mallopt")
private func glibcMallopt(_ parameter: Int32, _ value: Int32) -> Int32
