import Foundation
import Tensor

/// The files of a training run under `output_dir`:
///
///     train.log                       rank 0's log (also printed)
///     logs/rank-N.log                 the log of every other rank (they write nothing else)
///     metrics.jsonl                   one JSON object per step: step, loss, lr, grad_norm, samples/s, step_s
///     eval.jsonl                      one JSON object per sample grid: step and checker accuracies
///     loss.png, accuracy.png          the curves, redrawn at every checkpoint / sample grid
///     samples.png                     the latest sample grid
///     checkpoints/latest.safetensors  trainable weights + optimizer + EMA + step, replaced atomically
public final class TrainingOutputs {
    public let directory: URL
    public let rank: Int
    private let logHandle: FileHandle?
    /// Every line of metrics.jsonl so far (rank 0; empty elsewhere).
    private(set) var metricLines: [[String: Any]] = []

    public init(directory path: String, rank: Int) throws {
        directory = URL(fileURLWithPath: path, isDirectory: true)
        self.rank = rank
        let fm = FileManager.default
        let logURL = rank == 0 ? directory.appendingPathComponent("train.log")
            : directory.appendingPathComponent("logs", isDirectory: true).appendingPathComponent("rank-\(rank).log")
        do {
            try fm.createDirectory(at: logURL.deletingLastPathComponent(), withIntermediateDirectories: true)
            if rank == 0 { try fm.createDirectory(at: directory.appendingPathComponent("checkpoints", isDirectory: true), withIntermediateDirectories: true) }
            if !fm.fileExists(atPath: logURL.path) { _ = fm.createFile(atPath: logURL.path, contents: nil) }
            logHandle = try FileHandle(forWritingTo: logURL)
            logHandle?.seekToEndOfFile()
        } catch {
            throw TrainingError.config(file: path, key: "output_dir", message: "cannot write there: \(error.localizedDescription)")
        }
        if rank == 0, let text = try? String(contentsOf: metricsURL, encoding: .utf8) {
            metricLines = text.split(separator: "\n").compactMap {
                (try? JSONSerialization.jsonObject(with: Data($0.utf8))) as? [String: Any]
            }
        }
    }

    public var checkpointDirectory: URL { directory.appendingPathComponent("checkpoints", isDirectory: true) }
    public var latestCheckpoint: URL { checkpointDirectory.appendingPathComponent("latest.safetensors") }
    public var metricsURL: URL { directory.appendingPathComponent("metrics.jsonl") }
    public var evalURL: URL { directory.appendingPathComponent("eval.jsonl") }

    /// Prints (rank 0 only) and appends to this rank's log.
    public func log(_ message: String) {
        if rank == 0 { print(message) ; fflush(stdout) }
        let stamp = ISO8601DateFormatter().string(from: Date())
        logHandle?.write(Data("\(stamp) \(message)\n".utf8))
    }

    /// Appends one line to metrics.jsonl.
    public func metric(_ line: [String: Any]) {
        guard rank == 0 else { return }
        metricLines.append(line)
        append(line, to: metricsURL)
    }

    private func append(_ line: [String: Any], to url: URL) {
        guard let data = try? JSONSerialization.data(withJSONObject: line, options: [.sortedKeys]) else { return }
        if !FileManager.default.fileExists(atPath: url.path) { _ = FileManager.default.createFile(atPath: url.path, contents: nil) }
        if let handle = try? FileHandle(forWritingTo: url) {
            handle.seekToEndOfFile()
            handle.write(data + Data("\n".utf8))
            try? handle.close()
        }
    }

    /// Drops metric and eval lines past `step` (a resumed run rewrites them).
    public func truncateMetrics(after step: Int) throws {
        metricLines = metricLines.filter { ($0["step"] as? Int ?? 0) <= step }
        for url in [metricsURL, evalURL] where FileManager.default.fileExists(atPath: url.path) {
            let text = try String(contentsOf: url, encoding: .utf8)
            // A line cut short by a killed process does not parse and is dropped with the rest.
            let kept = text.split(separator: "\n").filter { line in
                guard let object = (try? JSONSerialization.jsonObject(with: Data(line.utf8))) as? [String: Any],
                      let at = object["step"] as? Int else { return false }
                return at <= step
            }
            try (kept.joined(separator: "\n") + (kept.isEmpty ? "" : "\n")).write(to: url, atomically: true, encoding: .utf8)
        }
    }

    /// Replaces checkpoints/latest.safetensors atomically and redraws loss.png.
    public func writeCheckpoint(_ checkpoint: TrainingCheckpoint, step: Int) throws {
        try checkpoint.write(to: latestCheckpoint)
        log("step \(step): checkpoint \(latestCheckpoint.path)")
        try drawLoss()
    }

    func drawLoss() throws {
        let points = metricLines.compactMap { line -> (Double, Double)? in
            guard let step = line["step"] as? Int, let loss = line["loss"] as? Double else { return nil }
            return (Double(step), loss)
        }
        guard points.count >= 2 else { return }
        var chart = LineChart(title: "training loss", logY: true)
        chart.add("loss", points.map(\.1), xs: points.map(\.0))
        var average: [Double] = []
        for (k, p) in points.enumerated() { average.append(k == 0 ? p.1 : 0.98 * average[k - 1] + 0.02 * p.1) }
        chart.add("moving average", average, xs: points.map(\.0))
        try PNGImage(width: chart.width, height: chart.height, channels: 3, pixels: chart.render())
            .write(to: directory.appendingPathComponent("loss.png"))
    }

    /// Writes samples.png, appends the checker's scores to eval.jsonl and redraws accuracy.png.
    public func writeSamples(_ samples: TrainingSamples, step: Int) throws {
        try samples.grid.write(to: directory.appendingPathComponent("samples.png"))
        guard !samples.scores.isEmpty else { return }
        var line: [String: Any] = ["step": step]
        for (key, value) in samples.scores where value.isFinite { line[key] = value }
        append(line, to: evalURL)
        log("step \(step): samples " + samples.scores.keys.sorted().map { String(format: "%@ %.2f", $0, samples.scores[$0]!) }.joined(separator: ", "))
        let text = (try? String(contentsOf: evalURL, encoding: .utf8)) ?? ""
        let rows = text.split(separator: "\n").compactMap { (try? JSONSerialization.jsonObject(with: Data($0.utf8))) as? [String: Any] }
        guard rows.count >= 2 else { return }
        var chart = LineChart(title: "checker accuracy of samples")
        for key in ["class", "colour", "count", "position", "all"] {
            let points = rows.compactMap { row -> (Double, Double)? in
                guard let s = row["step"] as? Int, let v = row[key] as? Double else { return nil }
                return (Double(s), v)
            }
            if !points.isEmpty { chart.add(key, points.map(\.1), xs: points.map(\.0)) }
        }
        try PNGImage(width: chart.width, height: chart.height, channels: 3, pixels: chart.render())
            .write(to: directory.appendingPathComponent("accuracy.png"))
    }
}
