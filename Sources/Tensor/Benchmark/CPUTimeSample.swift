import Foundation

/// The machine's CPU time by state, from the first line of `/proc/stat` (clock ticks summed over
/// every CPU): a benchmark takes one sample before and one after a measurement to report how
/// much CPU time the hypervisor gave to other guests meanwhile (steal).
///
/// On a VM, a vCPU the host runs elsewhere stalls every thread on it for milliseconds; when that
/// happens to 1% of requests it is the p99, whatever the code does. Reporting steal next to a
/// tail latency or a scaling figure tells a disturbed run from a slow build.
public struct CPUTimeSample: Sendable, Equatable {
    /// Ticks in each state: user, nice, system, idle, iowait, irq, softirq, steal (the
    /// guest columns are already counted in user and nice).
    public let user: UInt64, nice: UInt64, system: UInt64, idle: UInt64
    public let iowait: UInt64, irq: UInt64, softirq: UInt64, steal: UInt64

    public var total: UInt64 { user + nice + system + idle + iowait + irq + softirq + steal }

    /// Parses the `cpu  …` line of /proc/stat; nil for anything else (fewer than 8 counters).
    public init?(statLine: String) {
        let fields = statLine.split(separator: " ", omittingEmptySubsequences: true)
        guard fields.first == "cpu", fields.count >= 9 else { return nil }
        let values = fields[1...8].compactMap { UInt64($0) }
        guard values.count == 8 else { return nil }
        (user, nice, system, idle) = (values[0], values[1], values[2], values[3])
        (iowait, irq, softirq, steal) = (values[4], values[5], values[6], values[7])
    }

    /// The current sample; nil where /proc/stat does not exist or cannot be read.
    public static func now() -> CPUTimeSample? {
        guard let text = try? String(contentsOfFile: "/proc/stat", encoding: .utf8),
              let line = text.split(separator: "\n").first else { return nil }
        return CPUTimeSample(statLine: String(line))
    }

    /// The share of the CPU time between `earlier` and this sample that was stolen: Δsteal / Δtotal
    /// (0…1); nil when no ticks passed or the counters went backwards.
    public func stealShare(since earlier: CPUTimeSample) -> Double? {
        guard total > earlier.total, steal >= earlier.steal else { return nil }
        return Double(steal - earlier.steal) / Double(total - earlier.total)
    }
}
