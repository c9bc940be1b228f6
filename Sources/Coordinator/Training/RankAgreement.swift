import Foundation
import Collective

/// Makes a step fail on every rank when it fails on any, so no rank is left waiting in a
/// collective that a failed rank will never join.
///
/// After the step each rank contributes one flag (1: I failed) to an allreduce over the group.
/// Steps may nest: an inner step that fails on some rank already failed everywhere, so the outer
/// step passes that error on without a second exchange. A rank whose outer step fails before it
/// reaches the inner exchange takes part in that exchange from its outer one (both are the same
/// allreduce of `size` floats), so every rank makes exactly one exchange either way.
public final class RankAgreement {
    public let communicator: Communicator
    /// Set once an exchange has found a failure: every rank is throwing by then.
    private var failureAgreed = false

    public init(communicator: Communicator) {
        self.communicator = communicator
    }

    /// Runs `body` on this rank; throws its error, or `TrainingError.otherRank` naming the first
    /// rank where it failed (`what` says which step).
    public func callAsFunction<T>(_ what: String, _ body: () throws -> T) throws -> T {
        try exchange(what) { (try body(), true) }.value
    }

    /// Runs `body` on this rank as a step (failures agreed as above) and tells whether it
    /// answered true on every rank: for choices all ranks must make alike, such as whether every
    /// rank found a cached table or all of them compute it.
    public func everyRank(_ what: String, _ body: () throws -> Bool) throws -> Bool {
        try exchange(what) { let answer = try body(); return ((), answer) }.everyone
    }

    /// The one exchange of a step: each rank writes its own slot, 1 for failed, 2 for answered
    /// false, 0 for answered true, so a rank joining from an outer step that failed (which
    /// writes 1 into the same `size` floats) reads as failed.
    private func exchange<T>(_ what: String, _ body: () throws -> (T, Bool)) throws -> (value: T, everyone: Bool) {
        var result: Result<(T, Bool), Error>
        do { result = .success(try body()) } catch { result = .failure(error) }
        if case .failure(let error) = result, failureAgreed { throw error }
        var flags = [Float](repeating: 0, count: communicator.size)
        switch result {
        case .failure: flags[communicator.rank] = 1
        case .success(let (_, answer)): flags[communicator.rank] = answer ? 0 : 2
        }
        try communicator.allreduce(&flags, op: .sum)
        switch result {
        case .failure(let error):
            failureAgreed = true
            throw error
        case .success(let (value, _)):
            if let failed = flags.firstIndex(where: { $0 == 1 }) {
                failureAgreed = true
                throw TrainingError.otherRank(rank: failed, message: "\(what) failed there (its log says why); stopping")
            }
            return (value, !flags.contains(2))
        }
    }
}
