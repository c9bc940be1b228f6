import Foundation
import Worker
import XCTest

final class DistributedSamplerTests: XCTestCase {
    private func shards(_ n: Int, _ replicas: Int, _ remainder: DistributedSampler.Remainder, shuffle: Bool = true,
                        epoch: Int = 0, seed: UInt64 = 7) throws -> [[Int]] {
        try (0 ..< replicas).map {
            try DistributedSampler(datasetSize: n, replicas: replicas, rank: $0, shuffle: shuffle, seed: seed,
                                   remainder: remainder).indices(epoch: epoch)
        }
    }

    func testDropLastShardsAreDisjointEqualAndSkipOnlyTheRemainder() throws {
        for (n, r) in [(10, 3), (12, 4), (7, 7), (100, 6)] {
            let parts = try shards(n, r, .dropLast)
            XCTAssertTrue(parts.allSatisfy { $0.count == n / r }, "\(n)/\(r)")
            let all = parts.flatMap { $0 }
            XCTAssertEqual(Set(all).count, all.count, "\(n)/\(r): shards overlap")
            XCTAssertEqual(all.count, n - n % r)
            XCTAssertTrue(all.allSatisfy { (0 ..< n).contains($0) })
        }
    }

    func testPadShardsCoverTheDatasetAndRepeatOnlyThePadding() throws {
        for (n, r) in [(10, 3), (12, 4), (2, 5), (101, 8)] {
            let parts = try shards(n, r, .pad)
            let per = (n + r - 1) / r
            XCTAssertTrue(parts.allSatisfy { $0.count == per }, "\(n)/\(r)")
            let all = parts.flatMap { $0 }
            XCTAssertEqual(Set(all), Set(0 ..< n), "\(n)/\(r): not covering")
            XCTAssertEqual(all.count - n, per * r - n, "\(n)/\(r): only the padding repeats")
        }
    }

    func testUnshuffledShardsAreStridedLikeTorch() throws {
        // torch: indices 0..<10 padded with 0, 1 → rank r takes positions r, r+3, r+6, r+9.
        XCTAssertEqual(try shards(10, 3, .pad, shuffle: false), [[0, 3, 6, 9], [1, 4, 7, 0], [2, 5, 8, 1]])
        XCTAssertEqual(try shards(10, 3, .dropLast, shuffle: false), [[0, 3, 6], [1, 4, 7], [2, 5, 8]])
    }

    func testEachEpochReshufflesTheSameWayOnEveryRank() throws {
        let sampler = try DistributedSampler(datasetSize: 50, replicas: 2, rank: 0, seed: 3)
        let other = try DistributedSampler(datasetSize: 50, replicas: 2, rank: 1, seed: 3)
        XCTAssertEqual(sampler.permutation(epoch: 0), other.permutation(epoch: 0))
        XCTAssertNotEqual(sampler.permutation(epoch: 0), sampler.permutation(epoch: 1))
        XCTAssertEqual(sampler.indices(epoch: 5), sampler.indices(epoch: 5), "deterministic")
        XCTAssertEqual(sampler.permutation(epoch: 1).sorted(), Array(0 ..< 50))
        XCTAssertNotEqual(sampler.permutation(epoch: 0), Array(0 ..< 50))
        let reseeded = try DistributedSampler(datasetSize: 50, replicas: 2, rank: 0, seed: 4)
        XCTAssertNotEqual(reseeded.permutation(epoch: 0), sampler.permutation(epoch: 0))
    }

    func testBatches() throws {
        let sampler = try DistributedSampler(datasetSize: 10, replicas: 2, rank: 1, shuffle: false)
        XCTAssertEqual(try sampler.batches(epoch: 0, batchSize: 2), [[1, 3], [5, 7], [9]])
        XCTAssertEqual(try sampler.batches(epoch: 0, batchSize: 2, dropIncompleteBatch: true), [[1, 3], [5, 7]])
        XCTAssertThrowsError(try sampler.batches(epoch: 0, batchSize: 0))
        XCTAssertEqual(try DistributedSampler(datasetSize: 0, replicas: 3, rank: 2).indices(epoch: 0), [])
    }

    func testBadArgumentsAreNamed() {
        XCTAssertThrowsError(try DistributedSampler(datasetSize: 10, replicas: 2, rank: 2)) {
            XCTAssertTrue("\($0)".contains("rank 2 is outside 0 ..< 2"), "\($0)")
        }
        XCTAssertThrowsError(try DistributedSampler(datasetSize: 10, replicas: 0, rank: 0)) {
            XCTAssertTrue("\($0)".contains("replica count 0"), "\($0)")
        }
        XCTAssertThrowsError(try DistributedSampler(datasetSize: -1, replicas: 1, rank: 0))
        XCTAssertThrowsError(try DistributedSampler(datasetSize: 3, replicas: 4, rank: 0, remainder: .dropLast)) {
            XCTAssertTrue("\($0)".contains("drop-last"), "\($0)")
        }
    }
}
