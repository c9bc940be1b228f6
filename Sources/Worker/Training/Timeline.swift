import Collective
import Foundation

/// What a rank was doing, as spans on a clock shared by all ranks, written as a Chrome trace
/// (`chrome://tracing`, Perfetto) for `--timeline FILE`.
///
/// Each rank is one process row (`pid` = world rank) with two lanes: `compute` (forward, backward,
/// optimizer, waits) and `communication` (the communication thread's allreduces, pipeline
/// sends and receives). Recording is thread-safe: the communication thread records its own spans.
///
/// Times are seconds since the timeline's origin. `synchronizeOrigin(over:)` makes the origin a
/// barrier that every rank leaves at (nearly) the same moment, so the rows of a merged file line up.
public final class Timeline: @unchecked Sendable {
    /// Which row of a rank a span belongs to.
    public enum Lane: Int, Sendable, Codable {
        case compute = 1
        case communication = 2
    }

    /// What kind of work a span is.
    public enum Category: String, Sendable, Codable {
        case forward, backward, optimizer, wait, allreduce, send, receive, other
    }

    /// One interval of work: [start, end) in seconds since the origin.
    public struct Span: Sendable, Equatable, Codable {
        public var name: String
        public var category: Category
        public var lane: Lane
        public var start: Double
        public var end: Double
        public var rank: Int
        public var duration: Double { end - start }
    }

    /// World rank written as the trace's `pid`.
    public let rank: Int
    private let lock = NSLock()
    private var recorded: [Span] = []
    private var originNanos: UInt64

    public init(rank: Int) {
        self.rank = rank
        originNanos = DispatchTime.now().uptimeNanoseconds
    }

    /// Seconds since the origin, on a monotonic clock.
    public var now: Double {
        let t = DispatchTime.now().uptimeNanoseconds
        lock.lock()
        let origin = originNanos
        lock.unlock()
        return t >= origin ? Double(t - origin) / 1e9 : -Double(origin - t) / 1e9
    }

    /// Waits at a barrier of `communicator` and restarts the clock there, dropping earlier spans.
    /// Collective: every rank of the group calls it.
    public func synchronizeOrigin(over communicator: Communicator) throws {
        try communicator.barrier()
        lock.lock()
        originNanos = DispatchTime.now().uptimeNanoseconds
        recorded.removeAll()
        lock.unlock()
    }

    /// Records a span that ran from `start` to `end` (seconds from `now`).
    public func record(_ name: String, _ category: Category, lane: Lane = .compute, start: Double, end: Double) {
        lock.lock()
        recorded.append(Span(name: name, category: category, lane: lane, start: start, end: end, rank: rank))
        lock.unlock()
    }

    /// Runs `body` and records it as a span.
    @discardableResult
    public func measure<T>(_ name: String, _ category: Category, lane: Lane = .compute,
                           _ body: () throws -> T) rethrows -> T {
        let start = now
        defer { record(name, category, lane: lane, start: start, end: now) }
        return try body()
    }

    /// All spans so far, in recording order.
    public var spans: [Span] {
        lock.lock()
        defer { lock.unlock() }
        return recorded
    }

    /// Drops all spans (keeps the origin).
    public func reset() {
        lock.lock()
        recorded.removeAll()
        lock.unlock()
    }

    // MARK: Analysis

    /// Total length of the union of the spans matching `filter`.
    public func busySeconds(where filter: (Span) -> Bool) -> Double {
        Timeline.unionLength(Timeline.union(spans.filter(filter).map { ($0.start, $0.end) }))
    }

    /// Seconds of `communication` spans that overlap `compute` spans: how much of the
    /// communication was hidden behind computation.
    public func overlapSeconds(of communication: (Span) -> Bool, with compute: (Span) -> Bool) -> Double {
        let a = Timeline.union(spans.filter(communication).map { ($0.start, $0.end) })
        let b = Timeline.union(spans.filter(compute).map { ($0.start, $0.end) })
        var i = 0, j = 0, total = 0.0
        while i < a.count && j < b.count {
            let lo = max(a[i].0, b[j].0), hi = min(a[i].1, b[j].1)
            if hi > lo { total += hi - lo }
            if a[i].1 < b[j].1 { i += 1 } else { j += 1 }
        }
        return total
    }

    static func union(_ intervals: [(Double, Double)]) -> [(Double, Double)] {
        var merged: [(Double, Double)] = []
        for interval in intervals.sorted(by: { $0.0 < $1.0 }) where interval.1 > interval.0 {
            if let last = merged.last, interval.0 <= last.1 {
                merged[merged.count - 1].1 = max(last.1, interval.1)
            } else {
                merged.append(interval)
            }
        }
        return merged
    }

    static func unionLength(_ intervals: [(Double, Double)]) -> Double {
        intervals.reduce(0) { $0 + ($1.1 - $1.0) }
    }

    // MARK: Chrome trace

    /// The Chrome trace event format ("X" complete events, microseconds) for `spans`, with
    /// metadata naming each rank's row and lanes.
    public static func chromeTrace(_ spans: [Span]) -> Data {
        var events: [[String: Any]] = []
        for rank in Set(spans.map(\.rank)).sorted() {
            events.append(["ph": "M", "name": "process_name", "pid": rank, "args": ["name": "rank \(rank)"]])
            events.append(["ph": "M", "name": "process_sort_index", "pid": rank, "args": ["sort_index": rank]])
            for lane in [Lane.compute, .communication] {
                events.append(["ph": "M", "name": "thread_name", "pid": rank, "tid": lane.rawValue,
                               "args": ["name": lane == .compute ? "compute" : "communication"]])
            }
        }
        for span in spans {
            events.append([
                "name": span.name, "cat": span.category.rawValue, "ph": "X",
                "ts": (span.start * 1e6).rounded(), "dur": max(0, (span.duration * 1e6).rounded()),
                "pid": span.rank, "tid": span.lane.rawValue,
            ])
        }
        let document: [String: Any] = ["traceEvents": events, "displayTimeUnit": "ms"]
        // Only strings and numbers go in, so serialisation cannot fail.
        return (try? JSONSerialization.data(withJSONObject: document, options: [.sortedKeys])) ?? Data()
    }

    /// Writes this rank's spans as a Chrome trace to `url` (atomically).
    public func write(to url: URL) throws {
        try Timeline.write(spans, to: url)
    }

    /// Writes `spans` (any ranks') as one Chrome trace to `url` (atomically).
    public static func write(_ spans: [Span], to url: URL) throws {
        do {
            try chromeTrace(spans).write(to: url, options: .atomic)
        } catch {
            throw TimelineError.cannotWrite(path: url.path, reason: "\(error.localizedDescription)")
        }
    }

    /// `trace.json` → `trace.rank3.json`: the file of one rank when ranks write separately.
    public static func perRankURL(_ url: URL, rank: Int) -> URL {
        siblingURL(url, inserting: "rank\(rank)")
    }

    /// `trace.json` → `trace.<label>.json` (`.json` when `url` has no extension).
    public static func siblingURL(_ url: URL, inserting label: String) -> URL {
        let ext = url.pathExtension
        return url.deletingPathExtension().appendingPathExtension(label).appendingPathExtension(ext.isEmpty ? "json" : ext)
    }

    /// Gathers every rank's spans on rank 0 of `communicator` and writes one merged trace there;
    /// the other ranks write nothing. Collective over the group.
    public func writeMerged(to url: URL, over communicator: Communicator) throws {
        let tag = 29_001
        let mine = (try? JSONEncoder().encode(spans)) ?? Data()
        if communicator.rank != 0 {
            try communicator.sendBytes([UInt8](mine), to: 0, tag: tag)
            return
        }
        var all = spans
        for peer in 1 ..< communicator.size {
            let bytes = try communicator.receiveBytes(from: peer, tag: tag)
            guard let theirs = try? JSONDecoder().decode([Span].self, from: Data(bytes)) else {
                throw TimelineError.badPeerData(peer: peer)
            }
            all += theirs
        }
        try Timeline.write(all, to: url)
    }
}

/// Why a timeline could not be written.
public enum TimelineError: Error, CustomStringConvertible, Equatable {
    case cannotWrite(path: String, reason: String)
    case badPeerData(peer: Int)

    public var description: String {
        switch self {
        case let .cannotWrite(path, reason): return "cannot write timeline \(path): \(reason)"
        case let .badPeerData(peer): return "timeline spans sent by rank \(peer) could not be decoded"
        }
    }
}
