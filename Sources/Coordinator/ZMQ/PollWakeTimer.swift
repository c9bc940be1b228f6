import CZeroMQ
import Foundation

/// A wake-up with microsecond resolution for `zmq_poll`, whose timeout counts whole
/// milliseconds: a Linux timerfd that the caller polls beside its sockets
/// (`ZMQSocket.pollReadable(_:fds:timeout:)`).
///
/// Rounding a 4.3 ms wait up to 5 ms sent every deadline-driven batch up to 1 ms after its
/// `max_queue_delay`; with the timer armed for the exact wait, the loop wakes when the deadline
/// passes. Arming replaces any earlier setting and clears a pending expiry.
public final class PollWakeTimer: @unchecked Sendable {
    /// The timerfd, readable once the armed time has passed.
    public let fd: Int32

    public init() throws {
        fd = timerfd_create(CLOCK_MONOTONIC, Int32(TFD_NONBLOCK) | Int32(TFD_CLOEXEC))
        guard fd >= 0 else { throw ZMQError(operation: "timerfd_create", code: errno) }
    }

    deinit { close(fd) }

    /// Fires once, `seconds` from now (at least 1 µs: a zero setting would disarm the timer).
    public func arm(after seconds: Double) {
        let nanoseconds = max(1_000, Int((seconds * 1e9).rounded(.up)))
        var setting = itimerspec()
        setting.it_value.tv_sec = nanoseconds / 1_000_000_000
        setting.it_value.tv_nsec = nanoseconds % 1_000_000_000
        timerfd_settime(fd, 0, &setting, nil)
    }

    /// Stops the timer; a pending expiry is cleared too.
    public func disarm() {
        var setting = itimerspec()
        timerfd_settime(fd, 0, &setting, nil)
    }

    /// Waits until any of `sockets` has a message to read or `wait` seconds pass, to the
    /// microsecond: the timer is armed for `wait` and polled beside the sockets (consumed when it
    /// fired), with zmq_poll's own millisecond timeout only as a backstop. `wait` ≤ 0 polls
    /// without waiting. Returns one readable flag per socket.
    public func poll(_ sockets: [ZMQSocket], wait: Double) throws -> [Bool] {
        if wait > 0 { arm(after: wait) }
        let readable = try ZMQSocket.pollReadable(sockets, fds: [fd], timeout: wait > 0 ? Int((wait * 1000).rounded(.up)) + 1 : 0)
        if readable[sockets.count] { acknowledge() }
        return Array(readable.prefix(sockets.count))
    }

    /// Consumes an expiry, so the fd is no longer readable until the timer fires again.
    public func acknowledge() {
        var expirations: UInt64 = 0
        _ = read(fd, &expirations, MemoryLayout<UInt64>.size)
    }
}
