import Foundation

/// The shared meeting place of one in-process group: mailboxes for point-to-point messages and
/// numbered rounds where all ranks meet for a collective. One condition variable guards all of
/// it; groups are small (a handful of threads) so a broadcast on every change is cheap enough.
///
/// Sends are synchronous, like `MPI_Ssend`: the sender waits until the receiver has copied the
/// message. That is stricter than MPI (which may buffer small messages), so a program that only
/// works because of buffering deadlocks — and times out, naming the peer — here, in a unit test,
/// rather than under `mpirun` with large messages.
final class InProcessHub {
    let size: Int
    /// World rank of each member, for error messages.
    let worldRanks: [Int]

    private let condition = NSCondition()
    private var mailboxes: [MailboxKey: [Letter]] = [:]
    private var rounds: [Int: Round] = [:]
    private var backgroundHub: InProcessHub?

    init(size: Int, worldRanks: [Int]) {
        self.size = size
        self.worldRanks = worldRanks
    }

    /// The hub of this group's background duplicate, created once and shared by all members.
    var background: InProcessHub {
        condition.lock()
        defer { condition.unlock() }
        if let hub = backgroundHub { return hub }
        let hub = InProcessHub(size: size, worldRanks: worldRanks)
        backgroundHub = hub
        return hub
    }

    // MARK: Point to point

    struct MailboxKey: Hashable {
        let source: Int
        let destination: Int
        let tag: Int
    }

    /// A message in flight. It points at the sender's memory, which stays valid because the
    /// sender waits for `consumed` (or withdraws the letter while nobody has taken it).
    final class Letter {
        let bytes: UnsafeRawBufferPointer
        var taken = false
        var consumed = false

        init(bytes: UnsafeRawBufferPointer) {
            self.bytes = bytes
        }
    }

    func post(_ letter: Letter, key: MailboxKey) {
        condition.lock()
        mailboxes[key, default: []].append(letter)
        condition.broadcast()
        condition.unlock()
    }

    /// Waits until the receiver has copied `letter`. At the deadline a letter nobody has taken is
    /// withdrawn and the wait throws; a taken one is being copied, so the wait continues.
    func awaitDelivery(of letter: Letter, key: MailboxKey, deadline: Deadline, operation: String) throws {
        condition.lock()
        defer { condition.unlock() }
        while !letter.consumed {
            if letter.taken {
                condition.wait()
                continue
            }
            if deadline.hasPassed {
                mailboxes[key]?.removeAll { $0 === letter }
                throw CollectiveError.timeout(operation: operation, peers: [worldRanks[key.destination]],
                                              seconds: deadline.seconds)
            }
            _ = condition.wait(until: deadline.date)
        }
    }

    /// Takes the oldest letter for `key`, waiting up to the deadline. The caller copies it and
    /// then calls `markConsumed`.
    func take(key: MailboxKey, deadline: Deadline, operation: String) throws -> Letter {
        condition.lock()
        defer { condition.unlock() }
        while true {
            if let letter = mailboxes[key]?.first {
                mailboxes[key]!.removeFirst()
                if mailboxes[key]!.isEmpty { mailboxes[key] = nil }
                letter.taken = true
                return letter
            }
            if deadline.hasPassed {
                throw CollectiveError.timeout(operation: operation, peers: [worldRanks[key.source]],
                                              seconds: deadline.seconds)
            }
            _ = condition.wait(until: deadline.date)
        }
    }

    func markConsumed(_ letter: Letter) {
        condition.lock()
        letter.consumed = true
        condition.broadcast()
        condition.unlock()
    }

    // MARK: Rounds

    /// Round `sequence` of the group's collectives: every rank's contribution, and once all have
    /// arrived, the combined outcome. A rank that gives up poisons the round so late arrivals
    /// fail at once instead of reading its (possibly freed) buffers.
    private final class Round {
        var values: [Any?]
        var operations: [String?]
        var arrived = 0
        var readers = 0
        var outcome: Result<Any, Error>?

        init(size: Int) {
            values = Array(repeating: nil, count: size)
            operations = Array(repeating: nil, count: size)
        }
    }

    /// Blocks until every rank has contributed to round `sequence`, then returns
    /// `combine(contributions in rank order)`, computed once by the last rank to arrive. Throws a
    /// timeout naming the ranks that never arrived, or an error when ranks called different
    /// collectives in the same round.
    func meet<Value, Combined>(sequence: Int, rank: Int, operation: String, value: Value,
                               deadline: Deadline,
                               combine: ([Value]) throws -> Combined) throws -> Combined {
        condition.lock()
        defer { condition.unlock() }
        let round: Round
        if let existing = rounds[sequence] {
            round = existing
        } else {
            round = Round(size: size)
            rounds[sequence] = round
        }
        if round.outcome == nil {
            round.values[rank] = value
            round.operations[rank] = operation
            round.arrived += 1
            if round.arrived == size {
                round.outcome = outcome(of: round, combine: combine)
                condition.broadcast()
            }
        }
        while round.outcome == nil {
            if deadline.hasPassed {
                let missing = (0 ..< size).filter { round.values[$0] == nil }
                let error = CollectiveError.timeout(operation: operation,
                                                    peers: missing.map { worldRanks[$0] },
                                                    seconds: deadline.seconds)
                round.outcome = .failure(error)
                condition.broadcast()
                throw error
            }
            _ = condition.wait(until: deadline.date)
        }
        round.readers += 1
        if round.readers == size { rounds[sequence] = nil }
        return try round.outcome!.get() as! Combined
    }

    private func outcome<Value, Combined>(of round: Round,
                                          combine: ([Value]) throws -> Combined) -> Result<Any, Error> {
        let operations = round.operations.map { $0 ?? "?" }
        if Set(operations).count > 1 {
            let calls = operations.enumerated().map { "rank \(worldRanks[$0.offset]) \($0.element)" }
            return .failure(CollectiveError.invalidArgument(
                operation: operations[0],
                detail: "ranks called different collectives in the same round: "
                    + calls.joined(separator: ", ")))
        }
        return Result { try combine(round.values.map { $0 as! Value }) as Any }
    }
}
