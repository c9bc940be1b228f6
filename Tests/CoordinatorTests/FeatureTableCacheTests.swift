import Foundation
import XCTest
import Tensor
import Data
import Collective
import Coordinator

/// `FeatureTableCache` and `PromptTableEncoder` with a cache: a stored table set loads bitwise
/// equal without running the encoder; another encoder, prompt list or a damaged file is a miss
/// that re-encodes; ranks load only when every rank has the file, otherwise all encode (no hang);
/// the folder keeps to its budget by removing the least recently used table sets.
final class FeatureTableCacheTests: XCTestCase {
    private var folder: URL!

    override func setUpWithError() throws {
        folder = FileManager.default.temporaryDirectory.appendingPathComponent("sura-feature-cache-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: folder)
    }

    private let prompts = (0..<30).map { "prompt \($0 % 23) " + String(repeating: "x", count: $0 % 23 % 5) }
    private let identity = ["model.gguf: 1234 bytes, modified 1.0", "max_length 24"]

    /// Counts its calls so a test can tell a load from an encoding.
    private final class CountingEncoder {
        var calls = 0
        func callAsFunction(_ prompts: [String]) -> [Tensor] {
            calls += 1
            return [SharedPromptEncodingTests.encode(prompts), SharedPromptEncodingTests.encode(Array(prompts.reversed()))]
        }
    }

    private func encoder(_ directory: URL?, agreement: RankAgreement? = nil) -> PromptTableEncoder {
        PromptTableEncoder(agreement: agreement, chunk: 4, cache: directory.map { FeatureTableCache(directory: $0) })
    }

    func testAStoredTableSetLoadsBitwiseWithoutTheEncoder() throws {
        let first = CountingEncoder()
        var logs: [String] = []
        let encoded = try encoder(folder).tables("LLM layer 3", prompts, identity: identity, log: { logs.append($0) }) { first($0) }
        XCTAssertEqual(first.calls, 6, "23 distinct prompts in chunks of 4")
        XCTAssertTrue(logs.contains { $0.hasPrefix("LLM layer 3: tables stored in ") }, "\(logs)")
        let files = try FileManager.default.contentsOfDirectory(atPath: folder.path)
        XCTAssertEqual(files.count, 1)
        XCTAssertTrue(files[0].hasPrefix("llm-layer-3-") && files[0].hasSuffix(".safetensors"), files[0])

        let second = CountingEncoder()
        logs = []
        let loaded = try encoder(folder).tables("LLM layer 3", prompts, identity: identity, log: { logs.append($0) }) { second($0) }
        XCTAssertEqual(second.calls, 0, "the tables come from the cache")
        XCTAssertTrue(logs.contains { $0.contains("23 distinct prompts loaded from \(folder.path)") }, "\(logs)")
        XCTAssertEqual(loaded.map { $0.checksum() }, encoded.map { $0.checksum() })
        XCTAssertEqual(loaded.map(\.prompts), encoded.map(\.prompts))

        // Without an identity or without a cache nothing is looked up.
        let third = CountingEncoder()
        _ = try encoder(folder).tables("LLM layer 3", prompts, log: { _ in }) { third($0) }
        _ = try encoder(nil).tables("LLM layer 3", prompts, identity: identity, log: { _ in }) { third($0) }
        XCTAssertEqual(third.calls, 12)
    }

    func testAnotherEncoderLabelOrPromptListIsAnotherEntry() throws {
        let cache = FeatureTableCache(directory: folder)
        let base = cache.entry(label: "LLM layer 3", identity: identity, prompts: ["a", "b"])
        XCTAssertEqual(base.url, cache.entry(label: "LLM layer 3", identity: identity, prompts: ["a", "b"]).url)
        let others = [
            cache.entry(label: "LLM layer 4", identity: identity, prompts: ["a", "b"]),
            cache.entry(label: "LLM layer 3", identity: identity + ["vokens 8"], prompts: ["a", "b"]),
            cache.entry(label: "LLM layer 3", identity: ["model.gguf: 1235 bytes, modified 1.0", "max_length 24"], prompts: ["a", "b"]),
            cache.entry(label: "LLM layer 3", identity: identity, prompts: ["b", "a"]),
            cache.entry(label: "LLM layer 3", identity: identity, prompts: ["ab"]),
        ]
        XCTAssertEqual(Set(others.map(\.url) + [base.url]).count, 6)
    }

    func testADamagedOrForeignFileIsAMissThatIsRewritten() throws {
        let original = CountingEncoder()
        let encoded = try encoder(folder).tables("text encoder", prompts, identity: identity, log: { _ in }) { original($0) }
        let entry = FeatureTableCache(directory: folder).entry(label: "text encoder", identity: identity,
                                                               prompts: PromptFeatureTable.distinct(prompts))
        XCTAssertNotNil(entry.load().tables)

        // Cut short: the reason names the file, and the next run encodes and rewrites it.
        let bytes = try Data(contentsOf: entry.url)
        try bytes.prefix(bytes.count / 2).write(to: entry.url)
        let (none, reason) = entry.load()
        XCTAssertNil(none)
        XCTAssertTrue(reason?.hasPrefix(entry.url.path) == true, reason ?? "no reason")
        let again = CountingEncoder()
        var logs: [String] = []
        let reencoded = try encoder(folder).tables("text encoder", prompts, identity: identity, log: { logs.append($0) }) { again($0) }
        XCTAssertEqual(again.calls, 6)
        XCTAssertTrue(logs.contains { $0.hasPrefix("text encoder: not using the cached tables, \(entry.url.path)") }, "\(logs)")
        XCTAssertEqual(reencoded.map { $0.checksum() }, encoded.map { $0.checksum() })
        XCTAssertNotNil(entry.load().tables, "rewritten")

        // A file at the entry's name written for another version names the key that differs.
        let table = try PromptFeatureTable(prompts: ["a"], values: Tensor(shape: [1, 1, 1], data: [1]))
        try SafeTensorsWriter.write([("table_0", try table.features(["a"]))], metadata: ["format": FeatureTableCache.format, "version": "0"],
                                    to: entry.url)
        XCTAssertTrue(entry.load().miss?.contains("metadata 'identity' is missing") == true, entry.load().miss ?? "")
    }

    func testRanksLoadOnlyWhenEveryRankHasTheFile() throws {
        let shared = folder.appendingPathComponent("shared"), elsewhere = folder.appendingPathComponent("elsewhere")
        let single = try encoder(shared).tables("LLM layer 3", prompts, identity: identity, log: { _ in }) { CountingEncoder()($0) }
        for (name, directories) in [("both have it", [shared, shared]), ("rank 1 has none", [shared, elsewhere])] {
            let group = try InProcessGroup(size: 2, timeout: 20)
            let calls = LockedArray<UInt64>(count: 2), sums = LockedArray<UInt64>(count: 2)
            try group.run { communicator in
                let counting = CountingEncoder()
                let tables = try self.encoder(directories[communicator.rank], agreement: RankAgreement(communicator: communicator))
                    .tables("LLM layer 3", self.prompts, identity: self.identity, log: { _ in }) { counting($0) }
                calls.set(communicator.rank, UInt64(counting.calls))
                sums.set(communicator.rank, tables[0].checksum())
            }
            XCTAssertEqual(sums.values, [single[0].checksum(), single[0].checksum()], name)
            if directories[1] == shared {
                XCTAssertEqual(calls.values, [0, 0], "\(name): both load")
            } else {
                XCTAssertEqual(calls.values, [3, 3], "\(name): both encode their share")
                XCTAssertFalse(FileManager.default.fileExists(atPath: elsewhere.path), "only rank 0 stores")
            }
        }
    }

    func testFingerprintsNameEachFileWithSizeAndTime() throws {
        let model = folder.appendingPathComponent("model")
        try FileManager.default.createDirectory(at: model.appendingPathComponent("sub"), withIntermediateDirectories: true)
        try Data([1, 2, 3]).write(to: model.appendingPathComponent("b.json"))
        try Data([4]).write(to: model.appendingPathComponent("sub/a.bin"))
        try Data([5]).write(to: model.appendingPathComponent(".hidden"))
        let lines = FeatureTableCache.fingerprint(of: model.path)
        XCTAssertEqual(lines.count, 2, "\(lines)")
        XCTAssertTrue(lines[0].contains("/model/b.json: 3 bytes, modified "), lines[0])
        XCTAssertTrue(lines[1].contains("/model/sub/a.bin: 1 bytes, modified "), lines[1])
        XCTAssertEqual(FeatureTableCache.fingerprint(of: model.appendingPathComponent("b.json").path), [lines[0]])
        try Data([1, 2, 3, 4]).write(to: model.appendingPathComponent("b.json"))
        XCTAssertNotEqual(FeatureTableCache.fingerprint(of: model.path), lines, "a rewritten file changes the fingerprint")
        XCTAssertTrue(FeatureTableCache.fingerprint(of: folder.appendingPathComponent("nothing").path)[0].hasSuffix("nothing: missing"))
        XCTAssertTrue(FeatureTableCache.executableFingerprint[0].hasPrefix("executable /"), "\(FeatureTableCache.executableFingerprint)")
    }

    /// Storing a table set removes the least recently used others beyond the budget; loading
    /// counts as use, the set just stored is never removed, and files of other names stay.
    func testStoringEvictsTheLeastRecentlyUsedBeyondTheBudget() throws {
        let unlimited = PromptTableEncoder(agreement: nil, chunk: 4, cache: FeatureTableCache(directory: folder))
        for layer in 1...3 {
            _ = try unlimited.tables("LLM layer \(layer)", prompts, identity: identity, log: { _ in }) { CountingEncoder()($0) }
        }
        let other = folder.appendingPathComponent("notes.safetensors")
        try Data(repeating: 1, count: 1 << 20).write(to: other)
        let cache = FeatureTableCache(directory: folder, maxBytes: 1)
        var files = cache.storedFiles()
        XCTAssertEqual(files.count, 3, "\(files)")
        let size = files[0].bytes
        // Layer 1 stored first, used most recently; layer 2 least recently used.
        let ages: [String: TimeInterval] = ["llm-layer-1-": -10, "llm-layer-2-": -300, "llm-layer-3-": -200]
        for file in files {
            let age = try XCTUnwrap(ages.first { file.url.lastPathComponent.hasPrefix($0.key) }?.value)
            try FileManager.default.setAttributes([.modificationDate: Date(timeIntervalSinceNow: age)], ofItemAtPath: file.url.path)
        }
        XCTAssertEqual(cache.storedFiles().map { String($0.url.lastPathComponent.prefix(12)) }, ["llm-layer-2-", "llm-layer-3-", "llm-layer-1-"])

        // A budget of two and a half sets: storing a fourth removes the two least recently used.
        let budgeted = PromptTableEncoder(agreement: nil, chunk: 4, cache: FeatureTableCache(directory: folder, maxBytes: size * 5 / 2))
        var logs: [String] = []
        _ = try budgeted.tables("LLM layer 4", prompts, identity: identity, log: { logs.append($0) }) { CountingEncoder()($0) }
        files = cache.storedFiles()
        XCTAssertEqual(Set(files.map { String($0.url.lastPathComponent.prefix(12)) }), ["llm-layer-1-", "llm-layer-4-"])
        XCTAssertEqual(logs.filter { $0.hasPrefix("feature cache: removed llm-layer-") }.count, 2, "\(logs)")
        XCTAssertTrue(FileManager.default.fileExists(atPath: other.path), "a file of another name is not the cache's to remove")

        // Loading layer 1 makes it the most recently used; a budget below one set still keeps the set just stored.
        try FileManager.default.setAttributes([.modificationDate: Date(timeIntervalSinceNow: -1000)],
                                              ofItemAtPath: try XCTUnwrap(files.first { $0.url.lastPathComponent.hasPrefix("llm-layer-1-") }).url.path)
        let counting = CountingEncoder()
        _ = try budgeted.tables("LLM layer 1", prompts, identity: identity, log: { _ in }) { counting($0) }
        XCTAssertEqual(counting.calls, 0)
        XCTAssertEqual(cache.storedFiles().last.map { String($0.url.lastPathComponent.prefix(12)) }, "llm-layer-1-")
        let tiny = PromptTableEncoder(agreement: nil, chunk: 4, cache: FeatureTableCache(directory: folder, maxBytes: 1))
        _ = try tiny.tables("LLM layer 5", prompts, identity: identity, log: { _ in }) { CountingEncoder()($0) }
        XCTAssertEqual(cache.storedFiles().map { String($0.url.lastPathComponent.prefix(12)) }, ["llm-layer-5-"])
    }

    func testTheConfigKey() throws {
        let yaml = { (extra: String) in
            "task: base\noutput_dir: runs/x\n\(extra)data: {path: d}\nbase: {unet: u.json, text_encoder: t}\n"
        }
        XCTAssertEqual(try TrainingConfig(yaml: yaml(""), file: "c.yaml").featureCache, "runs/x/feature-cache")
        XCTAssertEqual(try TrainingConfig(yaml: yaml("feature_cache: cache/features\n"), file: "c.yaml").featureCache, "cache/features")
        XCTAssertNil(try TrainingConfig(yaml: yaml("feature_cache: none\n"), file: "c.yaml").featureCache)
        XCTAssertThrowsError(try TrainingConfig(yaml: yaml("feature_cache: ''\n"), file: "c.yaml")) { error in
            XCTAssertTrue("\(error)".contains("feature_cache"), "\(error)")
        }
        XCTAssertEqual(try TrainingConfig(yaml: yaml(""), file: "c.yaml").featureTableCache?.maxBytes, 10_000_000_000)
        XCTAssertEqual(try TrainingConfig(yaml: yaml("feature_cache_max_gb: 0.5\n"), file: "c.yaml").featureTableCache?.maxBytes, 500_000_000)
        XCTAssertThrowsError(try TrainingConfig(yaml: yaml("feature_cache_max_gb: -1\n"), file: "c.yaml")) { error in
            XCTAssertTrue("\(error)".contains("feature_cache_max_gb"), "\(error)")
        }
    }
}
