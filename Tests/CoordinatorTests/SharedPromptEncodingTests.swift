import Foundation
import XCTest
import Tensor
import Data
import Collective
import Coordinator

/// `PromptTableEncoder` over in-process ranks: the shared table is bitwise the one-process
/// table, whatever the number of ranks, and a failure on one rank fails every rank (never a
/// hang). `RankAgreement` keeps nested steps to one exchange per rank.
final class SharedPromptEncodingTests: XCTestCase {
    /// A deterministic encoder whose output depends on the whole chunk (like a batched model whose
    /// padding follows the longest prompt), so a rank that cut other chunks would give other values.
    static func encode(_ prompts: [String]) -> Tensor {
        let longest = prompts.map(\.utf8.count).max() ?? 0
        var values: [Float] = []
        for prompt in prompts {
            let bytes = Array(prompt.utf8)
            for position in 0..<3 {
                for channel in 0..<2 {
                    let byte = position < bytes.count ? Float(bytes[position]) : 0
                    values.append(byte * 0.37 + Float(channel) - Float(longest) * 0.011 + Float(prompts.count) * 1e-3)
                }
            }
        }
        return Tensor(shape: [prompts.count, 3, 2], data: values)
    }

    func testSharedTablesAreBitwiseTheOneProcessTables() throws {
        // 23 distinct prompts with repeats, chunks of 4: 6 chunks, the last one short.
        let prompts = (0..<30).map { "prompt \($0 % 23) " + String(repeating: "x", count: $0 % 23 % 7) }
        let single = try PromptTableEncoder(agreement: nil, chunk: 4).tables("test", prompts, log: { _ in }) {
            [Self.encode($0), Self.encode(Array($0.reversed()))]
        }
        XCTAssertEqual(single.map(\.count), [23, 23])
        for size in [2, 3, 4, 8] {  // 8 ranks: more ranks than chunks
            let group = try InProcessGroup(size: size, timeout: 20)
            let sums = LockedArray<UInt64>(count: size * 2)
            let shares = LockedArray<UInt64>(count: size)
            try group.run { communicator in
                var logged = ""
                let tables = try PromptTableEncoder(agreement: RankAgreement(communicator: communicator), chunk: 4)
                    .tables("test", prompts, log: { logged = $0 }) { [Self.encode($0), Self.encode(Array($0.reversed()))] }
                XCTAssertEqual(tables.map(\.prompts), single.map(\.prompts))
                sums.set(communicator.rank * 2, tables[0].checksum())
                sums.set(communicator.rank * 2 + 1, tables[1].checksum())
                let share = logged.components(separatedBy: ", ").last?.split(separator: " ").first.flatMap { UInt64($0) }
                shares.set(communicator.rank, share ?? .max)
            }
            for rank in 0..<size {
                XCTAssertEqual(sums.values[rank * 2], single[0].checksum(), "\(size) ranks, rank \(rank)")
                XCTAssertEqual(sums.values[rank * 2 + 1], single[1].checksum(), "\(size) ranks, rank \(rank)")
            }
            // Every prompt was encoded on exactly one rank.
            XCTAssertEqual(shares.values.reduce(0, +), 23, "\(size) ranks: \(shares.values)")
        }
    }

    func testAnEncoderFailureOnOneRankStopsEveryRank() throws {
        let group = try InProcessGroup(size: 3, timeout: 20)
        let errors = LockedArray<String>(count: 3)
        let started = Date()
        try? group.run { communicator in
            do {
                _ = try PromptTableEncoder(agreement: RankAgreement(communicator: communicator), chunk: 2)
                    .table("test", (0..<12).map { "p\($0)" }, log: { _ in }) { prompts in
                        if communicator.rank == 1 { throw TrainingError.data("the encoder broke on rank 1") }
                        return Self.encode(prompts)
                    }
                errors.set(communicator.rank, "no error")
            } catch {
                errors.set(communicator.rank, "\(error)")
            }
        }
        XCTAssertLessThan(Date().timeIntervalSince(started), 10, "a failure must not wait for a timeout")
        XCTAssertEqual(errors.values[1], "the encoder broke on rank 1")
        for rank in [0, 2] { XCTAssertTrue(errors.values[rank].contains("rank 1 failed"), errors.values[rank]) }
    }

    /// A rank that fails before an inner step joins it from its outer step: one exchange each,
    /// every rank throws, and a later collective still pairs up.
    func testNestedAgreementsMakeOneExchangePerRank() throws {
        let group = try InProcessGroup(size: 2, timeout: 20)
        let errors = LockedArray<String>(count: 2)
        try group.run { communicator in
            let agree = RankAgreement(communicator: communicator)
            do {
                try agree("building") {
                    if communicator.rank == 0 { throw TrainingError.data("rank 0 could not load its model") }
                    try agree("encoding") { }
                }
            } catch {
                errors.set(communicator.rank, "\(error)")
            }
            // Both ranks made exactly one exchange above, so this one pairs with itself.
            var value: [Float] = [Float(communicator.rank + 1)]
            try communicator.allreduce(&value, op: .sum)
            XCTAssertEqual(value, [3])
        }
        XCTAssertEqual(errors.values[0], "rank 0 could not load its model")
        XCTAssertTrue(errors.values[1].contains("rank 0 failed: encoding failed there"), errors.values[1])
    }
}

/// A fixed-size array that the threads of an in-process group write by index.
final class LockedArray<T>: @unchecked Sendable {
    private let lock = NSLock()
    private var storage: [T?]

    init(count: Int) { storage = Array(repeating: nil, count: count) }

    func set(_ index: Int, _ value: T) {
        lock.lock()
        storage[index] = value
        lock.unlock()
    }

    var values: [T] {
        lock.lock()
        defer { lock.unlock() }
        return storage.map { $0! }
    }
}
