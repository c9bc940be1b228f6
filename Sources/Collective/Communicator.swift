import Foundation

/// How values from all ranks combine in a reduction. For `average` the sum is divided by the
/// communicator size once, by the rank that owns the reduced copy, so every rank gets the same bits.
public enum ReduceOperation: String, Sendable, CaseIterable {
    case sum, average, min, max
}

/// Everything a collective or point-to-point call can fail with. Ranks in messages are
/// **world ranks** (`mpirun`'s numbering), so a stalled process can be found from any sub-group.
public enum CollectiveError: Error, CustomStringConvertible, Equatable {
    /// A wait lasted longer than the communicator's `timeout`. `peers` are the world ranks waited
    /// on; empty when the MPI library cannot say which rank is missing (MPI's own collectives).
    case timeout(operation: String, peers: [Int], seconds: Double)
    /// An MPI call returned an error code; `message` is `MPI_Error_string` of it.
    case mpi(operation: String, code: Int, message: String)
    /// A rank, root, tag, color or buffer size that the operation cannot accept.
    case invalidArgument(operation: String, detail: String)
    /// A message or a peer's buffer had a different number of elements than this rank expected.
    case sizeMismatch(operation: String, peer: Int, expected: Int, received: Int)

    public var description: String {
        switch self {
        case let .timeout(operation, peers, seconds):
            let limit = String(format: "%g s", seconds)
            if peers.isEmpty {
                return "\(operation) did not complete within \(limit): some rank is dead or stalled"
            }
            let names = peers.map { "rank \($0)" }.joined(separator: ", ")
            return "\(operation) did not complete within \(limit): waiting for \(names), "
                + "which is dead or stalled"
        case let .mpi(operation, code, message):
            return "\(operation) failed with MPI error \(code): \(message)"
        case let .invalidArgument(operation, detail):
            return "\(operation): \(detail)"
        case let .sizeMismatch(operation, peer, expected, received):
            return "\(operation): rank \(peer) has \(received) elements where this rank expects \(expected)"
        }
    }
}

/// Timeouts for every wait in this module.
public enum CollectiveTimeout {
    /// Seconds a communicator waits for a peer before throwing `CollectiveError.timeout`:
    /// `SURA_COLLECTIVE_TIMEOUT` from the environment when set to a positive number, else 30.
    /// Phases where one rank works alone for longer (evaluation on rank 0, say) must raise the
    /// communicator's `timeout` around them.
    public static var defaultSeconds: Double {
        if let text = ProcessInfo.processInfo.environment["SURA_COLLECTIVE_TIMEOUT"],
           let value = Double(text), value > 0 {
            return value
        }
        return 30
    }
}

/// Message tags. MPI guarantees tags up to 32767; Sura's own protocols use 30000 and above,
/// so application messages should stay below `reservedBase`.
public enum CollectiveTag {
    public static let validRange = 0 ..< 32768
    public static let reservedBase = 30000
    /// Tag of the ring allreduce's messages.
    public static let ring = 30001
}

/// A group of `size` ranks that exchange raw Float buffers (mlx's `distributed.Group`, in spirit).
///
/// Collectives must be called by every rank of the group in the same order. Every wait is bounded
/// by `timeout`; a peer that stays silent longer raises `CollectiveError.timeout` naming it.
/// A communicator is driven from one thread at a time; background work (asynchronous allreduce)
/// runs on the communicator's own communication thread over a private duplicate channel, so its
/// messages never mix with the caller's.
public protocol Communicator: AnyObject {
    /// This process's (or thread's) index in the group, `0 ..< size`.
    var rank: Int { get }
    /// Number of ranks in the group.
    var size: Int { get }
    /// Seconds any single wait may last before `CollectiveError.timeout` is thrown.
    /// Shared with the background channel.
    var timeout: Double { get set }
    /// Payload bytes this rank has sent point to point (send, sendReceive, sendBytes), including
    /// those sent by background jobs. Collectives implemented by the MPI library are not counted.
    var bytesSent: Int { get }
    /// Short description for logs, e.g. "MPI (thread multiple)" or "in-process".
    var kind: String { get }

    /// In place: `buffer[i] ← op over ranks of buffer[i]`. Every rank gets bitwise identical
    /// results. All ranks must pass the same count.
    func allreduce(_ buffer: UnsafeMutableBufferPointer<Float>, op: ReduceOperation) throws
    /// The same for doubles (metrics, loss sums).
    func allreduce(_ buffer: UnsafeMutableBufferPointer<Double>, op: ReduceOperation) throws
    /// In place: every rank's `buffer` ← the root's `buffer`.
    func broadcast(_ buffer: UnsafeMutableBufferPointer<Float>, root: Int) throws
    /// `output[r·m ..< (r+1)·m] ← input of rank r`, where `m = input.count` (same on all ranks)
    /// and `output.count == size · m`.
    func allgather(_ input: UnsafeBufferPointer<Float>, into output: UnsafeMutableBufferPointer<Float>) throws
    /// `output ← block `rank` of (op over ranks of input)`, where `input.count == size · m` and
    /// `output.count == m`: the first half of a ring allreduce, used for sharded optimizer state.
    func reduceScatter(_ input: UnsafeBufferPointer<Float>, into output: UnsafeMutableBufferPointer<Float>,
                       op: ReduceOperation) throws
    /// Sends `buffer` to `peer`. Under MPI a small message may be buffered and return before the
    /// peer receives it; the in-process group always waits for the receiver (like `MPI_Ssend`),
    /// so code that relies on buffering fails in unit tests rather than with large messages.
    func send(_ buffer: UnsafeBufferPointer<Float>, to peer: Int, tag: Int) throws
    /// Receives exactly `buffer.count` floats from `peer`; a message of another size throws
    /// `sizeMismatch`.
    func receive(into buffer: UnsafeMutableBufferPointer<Float>, from peer: Int, tag: Int) throws
    /// Sends to `destination` while receiving from `source`, both posted before either waits, so
    /// a ring of these never deadlocks. Either buffer may be empty, and then that half is skipped
    /// (both sides must agree).
    func sendReceive(_ sendBuffer: UnsafeBufferPointer<Float>, to destination: Int,
                     into receiveBuffer: UnsafeMutableBufferPointer<Float>, from source: Int, tag: Int) throws
    /// Sends a small control message of any length.
    func sendBytes(_ bytes: UnsafeRawBufferPointer, to peer: Int, tag: Int) throws
    /// Receives a control message whose length the receiver does not know in advance.
    func receiveBytes(from peer: Int, tag: Int) throws -> [UInt8]
    /// Returns when every rank has called `barrier`.
    func barrier() throws
    /// Splits the group like `MPI_Comm_split`: ranks passing the same `color` (≥ 0) form a new
    /// group, ordered by `key` then by old rank. Collective over the whole group.
    func split(color: Int, key: Int) throws -> Communicator
    /// Runs `job` on this communicator's communication thread (FIFO, one at a time), handing it
    /// a private duplicate of this group whose messages never match the caller's. Every rank must
    /// submit the same jobs in the same order. Memory the job touches must stay valid until
    /// `wait()` returns.
    func runInBackground(_ job: @escaping (Communicator) throws -> Void) -> CollectiveRequest
    /// Posts a send of `buffer` to `peer` and returns without waiting for the receiver (under
    /// MPI an `MPI_Isend`); `finish()` of the result waits for it, on the thread that posted it.
    /// `buffer` must stay valid and untouched until then. Messages to one peer still arrive in
    /// the order they were posted. The default sends at once (so `finish()` has nothing to do).
    func startSend(_ buffer: UnsafeBufferPointer<Float>, to peer: Int, tag: Int) throws -> PostedSend
}

/// A send started with `Communicator.startSend`.
public final class PostedSend {
    private var completion: (() throws -> Void)?

    init(completion: (() throws -> Void)?) {
        self.completion = completion
    }

    /// Waits until the receiver has taken the message (bounded by the communicator's timeout).
    public func finish() throws {
        guard let completion else { return }
        self.completion = nil
        try completion()
    }
}

extension Communicator {
    public func startSend(_ buffer: UnsafeBufferPointer<Float>, to peer: Int, tag: Int) throws -> PostedSend {
        try send(buffer, to: peer, tag: tag)
        return PostedSend(completion: nil)
    }

    /// Starts `allreduce(buffer, op)` on the communication thread and returns at once, so
    /// gradient buckets can be reduced while backward continues. `buffer` must stay valid and
    /// untouched until `wait()` returns. Under MPI the job is `MPI_Iallreduce`, polled to
    /// completion by the communication thread (Open MPI has no progress thread of its own).
    public func allreduceAsync(_ buffer: UnsafeMutableBufferPointer<Float>,
                               op: ReduceOperation = .sum) -> CollectiveRequest {
        runInBackground { channel in try channel.allreduce(buffer, op: op) }
    }

    /// `allreduce` on an array.
    public func allreduce(_ values: inout [Float], op: ReduceOperation = .sum) throws {
        try values.withUnsafeMutableBufferPointer { try allreduce($0, op: op) }
    }

    /// `allreduce` on an array of doubles.
    public func allreduce(_ values: inout [Double], op: ReduceOperation = .sum) throws {
        try values.withUnsafeMutableBufferPointer { try allreduce($0, op: op) }
    }

    /// Allreduce of one number, e.g. a loss or a sample count.
    public func allreduce(_ value: Double, op: ReduceOperation = .sum) throws -> Double {
        var values = [value]
        try allreduce(&values, op: op)
        return values[0]
    }

    /// `broadcast` on an array; every rank must pass an array of the root's length.
    public func broadcast(_ values: inout [Float], root: Int) throws {
        try values.withUnsafeMutableBufferPointer { try broadcast($0, root: root) }
    }

    /// `allgather` on an array: returns `size · values.count` floats, rank 0's first.
    public func allgather(_ values: [Float]) throws -> [Float] {
        var output = [Float](repeating: 0, count: values.count * size)
        try values.withUnsafeBufferPointer { input in
            try output.withUnsafeMutableBufferPointer { try allgather(input, into: $0) }
        }
        return output
    }

    /// `reduceScatter` on an array whose count is a multiple of `size`: returns this rank's block.
    public func reduceScatter(_ values: [Float], op: ReduceOperation = .sum) throws -> [Float] {
        guard values.count % size == 0 else {
            throw CollectiveError.invalidArgument(
                operation: "reduceScatter",
                detail: "\(values.count) floats do not split into \(size) equal blocks")
        }
        var output = [Float](repeating: 0, count: values.count / size)
        try values.withUnsafeBufferPointer { input in
            try output.withUnsafeMutableBufferPointer { try reduceScatter(input, into: $0, op: op) }
        }
        return output
    }

    /// `send` of an array.
    public func send(_ values: [Float], to peer: Int, tag: Int = 0) throws {
        try values.withUnsafeBufferPointer { try send($0, to: peer, tag: tag) }
    }

    /// Receives exactly `count` floats from `peer`.
    public func receive(count: Int, from peer: Int, tag: Int = 0) throws -> [Float] {
        var values = [Float](repeating: 0, count: count)
        try values.withUnsafeMutableBufferPointer { try receive(into: $0, from: peer, tag: tag) }
        return values
    }

    /// `sendBytes` of an array, e.g. a UTF-8 encoded JSON control message.
    public func sendBytes(_ bytes: [UInt8], to peer: Int, tag: Int = 0) throws {
        try bytes.withUnsafeBytes { try sendBytes($0, to: peer, tag: tag) }
    }
}

/// Checks shared by every implementation, so errors read the same whichever runs.
enum ArgumentCheck {
    static func peer(_ peer: Int, size: Int, operation: String) throws {
        guard peer >= 0 && peer < size else {
            throw CollectiveError.invalidArgument(
                operation: operation, detail: "rank \(peer) is outside the group of \(size) ranks")
        }
    }

    static func tag(_ tag: Int, operation: String) throws {
        guard CollectiveTag.validRange.contains(tag) else {
            throw CollectiveError.invalidArgument(
                operation: operation, detail: "tag \(tag) is outside \(CollectiveTag.validRange)")
        }
    }

    static func color(_ color: Int) throws {
        guard color >= 0 && color <= Int(Int32.max) else {
            throw CollectiveError.invalidArgument(
                operation: "split", detail: "color \(color) must be in 0 ... \(Int32.max)")
        }
    }

    static func count(_ count: Int, operation: String) throws {
        guard count <= Int(Int32.max) else {
            throw CollectiveError.invalidArgument(
                operation: operation, detail: "\(count) elements exceed MPI's 32-bit count limit")
        }
    }
}
