import Foundation

/// Runs one batch of compatible generation requests to PNG images.
///
/// An inference worker owns one executor and calls it from a single thread, one batch at a
/// time. All requests of a batch share one `BatchCompatibility`. The result holds exactly one
/// image per request, in the order of `batch`; a thrown error fails the whole batch (the
/// scheduler retries it once on another worker, then reports the error to the clients).
public protocol InferenceBatchExecutor: AnyObject {
    func run(batch: [GenerationRequest]) throws -> [GeneratedImage]

    /// True when every batch returns within a few milliseconds, so the worker may run it on the
    /// thread that talks to the scheduler: a pause that short delays no heartbeat noticeably,
    /// and the result leaves without two thread handoffs. A model's seconds-long batch must
    /// answer false (the default), so the worker keeps heartbeating while it runs.
    var returnsWithinMilliseconds: Bool { get }
}

extension InferenceBatchExecutor {
    public var returnsWithinMilliseconds: Bool { false }
}

/// Why an executor could not produce a batch.
public enum InferenceExecutionError: Error, CustomStringConvertible, Equatable, Sendable {
    /// A request the executor refuses (unsupported size, unknown model, …), naming the field.
    case unsupportedRequest(id: String, field: String, reason: String)
    /// A request whose prompt the executor was configured to fail on (the null executor's test hook).
    case injectedFailure(id: String)
    /// The executor returned a different number of images than requests.
    case resultCountMismatch(expected: Int, got: Int)

    public var description: String {
        switch self {
        case let .unsupportedRequest(id, field, reason): return "request \(id): field '\(field)': \(reason)"
        case let .injectedFailure(id): return "request \(id): failure injected by the null executor's failing prompt"
        case let .resultCountMismatch(expected, got): return "executor returned \(got) images for \(expected) requests"
        }
    }
}
