import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// What the kernel says about processes, read from `/proc` on Linux.
///
/// A detached job outlives the `sura` that started it, so its parent becomes init; where init
/// does not reap (some containers), a finished job stays a zombie forever and `kill(pid, 0)`
/// keeps succeeding. Liveness is therefore judged from the process state, and a recorded start
/// time guards against the pid having been reused by an unrelated process.
public enum ProcessTable {
    /// One process's state letter (`R`, `S`, `Z`, …), process group, session and start time
    /// (clock ticks since boot).
    public struct Entry: Equatable, Sendable {
        public var pid: pid_t
        public var state: Character
        public var processGroup: pid_t
        public var session: pid_t
        public var startTicks: UInt64

        /// Zombies (`Z`) and dead entries (`X`) have finished running.
        public var isRunning: Bool { state != "Z" && state != "X" }
    }

    /// The entry for `pid`, or nil when there is no such process (or no `/proc`).
    public static func entry(_ pid: pid_t) -> Entry? {
        #if os(Linux)
        guard pid > 0, let text = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8) else { return nil }
        return parseStat(text, pid: pid)
        #else
        return nil
        #endif
    }

    /// Parses a `/proc/PID/stat` line. The command name sits in parentheses and may itself hold
    /// spaces and parentheses, so fields are counted from the last `)`.
    static func parseStat(_ text: String, pid: pid_t) -> Entry? {
        guard let close = text.lastIndex(of: ")") else { return nil }
        let fields = text[text.index(after: close)...].split(separator: " ")
        // After the name: state(3) ppid(4) pgrp(5) session(6) … starttime(22), 1-based in proc(5).
        guard fields.count >= 20, let state = fields[0].first, let group = pid_t(fields[2]),
              let session = pid_t(fields[3]), let start = UInt64(fields[19]) else { return nil }
        return Entry(pid: pid, state: state, processGroup: group, session: session, startTicks: start)
    }

    /// Whether `pid` is running (not a zombie) and, when `startTicks` is given, is the same
    /// process that was recorded.
    public static func isRunning(_ pid: pid_t, startTicks: UInt64?) -> Bool {
        #if os(Linux)
        guard let entry = entry(pid) else { return false }
        if let startTicks, entry.startTicks != startTicks { return false }
        return entry.isRunning
        #else
        return kill(pid, 0) == 0
        #endif
    }

    /// Running processes in session `session` (a detached job and everything it started,
    /// unless something called `setsid` again).
    public static func runningMembers(ofSession session: pid_t) -> [pid_t] {
        #if os(Linux)
        guard session > 0, let names = try? FileManager.default.contentsOfDirectory(atPath: "/proc") else { return [] }
        return names.compactMap { pid_t($0) }.filter { pid in
            guard let entry = entry(pid) else { return false }
            return entry.session == session && entry.isRunning
        }.sorted()
        #else
        return kill(-session, 0) == 0 ? [session] : []
        #endif
    }

    /// Sends `signal` to every running member of `session`. Never signals this process's own
    /// session, and (on Linux) only processes that exist right now, so a session id that was
    /// freed and reused cannot be hit by a blanket `kill(-id)`.
    public static func signal(session: pid_t, _ signal: Int32) {
        guard session > 1, session != getsid(0) else { return }
        #if os(Linux)
        for pid in runningMembers(ofSession: session) where pid > 1 && pid != getpid() {
            _ = kill(pid, signal)
        }
        #else
        _ = kill(-session, signal)
        #endif
    }
}
