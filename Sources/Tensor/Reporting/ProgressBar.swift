import Foundation

/// A terminal progress bar for long jobs: done/total, rate, elapsed time, ETA and a free-form
/// status (the loss, say). On a terminal it redraws one line; otherwise (logs, CI) it prints a
/// plain line at most every `plainInterval` seconds so logs stay readable.
public final class ProgressBar {
    public let total: Int
    public let label: String
    public let unit: String
    /// When the bar was made (BenchmarkTimer seconds); rates count from here.
    public let start = BenchmarkTimer.now()
    private var lastDraw: Double = -1
    private let interactive: Bool
    private let plainInterval: Double
    private let output: FileHandle

    public init(total: Int, label: String, unit: String = "it", plainInterval: Double = 5,
                output: FileHandle = .standardError) {
        self.total = Swift.max(total, 1)
        self.label = label
        self.unit = unit
        self.output = output
        self.plainInterval = plainInterval
        interactive = isatty(output.fileDescriptor) != 0
    }

    /// Reports that `done` units are finished.
    public func update(_ done: Int, status: String = "") {
        let now = BenchmarkTimer.now()
        let finished = done >= total
        if !finished && lastDraw >= 0 && now - lastDraw < (interactive ? 0.1 : plainInterval) { return }
        lastDraw = now
        output.write(Data(render(done, status: status, now: now).utf8))
    }

    /// The line for `done` units at time `now` (exposed for tests).
    public func render(_ done: Int, status: String, now: Double) -> String {
        let elapsed = Swift.max(now - start, 1e-9)
        // Units done in the first instants (a cache hit, a resumed count) say nothing of the pace:
        // until a second has passed an unfinished bar shows no rate rather than millions per second.
        let measured = done >= total || elapsed >= ProgressBar.minimumRateSeconds
        let rate = Double(done) / elapsed
        let remaining = measured && rate > 0 ? Double(total - done) / rate : .infinity
        let fraction = Swift.min(1, Double(done) / Double(total))
        let width = 24
        let filled = Int(fraction * Double(width))
        let bar = String(repeating: "#", count: filled) + String(repeating: "-", count: width - filled)
        let text = "\(label) [\(bar)] \(done)/\(total) \(measured ? String(format: "%.2f", rate) : "?") \(unit)/s"
            + " elapsed \(ProgressBar.clock(elapsed)) eta \(ProgressBar.clock(remaining))"
            + (status.isEmpty ? "" : " \(status)")
        if interactive { return "\r" + text + (done >= total ? "\n" : "") }
        return text + "\n"
    }

    /// Seconds before an unfinished bar reports a rate and an ETA.
    public static let minimumRateSeconds = 1.0

    /// h:mm:ss or m:ss.
    public static func clock(_ seconds: Double) -> String {
        guard seconds.isFinite else { return "?" }
        let s = Int(seconds.rounded())
        return s >= 3600 ? String(format: "%d:%02d:%02d", s / 3600, s / 60 % 60, s % 60)
            : String(format: "%d:%02d", s / 60, s % 60)
    }
}
