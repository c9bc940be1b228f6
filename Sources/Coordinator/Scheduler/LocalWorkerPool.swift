import Foundation

/// Worker processes started on this machine by `sura serve --local-workers`.
///
/// Scaling down sends SIGTERM: the worker finishes its batch, says BYE and exits. Only the
/// scheduler's loop thread uses a pool.
public final class LocalWorkerPool {
    public let executable: URL
    /// Arguments of every worker (`worker --scheduler … --executor …`).
    public let arguments: [String]
    private var processes: [Int32: Process] = [:]
    private var draining: Set<Int32> = []
    private var launched = 0
    private let log: (String) -> Void

    public init(executable: URL, arguments: [String], log: @escaping (String) -> Void) {
        self.executable = executable
        self.arguments = arguments
        self.log = log
    }

    /// Processes running and not asked to leave.
    public var activePIDs: [Int32] { processes.keys.filter { !draining.contains($0) }.sorted() }
    /// Every process still running, including draining ones.
    public var allPIDs: [Int32] { processes.keys.sorted() }

    /// Starts `count` workers; each gets a distinct `--name local-N`.
    public func launch(count: Int) {
        for _ in 0..<max(0, count) {
            launched += 1
            let process = Process()
            process.executableURL = executable
            process.arguments = arguments + ["--name", "local-\(launched)"]
            do {
                try process.run()
                processes[process.processIdentifier] = process
                log("started worker local-\(launched) (pid \(process.processIdentifier))")
            } catch {
                log("could not start worker \(executable.path): \(error)")
            }
        }
    }

    /// Asks a worker to finish its batch and leave.
    public func drain(pid: Int32) {
        guard let process = processes[pid], process.isRunning, !draining.contains(pid) else { return }
        draining.insert(pid)
        kill(pid, SIGTERM)
        log("draining worker pid \(pid)")
    }

    /// Forgets processes that exited, logging how.
    public func reap() {
        for (pid, process) in processes where !process.isRunning {
            processes[pid] = nil
            let expected = draining.remove(pid) != nil
            let how = process.terminationReason == .uncaughtSignal ? "signal \(process.terminationStatus)" : "status \(process.terminationStatus)"
            log("worker pid \(pid) exited with \(how)\(expected ? " (drained)" : "")")
        }
    }

    /// SIGTERM to every worker, then SIGKILL to those still running after `timeout` seconds.
    public func stopAll(timeout: TimeInterval) {
        for pid in processes.keys where !draining.contains(pid) { kill(pid, SIGTERM) }
        let deadline = Date().addingTimeInterval(timeout)
        while processes.values.contains(where: { $0.isRunning }) && Date() < deadline { usleep(20_000) }
        for (pid, process) in processes where process.isRunning {
            log("worker pid \(pid) did not stop within \(timeout) s: SIGKILL")
            kill(pid, SIGKILL)
        }
        for process in processes.values { process.waitUntilExit() }
        processes.removeAll()
        draining.removeAll()
    }
}

/// Runs the autoscaler on the scheduler's loop: computes its inputs from the scheduler state,
/// logs every decision that changes something with its inputs, exports the signal as metrics,
/// and (with a local pool) starts or drains worker processes.
public final class AutoscaleController {
    public let policy: AutoscalerPolicy
    public let pool: LocalWorkerPool?
    public private(set) var lastDecision: AutoscalerDecision?
    private var autoscaler: Autoscaler
    private var lastSample: (time: Double, busySeconds: Double)?
    private var lastLogged: (action: AutoscalerDecision.Action, target: Int, desired: Int, reason: String)?
    private let log: (String) -> Void

    /// Without a pool the decisions are only exported (`sura_autoscaler_*` metrics, status), for
    /// an external autoscaler such as Kubernetes' HPA or KEDA.
    public init(policy: AutoscalerPolicy, pool: LocalWorkerPool?, log: @escaping (String) -> Void) {
        self.policy = policy
        self.pool = pool
        self.autoscaler = Autoscaler(policy: policy)
        self.log = log
    }

    /// One decision; call every `policy.interval` seconds on the scheduler's loop thread.
    @discardableResult
    public func step(core: SchedulerCore, now: Double) -> AutoscalerDecision {
        pool?.reap()
        let registry = core.registry
        let busySeconds = registry.busyWorkerSeconds(now: now)
        var busy = Double(registry.busyCount)
        if let last = lastSample, now - last.time > 1e-6 { busy = (busySeconds - last.busySeconds) / (now - last.time) }
        lastSample = (now, busySeconds)
        let present = registry.workers.values.filter { $0.state != .draining }
        let starting = pool.map { pool in pool.activePIDs.filter { registry.worker(pid: $0) == nil }.count } ?? 0
        let inputs = AutoscalerInputs(queueDepth: core.queue.count, busyWorkers: busy, currentWorkers: present.count + starting,
                                      startingWorkers: starting, maxBatch: core.configuration.batching.maxBatchSize)
        let decision = autoscaler.decide(inputs, now: now)
        lastDecision = decision
        core.metrics.desiredWorkers.set(Double(decision.desired))
        core.metrics.demandWorkers.set(decision.demand)
        let summary = (decision.action, decision.target, decision.desired, decision.reason)
        // Every scaling decision is logged; a hold is logged when it differs from the last one logged,
        // so a steady state appears once rather than every interval.
        if decision.action != .hold || lastLogged.map({ $0 != summary }) ?? true {
            log(decision.description)
            lastLogged = summary
        }
        guard let pool else { return decision }
        switch decision.action {
        case .hold:
            break
        case .scaleUp:
            pool.launch(count: decision.target - inputs.currentWorkers)
        case .scaleDown:
            var excess = inputs.currentWorkers - decision.target
            // Workers still starting go first, then idle ones, then busy ones (they finish their batch).
            let owned = Set(pool.activePIDs)
            let startingPIDs = pool.activePIDs.filter { registry.worker(pid: $0) == nil }
            let idle = present.filter { $0.state == .idle && owned.contains($0.pid) }.sorted { $0.registeredAt > $1.registeredAt }
            let busyOnes = present.filter { $0.state == .busy && owned.contains($0.pid) }
            for pid in startingPIDs + idle.map(\.pid) + busyOnes.map(\.pid) where excess > 0 {
                core.drainWorker(pid: pid)
                pool.drain(pid: pid)
                excess -= 1
            }
        }
        return decision
    }
}
