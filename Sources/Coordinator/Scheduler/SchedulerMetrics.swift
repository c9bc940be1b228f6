import Foundation

/// The scheduler's Prometheus metrics, registered once in a `MetricsRegistry`.
public struct SchedulerMetrics: @unchecked Sendable {
    public let registry: MetricsRegistry
    public let queueDepth: MetricGauge
    public let inFlight: MetricGauge
    public let idleWorkers: MetricGauge
    public let busyWorkers: MetricGauge
    public let drainingWorkers: MetricGauge
    public let batchSize: MetricHistogram
    public let latency: MetricHistogram
    public let queueWait: MetricHistogram
    public let dispatchOverhead: MetricHistogram
    public let requeued: MetricCounter
    public let workerDeaths: MetricCounter
    public let lateResultsDropped: MetricCounter
    public let unroutableReplies: MetricCounter
    public let desiredWorkers: MetricGauge
    public let demandWorkers: MetricGauge
    private let outcomes: [String: MetricCounter]

    /// Outcomes a request can end with (the `outcome` label of `sura_requests_total`).
    public static let outcomeNames = ["ok"] + WireErrorCode.allCases.map(\.rawValue)

    public init(registry: MetricsRegistry) {
        self.registry = registry
        queueDepth = registry.gauge("sura_queue_depth", help: "Requests waiting in the scheduler queue.")
        inFlight = registry.gauge("sura_requests_in_flight", help: "Requests dispatched to a worker and not yet answered.")
        idleWorkers = registry.gauge("sura_workers", help: "Registered workers by state.", labels: ["state": "idle"])
        busyWorkers = registry.gauge("sura_workers", help: "", labels: ["state": "busy"])
        drainingWorkers = registry.gauge("sura_workers", help: "", labels: ["state": "draining"])
        batchSize = registry.histogram("sura_batch_size", help: "Requests per dispatched batch.",
                                       buckets: [1, 2, 4, 8, 16, 32, 64])
        let seconds: [Double] = [0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60]
        latency = registry.histogram("sura_request_latency_seconds",
                                     help: "Seconds from a request's arrival to its successful reply.", buckets: seconds)
        queueWait = registry.histogram("sura_queue_wait_seconds",
                                       help: "Seconds from arrival to dispatch of the answered attempt.", buckets: seconds)
        dispatchOverhead = registry.histogram("sura_dispatch_overhead_seconds",
                                              help: "Seconds from dispatch to result minus the executor's own time (transport and framing).",
                                              buckets: [0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.05, 0.25])
        var outcomes: [String: MetricCounter] = [:]
        for name in Self.outcomeNames {
            outcomes[name] = registry.counter("sura_requests_total", help: "Requests answered, by outcome (rejections are every outcome but ok).",
                                              labels: ["outcome": name])
        }
        self.outcomes = outcomes
        requeued = registry.counter("sura_requests_requeued_total", help: "Requests put back in the queue after their worker died or failed.")
        workerDeaths = registry.counter("sura_worker_deaths_total", help: "Workers lost without saying BYE: missed heartbeats, or their connection closed.")
        lateResultsDropped = registry.counter("sura_late_results_dropped_total",
                                              help: "Images that arrived for requests already answered (late worker, expired deadline).")
        unroutableReplies = registry.counter("sura_unroutable_replies_total", help: "Replies to clients that had disconnected.")
        desiredWorkers = registry.gauge("sura_autoscaler_desired_workers",
                                        help: "Workers the autoscaler recommends (ceil(demand / target utilisation) within [min, max]).")
        demandWorkers = registry.gauge("sura_autoscaler_demand_workers",
                                       help: "Workers the current load keeps busy: mean busy workers + queue depth / max batch (scale on this with HPA or KEDA).")
    }

    /// Counts one answered request.
    public func count(outcome: String) { outcomes[outcome]?.increment() }

    /// Requests answered with an error so far (every outcome but `ok`), read from the counters
    /// themselves: the scheduler's loop publishes its status every 10 ms.
    public var rejected: Int {
        Int(outcomes.reduce(0) { $0 + ($1.key == "ok" ? 0 : $1.value.value) })
    }
}
