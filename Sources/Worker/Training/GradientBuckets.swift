import Collective
import Foundation
import Tensor

/// Which allreduce reduces the gradient buckets.
public enum AllreduceAlgorithm: String, Sendable, CaseIterable {
    /// The communicator's own (`MPI_Iallreduce` under mpirun). MPI cannot say which rank is
    /// missing when it stalls.
    case native
    /// Sura's ring (`RingAllreduce`): point-to-point only, so a stall names the silent neighbour.
    case ring
}

/// How parameters are cut into buckets (sizes in bytes of float32 gradients).
public struct GradientBucketOptions: Sendable, Equatable {
    /// Cap of every bucket but the first; PyTorch DDP's default is 25 MiB.
    public var capBytes: Int
    /// Cap of the first bucket (the last layers' gradients, ready first): small, so the first
    /// allreduce starts early in backward (PyTorch uses 1 MiB).
    public var firstCapBytes: Int
    public var algorithm: AllreduceAlgorithm

    public init(capBytes: Int = 25 << 20, firstCapBytes: Int = 1 << 20, algorithm: AllreduceAlgorithm = .ring) {
        self.capBytes = capBytes
        self.firstCapBytes = firstCapBytes
        self.algorithm = algorithm
    }
}

/// The assignment of parameters to buckets, in REVERSE registration order: backward produces
/// the last layer's gradients first, so bucket 0 holds the last parameters and is the first one
/// complete. A bucket is closed once it reaches its cap. A parameter that would take a bucket past
/// its cap starts the next bucket instead when the bucket already holds half its cap; otherwise
/// it joins (so no bucket is a sliver, and a parameter larger than the cap that arrives first is a
/// bucket of its own). PyTorch DDP always lets the crossing parameter join: with two 16 MB layers
/// under a 25 MB cap that makes one 32 MB bucket that can only launch after the earlier layer's
/// backward; here the later layer's bucket launches while the earlier one is still in backward.
///
/// A parameter smaller than 1/16 of the first cap stays with the one registered before it (a
/// weight's bias), since one layer's backward produces both.
///
/// The last bucket is small too. It can only launch once backward has finished, so its whole
/// allreduce is exposed; its last-produced parameters (the fewest that reach the first cap)
/// become a bucket of their own, provided what stays behind holds at least the first cap as
/// well. On the probe MLP (two 16 MB layers between two 4 MB ones) that turns a 21 MB tail into
/// a 4 MB one, while the 16 MB layer before it reduces during the first layer's backward.
public struct GradientBucketLayout: Equatable, Sendable {
    public struct Bucket: Equatable, Sendable {
        /// Indices into the parameter list, in the order they sit in the bucket.
        public let parameters: [Int]
        /// Element offset of each of those parameters in the bucket's flat buffer.
        public let offsets: [Int]
        /// Number of gradient elements in the bucket.
        public let elementCount: Int
    }

    public let buckets: [Bucket]

    /// - Parameter elementCounts: each parameter's element count, in registration order.
    public init(elementCounts: [Int], options: GradientBucketOptions = GradientBucketOptions()) {
        let bytes = MemoryLayout<Float>.stride
        // Groups in registration order: a parameter with the small ones registered right after it
        // (a weight's bias): its layer's backward produces them together, so a bucket holding the
        // bias but not the weight would wait for the layer anyway.
        let small = max(1, options.firstCapBytes / 16)
        var groups: [[Int]] = []
        for index in elementCounts.indices {
            if !groups.isEmpty, elementCounts[index] * bytes < small {
                groups[groups.count - 1].append(index)
            } else {
                groups.append([index])
            }
        }
        let size = { (group: [Int]) in group.reduce(0) { $0 + elementCounts[$1] } }
        var buckets: [[[Int]]] = []
        var open: [[Int]] = [], filled = 0
        func close() {
            buckets.append(open)
            open = []; filled = 0
        }
        // The open bucket's cap (it changes once the first bucket has closed).
        func cap() -> Int { buckets.isEmpty ? options.firstCapBytes : options.capBytes }
        for group in groups.reversed() {
            if 2 * filled * bytes >= cap(), (filled + size(group)) * bytes > cap() { close() }
            open.append(group.reversed())
            filled += size(group)
            if filled * bytes >= cap() { close() }
        }
        if !open.isEmpty { close() }
        if let last = buckets.last, last.count > 1 {
            // The fewest last-produced groups that reach the first cap, when what stays behind does too.
            var tail = 0, split = last.count
            while split > 0, tail * bytes < options.firstCapBytes {
                split -= 1
                tail += size(last[split])
            }
            if split > 0, (last.reduce(0) { $0 + size($1) } - tail) * bytes >= options.firstCapBytes {
                buckets[buckets.count - 1] = Array(last[..<split])
                buckets.append(Array(last[split...]))
            }
        }
        self.buckets = buckets.map { groups in
            let members = groups.flatMap { $0 }
            var offsets: [Int] = [], filled = 0
            for index in members {
                offsets.append(filled)
                filled += elementCounts[index]
            }
            return Bucket(parameters: members, offsets: offsets, elementCount: filled)
        }
    }
}

/// What one gradient synchronisation did, for logs, tests and the benchmark.
public struct GradientSyncReport: Sendable {
    /// Bucket indices in launch order (always 0, 1, 2, … : the same on every rank).
    public var launchOrder: [Int] = []
    /// Buckets launched while backward was still running (the rest after it returned).
    public var launchedDuringBackward = 0
    /// Seconds each bucket's allreduce ran on the communication thread, by bucket index.
    public var communicationSeconds: [Double] = []
    /// Seconds the training thread waited for the allreduces after backward returned: the part
    /// of the communication not hidden behind backward.
    public var exposedWaitSeconds = 0.0
    /// Seconds backward ran (the body given to `reduce(during:)`).
    public var backwardSeconds = 0.0
}

/// Why data-parallel training stopped. Ranks are world ranks.
public enum DataParallelError: Error, CustomStringConvertible, Equatable {
    /// A gradient allreduce (or another collective of the step) waited longer than the stall
    /// timeout. `peers` are the ranks that had not arrived; empty when the MPI library cannot tell.
    case stalled(operation: String, peers: [Int], seconds: Double)
    /// Replicas do not hold the same parameter list (names, shapes or order differ).
    case parameterMismatch(rank: Int, detail: String)
    /// Replicas' parameters have drifted apart (they must stay bitwise identical).
    case replicasDiverged(rank: Int, parameter: String)
    /// A setting outside its allowed range.
    case invalidSetting(name: String, value: String, allowed: String)

    public var description: String {
        switch self {
        case let .stalled(operation, peers, seconds):
            let limit = String(format: "%g s", seconds)
            if peers.isEmpty {
                return "\(operation) stalled for \(limit): some rank is dead or stalled (MPI cannot say which; "
                    + "the ring algorithm names the missing neighbour)"
            }
            let names = peers.map { "rank \($0)" }.joined(separator: ", ")
            return "\(operation) stalled for \(limit): \(names) \(peers.count == 1 ? "has" : "have") not arrived "
                + "(dead or stalled)"
        case let .parameterMismatch(rank, detail):
            return "rank \(rank) has a different parameter list: \(detail)"
        case let .replicasDiverged(rank, parameter):
            return "rank \(rank)'s parameter '\(parameter)' differs from rank 0's; replicas must stay identical"
        case let .invalidSetting(name, value, allowed):
            return "data-parallel setting \(name) = \(value) is invalid; allowed: \(allowed)"
        }
    }

    /// Turns a collective timeout into a stall naming the missing ranks; other errors pass through.
    static func from(_ error: Error, operation: String) -> Error {
        if case let CollectiveError.timeout(inner, peers, seconds) = error {
            return DataParallelError.stalled(operation: "\(operation) (\(inner))", peers: peers, seconds: seconds)
        }
        return error
    }
}

/// Averages the gradients of a parameter list across a data-parallel group in buckets, each
/// bucket's allreduce starting on the communication thread as soon as backward has produced all
/// of its gradients, so communication overlaps the rest of backward (PyTorch DDP's reducer).
///
/// Every bucket's flat buffer holds its gradients followed by one presence flag per parameter
/// (1 when this rank has a gradient). After the average a flag is > 0 when any rank had that
/// gradient; parameters no rank touched keep `grad == nil`, as in PyTorch. Buckets launch
/// strictly in index order (a complete bucket waits for its predecessors), and the
/// communication thread runs jobs first-in first-out, so every rank reduces the same bucket in
/// the same round whatever order its gradients arrived in.
public final class GradientBuckets {
    public let layout: GradientBucketLayout
    public let options: GradientBucketOptions
    public let communicator: Communicator
    public let parameters: [(name: String, tensor: Tensor)]
    /// Spans of each allreduce go to the communication lane, when set.
    public var timeline: Timeline?
    /// The report of the latest `reduce(during:)`.
    public private(set) var lastReport = GradientSyncReport()

    /// Each bucket's gradients then its presence flags; `views[i]` are its parameters' windows.
    private let storages: [TensorStorage]
    private let buffers: [UnsafeMutableBufferPointer<Float>]
    /// Each parameter's window in its bucket, also set as the parameter's `gradientBuffer`: a
    /// gradient accumulated there is already in place for the allreduce, and the average lands
    /// straight in `grad` (no 2 × S copies a step).
    private let views: [Tensor]
    private let slot: [ObjectIdentifier: (bucket: Int, position: Int)]
    private var remaining: [Int] = []
    private var requests: [CollectiveRequest?] = []
    private var nextLaunch = 0
    private var inBackward = false
    private let durations: DurationTable

    /// - Parameters:
    ///   - parameters: the trainable parameters, identical in name, shape and order on every rank.
    ///   - communicator: the data-parallel group.
    public init(parameters: [(name: String, tensor: Tensor)], communicator: Communicator,
                options: GradientBucketOptions = GradientBucketOptions(), timeline: Timeline? = nil) throws {
        guard options.capBytes > 0, options.firstCapBytes > 0 else {
            throw DataParallelError.invalidSetting(
                name: "bucket cap", value: "\(options.firstCapBytes), \(options.capBytes) bytes", allowed: "> 0")
        }
        var seen: [ObjectIdentifier: String] = [:]
        for (name, tensor) in parameters {
            if let other = seen.updateValue(name, forKey: ObjectIdentifier(tensor)) {
                throw DataParallelError.invalidSetting(
                    name: "parameters", value: "'\(name)' is the same tensor as '\(other)'",
                    allowed: "each tensor once")
            }
        }
        self.parameters = parameters
        self.communicator = communicator
        self.options = options
        self.timeline = timeline
        layout = GradientBucketLayout(elementCounts: parameters.map { $0.tensor.count }, options: options)
        var slot: [ObjectIdentifier: (Int, Int)] = [:]
        for (b, bucket) in layout.buckets.enumerated() {
            for (position, index) in bucket.parameters.enumerated() {
                slot[ObjectIdentifier(parameters[index].tensor)] = (b, position)
            }
        }
        self.slot = slot
        storages = layout.buckets.map { TensorStorage(count: $0.elementCount + $0.parameters.count) }
        buffers = zip(storages, layout.buckets).map { storage, bucket in
            UnsafeMutableBufferPointer(start: storage.pointer, count: bucket.elementCount + bucket.parameters.count)
        }
        var views = [Tensor?](repeating: nil, count: parameters.count)
        for (b, bucket) in layout.buckets.enumerated() {
            for (position, index) in bucket.parameters.enumerated() {
                let tensor = parameters[index].tensor
                views[index] = Tensor(storage: storages[b], shape: tensor.shape, offset: bucket.offsets[position])
            }
        }
        self.views = views.map { $0! }
        for (index, (_, tensor)) in parameters.enumerated() {
            // A gradient accumulated before this point is elsewhere; `launch` copies it in.
            tensor.gradientBuffer = self.views[index]
        }
        durations = DurationTable(count: layout.buckets.count)
    }

    deinit {
        // A failed sync has already waited for its requests, so no job still uses the buffers;
        // the parameters stop writing into them (a `grad` that is a window keeps its storage).
        for (index, (_, tensor)) in parameters.enumerated() where tensor.gradientBuffer === views[index] {
            tensor.gradientBuffer = nil
        }
    }

    /// Whether `tensor`'s gradient is parameter `index`'s window in its bucket.
    private func gradientIsInPlace(_ index: Int) -> Bool {
        parameters[index].tensor.grad === views[index]
    }

    /// Runs `backward` (which must call `backward()` on the loss exactly once, on this thread),
    /// launching each bucket's allreduce as soon as it is complete, then launches what is left
    /// (parameters that got no gradient), waits for all buckets and writes the averaged
    /// gradients back into the parameters' `grad`.
    ///
    /// Collective over the data-parallel group: every rank calls it for the same step.
    /// - Throws: `DataParallelError.stalled` naming the ranks that never arrived, or the
    ///   error `backward` threw (after waiting for the buckets already launched).
    public func reduce<T>(during backward: () throws -> T) throws -> T {
        begin()
        let start = DispatchTime.now().uptimeNanoseconds
        inBackward = true
        let result: Result<T, Error> = Result {
            try Tensor.observingGradientAccumulation({ [unowned self] tensor in
                self.gradientReady(tensor)
            }, backward)
        }
        inBackward = false
        let backwardEnd = DispatchTime.now().uptimeNanoseconds
        lastReport.backwardSeconds = Double(backwardEnd - start) / 1e9
        lastReport.launchedDuringBackward = lastReport.launchOrder.count
        if case .failure(let error) = result {
            drain()
            throw error
        }
        try finish()
        lastReport.exposedWaitSeconds = Double(DispatchTime.now().uptimeNanoseconds - backwardEnd) / 1e9
        return try result.get()
    }

    /// Reduces the gradients already accumulated (no backward to overlap): launches every
    /// bucket, waits and writes back. Used after a pipeline's last backward or to re-sync.
    public func reduceNow() throws {
        try reduce(during: {})
    }

    // MARK: Steps of one sync

    private func begin() {
        remaining = layout.buckets.map { $0.parameters.count }
        requests = Array(repeating: nil, count: layout.buckets.count)
        nextLaunch = 0
        lastReport = GradientSyncReport()
        durations.reset()
    }

    /// The observer: one more gradient of its bucket is final.
    private func gradientReady(_ tensor: Tensor) {
        guard let (bucket, _) = slot[ObjectIdentifier(tensor)], remaining[bucket] > 0 else { return }
        remaining[bucket] -= 1
        while nextLaunch < layout.buckets.count && remaining[nextLaunch] == 0 {
            launch(nextLaunch)
            nextLaunch += 1
        }
    }

    private func launch(_ index: Int) {
        let bucket = layout.buckets[index]
        let buffer = buffers[index]
        let base = buffer.baseAddress!
        let flags = base + bucket.elementCount
        for (position, parameter) in bucket.parameters.enumerated() {
            let tensor = parameters[parameter].tensor
            let target = base + bucket.offsets[position]
            if gradientIsInPlace(parameter) {
                flags[position] = 1
            } else if let grad = tensor.grad, grad.count == tensor.count {
                grad.copyStrided(into: target)
                flags[position] = 1
            } else {
                target.update(repeating: 0, count: tensor.count)
                flags[position] = 0
            }
        }
        let algorithm = options.algorithm
        let timeline = self.timeline
        let durations = self.durations
        let megabytes = String(format: "%.2f MB", Double(bucket.elementCount * 4) / 1e6)
        requests[index] = communicator.runInBackground { channel in
            let start = timeline?.now ?? 0
            let clock = DispatchTime.now().uptimeNanoseconds
            defer {
                durations.set(index, Double(DispatchTime.now().uptimeNanoseconds - clock) / 1e9)
                timeline?.record("allreduce bucket \(index) (\(megabytes))", .allreduce, lane: .communication,
                                 start: start, end: timeline?.now ?? 0)
            }
            switch algorithm {
            case .native: try channel.allreduce(buffer, op: .average)
            case .ring: try RingAllreduce.allreduce(buffer, op: .average, on: channel)
            }
        }
        lastReport.launchOrder.append(index)
    }

    private func finish() throws {
        while nextLaunch < layout.buckets.count {
            launch(nextLaunch)
            nextLaunch += 1
        }
        let waitStart = timeline?.now ?? 0
        defer { timeline?.record("wait for gradients", .wait, start: waitStart, end: timeline?.now ?? 0) }
        // Each bucket is written back as soon as it is reduced, so copying the early buckets
        // overlaps the later buckets' allreduces (nothing is written back once one has failed).
        var failure: Error?
        for (index, request) in requests.enumerated() {
            do {
                try request?.wait()
                if failure == nil { writeBack(index) }
            } catch {
                failure = failure ?? DataParallelError.from(error, operation: "gradient allreduce of bucket \(index)")
            }
        }
        lastReport.communicationSeconds = durations.values
        if let failure { throw failure }
    }

    /// Waits for every launched bucket, ignoring their errors: after a failure the buffers must
    /// not be in use when control returns.
    private func drain() {
        for request in requests { try? request?.wait() }
    }

    private func writeBack(_ index: Int) {
        let bucket = layout.buckets[index]
        let base = buffers[index].baseAddress!
        let flags = base + bucket.elementCount
        for (position, parameter) in bucket.parameters.enumerated() where flags[position] > 0 {
            let tensor = parameters[parameter].tensor
            if gradientIsInPlace(parameter) { continue }
            let source = base + bucket.offsets[position]
            if let grad = tensor.grad, grad.shape == tensor.shape, grad.isContiguous {
                grad.pointer.update(from: source, count: tensor.count)
            } else {
                // No gradient here (another rank had one): the window already holds the average.
                tensor.grad = views[parameter]
            }
        }
    }
}

/// Per-bucket durations written by the communication thread and read after `wait()`.
private final class DurationTable: @unchecked Sendable {
    private let lock = NSLock()
    private var seconds: [Double]

    init(count: Int) {
        seconds = Array(repeating: 0, count: count)
    }

    func reset() {
        lock.lock()
        for i in seconds.indices { seconds[i] = 0 }
        lock.unlock()
    }

    func set(_ index: Int, _ value: Double) {
        lock.lock()
        seconds[index] = value
        lock.unlock()
    }

    var values: [Double] {
        lock.lock()
        defer { lock.unlock() }
        return seconds
    }
}
