import Foundation
import Tensor
import Worker

/// Settings of `sura bench serve`.
public struct ServeBenchmarkOptions: Sendable, Equatable {
    /// In-process workers (threads speaking the real protocol over loopback TCP).
    public var workers = 2
    public var maxBatch = 8
    /// The batcher's maximum queue delay, seconds.
    public var maxQueueDelay: TimeInterval = 0.005
    /// Requests per second of the open-loop phase.
    public var rate = 1000.0
    /// Seconds per phase.
    public var seconds = 5.0
    /// Requests kept outstanding in the saturating phase (default 8 × workers × max batch).
    public var outstanding: Int?
    /// Null executor delay per batch in the saturating phase, seconds (simulates a model).
    public var saturationBatchDelay: TimeInterval = 0.002
    /// Image side in pixels.
    public var imageSide = 32
    /// Denoising steps each request asks for (nil: the scheduler's default); matters for a real executor.
    public var steps: Int?
    /// What the workers run, for the report ("null executor", "pipeline models/base").
    public var executorName = "null executor"

    public init() {}
}

/// What `sura bench serve` measured.
public struct ServeBenchmarkReport: Sendable {
    public struct Phase: Sendable {
        public var name: String
        public var sent = 0
        public var succeeded = 0
        public var failed = 0
        public var seconds = 0.0
        /// Client-observed milliseconds from send to reply.
        public var latencies: [Double] = []
        /// Latency minus queue wait minus executor time: transport, framing and scheduling cost.
        public var overheads: [Double] = []
        /// Mean requests per dispatched batch, from the scheduler's histogram.
        public var meanBatch = 0.0
        /// Mean milliseconds from the scheduler's dispatch of a batch to its result, less the
        /// executor's time: the worker's share of the overhead (the rest is the client's legs
        /// and the scheduler's own handling).
        public var meanWorkerRoundTrip = 0.0
        /// The machine's CPU time the hypervisor gave to other guests during the phase (0…1; nil off Linux).
        public var stealShare: Double?

        public var requestsPerSecond: Double { seconds > 0 ? Double(succeeded) / seconds : 0 }
    }

    public var options: ServeBenchmarkOptions
    public var openLoop: Phase
    public var saturated: Phase
    /// Round trips of a bare DEALER → ROUTER echo at the same rate: the peer the overhead is compared to.
    public var echoRoundTrips: [Double]
}

/// `sura bench serve`: the scheduler with null workers, measured from a ZeroMQ client.
///
/// Phase 1 sends at a fixed rate (open loop) and reports latency and scheduler overhead
/// (latency − queue wait − executor time, each request's own numbers from its RESULT header).
/// Phase 2 keeps many requests outstanding with a small executor delay and reports throughput
/// and the mean batch size. A bare ZeroMQ echo measured in the same run is the peer: one
/// request crosses two such round trips (client ↔ scheduler, scheduler ↔ worker).
public enum ServeBenchmark {
    /// Runs the echo peer and both phases; `progress` receives one line per phase as it starts.
    ///   - makeExecutor: builds one worker's executor (the real pipeline); nil: null executors
    ///     that sleep `saturationBatchDelay` per batch in the saturating phase.
    public static func run(_ options: ServeBenchmarkOptions, makeExecutor: (() throws -> any InferenceBatchExecutor)? = nil,
                           progress: (String) -> Void) throws -> ServeBenchmarkReport {
        let context = try ZMQContext()
        progress("echo peer: \(Int(options.rate)) round trips/s for \(options.seconds) s")
        let echo = try measureEcho(context: context, rate: options.rate, seconds: options.seconds)

        progress("open loop: \(options.rate) requests/s for \(options.seconds) s, \(options.workers) workers (\(options.executorName))")
        let open = try withCluster(options, batchDelay: 0, makeExecutor: makeExecutor) { frontend, metrics in
            try drive(frontend: frontend, context: context, options: options, name: "open loop", rate: options.rate,
                      outstanding: nil, metrics: metrics)
        }
        let depth = options.outstanding ?? 8 * options.workers * options.maxBatch
        progress("saturating: \(depth) outstanding for \(options.seconds) s, executor delay \(options.saturationBatchDelay * 1000) ms/batch")
        let saturated = try withCluster(options, batchDelay: options.saturationBatchDelay, makeExecutor: makeExecutor) { frontend, metrics in
            try drive(frontend: frontend, context: context, options: options, name: "saturating", rate: nil,
                      outstanding: depth, metrics: metrics)
        }
        return ServeBenchmarkReport(options: options, openLoop: open, saturated: saturated, echoRoundTrips: echo)
    }

    /// Starts a scheduler and in-process workers, runs `body` with the front-end endpoint, stops them.
    private static func withCluster(_ options: ServeBenchmarkOptions, batchDelay: TimeInterval,
                                    makeExecutor: (() throws -> any InferenceBatchExecutor)?,
                                    _ body: (String, SchedulerMetrics) throws -> ServeBenchmarkReport.Phase) throws -> ServeBenchmarkReport.Phase {
        var configuration = SchedulerConfiguration()
        configuration.batching = BatchingPolicy(maxBatchSize: options.maxBatch, maxQueueDelay: options.maxQueueDelay)
        configuration.queueCapacity = 1 << 20
        // Each part gets its own context (and so its own libzmq I/O thread), as separate processes would.
        let scheduler = try InferenceScheduler(configuration: configuration, frontend: "tcp://127.0.0.1:*", backend: "tcp://127.0.0.1:*",
                                               metrics: MetricsRegistry(), context: ZMQContext(), log: { _ in })
        let schedulerThread = Thread { try? scheduler.run() }
        schedulerThread.start()
        var workers: [InferenceWorkerClient] = []
        var threads: [Thread] = []
        for index in 0..<options.workers {
            var workerConfiguration = InferenceWorkerConfiguration(scheduler: scheduler.backendEndpoint, name: "bench-\(index)")
            workerConfiguration.maxBatch = options.maxBatch
            let executor = try makeExecutor?() ?? NullImageExecutor(batchDelay: batchDelay)
            let worker = try InferenceWorkerClient(configuration: workerConfiguration, executor: executor,
                                                   context: ZMQContext(), log: { _ in })
            let thread = Thread { try? worker.run() }
            thread.start()
            workers.append(worker)
            threads.append(thread)
        }
        defer {
            for worker in workers { worker.requestStop() }
            for thread in threads { while !thread.isFinished { usleep(1000) } }
            scheduler.requestStop(drain: false)
            while !schedulerThread.isFinished { usleep(1000) }
        }
        let ready = Date().addingTimeInterval(60)
        while scheduler.status.workers.count < options.workers {
            guard Date() < ready else { throw BenchmarkFailure("workers did not register within 60 s") }
            usleep(2000)
        }
        return try body(scheduler.frontendEndpoint, scheduler.metrics)
    }

    /// Sends SUBMITs at `rate` (open loop) or keeping `outstanding` in flight (closed loop).
    private static func drive(frontend: String, context: ZMQContext, options: ServeBenchmarkOptions, name: String, rate: Double?,
                              outstanding: Int?, metrics: SchedulerMetrics) throws -> ServeBenchmarkReport.Phase {
        let socket = try ZMQSocket(context: context, kind: .dealer)
        try socket.setHighWaterMarks(send: 1 << 20, receive: 1 << 20)
        try socket.connect(frontend)
        let batchesBefore = metrics.batchSize.snapshot(), workerBefore = metrics.dispatchOverhead.snapshot()
        var phase = ServeBenchmarkReport.Phase(name: name)
        let pacing = try PollWakeTimer()
        let cpuBefore = CPUTimeSample.now()
        var sentAt: [String: Double] = [:]
        let start = MonotonicClock.now()
        let end = start + options.seconds
        var next = start
        func send() throws {
            let id = String(phase.sent)
            let body = SubmitBody(id: id, prompt: "benchmark prompt \(phase.sent % 97)", width: options.imageSide, height: options.imageSide,
                                  steps: options.steps, seed: UInt64(phase.sent), timeoutMs: 600_000)
            sentAt[id] = MonotonicClock.now()
            try socket.send([Data()] + WireProtocol.frames(WireProtocol.submit, [WireProtocol.encode(body)]))
            phase.sent += 1
        }
        while true {
            let now = MonotonicClock.now()
            if now < end {
                if let rate {
                    while next <= now {
                        try send()
                        next += 1 / rate
                    }
                } else if let outstanding {
                    while sentAt.count < outstanding { try send() }
                }
            } else if sentAt.isEmpty || now > end + max(30, 4 * options.seconds) {
                break
            }
            let wait = rate != nil && now < end ? max(0, next - MonotonicClock.now()) : 0.05
            // To the microsecond: a client that rounded its wait up to whole milliseconds would
            // send late and then in bursts of two, the second queueing behind the first at every hop.
            let readable = try pacing.poll([socket], wait: wait)
            guard readable[0] else { continue }
            // Stamp every waiting reply before decoding any: the client's own JSON work is not the
            // scheduler's overhead, and would otherwise delay the stamps of a batch's later replies.
            var arrived: [(message: ZMQMessage, at: Double)] = []
            while let message = try socket.receive(dontWait: true) { arrived.append((message, MonotonicClock.now())) }
            for (message, received) in arrived {
                guard let (command, payload) = try? WireProtocol.parse(message.frames.dropFirst()), let first = payload.first else { continue }
                if command == WireProtocol.result, let header = try? WireProtocol.decode(ResultHeader.self, from: first, what: "RESULT"),
                   let sent = sentAt.removeValue(forKey: header.id) {
                    let latency = (received - sent) * 1000
                    phase.succeeded += 1
                    phase.latencies.append(latency)
                    phase.overheads.append(max(0, latency - header.queueMs - header.execMs))
                } else if let error = try? WireProtocol.decode(ErrorBody.self, from: first, what: "ERROR"), let id = error.id {
                    sentAt[id] = nil
                    phase.failed += 1
                }
            }
        }
        phase.seconds = MonotonicClock.now() - start
        if let cpuBefore, let cpuAfter = CPUTimeSample.now() { phase.stealShare = cpuAfter.stealShare(since: cpuBefore) }
        let batches = metrics.batchSize.snapshot()
        let count = Double(batches.count - batchesBefore.count)
        phase.meanBatch = count > 0 ? (batches.sum - batchesBefore.sum) / count : 0
        let worker = metrics.dispatchOverhead.snapshot()
        let answered = Double(worker.count - workerBefore.count)
        phase.meanWorkerRoundTrip = answered > 0 ? (worker.sum - workerBefore.sum) / answered * 1000 : 0
        socket.close()
        return phase
    }

    /// Round-trip milliseconds of a bare DEALER → ROUTER echo at `rate` messages per second.
    private static func measureEcho(context: ZMQContext, rate: Double, seconds: Double) throws -> [Double] {
        let router = try ZMQSocket(context: ZMQContext(), kind: .router)
        let endpoint = try router.bind("tcp://127.0.0.1:*")
        let stop = StopFlag()
        let echoThread = Thread {
            while !stop.isSet {
                guard (try? ZMQSocket.pollReadable([router], timeout: 20))?.first == true else { continue }
                while let message = try? router.receive(dontWait: true) { _ = try? router.send(message.frames) }
            }
            router.close()
        }
        echoThread.start()
        defer {
            stop.set()
            while !echoThread.isFinished { usleep(1000) }
        }
        let dealer = try ZMQSocket(context: context, kind: .dealer)
        defer { dealer.close() }
        try dealer.connect(endpoint)
        var trips: [Double] = []
        let pacing = try PollWakeTimer()
        let payload = Data(repeating: 7, count: 200)
        let end = MonotonicClock.now() + seconds
        var next = MonotonicClock.now()
        var outstanding = 0
        while MonotonicClock.now() < end || (outstanding > 0 && MonotonicClock.now() < end + 5) {
            var now = MonotonicClock.now()
            while now < end && next <= now {
                var stamp = now.bitPattern
                try dealer.send([Data(bytes: &stamp, count: 8), payload])
                outstanding += 1
                next += 1 / rate
                now = MonotonicClock.now()
            }
            guard try pacing.poll([dealer], wait: max(0, next - now))[0] else { continue }
            while let message = try dealer.receive(dontWait: true), message.frames.first?.count == 8 {
                let sent = message.frames[0].withUnsafeBytes { Double(bitPattern: $0.loadUnaligned(as: UInt64.self)) }
                trips.append((MonotonicClock.now() - sent) * 1000)
                outstanding -= 1
            }
        }
        return trips
    }

    /// The p-th percentile (0…100) of `values`, nearest rank.
    public static func percentile(_ values: [Double], _ p: Double) -> Double {
        guard !values.isEmpty else { return .nan }
        let sorted = values.sorted()
        let rank = Int((p / 100 * Double(sorted.count)).rounded(.up)) - 1
        return sorted[min(sorted.count - 1, max(0, rank))]
    }

    /// The report as a table.
    public static func format(_ report: ServeBenchmarkReport) -> String {
        let o = report.options
        var lines = ["serve benchmark: \(o.executorName), \(o.workers) in-process workers over loopback TCP, max batch \(o.maxBatch), max queue delay \(o.maxQueueDelay * 1000) ms, \(o.imageSide)×\(o.imageSide) PNG"]
        let echoP50 = percentile(report.echoRoundTrips, 50), echoP99 = percentile(report.echoRoundTrips, 99)
        lines.append(String(format: "peer: bare ZeroMQ DEALER→ROUTER echo round trip p50 %.3f ms, p99 %.3f ms (%d trips)",
                            echoP50, echoP99, report.echoRoundTrips.count))
        lines.append("phase        sent   ok  err   req/s  mean batch  latency p50/p99 ms  overhead p50/p99 ms  overhead p50 / 2 echo p50")
        for phase in [report.openLoop, report.saturated] {
            let ratio = percentile(phase.overheads, 50) / (2 * echoP50)
            let name = phase.name.padding(toLength: 11, withPad: " ", startingAt: 0)
            lines.append(name + String(format: " %5d %5d %4d %7.1f %11.2f  %8.3f / %-8.3f  %8.3f / %-8.3f  %.2f×",
                                       phase.sent, phase.succeeded, phase.failed, phase.requestsPerSecond, phase.meanBatch,
                                       percentile(phase.latencies, 50), percentile(phase.latencies, 99),
                                       percentile(phase.overheads, 50), percentile(phase.overheads, 99), ratio))
        }
        lines.append(String(format: "of the overhead, the worker's round trip (dispatch to result, less execution) averaged %.3f ms open loop, %.3f ms saturating",
                            report.openLoop.meanWorkerRoundTrip, report.saturated.meanWorkerRoundTrip))
        let steal = { (phase: ServeBenchmarkReport.Phase) in phase.stealShare.map { String(format: "%.1f%%", $0 * 100) } ?? "unknown" }
        lines.append("host steal (CPU time the hypervisor gave to other guests): open loop \(steal(report.openLoop)), saturating \(steal(report.saturated))"
                     + " — a stolen vCPU stalls every thread on it, and 1% of requests is the p99")
        let overheadP99 = percentile(report.openLoop.overheads, 99)
        let batchTarget = 0.8 * Double(o.maxBatch)
        lines.append(String(format: "targets: open-loop overhead p99 %.3f ms (≤ 2 ms: ", overheadP99) + (overheadP99 <= 2 ? "met" : "NOT met")
                     + String(format: "); saturated mean batch %.2f (≥ %.1f: ", report.saturated.meanBatch, batchTarget)
                     + (report.saturated.meanBatch >= batchTarget ? "met" : "NOT met") + ")")
        return lines.joined(separator: "\n")
    }
}

/// A benchmark that could not run.
public struct BenchmarkFailure: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// A flag one thread sets and another polls.
final class StopFlag: @unchecked Sendable {
    private let lock = NSLock()
    private var value = false

    func set() {
        lock.lock()
        value = true
        lock.unlock()
    }

    var isSet: Bool {
        lock.lock()
        defer { lock.unlock() }
        return value
    }
}
