import Foundation

/// `size` communicators whose ranks are threads of this process, for fast tests of everything
/// built on `Communicator`, and (with size 1) the world of a process started without `mpirun`.
///
///     let group = try InProcessGroup(size: 4)
///     try group.run { comm in try comm.allreduce(&gradients[comm.rank]) }
public final class InProcessGroup {
    /// The communicator of each rank, `communicators[r].rank == r`.
    public let communicators: [InProcessCommunicator]

    /// - Parameters:
    ///   - size: number of ranks, ≥ 1.
    ///   - timeout: seconds any wait may last, see `Communicator.timeout`.
    /// - Throws: `CollectiveError.invalidArgument` when `size` < 1.
    public init(size: Int, timeout: Double = CollectiveTimeout.defaultSeconds) throws {
        guard size >= 1 else {
            throw CollectiveError.invalidArgument(operation: "InProcessGroup",
                                                  detail: "size \(size) must be at least 1")
        }
        let hub = InProcessHub(size: size, worldRanks: Array(0 ..< size))
        communicators = (0 ..< size).map {
            InProcessCommunicator(hub: hub, rank: $0, channel: ChannelState(timeout: timeout))
        }
    }

    public var size: Int { communicators.count }

    public subscript(rank: Int) -> InProcessCommunicator { communicators[rank] }

    /// Runs `body` once per rank, each on its own thread, and returns when all have finished.
    /// Rethrows the error of the lowest rank that failed.
    public func run(_ body: @escaping (Communicator) throws -> Void) throws {
        let finished = DispatchSemaphore(value: 0)
        let failures = RankFailures(size: size)
        for communicator in communicators {
            let thread = Thread {
                do {
                    try body(communicator)
                } catch {
                    failures.record(error, rank: communicator.rank)
                }
                finished.signal()
            }
            thread.stackSize = 4 << 20
            thread.start()
            thread.name = "rank \(communicator.rank)"
        }
        for _ in communicators { finished.wait() }
        if let error = failures.first { throw error }
    }
}

/// Errors thrown by the threads of `InProcessGroup.run`, one slot per rank.
private final class RankFailures {
    private let lock = NSLock()
    private var errors: [Error?]

    init(size: Int) {
        errors = Array(repeating: nil, count: size)
    }

    func record(_ error: Error, rank: Int) {
        lock.lock()
        errors[rank] = error
        lock.unlock()
    }

    var first: Error? {
        lock.lock()
        defer { lock.unlock() }
        return errors.compactMap { $0 }.first
    }
}

/// One rank of an `InProcessGroup`. Collectives meet in the shared hub and copy straight between
/// the ranks' buffers; reductions run in rank order 0, 1, …, n−1, each rank reducing one chunk, so
/// all ranks receive the same bits.
public final class InProcessCommunicator: Communicator {
    public let rank: Int
    let hub: InProcessHub
    private let channel: ChannelState
    /// Index of this rank's next collective round; all ranks count in step.
    private var sequence = 0
    private let thread: CommunicationThread
    private lazy var backgroundChannel = InProcessCommunicator(hub: hub.background, rank: rank,
                                                               channel: channel)

    init(hub: InProcessHub, rank: Int, channel: ChannelState) {
        self.hub = hub
        self.rank = rank
        self.channel = channel
        thread = CommunicationThread(name: "sura-comm-\(hub.worldRanks[rank])")
    }

    /// A world of one, for a process started without `mpirun`.
    public static func singleProcess(timeout: Double = CollectiveTimeout.defaultSeconds) -> InProcessCommunicator {
        // Size 1 is always valid.
        try! InProcessGroup(size: 1, timeout: timeout)[0]
    }

    public var size: Int { hub.size }
    public var timeout: Double {
        get { channel.timeout }
        set { channel.timeout = newValue }
    }
    public var bytesSent: Int { channel.bytesSent }
    public var kind: String { size == 1 ? "single process" : "in-process threads" }

    // MARK: Collectives

    public func allreduce(_ buffer: UnsafeMutableBufferPointer<Float>, op: ReduceOperation) throws {
        try reduceAll(buffer, op: op)
    }

    public func allreduce(_ buffer: UnsafeMutableBufferPointer<Double>, op: ReduceOperation) throws {
        try reduceAll(buffer, op: op)
    }

    /// Every rank reduces its own chunk of the result in rank order into a scratch array, then
    /// writes it into every rank's buffer; meetings separate reading inputs from writing results.
    private func reduceAll<T: FloatingPoint>(_ buffer: UnsafeMutableBufferPointer<T>,
                                             op: ReduceOperation) throws {
        let operation = "allreduce"
        let buffers = try exchange(Shared(buffer), operation: operation)
        try requireSameCount(buffers.map(\.count), operation: operation)
        let count = buffer.count
        guard count > 0, size > 1 else { return }
        let mine = ChunkLayout.range(of: rank, count: count, parts: size)
        var scratch = [T](repeating: 0, count: mine.count)
        scratch.withUnsafeMutableBufferPointer { out in
            guard let target = out.baseAddress, !mine.isEmpty else { return }
            target.update(from: buffers[0].address! + mine.lowerBound, count: mine.count)
            for peer in 1 ..< size {
                Reduction.accumulate(target, buffers[peer].address! + mine.lowerBound,
                                     count: mine.count, op: op)
            }
            Reduction.finish(target, count: mine.count, op: op, ranks: size)
        }
        try meet(operation)
        if !mine.isEmpty {
            for peer in 0 ..< size {
                (buffers[peer].address! + mine.lowerBound).update(from: scratch, count: mine.count)
            }
        }
        try meet(operation)
    }

    public func broadcast(_ buffer: UnsafeMutableBufferPointer<Float>, root: Int) throws {
        let operation = "broadcast from rank \(root)"
        try ArgumentCheck.peer(root, size: size, operation: operation)
        let buffers = try exchange(Shared(buffer), operation: operation)
        try requireSameCount(buffers.map(\.count), operation: operation)
        if rank != root && buffer.count > 0 {
            buffer.baseAddress!.update(from: buffers[root].address!, count: buffer.count)
        }
        try meet(operation)
    }

    public func allgather(_ input: UnsafeBufferPointer<Float>,
                          into output: UnsafeMutableBufferPointer<Float>) throws {
        let operation = "allgather"
        var contribution = Shared(input)
        if output.count != input.count * size {
            contribution.problem = "output holds \(output.count) floats, needs \(size) × \(input.count)"
        }
        let inputs = try exchange(contribution, operation: operation)
        try requireSameCount(inputs.map(\.count), operation: operation)
        let m = input.count
        if m > 0 {
            for peer in 0 ..< size {
                (output.baseAddress! + peer * m).update(from: inputs[peer].address!, count: m)
            }
        }
        try meet(operation)
    }

    public func reduceScatter(_ input: UnsafeBufferPointer<Float>,
                              into output: UnsafeMutableBufferPointer<Float>, op: ReduceOperation) throws {
        let operation = "reduceScatter"
        var contribution = Shared(input)
        if input.count != output.count * size {
            contribution.problem = "input holds \(input.count) floats, needs \(size) × \(output.count)"
        }
        let inputs = try exchange(contribution, operation: operation)
        try requireSameCount(inputs.map(\.count), operation: operation)
        let m = output.count
        if m > 0 {
            let target = output.baseAddress!
            let offset = rank * m
            target.update(from: inputs[0].address! + offset, count: m)
            for peer in 1 ..< size {
                Reduction.accumulate(target, inputs[peer].address! + offset, count: m, op: op)
            }
            Reduction.finish(target, count: m, op: op, ranks: size)
        }
        try meet(operation)
    }

    public func barrier() throws {
        try meet("barrier")
    }

    public func split(color: Int, key: Int) throws -> Communicator {
        try ArgumentCheck.color(color)
        let worldRanks = hub.worldRanks
        let placements: [(hub: InProcessHub, rank: Int)] = try hub.meet(
            sequence: nextSequence(), rank: rank, operation: "split", value: (color, key),
            deadline: Deadline(seconds: timeout)
        ) { choices in
            var placements = [(hub: InProcessHub, rank: Int)?](repeating: nil, count: choices.count)
            for color in Set(choices.map(\.0)) {
                let members = choices.indices.filter { choices[$0].0 == color }
                    .sorted { (choices[$0].1, $0) < (choices[$1].1, $1) }
                let hub = InProcessHub(size: members.count, worldRanks: members.map { worldRanks[$0] })
                for (newRank, oldRank) in members.enumerated() { placements[oldRank] = (hub, newRank) }
            }
            return placements.map { $0! }
        }
        let placement = placements[rank]
        return InProcessCommunicator(hub: placement.hub, rank: placement.rank,
                                     channel: ChannelState(timeout: timeout))
    }

    // MARK: Point to point

    public func send(_ buffer: UnsafeBufferPointer<Float>, to peer: Int, tag: Int) throws {
        try sendBytes(UnsafeRawBufferPointer(buffer), to: peer, tag: tag, operation: "send to rank \(peer)")
    }

    /// Posts the letter (which points at `buffer`) and returns; `finish()` waits, bounded by the
    /// timeout, until the peer has copied it out.
    public func startSend(_ buffer: UnsafeBufferPointer<Float>, to peer: Int, tag: Int) throws -> PostedSend {
        let operation = "send to rank \(peer)"
        let (letter, key) = try post(UnsafeRawBufferPointer(buffer), to: peer, tag: tag, operation: operation)
        return PostedSend { [hub, self] in
            try hub.awaitDelivery(of: letter, key: key, deadline: Deadline(seconds: timeout), operation: operation)
        }
    }

    public func receive(into buffer: UnsafeMutableBufferPointer<Float>, from peer: Int, tag: Int) throws {
        let operation = "receive from rank \(peer)"
        try ArgumentCheck.peer(peer, size: size, operation: operation)
        try ArgumentCheck.tag(tag, operation: operation)
        try receiveFloats(into: buffer, from: peer, tag: tag, deadline: Deadline(seconds: timeout),
                          operation: operation)
    }

    public func sendReceive(_ sendBuffer: UnsafeBufferPointer<Float>, to destination: Int,
                            into receiveBuffer: UnsafeMutableBufferPointer<Float>, from source: Int,
                            tag: Int) throws {
        let operation = "sendReceive to rank \(destination) from rank \(source)"
        try ArgumentCheck.peer(destination, size: size, operation: operation)
        try ArgumentCheck.peer(source, size: size, operation: operation)
        try ArgumentCheck.tag(tag, operation: operation)
        let deadline = Deadline(seconds: timeout)
        var posted: (InProcessHub.Letter, InProcessHub.MailboxKey)?
        if sendBuffer.count > 0 {
            let letter = InProcessHub.Letter(bytes: UnsafeRawBufferPointer(sendBuffer))
            let key = InProcessHub.MailboxKey(source: rank, destination: destination, tag: tag)
            hub.post(letter, key: key)
            channel.countSent(letter.bytes.count)
            posted = (letter, key)
        }
        var failure: Error?
        if receiveBuffer.count > 0 {
            do {
                try receiveFloats(into: receiveBuffer, from: source, tag: tag, deadline: deadline,
                                  operation: operation)
            } catch {
                failure = error
            }
        }
        if let (letter, key) = posted {
            // Even after a failed receive the letter must be delivered or withdrawn before its
            // memory goes back to the caller.
            do {
                try hub.awaitDelivery(of: letter, key: key, deadline: deadline, operation: operation)
            } catch {
                failure = failure ?? error
            }
        }
        if let failure { throw failure }
    }

    public func sendBytes(_ bytes: UnsafeRawBufferPointer, to peer: Int, tag: Int) throws {
        try sendBytes(bytes, to: peer, tag: tag, operation: "sendBytes to rank \(peer)")
    }

    public func receiveBytes(from peer: Int, tag: Int) throws -> [UInt8] {
        let operation = "receiveBytes from rank \(peer)"
        try ArgumentCheck.peer(peer, size: size, operation: operation)
        try ArgumentCheck.tag(tag, operation: operation)
        let key = InProcessHub.MailboxKey(source: peer, destination: rank, tag: tag)
        let letter = try hub.take(key: key, deadline: Deadline(seconds: timeout), operation: operation)
        let bytes = [UInt8](letter.bytes)
        hub.markConsumed(letter)
        return bytes
    }

    // MARK: Background

    public func runInBackground(_ job: @escaping (Communicator) throws -> Void) -> CollectiveRequest {
        let channel = backgroundChannel
        return thread.submit { try job(channel) }
    }

    // MARK: Helpers

    private func sendBytes(_ bytes: UnsafeRawBufferPointer, to peer: Int, tag: Int, operation: String) throws {
        let (letter, key) = try post(bytes, to: peer, tag: tag, operation: operation)
        try hub.awaitDelivery(of: letter, key: key, deadline: Deadline(seconds: timeout), operation: operation)
    }

    /// Checks the arguments and leaves a letter pointing at `bytes` in `peer`'s mailbox.
    private func post(_ bytes: UnsafeRawBufferPointer, to peer: Int, tag: Int,
                      operation: String) throws -> (InProcessHub.Letter, InProcessHub.MailboxKey) {
        try ArgumentCheck.peer(peer, size: size, operation: operation)
        try ArgumentCheck.tag(tag, operation: operation)
        let letter = InProcessHub.Letter(bytes: bytes)
        let key = InProcessHub.MailboxKey(source: rank, destination: peer, tag: tag)
        hub.post(letter, key: key)
        channel.countSent(bytes.count)
        return (letter, key)
    }

    private func receiveFloats(into buffer: UnsafeMutableBufferPointer<Float>, from peer: Int, tag: Int,
                               deadline: Deadline, operation: String) throws {
        let key = InProcessHub.MailboxKey(source: peer, destination: rank, tag: tag)
        let letter = try hub.take(key: key, deadline: deadline, operation: operation)
        defer { hub.markConsumed(letter) }
        let expected = buffer.count * MemoryLayout<Float>.stride
        guard letter.bytes.count == expected else {
            throw CollectiveError.sizeMismatch(operation: operation, peer: hub.worldRanks[peer],
                                               expected: buffer.count,
                                               received: letter.bytes.count / MemoryLayout<Float>.stride)
        }
        if expected > 0 {
            UnsafeMutableRawBufferPointer(buffer).copyMemory(from: letter.bytes)
        }
    }

    /// A rank's buffer as seen by the others during one collective, plus any local problem with
    /// the call so every rank can fail the same way instead of some timing out.
    private struct Shared<T> {
        var address: UnsafeMutablePointer<T>?
        var count: Int
        var problem: String?

        init(_ buffer: UnsafeMutableBufferPointer<T>) {
            address = buffer.baseAddress
            count = buffer.count
        }

        init(_ buffer: UnsafeBufferPointer<T>) {
            address = UnsafeMutablePointer(mutating: buffer.baseAddress)
            count = buffer.count
        }
    }

    private func exchange<T>(_ contribution: Shared<T>, operation: String) throws -> [Shared<T>] {
        let all = try hub.meet(sequence: nextSequence(), rank: rank, operation: operation,
                               value: contribution, deadline: Deadline(seconds: timeout)) { $0 }
        if let bad = all.indices.first(where: { all[$0].problem != nil }) {
            throw CollectiveError.invalidArgument(
                operation: operation, detail: "on rank \(hub.worldRanks[bad]): \(all[bad].problem!)")
        }
        return all
    }

    private func requireSameCount(_ counts: [Int], operation: String) throws {
        if let odd = counts.indices.first(where: { counts[$0] != counts[rank] }) {
            throw CollectiveError.sizeMismatch(operation: operation, peer: hub.worldRanks[odd],
                                               expected: counts[rank], received: counts[odd])
        }
    }

    private func meet(_ operation: String) throws {
        _ = try hub.meet(sequence: nextSequence(), rank: rank, operation: operation, value: (),
                         deadline: Deadline(seconds: timeout)) { _ in () }
    }

    private func nextSequence() -> Int {
        sequence += 1
        return sequence
    }
}
