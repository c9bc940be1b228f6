import Foundation

/// Everything that can go wrong when configuring or running a diffusion noise scheduler.
///
/// Each case names the `scheduler_config.json` key, the scheduler or the tensor involved, so a
/// message read in a log is enough to fix the config or the calling code.
public enum SchedulerError: Error, CustomStringConvertible, Equatable {
    /// A config key holds a value outside the allowed set.
    case invalidValue(key: String, value: String, allowed: [String])
    /// A config key holds a value diffusers knows but Sura does not implement.
    case unsupported(key: String, value: String, reason: String)
    /// A numeric or structural config problem (negative count, wrong length, …).
    case invalidConfig(key: String, message: String)
    /// The config file could not be read or parsed.
    case unreadableConfig(path: String, message: String)
    /// `setTimesteps` asked for more inference steps than the model was trained with, or fewer than 1.
    case invalidStepCount(requested: Int, numTrainTimesteps: Int)
    /// `step`, `scaleModelInput` or a schedule lookup ran before `setTimesteps`.
    case timestepsNotSet(scheduler: String)
    /// The timestep given to `step` is not the one the scheduler expects next, or not in the schedule.
    case timestepNotInSchedule(scheduler: String, timestep: Float, expected: Float?)
    /// `step` was called after the last timestep of the schedule.
    case scheduleFinished(scheduler: String, steps: Int)
    /// A training timestep outside 0..<num_train_timesteps.
    case timestepOutOfRange(timestep: Int, numTrainTimesteps: Int)
    /// Two tensors (or a tensor and a timestep list) that must agree in shape do not.
    case shapeMismatch(what: String, expected: [Int], got: [Int])
    /// A stochastic step (DDPM with t > 0, DDIM with eta > 0) got neither a generator nor noise.
    case missingNoiseSource(scheduler: String, timestep: Float)
    /// A training-helper argument out of its domain (gamma ≤ 0, negative offset, …).
    case invalidArgument(name: String, message: String)

    public var description: String {
        switch self {
        case let .invalidValue(key, value, allowed):
            return "scheduler config: \(key) = \"\(value)\" is not one of \(allowed.map { "\"\($0)\"" }.joined(separator: ", "))"
        case let .unsupported(key, value, reason):
            return "scheduler config: \(key) = \(value) is not supported by Sura: \(reason)"
        case let .invalidConfig(key, message):
            return "scheduler config: \(key): \(message)"
        case let .unreadableConfig(path, message):
            return "scheduler config \(path): \(message)"
        case let .invalidStepCount(requested, total):
            return "setTimesteps: \(requested) inference steps requested; it must be between 1 and num_train_timesteps = \(total)"
        case let .timestepsNotSet(scheduler):
            return "\(scheduler): call setTimesteps(_:) before step, scaleModelInput or schedule look-ups"
        case let .timestepNotInSchedule(scheduler, timestep, expected):
            if let expected {
                return "\(scheduler): step got timestep \(timestep) but the schedule's next timestep is \(expected)"
            }
            return "\(scheduler): timestep \(timestep) is not in the current schedule"
        case let .scheduleFinished(scheduler, steps):
            return "\(scheduler): all \(steps) steps of the schedule have run; call setTimesteps(_:) to start again"
        case let .timestepOutOfRange(timestep, total):
            return "timestep \(timestep) is outside 0..<\(total) (num_train_timesteps)"
        case let .shapeMismatch(what, expected, got):
            return "\(what): expected shape \(expected), got \(got)"
        case let .missingNoiseSource(scheduler, timestep):
            return "\(scheduler): the step at timestep \(timestep) adds noise; pass a generator or varianceNoise"
        case let .invalidArgument(name, message):
            return "\(name): \(message)"
        }
    }
}
