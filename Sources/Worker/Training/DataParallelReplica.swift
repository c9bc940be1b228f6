import Collective
import Foundation
import Tensor

/// Settings of a data-parallel replica.
public struct DataParallelOptions: Sendable, Equatable {
    public var buckets: GradientBucketOptions
    /// Seconds any collective of the replica may wait for a peer before failing with
    /// `DataParallelError.stalled` naming it; nil keeps the communicator's timeout
    /// (`SURA_COLLECTIVE_TIMEOUT`, 30 s). Applies to the whole data-parallel communicator.
    public var stallTimeout: Double?

    public init(buckets: GradientBucketOptions = GradientBucketOptions(), stallTimeout: Double? = nil) {
        self.buckets = buckets
        self.stallTimeout = stallTimeout
    }
}

/// What one optimizer step did.
public struct DataParallelStepReport: Sendable {
    /// Mean loss over the step's micro-batches and over all replicas (the global batch's loss).
    public var loss: Double
    /// Global gradient norm before clipping, when clipping was asked for.
    public var gradientNorm: Float?
    /// The gradient synchronisation of the last micro-batch.
    public var sync: GradientSyncReport
    /// Wall seconds of the whole step.
    public var seconds: Double
}

/// One data-parallel replica of a model, PyTorch DDP's role: every rank of the group holds the
/// same parameters, runs forward and backward on its own micro-batch, and gradients are averaged
/// across the group by `GradientBuckets` while backward runs, so that the optimizer step — the
/// same arithmetic on the same bits — leaves every replica identical.
///
/// With n replicas each on B/n samples and a mean loss per replica, the averaged gradient is
/// (1/n)·Σᵣ ∇(1/(B/n))·Σ_{i∈r} ℓᵢ = ∇(1/B)·Σᵢ ℓᵢ: the gradient of the global batch's mean loss.
/// It is equal up to float rounding (a different summation order), not bitwise.
///
///     let replica = try DataParallelReplica(parameters: model.namedTrainableParameters(), communicator: dp)
///     try replica.broadcastParameters()
///     for step in … {
///         try replica.step(microBatches: 2, optimizer: adamw) { mb in loss(model(x[mb]), y[mb]) }
///     }
public final class DataParallelReplica {
    public let communicator: Communicator
    public let parameters: [(name: String, tensor: Tensor)]
    public let buckets: GradientBuckets
    public let options: DataParallelOptions
    /// Where forward, backward and allreduce spans go, when set.
    public var timeline: Timeline? {
        didSet { buckets.timeline = timeline }
    }
    private var syncDisabled = 0

    /// Checks that every rank has the same parameter names and shapes (collective), sets the
    /// stall timeout and lays out the gradient buckets.
    /// - Throws: `DataParallelError.parameterMismatch` naming the first rank whose list differs
    ///   from rank 0's, `.invalidSetting` for a bad option.
    public init(parameters: [(name: String, tensor: Tensor)], communicator: Communicator,
                options: DataParallelOptions = DataParallelOptions(), timeline: Timeline? = nil) throws {
        if let seconds = options.stallTimeout {
            guard seconds > 0, seconds.isFinite else {
                throw DataParallelError.invalidSetting(name: "stall timeout", value: "\(seconds) s", allowed: "> 0")
            }
            communicator.timeout = seconds
        }
        self.communicator = communicator
        self.parameters = parameters
        self.options = options
        self.timeline = timeline
        buckets = try GradientBuckets(parameters: parameters, communicator: communicator,
                                      options: options.buckets, timeline: timeline)
        try checkSameParameters()
    }

    // MARK: Parameters

    /// Copies rank `root`'s parameter values to every replica, so that all start identical
    /// (models initialised from different seeds, or only rank 0 loaded a checkpoint). Collective.
    public func broadcastParameters(from root: Int = 0) throws {
        do {
            for (_, tensor) in parameters {
                if tensor.isContiguous {
                    try communicator.broadcast(UnsafeMutableBufferPointer(start: tensor.pointer, count: tensor.count),
                                               root: root)
                } else {
                    var values = tensor.scalars
                    try communicator.broadcast(&values, root: root)
                    tensor.assign(Tensor(shape: tensor.shape, data: values))
                }
            }
        } catch {
            throw DataParallelError.from(error, operation: "broadcast of initial parameters")
        }
    }

    /// Throws unless every replica's parameters are bitwise equal to rank 0's. Collective; reads
    /// every parameter once (a 64-bit checksum of the bit patterns per parameter).
    /// - Throws: `DataParallelError.replicasDiverged` naming the lowest differing rank and the
    ///   first differing parameter.
    public func verifyInSync() throws {
        let sums = parameters.map { Self.checksum($0.tensor) }
        let mine = sums.flatMap(Self.exactFloats)
        let all: [Float]
        do {
            all = try communicator.allgather(mine)
        } catch {
            throw DataParallelError.from(error, operation: "replica consistency check")
        }
        let width = mine.count
        for peer in 1 ..< communicator.size {
            for p in parameters.indices {
                let range = (peer * width + 4 * p) ..< (peer * width + 4 * p + 4)
                if Array(all[range]) != Array(all[(4 * p) ..< (4 * p + 4)]) {
                    throw DataParallelError.replicasDiverged(rank: peer, parameter: parameters[p].name)
                }
            }
        }
    }

    // MARK: Backward and step

    /// Runs `body` with gradient synchronisation off: `backward(_:)` inside it only accumulates
    /// locally (PyTorch's `no_sync()`), for the first micro-batches of a gradient accumulation.
    public func withoutGradientSync<T>(_ body: () throws -> T) rethrows -> T {
        syncDisabled += 1
        defer { syncDisabled -= 1 }
        return try body()
    }

    /// Backward from `loss` (a scalar that requires grad). Unless inside `withoutGradientSync`,
    /// buckets are averaged across the group as they complete and the averaged gradients are in
    /// every parameter's `grad` when this returns. Collective when synchronising.
    public func backward(_ loss: Tensor) throws {
        try Self.checkLoss(loss)
        let run = { self.timed("backward", .backward) { loss.backward() } }
        if syncDisabled > 0 {
            run()
        } else {
            try buckets.reduce(during: run)
        }
    }

    /// One optimizer step over `microBatches` micro-batches of this replica's share of the batch.
    ///
    /// For each micro-batch k, `loss(k)` runs the forward pass and returns the micro-batch's mean
    /// loss; backward runs on loss/`microBatches`, without synchronisation except for the last
    /// micro-batch, whose buckets are averaged across replicas while its backward runs. So the
    /// step uses the gradient of the mean loss over all micro-batches of all replicas. Then the
    /// gradients are clipped to `maxGradientNorm` (when given), the optimizer steps and the
    /// gradients are dropped. Collective.
    public func step(microBatches: Int = 1, optimizer: Optimizer, maxGradientNorm: Float? = nil,
                     loss: (Int) throws -> Tensor) throws -> DataParallelStepReport {
        guard microBatches >= 1 else {
            throw DataParallelError.invalidSetting(name: "micro-batches", value: "\(microBatches)", allowed: "≥ 1")
        }
        let clock = DispatchTime.now().uptimeNanoseconds
        var lossSum = 0.0
        for k in 0 ..< microBatches {
            let value = try timed("forward \(k)", .forward) { try loss(k) }
            try Self.checkLoss(value)
            lossSum += Double(value.item)
            let scaled = microBatches > 1 ? value * (1 / Float(microBatches)) : value
            if k < microBatches - 1 {
                try withoutGradientSync { try backward(scaled) }
            } else {
                try backward(scaled)
            }
        }
        var norm: Float?
        try timed("optimizer", .optimizer) {
            if let maxGradientNorm { norm = clipGradientNorm(parameters, maxNorm: maxGradientNorm) }
            try optimizer.step()
            optimizer.zeroGrad()
        }
        let globalLoss: Double
        do {
            // Over the ring when asked for, so that a stall here also names the missing rank.
            if options.buckets.algorithm == .ring {
                var value = [Float(lossSum / Double(microBatches))]
                try RingAllreduce.allreduce(&value, op: .average, on: communicator)
                globalLoss = Double(value[0])
            } else {
                globalLoss = try communicator.allreduce(lossSum / Double(microBatches), op: .average)
            }
        } catch {
            throw DataParallelError.from(error, operation: "loss average")
        }
        return DataParallelStepReport(loss: globalLoss, gradientNorm: norm, sync: buckets.lastReport,
                                      seconds: Double(DispatchTime.now().uptimeNanoseconds - clock) / 1e9)
    }

    private func timed<T>(_ name: String, _ category: Timeline.Category, _ body: () throws -> T) rethrows -> T {
        guard let timeline else { return try body() }
        return try timeline.measure(name, category, body)
    }

    // MARK: Checks

    static func checkLoss(_ loss: Tensor) throws {
        guard loss.count == 1 else {
            throw DataParallelError.invalidSetting(name: "loss", value: "a tensor of shape \(loss.shape)",
                                                   allowed: "a scalar")
        }
        guard loss.requiresGrad else {
            throw DataParallelError.invalidSetting(name: "loss", value: "a tensor that does not require grad",
                                                   allowed: "a loss computed from trainable parameters")
        }
    }

    /// All ranks agree on (count, names and shapes) — compared as a 64-bit hash, carried as
    /// four 16-bit pieces so the floats are exact.
    private func checkSameParameters() throws {
        var hash = FNV1a()
        for (name, tensor) in parameters {
            hash.add(name)
            hash.add(tensor.shape.map(String.init).joined(separator: "x"))
        }
        let mine = [Float(parameters.count)] + Self.exactFloats(hash.value)
        let all: [Float]
        do {
            all = try communicator.allgather(mine)
        } catch {
            throw DataParallelError.from(error, operation: "parameter list check")
        }
        for peer in 1 ..< communicator.size {
            let theirs = Array(all[(peer * 5) ..< (peer * 5 + 5)])
            if theirs[0] != all[0] {
                throw DataParallelError.parameterMismatch(
                    rank: peer, detail: "data-parallel rank \(peer) has \(Int(theirs[0])) trainable parameters, "
                        + "rank 0 has \(Int(all[0]))")
            }
            if theirs != Array(all[0 ..< 5]) {
                throw DataParallelError.parameterMismatch(
                    rank: peer, detail: "data-parallel rank \(peer)'s parameter names or shapes differ from rank 0's")
            }
        }
    }

    static func exactFloats(_ value: UInt64) -> [Float] {
        (0 ..< 4).map { Float((value >> (16 * UInt64($0))) & 0xFFFF) }
    }

    /// Order-sensitive 64-bit checksum of a tensor's bit patterns.
    static func checksum(_ tensor: Tensor) -> UInt64 {
        let c = tensor.isContiguous ? tensor : tensor.contiguousCopy()
        var hash = FNV1a()
        let p = UnsafeRawPointer(c.pointer).assumingMemoryBound(to: UInt32.self)
        for i in 0 ..< c.count { hash.add(p[i]) }
        return hash.value
    }
}

/// 64-bit FNV-1a, for cheap agreement checks between ranks and cache keys (not for security).
public struct FNV1a: Sendable {
    public private(set) var value: UInt64 = 0xcbf2_9ce4_8422_2325

    public init() {}

    public mutating func add(_ word: UInt32) {
        var w = word
        for _ in 0 ..< 4 {
            value = (value ^ UInt64(w & 0xFF)) &* 0x0000_0100_0000_01B3
            w >>= 8
        }
    }

    /// The UTF-8 bytes of `text` and a 0xFF separator (which UTF-8 never contains), so
    /// ["ab", "c"] and ["a", "bc"] hash differently.
    public mutating func add(_ text: String) {
        for byte in text.utf8 { value = (value ^ UInt64(byte)) &* 0x0000_0100_0000_01B3 }
        value = (value ^ 0xFF) &* 0x0000_0100_0000_01B3    // separator
    }
}
