import Foundation
import Synchronization

// The threads behind `parallelFor` (and so behind every split GEMM).
//
// A UNet step at diffusion-adapter sizes is hundreds of parallel regions of 10–500 µs with short
// serial stretches between them. Handing each region to a thread that sleeps in the kernel
// (Dispatch's concurrentPerform) costs a futex wake-up and a context switch per region: in a
// profile at two threads about 11% of the time went to the scheduler, and two threads ran
// little faster than one. Here the workers stay awake for `spinMicroseconds` after a region,
// polling an atomic generation counter, so the next region starts without a system call; only
// after that idle window do they sleep on a condition variable. OpenMP runtimes (which PyTorch
// uses) do the same.
//
// One region runs at a time. A `parallelFor` issued while the pool is busy (from inside a
// region, or from another thread of the process) runs on its calling thread, which keeps nested
// loops correct and concurrent callers safe.

/// One parallel region: chunks are claimed with an atomic counter by the caller and the workers.
private final class ParallelRegion: @unchecked Sendable {
    let chunks: Int
    /// Cleared by the caller once every chunk is done, so nothing refers to the non-escaping
    /// closure after `parallelFor` returns.
    var body: ((Int) -> Void)?
    let next = Atomic<Int>(0)
    let done = Atomic<Int>(0)

    init(chunks: Int, body: @escaping (Int) -> Void) {
        self.chunks = chunks
        self.body = body
    }

    /// Runs chunks until none is left unclaimed.
    func work() {
        while true {
            let c = next.wrappingAdd(1, ordering: .relaxed).oldValue
            if c >= chunks { return }
            body!(c)
            done.wrappingAdd(1, ordering: .releasing)
        }
    }
}

/// Persistent worker threads that spin briefly between regions, then sleep.
final class SpinningThreadPool: @unchecked Sendable {
    static let shared = SpinningThreadPool()

    /// How long an idle worker polls for the next region before it sleeps.
    static let spinMicroseconds: UInt64 = 200

    private let busy = Atomic<Bool>(false)
    /// Bumped once per region; workers spin on it.
    private let generation = Atomic<Int>(0)
    private let condition = NSCondition()
    // Guarded by `condition`.
    private var current: ParallelRegion?
    private var workerCount = 0

    /// Runs `body(c)` for every c in 0..<chunks on the calling thread and up to `threads − 1`
    /// workers, returning when all chunks are done.
    func run(chunks: Int, threads: Int, _ body: (Int) -> Void) {
        guard chunks > 1, threads > 1, busy.compareExchange(expected: false, desired: true, ordering: .acquiring).exchanged else {
            for c in 0..<chunks { body(c) }
            return
        }
        defer { busy.store(false, ordering: .releasing) }
        ensureWorkers(threads - 1)
        withoutActuallyEscaping(body) { body in
            let region = ParallelRegion(chunks: chunks, body: body)
            condition.lock()
            current = region
            generation.wrappingAdd(1, ordering: .releasing)
            condition.broadcast()
            condition.unlock()
            region.work()
            // The chunks still running belong to workers; when they do not finish within a few
            // thousand polls (a worker descheduled by an oversubscribed machine), yield the core.
            var polls = 0
            while region.done.load(ordering: .acquiring) < chunks {
                polls &+= 1
                if polls > 4096 { sched_yield() }
            }
            condition.lock()
            current = nil
            condition.unlock()
            region.body = nil
        }
    }

    private func ensureWorkers(_ count: Int) {
        condition.lock()
        defer { condition.unlock() }
        while workerCount < count {
            workerCount += 1
            let thread = Thread { [unowned self] in self.workerLoop() }
            thread.start()
            // After start(): Foundation on Linux drops a name set before the thread has a handle.
            thread.name = "sura-pool-\(workerCount)"
        }
    }

    private func workerLoop() {
        var seen = generation.load(ordering: .acquiring)
        while true {
            // Spin on the generation for the idle window, checking the clock every 256 polls.
            let deadline = DispatchTime.now().uptimeNanoseconds + Self.spinMicroseconds * 1000
            var polls = 0
            while generation.load(ordering: .acquiring) == seen {
                polls &+= 1
                if polls & 255 == 0 && DispatchTime.now().uptimeNanoseconds > deadline { break }
            }
            condition.lock()
            while generation.load(ordering: .acquiring) == seen { condition.wait() }
            seen = generation.load(ordering: .acquiring)
            let region = current
            condition.unlock()
            region?.work()
        }
    }
}
