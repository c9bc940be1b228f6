import Foundation

/// Uninitialised float buffers reused across calls, so that large kernel workspaces (im2col
/// columns, GEMM staging) skip both the zero-fill and the fresh page faults of a new allocation
/// on every convolution. Thread-safe; a few idle buffers are kept, the smallest dropped first.
final class WorkspacePool: @unchecked Sendable {
    static let shared = WorkspacePool()

    private struct Buffer {
        let pointer: UnsafeMutablePointer<Float>
        let capacity: Int
    }

    private let lock = NSLock()
    private var idle: [Buffer] = []
    private let maxIdle = 6

    /// Runs `body` with a buffer of at least `count` floats whose contents are unspecified.
    func withBuffer<R>(count: Int, _ body: (UnsafeMutablePointer<Float>) throws -> R) rethrows -> R {
        let buffer = take(Swift.max(count, 1))
        defer { give(buffer) }
        return try body(buffer.pointer)
    }

    private func take(_ count: Int) -> Buffer {
        lock.lock()
        var best: Int? = nil
        for i in idle.indices where idle[i].capacity >= count {
            if best == nil || idle[i].capacity < idle[best!].capacity { best = i }
        }
        if let best {
            let b = idle.remove(at: best)
            lock.unlock()
            return b
        }
        lock.unlock()
        return Buffer(pointer: .allocate(capacity: count), capacity: count)
    }

    private func give(_ buffer: Buffer) {
        lock.lock()
        idle.append(buffer)
        var dropped: Buffer? = nil
        if idle.count > maxIdle, let i = idle.indices.min(by: { idle[$0].capacity < idle[$1].capacity }) {
            dropped = idle.remove(at: i)
        }
        lock.unlock()
        dropped?.pointer.deallocate()
    }
}
