import CMPIShim
import Foundation

/// A communicator over Open MPI. Every operation is the non-blocking MPI call (`MPI_Iallreduce`,
/// `MPI_Isend`, matched probes for receives, …) polled with `MPI_Test` until it completes or the
/// communicator's `timeout` passes, so no call can hang forever: a receive names the silent
/// peer; MPI's own collectives cannot say which rank is missing and name none.
///
/// MPI errors come back as `CollectiveError.mpi` carrying `MPI_Error_string` (the communicator
/// uses `MPI_ERRORS_RETURN`). After a timeout the communicator should not be used again: the
/// process should exit, and `MPIRuntime.finalize` (run at exit) then aborts the whole job with
/// `MPI_Abort` instead of waiting for the stalled peer.
public final class MPICommunicator: Communicator {
    public let rank: Int
    public let size: Int
    let handle: MPI_Comm
    private let channel: ChannelState
    /// World rank of each member, for error messages.
    private let worldRanks: [Int]
    private let thread: CommunicationThread
    private var backgroundChannel: MPICommunicator?
    /// True for the duplicate that background jobs run over: its polls run on the communication
    /// thread, beside compute, rather than on a thread that is itself waiting.
    private let isBackgroundChannel: Bool

    /// `MPI_COMM_WORLD`, initialising MPI if needed.
    public static func world() throws -> MPICommunicator {
        try MPIRuntime.initialize()
        return try MPICommunicator(handle: sura_mpi_comm_world(), channel: ChannelState(timeout: CollectiveTimeout.defaultSeconds))
    }

    private init(handle: MPI_Comm, channel: ChannelState, isBackgroundChannel: Bool = false) throws {
        self.handle = handle
        self.channel = channel
        self.isBackgroundChannel = isBackgroundChannel
        try MPIRuntime.check(MPIRuntime.call { MPI_Comm_set_errhandler(handle, sura_mpi_errors_return()) },
                             "MPI_Comm_set_errhandler")
        var rank: Int32 = 0
        var size: Int32 = 0
        try MPIRuntime.check(MPIRuntime.call { MPI_Comm_rank(handle, &rank) }, "MPI_Comm_rank")
        try MPIRuntime.check(MPIRuntime.call { MPI_Comm_size(handle, &size) }, "MPI_Comm_size")
        self.rank = Int(rank)
        self.size = Int(size)
        worldRanks = try Self.translateToWorld(handle, size: Int(size))
        thread = CommunicationThread(name: "sura-comm-\(worldRanks[Int(rank)])")
    }

    deinit {
        guard handle != sura_mpi_comm_world(), !MPIRuntime.isFinalized else { return }
        var doomed: MPI_Comm? = handle
        _ = MPIRuntime.call { MPI_Comm_free(&doomed) }
    }

    public var timeout: Double {
        get { channel.timeout }
        set { channel.timeout = newValue }
    }
    public var bytesSent: Int { channel.bytesSent }
    public var kind: String { MPIRuntime.isThreadMultiple ? "MPI (thread multiple)" : "MPI (serialised calls)" }

    // MARK: Collectives

    public func allreduce(_ buffer: UnsafeMutableBufferPointer<Float>, op: ReduceOperation) throws {
        try reduceAll(UnsafeMutableRawPointer(buffer.baseAddress), count: buffer.count,
                      type: sura_mpi_float(), op: op)
        if let base = buffer.baseAddress { Reduction.finish(base, count: buffer.count, op: op, ranks: size) }
    }

    public func allreduce(_ buffer: UnsafeMutableBufferPointer<Double>, op: ReduceOperation) throws {
        try reduceAll(UnsafeMutableRawPointer(buffer.baseAddress), count: buffer.count,
                      type: sura_mpi_double(), op: op)
        if let base = buffer.baseAddress { Reduction.finish(base, count: buffer.count, op: op, ranks: size) }
    }

    private func reduceAll(_ buffer: UnsafeMutableRawPointer?, count: Int, type: MPI_Datatype,
                           op: ReduceOperation) throws {
        try ArgumentCheck.count(count, operation: "allreduce")
        var request: MPI_Request?
        try MPIRuntime.check(MPIRuntime.call {
            MPI_Iallreduce(sura_mpi_in_place(), buffer, Int32(count), type, Self.mpiOp(op), handle, &request)
        }, "MPI_Iallreduce")
        try complete(request, operation: "allreduce of \(count) elements")
    }

    /// Blocking `MPI_Allreduce` with no timeout: the reference the benchmark compares the ring
    /// against. Prefer `allreduce`, which cannot hang.
    public func allreduceBlocking(_ buffer: UnsafeMutableBufferPointer<Float>, op: ReduceOperation) throws {
        try ArgumentCheck.count(buffer.count, operation: "MPI_Allreduce")
        try MPIRuntime.check(MPIRuntime.call {
            MPI_Allreduce(sura_mpi_in_place(), buffer.baseAddress, Int32(buffer.count), sura_mpi_float(),
                          Self.mpiOp(op), handle)
        }, "MPI_Allreduce")
        if let base = buffer.baseAddress { Reduction.finish(base, count: buffer.count, op: op, ranks: size) }
    }

    public func broadcast(_ buffer: UnsafeMutableBufferPointer<Float>, root: Int) throws {
        let operation = "broadcast from rank \(root)"
        try ArgumentCheck.peer(root, size: size, operation: operation)
        try ArgumentCheck.count(buffer.count, operation: operation)
        var request: MPI_Request?
        try MPIRuntime.check(MPIRuntime.call {
            MPI_Ibcast(buffer.baseAddress, Int32(buffer.count), sura_mpi_float(), Int32(root), handle, &request)
        }, "MPI_Ibcast")
        try complete(request, operation: operation)
    }

    public func allgather(_ input: UnsafeBufferPointer<Float>,
                          into output: UnsafeMutableBufferPointer<Float>) throws {
        guard output.count == input.count * size else {
            throw CollectiveError.invalidArgument(
                operation: "allgather", detail: "output holds \(output.count) floats, needs \(size) × \(input.count)")
        }
        try ArgumentCheck.count(output.count, operation: "allgather")
        var request: MPI_Request?
        try MPIRuntime.check(MPIRuntime.call {
            MPI_Iallgather(input.baseAddress, Int32(input.count), sura_mpi_float(),
                           output.baseAddress, Int32(input.count), sura_mpi_float(), handle, &request)
        }, "MPI_Iallgather")
        try complete(request, operation: "allgather")
    }

    public func reduceScatter(_ input: UnsafeBufferPointer<Float>,
                              into output: UnsafeMutableBufferPointer<Float>, op: ReduceOperation) throws {
        guard input.count == output.count * size else {
            throw CollectiveError.invalidArgument(
                operation: "reduceScatter", detail: "input holds \(input.count) floats, needs \(size) × \(output.count)")
        }
        try ArgumentCheck.count(input.count, operation: "reduceScatter")
        var request: MPI_Request?
        try MPIRuntime.check(MPIRuntime.call {
            MPI_Ireduce_scatter_block(input.baseAddress, output.baseAddress, Int32(output.count),
                                      sura_mpi_float(), Self.mpiOp(op), handle, &request)
        }, "MPI_Ireduce_scatter_block")
        try complete(request, operation: "reduceScatter")
        if let base = output.baseAddress { Reduction.finish(base, count: output.count, op: op, ranks: size) }
    }

    public func barrier() throws {
        var request: MPI_Request?
        try MPIRuntime.check(MPIRuntime.call { MPI_Ibarrier(handle, &request) }, "MPI_Ibarrier")
        try complete(request, operation: "barrier")
    }

    /// `MPI_Comm_split`, which has no non-blocking form: a timed barrier first makes sure every
    /// rank has arrived, so the blocking call that follows cannot wait on a missing rank.
    public func split(color: Int, key: Int) throws -> Communicator {
        try ArgumentCheck.color(color)
        try barrier()
        var newHandle: MPI_Comm?
        try MPIRuntime.check(MPIRuntime.call {
            MPI_Comm_split(handle, Int32(color), Int32(clamping: key), &newHandle)
        }, "MPI_Comm_split")
        return try MPICommunicator(handle: newHandle!, channel: ChannelState(timeout: timeout))
    }

    // MARK: Point to point

    public func send(_ buffer: UnsafeBufferPointer<Float>, to peer: Int, tag: Int) throws {
        try sendRaw(UnsafeRawBufferPointer(buffer), type: sura_mpi_float(), count: buffer.count,
                    to: peer, tag: tag, operation: "send to rank \(peer)")
    }

    public func startSend(_ buffer: UnsafeBufferPointer<Float>, to peer: Int, tag: Int) throws -> PostedSend {
        let operation = "send to rank \(peer)"
        let request = try postRaw(UnsafeRawBufferPointer(buffer), type: sura_mpi_float(), count: buffer.count,
                                  to: peer, tag: tag, operation: operation)
        return PostedSend { [self] in try complete(request, operation: operation, peers: [peer]) }
    }

    public func sendBytes(_ bytes: UnsafeRawBufferPointer, to peer: Int, tag: Int) throws {
        try sendRaw(bytes, type: sura_mpi_byte(), count: bytes.count, to: peer, tag: tag,
                    operation: "sendBytes to rank \(peer)")
    }

    private func sendRaw(_ bytes: UnsafeRawBufferPointer, type: MPI_Datatype, count: Int, to peer: Int,
                         tag: Int, operation: String) throws {
        let request = try postRaw(bytes, type: type, count: count, to: peer, tag: tag, operation: operation)
        try complete(request, operation: operation, peers: [peer])
    }

    /// Checks the arguments and posts `MPI_Isend`; the caller completes the request.
    private func postRaw(_ bytes: UnsafeRawBufferPointer, type: MPI_Datatype, count: Int, to peer: Int,
                         tag: Int, operation: String) throws -> MPI_Request? {
        try ArgumentCheck.peer(peer, size: size, operation: operation)
        try ArgumentCheck.tag(tag, operation: operation)
        try ArgumentCheck.count(count, operation: operation)
        var request: MPI_Request?
        try MPIRuntime.check(MPIRuntime.call {
            MPI_Isend(bytes.baseAddress, Int32(count), type, Int32(peer), Int32(tag), handle, &request)
        }, "MPI_Isend")
        channel.countSent(bytes.count)
        return request
    }

    public func receive(into buffer: UnsafeMutableBufferPointer<Float>, from peer: Int, tag: Int) throws {
        let operation = "receive from rank \(peer)"
        try ArgumentCheck.peer(peer, size: size, operation: operation)
        try ArgumentCheck.tag(tag, operation: operation)
        var incoming = PendingReceive(into: UnsafeMutableRawPointer(buffer.baseAddress), floats: buffer.count,
                                      from: peer, tag: tag)
        let deadline = Deadline(seconds: timeout)
        var backoff = PollingBackoff(beside: isBackgroundChannel)
        while try !incoming.advance(on: self, operation: operation) {
            if deadline.hasPassed { try giveUp(on: &incoming, operation: operation, deadline: deadline) }
            backoff.pause()
        }
    }

    public func receiveBytes(from peer: Int, tag: Int) throws -> [UInt8] {
        let operation = "receiveBytes from rank \(peer)"
        try ArgumentCheck.peer(peer, size: size, operation: operation)
        try ArgumentCheck.tag(tag, operation: operation)
        let deadline = Deadline(seconds: timeout)
        var backoff = PollingBackoff(beside: isBackgroundChannel)
        var message: MPI_Message?
        var status = MPI_Status()
        while true {
            var found: Int32 = 0
            try MPIRuntime.check(MPIRuntime.call {
                MPI_Improbe(Int32(peer), Int32(tag), handle, &found, &message, &status)
            }, "MPI_Improbe")
            if found != 0 { break }
            if deadline.hasPassed {
                MPIRuntime.markUnclean("\(operation) timed out")
                throw CollectiveError.timeout(operation: operation, peers: [worldRanks[peer]], seconds: deadline.seconds)
            }
            backoff.pause()
        }
        var count: Int32 = 0
        try MPIRuntime.check(MPIRuntime.call { MPI_Get_count(&status, sura_mpi_byte(), &count) }, "MPI_Get_count")
        var bytes = [UInt8](repeating: 0, count: Int(count))
        try bytes.withUnsafeMutableBytes { raw in
            var request: MPI_Request?
            try MPIRuntime.check(MPIRuntime.call {
                MPI_Imrecv(raw.baseAddress, count, sura_mpi_byte(), &message, &request)
            }, "MPI_Imrecv")
            try complete(request, operation: operation, peers: [peer])
        }
        return bytes
    }

    public func sendReceive(_ sendBuffer: UnsafeBufferPointer<Float>, to destination: Int,
                            into receiveBuffer: UnsafeMutableBufferPointer<Float>, from source: Int,
                            tag: Int) throws {
        let operation = "sendReceive to rank \(destination) from rank \(source)"
        try ArgumentCheck.peer(destination, size: size, operation: operation)
        try ArgumentCheck.peer(source, size: size, operation: operation)
        try ArgumentCheck.tag(tag, operation: operation)
        try ArgumentCheck.count(sendBuffer.count, operation: operation)
        var sending: MPI_Request?
        if sendBuffer.count > 0 {
            try MPIRuntime.check(MPIRuntime.call {
                MPI_Isend(sendBuffer.baseAddress, Int32(sendBuffer.count), sura_mpi_float(), Int32(destination),
                          Int32(tag), handle, &sending)
            }, "MPI_Isend")
            channel.countSent(sendBuffer.count * MemoryLayout<Float>.stride)
        }
        var incoming = PendingReceive(into: UnsafeMutableRawPointer(receiveBuffer.baseAddress),
                                      floats: receiveBuffer.count, from: source, tag: tag)
        var received = receiveBuffer.isEmpty
        let deadline = Deadline(seconds: timeout)
        var backoff = PollingBackoff(beside: isBackgroundChannel)
        while true {
            if !received { received = try incoming.advance(on: self, operation: operation) }
            if sending != nil { try test(&sending, operation: operation) }
            if received && sending == nil { return }
            if deadline.hasPassed {
                if !received { try giveUp(on: &incoming, operation: operation, deadline: deadline) }
                MPIRuntime.markUnclean("\(operation) timed out")
                throw CollectiveError.timeout(operation: operation, peers: [worldRanks[destination]],
                                              seconds: deadline.seconds)
            }
            backoff.pause()
        }
    }

    // MARK: Background

    /// Background jobs run over a duplicate of this communicator made with `MPI_Comm_idup` on the
    /// first call, so every rank must make its first `runInBackground` call at the same point.
    public func runInBackground(_ job: @escaping (Communicator) throws -> Void) -> CollectiveRequest {
        let channelComm: MPICommunicator
        do {
            channelComm = try background()
        } catch {
            return CollectiveRequest.completed(throwing: error)
        }
        return thread.submit { try job(channelComm) }
    }

    private func background() throws -> MPICommunicator {
        if let existing = backgroundChannel { return existing }
        var duplicate: MPI_Comm?
        var request: MPI_Request?
        try MPIRuntime.check(MPIRuntime.call { MPI_Comm_idup(handle, &duplicate, &request) }, "MPI_Comm_idup")
        try complete(request, operation: "creating the background channel")
        let created = try MPICommunicator(handle: duplicate!, channel: channel, isBackgroundChannel: true)
        backgroundChannel = created
        return created
    }

    // MARK: Waiting

    /// A float receive in two stages: a matched probe (so the size is checked before any data
    /// lands in the buffer), then `MPI_Imrecv`. Until the probe matches, nothing is posted, so
    /// giving up leaves MPI clean.
    private struct PendingReceive {
        let buffer: UnsafeMutableRawPointer?
        let floats: Int
        let peer: Int
        let tag: Int
        var request: MPI_Request?
        var matched = false

        init(into buffer: UnsafeMutableRawPointer?, floats: Int, from peer: Int, tag: Int) {
            self.buffer = buffer
            self.floats = floats
            self.peer = peer
            self.tag = tag
        }

        /// Makes what progress is possible without blocking; true when the data has arrived.
        mutating func advance(on communicator: MPICommunicator, operation: String) throws -> Bool {
            if !matched {
                var found: Int32 = 0
                var message: MPI_Message?
                var status = MPI_Status()
                try MPIRuntime.check(MPIRuntime.call {
                    MPI_Improbe(Int32(peer), Int32(tag), communicator.handle, &found, &message, &status)
                }, "MPI_Improbe")
                guard found != 0 else { return false }
                matched = true
                var count: Int32 = 0
                try MPIRuntime.check(MPIRuntime.call { MPI_Get_count(&status, sura_mpi_float(), &count) },
                                     "MPI_Get_count")
                let (buffer, floats) = (self.buffer, self.floats)
                if Int(count) != floats {
                    // Drain the message into scratch so it cannot match a later receive.
                    var sink = [Float](repeating: 0, count: max(Int(count), 1))
                    var drain: MPI_Request?
                    try MPIRuntime.check(MPIRuntime.call {
                        MPI_Imrecv(&sink, count, sura_mpi_float(), &message, &drain)
                    }, "MPI_Imrecv")
                    try communicator.complete(drain, operation: operation, peers: [peer])
                    throw CollectiveError.sizeMismatch(operation: operation, peer: communicator.worldRanks[peer],
                                                       expected: floats, received: Int(count))
                }
                var posted: MPI_Request?
                try MPIRuntime.check(MPIRuntime.call {
                    MPI_Imrecv(buffer, count, sura_mpi_float(), &message, &posted)
                }, "MPI_Imrecv")
                request = posted
            }
            try communicator.test(&request, operation: operation)
            return request == nil
        }
    }

    /// Throws the timeout for a receive that did not finish; one already matched is left to MPI.
    private func giveUp(on incoming: inout PendingReceive, operation: String, deadline: Deadline) throws -> Never {
        MPIRuntime.markUnclean("\(operation) timed out")
        throw CollectiveError.timeout(operation: operation, peers: [worldRanks[incoming.peer]],
                                      seconds: deadline.seconds)
    }

    /// One `MPI_Test`; sets `request` to nil once complete.
    private func test(_ request: inout MPI_Request?, operation: String) throws {
        guard request != nil, request != sura_mpi_request_null() else {
            request = nil
            return
        }
        var done: Int32 = 0
        var status = MPI_Status()
        try MPIRuntime.check(MPIRuntime.call { MPI_Test(&request, &done, &status) }, operation)
        if done != 0 { request = nil }
    }

    /// Polls `request` until complete or the timeout passes. `peers` (ranks of this group) are
    /// named in the timeout; an abandoned request marks the process unclean.
    private func complete(_ request: MPI_Request?, operation: String, peers: [Int] = []) throws {
        var request = request
        let deadline = Deadline(seconds: timeout)
        var backoff = PollingBackoff(beside: isBackgroundChannel)
        while true {
            try test(&request, operation: operation)
            if request == nil { return }
            if deadline.hasPassed {
                MPIRuntime.markUnclean("\(operation) timed out")
                throw CollectiveError.timeout(operation: operation, peers: peers.map { worldRanks[$0] },
                                              seconds: deadline.seconds)
            }
            backoff.pause()
        }
    }

    private static func mpiOp(_ op: ReduceOperation) -> MPI_Op {
        switch op {
        case .sum, .average: return sura_mpi_sum()
        case .min: return sura_mpi_min()
        case .max: return sura_mpi_max()
        }
    }

    private static func translateToWorld(_ handle: MPI_Comm, size: Int) throws -> [Int] {
        var group: MPI_Group?
        var worldGroup: MPI_Group?
        try MPIRuntime.check(MPIRuntime.call { MPI_Comm_group(handle, &group) }, "MPI_Comm_group")
        try MPIRuntime.check(MPIRuntime.call { MPI_Comm_group(sura_mpi_comm_world(), &worldGroup) }, "MPI_Comm_group")
        defer {
            _ = MPIRuntime.call { MPI_Group_free(&group) }
            _ = MPIRuntime.call { MPI_Group_free(&worldGroup) }
        }
        var local = (0 ..< size).map { Int32($0) }
        var world = [Int32](repeating: 0, count: size)
        try MPIRuntime.check(MPIRuntime.call {
            MPI_Group_translate_ranks(group, Int32(size), &local, worldGroup, &world)
        }, "MPI_Group_translate_ranks")
        return world.map { Int($0) }
    }
}
