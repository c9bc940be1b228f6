import Foundation

/// Allreduce bus bandwidth of Sura's ring against the communicator's native allreduce
/// (`MPI_Allreduce` under MPI), measured in the same run so the ratio is meaningful.
///
/// For a buffer of S bytes reduced in t seconds over n ranks, bus bandwidth is
/// busbw = S/t · 2(n−1)/n — the rate at which each rank's link carries data in an optimal ring,
/// comparable across rank counts (the convention of nccl-tests). t is the slowest rank's time.
///
/// The two algorithms run in alternating rounds (ring first in even rounds, native first in odd
/// ones) and each reports its median round: on a shared or virtual machine one disturbed window
/// otherwise decides the ratio (single runs of 4 MB gave 0.55 … 1.20 within minutes).
public enum CollectiveBenchmark {
    /// One buffer size.
    public struct Row: Sendable, Equatable {
        /// Buffer size S in bytes.
        public let bytes: Int
        public let ranks: Int
        public let iterations: Int
        /// Seconds per allreduce in each round, slowest rank, in round order.
        public let ringRounds: [Double]
        public let nativeRounds: [Double]
        /// The median round's seconds per allreduce.
        public var ringSeconds: Double { CollectiveBenchmark.median(ringRounds) }
        public var nativeSeconds: Double { CollectiveBenchmark.median(nativeRounds) }
        /// Name of the native allreduce, e.g. "MPI_Allreduce".
        public let nativeName: String

        /// busbw of the ring in GB/s (1e9 bytes).
        public var ringBusBandwidth: Double { Self.busBandwidth(bytes: bytes, seconds: ringSeconds, ranks: ranks) }
        /// busbw of the native allreduce in GB/s.
        public var nativeBusBandwidth: Double { Self.busBandwidth(bytes: bytes, seconds: nativeSeconds, ranks: ranks) }
        /// ring busbw / native busbw (= native time / ring time); above 1 the ring is faster.
        public var ratio: Double { ringSeconds > 0 ? nativeSeconds / ringSeconds : 0 }

        static func busBandwidth(bytes: Int, seconds: Double, ranks: Int) -> Double {
            guard seconds > 0 else { return 0 }
            return Double(bytes) / seconds * 2 * Double(ranks - 1) / Double(ranks) / 1e9
        }
    }

    /// 4 KB, 16 KB, … 64 MB: ×4 steps.
    public static let defaultSizes: [Int] = (0 ..< 8).map { 4096 << (2 * $0) }

    /// Measures every size; all ranks must call this together.
    /// - Parameters:
    ///   - sizesInBytes: buffer sizes S (rounded down to whole floats).
    ///   - iterations: allreduces timed per size, algorithm and round; nil picks
    ///     max(3, min(200, 256 MB / S)) so small sizes average out noise and large ones stay short.
    ///   - rounds: alternating rounds per size (at least 1).
    public static func run(communicator: Communicator, sizesInBytes: [Int] = defaultSizes,
                           iterations: Int? = nil, rounds: Int = 5) throws -> [Row] {
        let mpi = communicator as? MPICommunicator
        let nativeName = mpi == nil ? "native allreduce" : "MPI_Allreduce"
        var rows: [Row] = []
        for bytes in sizesInBytes {
            let count = max(bytes / MemoryLayout<Float>.stride, 0)
            let repeats = iterations ?? max(3, min(200, (256 << 20) / max(bytes, 1)))
            // Zeros stay zeros under repeated summing: no overflow, no denormals.
            let buffer = UnsafeMutableBufferPointer<Float>.allocate(capacity: count)
            defer { buffer.deallocate() }
            buffer.initialize(repeating: 0)
            let ring = { try RingAllreduce.allreduce(buffer, op: .sum, on: communicator) }
            let native = {
                if let mpi {
                    try mpi.allreduceBlocking(buffer, op: .sum)
                } else {
                    try communicator.allreduce(buffer, op: .sum)
                }
            }
            // One untimed call of each first: buffers, connections and MPI's own segments warm up.
            try ring()
            try native()
            var ringRounds: [Double] = [], nativeRounds: [Double] = []
            for round in 0 ..< max(1, rounds) {
                if round % 2 == 0 {
                    ringRounds.append(try time(communicator, repeats, ring))
                    nativeRounds.append(try time(communicator, repeats, native))
                } else {
                    nativeRounds.append(try time(communicator, repeats, native))
                    ringRounds.append(try time(communicator, repeats, ring))
                }
            }
            rows.append(Row(bytes: count * MemoryLayout<Float>.stride, ranks: communicator.size, iterations: repeats,
                            ringRounds: ringRounds, nativeRounds: nativeRounds, nativeName: nativeName))
        }
        return rows
    }

    /// The middle value (the upper one of the two middles for an even count); 0 for none.
    public static func median(_ values: [Double]) -> Double {
        values.isEmpty ? 0 : values.sorted()[values.count / 2]
    }

    /// Seconds per call of `body`, the slowest rank's.
    private static func time(_ communicator: Communicator, _ repeats: Int, _ body: () throws -> Void) throws -> Double {
        try communicator.barrier()
        let start = DispatchTime.now().uptimeNanoseconds
        for _ in 0 ..< repeats { try body() }
        let elapsed = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
        return try communicator.allreduce(elapsed, op: .max) / Double(repeats)
    }

    /// A fixed-width table with one line per size and the ratio column, e.g.
    ///
    ///     allreduce, 2 ranks: busbw = S/t · 2(n−1)/n, t = slowest rank
    ///         size  iters   ring ms  ring GB/s  MPI_Allreduce ms  MPI_Allreduce GB/s  ring/MPI_Allreduce
    ///         4 KB    200     0.021       0.10             0.015                0.14                0.71
    public static func format(_ rows: [Row]) -> String {
        guard let first = rows.first else { return "allreduce benchmark: no sizes measured\n" }
        let native = first.nativeName
        var lines = ["allreduce, \(first.ranks) rank\(first.ranks == 1 ? "" : "s"): "
            + "busbw = S/t · 2(n−1)/n, t = slowest rank, median of \(first.ringRounds.count) alternating rounds"]
        if first.ranks == 1 {
            lines.append("(one rank moves no data: bandwidths are 0, the ratio compares times)")
        }
        let headers = ["size", "iters", "ring ms", "ring GB/s", "\(native) ms", "\(native) GB/s", "ring/\(native)"]
        let table = rows.map { row in
            [sizeLabel(row.bytes), "\(row.iterations)",
             String(format: "%.3f", row.ringSeconds * 1e3), String(format: "%.2f", row.ringBusBandwidth),
             String(format: "%.3f", row.nativeSeconds * 1e3), String(format: "%.2f", row.nativeBusBandwidth),
             String(format: "%.2f", row.ratio)]
        }
        let widths = headers.indices.map { column in
            max(headers[column].count, table.map { $0[column].count }.max() ?? 0)
        }
        func line(_ cells: [String]) -> String {
            cells.indices.map { String(repeating: " ", count: widths[$0] - cells[$0].count) + cells[$0] }
                .joined(separator: "  ")
        }
        lines.append(line(headers))
        lines.append(contentsOf: table.map(line))
        return lines.joined(separator: "\n") + "\n"
    }

    static func sizeLabel(_ bytes: Int) -> String {
        if bytes >= 1 << 20 && bytes % (1 << 20) == 0 { return "\(bytes >> 20) MB" }
        if bytes >= 1 << 10 && bytes % (1 << 10) == 0 { return "\(bytes >> 10) KB" }
        return "\(bytes) B"
    }
}
