import Collective
import Foundation
import XCTest

/// Runs `body` on every rank of a fresh in-process group (one thread per rank) and fails the
/// test, instead of hanging it, if the ranks have not all returned within `limit` seconds.
/// Returns the error of the lowest failing rank, if any (not a test failure by itself).
/// - Parameters:
///   - timeout: every collective wait's bound inside the group (`CollectiveError.timeout` after it).
///   - limit: how long the whole group may take before the test fails.
@discardableResult
public func runRanks(_ size: Int, timeout: Double = 20, limit: Double = 120,
                     file: StaticString = #filePath, line: UInt = #line,
                     _ body: @escaping (Communicator) throws -> Void) -> Error? {
    let group: InProcessGroup
    do {
        group = try InProcessGroup(size: size, timeout: timeout)
    } catch {
        XCTFail("\(error)", file: file, line: line)
        return error
    }
    let done = DispatchSemaphore(value: 0)
    let outcome = PerRank<Error>(size: 1)
    let runner = Thread {
        do {
            try group.run(body)
        } catch {
            outcome[0] = error
        }
        done.signal()
    }
    // The group's rank threads run on their own stacks; this one only waits, but models built
    // on it in some tests recurse deeply.
    runner.stackSize = 8 << 20
    runner.start()
    if done.wait(timeout: .now() + limit) == .timedOut {
        XCTFail("group of \(size) ranks did not finish within \(limit) s", file: file, line: line)
        return nil
    }
    return outcome[0]
}

/// `runRanks` that fails the test when a rank throws.
public func runRanksExpectingSuccess(_ size: Int, timeout: Double = 20, limit: Double = 120,
                                     file: StaticString = #filePath, line: UInt = #line,
                                     _ body: @escaping (Communicator) throws -> Void) {
    if let error = runRanks(size, timeout: timeout, limit: limit, file: file, line: line, body) {
        XCTFail("group of \(size) ranks threw: \(error)", file: file, line: line)
    }
}

/// One slot per rank for values the rank threads produce, read by the test afterwards.
public final class PerRank<Value>: @unchecked Sendable {
    private let lock = NSLock()
    private var values: [Value?]

    public init(size: Int) {
        values = Array(repeating: nil, count: size)
    }

    public subscript(rank: Int) -> Value? {
        get { lock.lock(); defer { lock.unlock() }; return values[rank] }
        set { lock.lock(); values[rank] = newValue; lock.unlock() }
    }

    /// Every slot, in rank order.
    public var all: [Value?] {
        lock.lock()
        defer { lock.unlock() }
        return values
    }
}
