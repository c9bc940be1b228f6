import Foundation

/// Counters, gauges and histograms, rendered in the Prometheus text exposition format 0.0.4.
///
/// Thread-safe: the scheduler loop updates metrics while HTTP threads render them. Asking twice
/// for the same name and labels returns the same metric; a name keeps the type and help text
/// it was first registered with.
public final class MetricsRegistry: @unchecked Sendable {
    private enum Kind: String { case counter, gauge, histogram }

    private struct Family {
        var kind: Kind
        var help: String
        var children: [(labels: String, metric: AnyObject)]
    }

    private let lock = NSLock()
    private var families: [String: Family] = [:]
    private var order: [String] = []

    public init() {}

    /// A monotonically increasing count.
    public func counter(_ name: String, help: String, labels: [String: String] = [:]) -> MetricCounter {
        metric(name, help: help, kind: .counter, labels: labels) { MetricCounter() }
    }

    /// A value that goes up and down.
    public func gauge(_ name: String, help: String, labels: [String: String] = [:]) -> MetricGauge {
        metric(name, help: help, kind: .gauge, labels: labels) { MetricGauge() }
    }

    /// Counts of observations ≤ each upper bound (cumulative, plus +Inf), with their sum.
    public func histogram(_ name: String, help: String, buckets: [Double], labels: [String: String] = [:]) -> MetricHistogram {
        metric(name, help: help, kind: .histogram, labels: labels) { MetricHistogram(bounds: buckets) }
    }

    private func metric<M: AnyObject>(_ name: String, help: String, kind: Kind, labels: [String: String], make: () -> M) -> M {
        let key = Self.render(labels: labels)
        lock.lock()
        defer { lock.unlock() }
        if let family = families[name], let existing = family.children.first(where: { $0.labels == key })?.metric as? M {
            return existing
        }
        let created = make()
        if families[name] == nil {
            families[name] = Family(kind: kind, help: help, children: [])
            order.append(name)
        }
        families[name]!.children.append((key, created))
        return created
    }

    /// The whole registry as Prometheus text.
    public func exposition() -> String {
        lock.lock()
        let snapshot = order.map { ($0, families[$0]!) }
        lock.unlock()
        var text = ""
        for (name, family) in snapshot {
            text += "# HELP \(name) \(family.help.replacingOccurrences(of: "\n", with: " "))\n# TYPE \(name) \(family.kind.rawValue)\n"
            for (labels, metric) in family.children {
                switch metric {
                case let counter as MetricCounter: text += "\(name)\(labels) \(Self.format(counter.value))\n"
                case let gauge as MetricGauge: text += "\(name)\(labels) \(Self.format(gauge.value))\n"
                case let histogram as MetricHistogram: text += histogram.render(name: name, labels: labels)
                default: break
                }
            }
        }
        return text
    }

    /// The current value of a counter or gauge (a histogram's count), for tests and status pages.
    public func value(_ name: String, labels: [String: String] = [:]) -> Double? {
        let key = Self.render(labels: labels)
        lock.lock()
        let metric = families[name]?.children.first(where: { $0.labels == key })?.metric
        lock.unlock()
        switch metric {
        case let counter as MetricCounter: return counter.value
        case let gauge as MetricGauge: return gauge.value
        case let histogram as MetricHistogram: return Double(histogram.snapshot().count)
        default: return nil
        }
    }

    static func render(labels: [String: String]) -> String {
        guard !labels.isEmpty else { return "" }
        let parts = labels.keys.sorted().map { key -> String in
            let value = labels[key]!.replacingOccurrences(of: "\\", with: "\\\\")
                .replacingOccurrences(of: "\"", with: "\\\"").replacingOccurrences(of: "\n", with: "\\n")
            return "\(key)=\"\(value)\""
        }
        return "{" + parts.joined(separator: ",") + "}"
    }

    static func format(_ value: Double) -> String {
        if value.isNaN { return "NaN" }
        if value.isInfinite { return value > 0 ? "+Inf" : "-Inf" }
        if value == value.rounded(), abs(value) < 1e15 { return String(Int64(value)) }
        return String(value)
    }
}

/// A count that only goes up.
public final class MetricCounter: @unchecked Sendable {
    private let lock = NSLock()
    private var current = 0.0

    public func increment(by amount: Double = 1) {
        guard amount > 0 else { return }
        lock.lock()
        current += amount
        lock.unlock()
    }

    public var value: Double {
        lock.lock()
        defer { lock.unlock() }
        return current
    }
}

/// A value that is set.
public final class MetricGauge: @unchecked Sendable {
    private let lock = NSLock()
    private var current = 0.0

    public func set(_ value: Double) {
        lock.lock()
        current = value
        lock.unlock()
    }

    public var value: Double {
        lock.lock()
        defer { lock.unlock() }
        return current
    }
}

/// Observations counted into fixed buckets (upper bounds, ascending).
public final class MetricHistogram: @unchecked Sendable {
    public struct Snapshot: Sendable, Equatable {
        /// Upper bounds, ascending, without +Inf.
        public var bounds: [Double]
        /// Non-cumulative counts per bound, plus one for +Inf at the end.
        public var counts: [UInt64]
        public var sum: Double
        public var count: UInt64 { counts.reduce(0, +) }

        /// Mean of all observations (0 when empty).
        public var mean: Double { count == 0 ? 0 : sum / Double(count) }
    }

    private let lock = NSLock()
    private let bounds: [Double]
    private var counts: [UInt64]
    private var sum = 0.0

    init(bounds: [Double]) {
        self.bounds = bounds.sorted()
        counts = Array(repeating: 0, count: bounds.count + 1)
    }

    public func observe(_ value: Double) {
        var index = bounds.count
        for (i, bound) in bounds.enumerated() where value <= bound {
            index = i
            break
        }
        lock.lock()
        counts[index] += 1
        sum += value
        lock.unlock()
    }

    public func snapshot() -> Snapshot {
        lock.lock()
        defer { lock.unlock() }
        return Snapshot(bounds: bounds, counts: counts, sum: sum)
    }

    func render(name: String, labels: String) -> String {
        let snap = snapshot()
        let inner = labels.isEmpty ? "" : String(labels.dropFirst().dropLast()) + ","
        var text = ""
        var cumulative: UInt64 = 0
        for (i, bound) in snap.bounds.enumerated() {
            cumulative += snap.counts[i]
            text += "\(name)_bucket{\(inner)le=\"\(MetricsRegistry.format(bound))\"} \(cumulative)\n"
        }
        text += "\(name)_bucket{\(inner)le=\"+Inf\"} \(snap.count)\n"
        text += "\(name)_sum\(labels) \(MetricsRegistry.format(snap.sum))\n\(name)_count\(labels) \(snap.count)\n"
        return text
    }
}
