import Foundation

/// The handle of a job started with `Communicator.runInBackground` (for example an asynchronous
/// allreduce). The job's buffers belong to it until `wait()` returns.
public final class CollectiveRequest {
    private let condition = NSCondition()
    private var finished = false
    private var failure: Error?

    init() {}

    /// A request that is already complete, for work that needed no communication.
    static func completed(throwing error: Error? = nil) -> CollectiveRequest {
        let request = CollectiveRequest()
        request.finish(error)
        return request
    }

    /// True once the job has ended, successfully or not. Never blocks.
    public var isComplete: Bool {
        condition.lock()
        defer { condition.unlock() }
        return finished
    }

    /// Blocks until the job has ended and rethrows its error. The job's own waits are bounded by
    /// the communicator's timeout, so this returns (or throws) within about that long after the
    /// last peer stopped answering.
    public func wait() throws {
        condition.lock()
        if !finished {
            BlockedWaiters.shared.add(1)
            while !finished { condition.wait() }
            BlockedWaiters.shared.add(-1)
        }
        let error = failure
        condition.unlock()
        if let error { throw error }
    }

    func finish(_ error: Error?) {
        condition.lock()
        finished = true
        failure = error
        condition.broadcast()
        condition.unlock()
    }
}

/// A FIFO job queue drained by one dedicated thread. Kept apart from `CommunicationThread` so the
/// running thread does not keep its owner alive.
private final class JobQueue {
    private let condition = NSCondition()
    private var jobs: [() -> Void] = []
    private var stopping = false

    func push(_ job: @escaping () -> Void) {
        condition.lock()
        jobs.append(job)
        condition.signal()
        condition.unlock()
    }

    func stop() {
        condition.lock()
        stopping = true
        condition.signal()
        condition.unlock()
    }

    /// The thread's body: run jobs in order until stopped and empty.
    func drain() {
        while true {
            condition.lock()
            while jobs.isEmpty && !stopping { condition.wait() }
            if jobs.isEmpty {
                condition.unlock()
                return
            }
            let job = jobs.removeFirst()
            condition.unlock()
            job()
        }
    }
}

/// One communicator's communication thread, started on the first background job. Jobs run one at
/// a time in submission order, which is what keeps collectives in the same order on every rank.
final class CommunicationThread {
    private let queue = JobQueue()
    private let name: String
    private let startLock = NSLock()
    private var started = false

    init(name: String) {
        self.name = name
    }

    deinit {
        queue.stop()
    }

    /// Queues `job`; the returned request completes when it has run.
    func submit(_ job: @escaping () throws -> Void) -> CollectiveRequest {
        startIfNeeded()
        let request = CollectiveRequest()
        queue.push {
            do {
                try job()
                request.finish(nil)
            } catch {
                request.finish(error)
            }
        }
        return request
    }

    private func startIfNeeded() {
        startLock.lock()
        defer { startLock.unlock() }
        guard !started else { return }
        started = true
        let queue = self.queue
        let thread = Thread { queue.drain() }
        thread.stackSize = 1 << 20
        thread.start()
        // After start(): Foundation on Linux drops a name set before the thread has a handle.
        thread.name = name
    }
}

/// The timeout and the sent-bytes counter, shared by a communicator and its background duplicate
/// (the duplicate runs on another thread, hence the lock).
final class ChannelState {
    private let lock = NSLock()
    private var timeoutSeconds: Double
    private var sent = 0

    init(timeout: Double) {
        timeoutSeconds = timeout
    }

    var timeout: Double {
        get { lock.lock(); defer { lock.unlock() }; return timeoutSeconds }
        set { lock.lock(); timeoutSeconds = newValue; lock.unlock() }
    }

    var bytesSent: Int {
        lock.lock()
        defer { lock.unlock() }
        return sent
    }

    func countSent(_ bytes: Int) {
        lock.lock()
        sent += bytes
        lock.unlock()
    }
}

/// Monotonic deadline arithmetic for the polling loops.
struct Deadline {
    let seconds: Double
    private let end: UInt64

    init(seconds: Double) {
        self.seconds = seconds
        let nanos = seconds.isFinite ? UInt64(max(0, min(seconds, 1e9)) * 1e9) : UInt64.max / 2
        end = DispatchTime.now().uptimeNanoseconds &+ nanos
    }

    var hasPassed: Bool { DispatchTime.now().uptimeNanoseconds >= end }

    /// The same instant as a `Date`, for `NSCondition.wait(until:)`.
    var date: Date {
        let now = DispatchTime.now().uptimeNanoseconds
        let remaining = end > now ? Double(end - now) / 1e9 : 0
        return Date(timeIntervalSinceNow: remaining)
    }
}

/// How many threads of this process are blocked in `CollectiveRequest.wait()`: while one is, the
/// job it waits for is on its critical path. A thread that starts waiting wakes every poller
/// sleeping in `sleep(microseconds:)`, so a job started ahead of need (a pipeline stage's next
/// receive) answers the waiter at once instead of at the end of its pause.
final class BlockedWaiters: @unchecked Sendable {
    static let shared = BlockedWaiters()
    private let condition = NSCondition()
    private var count = 0

    func add(_ delta: Int) {
        condition.lock()
        count += delta
        if delta > 0 { condition.broadcast() }
        condition.unlock()
    }

    var anyone: Bool {
        condition.lock()
        defer { condition.unlock() }
        return count > 0
    }

    /// Sleeps for `microseconds`, or less if a thread starts waiting meanwhile (or already waits).
    func sleep(microseconds: UInt32) {
        condition.lock()
        defer { condition.unlock() }
        guard count == 0 else { return }
        _ = condition.wait(until: Date(timeIntervalSinceNow: Double(microseconds) / 1e6))
    }
}

/// Waiting between polls of an MPI request. A thread that waits for the request itself yields
/// the core for the first couple of milliseconds (latency matters for small messages), then sleeps
/// with growing pauses up to half a millisecond so it does not steal a core on a small machine.
///
/// A background job (`beside`: the communication thread, say a gradient bucket's allreduce while
/// backward runs) sleeps from the first poll while no thread of this process waits for it. Under
/// mpirun's default binding it shares one core with compute, and `sched_yield` hands that core
/// to compute for a whole scheduler slice, so each yielded poll of a multi-message ring cost a few
/// milliseconds: a 42 MB gradient took 70–75 ms per step instead of 36–40 ms with sleeping polls
/// (probe MLP, 2 ranks, bench/RESULTS.md 2026-12-07). A woken sleeper preempts compute at once.
/// While a thread is blocked waiting for a background job (a pipeline stage for its next input,
/// training for the last gradient bucket) the core has nothing else to run, so every poller
/// yields for up to 100 ms: a sleeping poll would add up to its pause to every such wait.
struct PollingBackoff {
    private let start = DispatchTime.now().uptimeNanoseconds
    private let beside: Bool
    private var sleepMicros: UInt32 = 20

    init(beside compute: Bool = false) {
        beside = compute
    }

    mutating func pause() {
        let elapsed = DispatchTime.now().uptimeNanoseconds - start
        let waitedFor = BlockedWaiters.shared.anyone
        if (!beside && elapsed < 2_000_000) || (elapsed < 100_000_000 && waitedFor) {
            sched_yield()
            return
        }
        BlockedWaiters.shared.sleep(microseconds: sleepMicros)
        sleepMicros = min(sleepMicros * 2, 500)
    }
}
