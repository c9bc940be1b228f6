import Foundation

/// Wall-clock timing for benchmarks: repeats a body until enough time has passed and reports
/// the best per-iteration time (the least disturbed by other work on the machine).
public enum BenchmarkTimer {
    /// Monotonic seconds.
    public static func now() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9
    }

    /// Best seconds per call of `body` over batches lasting about `minSeconds` in total.
    public static func best(minSeconds: Double = 0.3, warmup: Int = 1, _ body: () -> Void) -> Double {
        for _ in 0..<warmup { body() }
        var best = Double.infinity
        let start = now()
        var iterations = 0
        repeat {
            let t0 = now()
            body()
            best = Swift.min(best, now() - t0)
            iterations += 1
        } while now() - start < minSeconds || iterations < 3
        return best
    }
}

/// A plain text table with right-aligned numeric columns.
public struct TextTable {
    public var header: [String]
    public var rows: [[String]] = []

    public init(header: [String]) { self.header = header }

    public mutating func add(_ row: [String]) { rows.append(row) }

    public func render() -> String {
        var widths = header.map(\.count)
        for r in rows { for (i, c) in r.enumerated() where i < widths.count { widths[i] = Swift.max(widths[i], c.count) } }
        func line(_ cells: [String]) -> String {
            cells.enumerated().map { i, c in
                let pad = String(repeating: " ", count: widths[i] - c.count)
                return i == 0 ? c + pad : pad + c
            }.joined(separator: "  ")
        }
        let rule = widths.map { String(repeating: "-", count: $0) }.joined(separator: "  ")
        return ([line(header), rule] + rows.map(line)).joined(separator: "\n")
    }
}
