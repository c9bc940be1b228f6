import Foundation
import Tensor
import XCTest

/// Builds GGUF bytes field by field, so tests can make precisely corrupted files.
private struct GGUFBytes {
    var bytes: [UInt8] = []

    mutating func raw(_ b: [UInt8]) { bytes += b }
    mutating func u32(_ v: UInt32) { bytes += withUnsafeBytes(of: v.littleEndian) { Array($0) } }
    mutating func u64(_ v: UInt64) { bytes += withUnsafeBytes(of: v.littleEndian) { Array($0) } }
    mutating func string(_ s: String) { u64(UInt64(s.utf8.count)); bytes += Array(s.utf8) }

    /// magic, version, tensor count, key count.
    static func header(version: UInt32 = 3, tensors: UInt64, keys: UInt64) -> GGUFBytes {
        var b = GGUFBytes()
        b.raw(Array("GGUF".utf8))
        b.u32(version)
        b.u64(tensors)
        b.u64(keys)
        return b
    }

    /// One tensor info.
    mutating func tensor(_ name: String, dims: [UInt64], type: UInt32, offset: UInt64) {
        string(name)
        u32(UInt32(dims.count))
        for d in dims { u64(d) }
        u32(type)
        u64(offset)
    }

    /// Pads with zeros to a multiple of `alignment`, then appends `data`.
    mutating func data(_ data: [UInt8], alignment: Int = 32) {
        while bytes.count % alignment != 0 { bytes.append(0) }
        bytes += data
    }
}

final class GGUFTests: XCTestCase {
    private func write(_ b: GGUFBytes, _ name: String = "corrupt.gguf") -> URL {
        let url = formatScratchDirectory(self).appendingPathComponent(name)
        try! Data(b.bytes).write(to: url)
        return url
    }

    private func open(_ url: URL) throws -> GGUFFile { try GGUFFile(contentsOf: url) }

    // MARK: The fixture written by the gguf package

    func testMetadataOfEveryValueType() throws {
        let file = try open(formatFixture("gguf_all_types.gguf"))
        XCTAssertEqual(file.version, 3)
        XCTAssertEqual(file.alignment, 32)
        XCTAssertEqual(file.metadataKeys.first, "general.architecture")
        XCTAssertEqual(file.metadataKeys.count, 21)
        let m = file.metadata
        XCTAssertEqual(m["general.architecture"], .string("llama"))
        XCTAssertEqual(m["test.u8"], .uint8(200))
        XCTAssertEqual(m["test.i8"], .int8(-100))
        XCTAssertEqual(m["test.u16"], .uint16(60000))
        XCTAssertEqual(m["test.i16"], .int16(-30000))
        XCTAssertEqual(m["test.u32"], .uint32(4_000_000_000))
        XCTAssertEqual(m["test.i32"], .int32(-2_000_000_000))
        XCTAssertEqual(m["test.f32"], .float32(0.15625))
        XCTAssertEqual(m["test.u64"], .uint64(18_000_000_000_000_000_000))
        XCTAssertEqual(m["test.i64"], .int64(-9_000_000_000_000_000_000))
        XCTAssertEqual(m["test.f64"], .float64(-2.718281828459045))
        XCTAssertEqual(m["test.true"], .bool(true))
        XCTAssertEqual(m["test.false"], .bool(false))
        XCTAssertEqual(m["test.string"]?.string, "héllo → world")
        XCTAssertEqual(m["test.strings"]?.stringArray, ["a", "bc", "", "déf"])
        XCTAssertEqual(m["test.ints"], .array(.int32, [.int32(1), .int32(-2), .int32(3)]))
        XCTAssertEqual(m["test.ints"]?.intArray, [1, -2, 3])
        XCTAssertEqual(m["test.u16s"], .array(.uint16, [.uint16(1), .uint16(2), .uint16(65535)]))
        XCTAssertEqual(m["test.floats"]?.floatArray, [0.5, -1.25])
        XCTAssertEqual(m["test.bools"], .array(.bool, [.bool(true), .bool(false), .bool(true)]))
        XCTAssertEqual(m["test.nested"]?.array?.map { $0.stringArray ?? [] }, [["x", "yy"], ["zzz"]])
        XCTAssertEqual(m["test.nested_ints"]?.array?.map { $0.intArray ?? [] }, [[1, 2], [3]])
        // Accessors convert across integer widths and refuse what does not fit.
        XCTAssertEqual(m["test.u8"]?.int, 200)
        XCTAssertEqual(m["test.u8"]?.float, 200)
        XCTAssertNil(m["test.u64"]?.int)
        XCTAssertNil(m["test.string"]?.int)
        XCTAssertNil(m["test.ints"]?.stringArray)
    }

    func testTensorsMatchGGUFPackageDequantisation() throws {
        let file = try open(formatFixture("gguf_all_types.gguf"))
        let expected = try SafeTensorsFile(contentsOf: formatFixture("gguf_all_types_expected.safetensors"))
        let types: [String: GGMLType] = [
            "f32": .f32, "f16": .f16, "bf16": .bf16, "q8_0": .q8_0, "q4_0": .q4_0, "q4_1": .q4_1,
            "q5_0": .q5_0, "q5_1": .q5_1, "q8_0_3d": .q8_0, "q4_k": .q4_K, "q5_k": .q5_K, "q6_k": .q6_K,
        ]
        XCTAssertEqual(Set(file.tensors.map(\.name)), Set(types.keys))
        for info in file.tensors {
            XCTAssertEqual(info.type, types[info.name], info.name)
            let want = try expected.tensor(named: info.name)
            let got = try file.tensor(named: info.name)
            XCTAssertEqual(got.shape, want.shape, info.name)
            XCTAssertEqual(info.shape, want.shape, info.name)
            XCTAssertEqual(info.ggmlDims, want.shape.reversed(), info.name)
            let a = got.scalars, b = want.scalars
            var worst: Float = 0
            for i in 0..<b.count { worst = max(worst, abs(a[i] - b[i])) }
            XCTAssertLessThanOrEqual(worst, 1e-6, "\(info.name): max difference \(worst)")
            XCTAssertTrue(a.contains { $0 != 0 }, info.name)
        }
        XCTAssertEqual(file.tensorInfo(named: "q8_0_3d")?.ggmlDims, [32, 3, 2])
        XCTAssertEqual(file.tensorInfo(named: "q6_k")?.byteCount, 4 * 210)
        XCTAssertEqual(try file.rawBytes(named: "q4_k").count, 2 * 2 * 144)
    }

    func testCustomAlignment() throws {
        let file = try open(formatFixture("gguf_align64.gguf"))
        XCTAssertEqual(file.alignment, 64)
        XCTAssertEqual(file.dataOffset % 64, 0)
        XCTAssertEqual(file.tensors.map(\.offset), [0, 64])
        XCTAssertEqual(try file.tensor(named: "first").scalars, [0, 1, 2])
        XCTAssertEqual(try file.tensor(named: "second").shape, [2, 5])
        XCTAssertEqual(try file.tensor(named: "second").scalars, (0..<10).map { Float($0) * 0.5 })
    }

    func testVersion2IsAccepted() throws {
        var bytes = [UInt8](try Data(contentsOf: formatFixture("gguf_all_types.gguf")))
        bytes[4] = 2
        let url = formatScratchDirectory(self).appendingPathComponent("v2.gguf")
        try Data(bytes).write(to: url)
        let file = try open(url)
        XCTAssertEqual(file.version, 2)
        XCTAssertEqual(try file.loadAll().count, 12)
    }

    func testEveryTruncationThrows() throws {
        let original = [UInt8](try Data(contentsOf: formatFixture("gguf_all_types.gguf")))
        let dataOffset = try open(formatFixture("gguf_all_types.gguf")).dataOffset
        let url = formatScratchDirectory(self).appendingPathComponent("cut.gguf")
        // Every cut in the fixed header and first keys, then every third byte (so every field of
        // the key/value and tensor-info sections is cut somewhere), and a sample of the data.
        let cuts = Array(0..<128) + Array(stride(from: 128, to: dataOffset, by: 3))
            + Array(stride(from: dataOffset, to: original.count, by: 97))
        for cut in cuts {
            try Data(original[0..<cut]).write(to: url)
            XCTAssertThrowsError(try open(url), "cut at \(cut)") { error in
                XCTAssertTrue("\(error)".contains("cut.gguf"), "\(error)")
            }
        }
    }

    // MARK: Corrupt files built field by field

    func testBadMagicAndVersion() {
        var b = GGUFBytes()
        b.raw(Array("GGML".utf8))
        b.u32(3)
        let magic = write(b)
        assertFormatError(magic, { try open(magic) }) { if case .badMagic = $0 { return true } else { return false } }
        for version: UInt32 in [1, 4, 0x0300_0000] {
            let url = write(GGUFBytes.header(version: version, tensors: 0, keys: 0))
            assertFormatError(url, { try open(url) }) {
                if case .unsupportedVersion(_, version) = $0 { return true } else { return false }
            }
        }
        let empty = write(GGUFBytes(), "empty.gguf")
        assertFormatError(empty, { try open(empty) }) { if case .truncated = $0 { return true } else { return false } }
    }

    func testAbsurdCountsAreRefusedBeforeAllocating() {
        let keys = write(GGUFBytes.header(tensors: 0, keys: UInt64.max))
        assertFormatError(keys, { try open(keys) }) { if case .absurdCount = $0 { return true } else { return false } }
        let tensors = write(GGUFBytes.header(tensors: 1 << 40, keys: 0))
        assertFormatError(tensors, { try open(tensors) }) { if case .absurdCount = $0 { return true } else { return false } }
        for elementType: UInt32 in [0, 8, 9] {
            var b = GGUFBytes.header(tensors: 0, keys: 1)
            b.string("tokenizer.ggml.tokens")
            b.u32(9)
            b.u32(elementType)
            b.u64(UInt64.max / 2)
            b.raw([UInt8](repeating: 0, count: 64))
            let url = write(b)
            assertFormatError(url, { try open(url) }) {
                if case let .absurdCount(_, context, _, _) = $0 { return context.contains("tokenizer.ggml.tokens") }
                return false
            }
        }
    }

    func testStringOverrunsAndUnknownTypes() {
        var overrun = GGUFBytes.header(tensors: 0, keys: 1)
        overrun.string("k")
        overrun.u32(8)
        overrun.u64(1 << 62)
        overrun.raw(Array("short".utf8))
        let url = write(overrun)
        assertFormatError(url, { try open(url) }) {
            if case let .stringOverrun(_, context, _, _) = $0 { return context.contains("'k'") } else { return false }
        }
        var keyOverrun = GGUFBytes.header(tensors: 0, keys: 1)
        keyOverrun.u64(1000)
        keyOverrun.raw(Array("abcdefghijklmnopqrstuvwxyz".utf8))
        let keyURL = write(keyOverrun)
        assertFormatError(keyURL, { try open(keyURL) }) { if case .stringOverrun = $0 { return true } else { return false } }

        var valueType = GGUFBytes.header(tensors: 0, keys: 1)
        valueType.string("weird")
        valueType.u32(13)
        valueType.u64(0)
        let vtURL = write(valueType)
        assertFormatError(vtURL, { try open(vtURL) }) {
            if case .unknownValueType(_, "weird", 13) = $0 { return true } else { return false }
        }

        var ggmlType = GGUFBytes.header(tensors: 1, keys: 0)
        ggmlType.tensor("blk.0.attn_q.weight", dims: [32], type: 77, offset: 0)
        ggmlType.data([UInt8](repeating: 0, count: 128))
        let gtURL = write(ggmlType)
        assertFormatError(gtURL, { try open(gtURL) }) {
            if case .unknownDType(_, "blk.0.attn_q.weight", _) = $0 { return true } else { return false }
        }

        var deep = GGUFBytes.header(tensors: 0, keys: 1)
        deep.string("deep")
        deep.u32(9)
        for _ in 0..<20 { deep.u32(9); deep.u64(1) }
        deep.u32(0)
        deep.u64(0)
        let deepURL = write(deep)
        assertFormatError(deepURL, { try open(deepURL) }) {
            if case .invalidEntry(_, "deep", _) = $0 { return true } else { return false }
        }
    }

    func testBadTensorInfos() {
        func single(_ dims: [UInt64], type: UInt32, offset: UInt64 = 0, dataBytes: Int) -> URL {
            var b = GGUFBytes.header(tensors: 1, keys: 0)
            b.tensor("w", dims: dims, type: type, offset: offset)
            b.data([UInt8](repeating: 0, count: dataBytes))
            return write(b)
        }
        let past = single([64, 2], type: 0, dataBytes: 100)
        assertFormatError(past, { try open(past) }) {
            if case .offsetsOutOfBounds(_, "w", 0, 512, 100) = $0 { return true } else { return false }
        }
        let misaligned = single([4], type: 0, offset: 4, dataBytes: 64)
        assertFormatError(misaligned, { try open(misaligned) }) { if case .invalidEntry(_, "w", _) = $0 { return true } else { return false } }
        let block = single([48], type: GGMLType.q4_0.rawValue, dataBytes: 64)
        assertFormatError(block, { try open(block) }) { if case .invalidShape(_, "w", _) = $0 { return true } else { return false } }
        let rank = single([1, 1, 1, 1, 1], type: 0, dataBytes: 64)
        assertFormatError(rank, { try open(rank) }) { if case .invalidShape(_, "w", _) = $0 { return true } else { return false } }
        let overflow = single([1 << 40, 1 << 40], type: 0, dataBytes: 64)
        assertFormatError(overflow, { try open(overflow) }) { if case .invalidShape(_, "w", _) = $0 { return true } else { return false } }

        var twice = GGUFBytes.header(tensors: 2, keys: 0)
        twice.tensor("w", dims: [4], type: 0, offset: 0)
        twice.tensor("w", dims: [4], type: 0, offset: 32)
        twice.data([UInt8](repeating: 0, count: 64))
        let twiceURL = write(twice)
        assertFormatError(twiceURL, { try open(twiceURL) }) { if case .duplicateName(_, "w") = $0 { return true } else { return false } }

        var overlap = GGUFBytes.header(tensors: 2, keys: 0)
        overlap.tensor("a", dims: [16], type: 0, offset: 0)
        overlap.tensor("b", dims: [16], type: 0, offset: 32)
        overlap.data([UInt8](repeating: 0, count: 128))
        let overlapURL = write(overlap)
        assertFormatError(overlapURL, { try open(overlapURL) }) {
            if case .overlappingTensors(_, "b", "a") = $0 { return true } else { return false }
        }

        var alignment = GGUFBytes.header(tensors: 0, keys: 1)
        alignment.string("general.alignment")
        alignment.u32(4)
        alignment.u32(48)
        let alignURL = write(alignment)
        assertFormatError(alignURL, { try open(alignURL) }) {
            if case .invalidEntry(_, "general.alignment", _) = $0 { return true } else { return false }
        }

        var dupKey = GGUFBytes.header(tensors: 0, keys: 2)
        for _ in 0..<2 { dupKey.string("k"); dupKey.u32(0); dupKey.raw([1]) }
        let dupURL = write(dupKey)
        assertFormatError(dupURL, { try open(dupURL) }) { if case .duplicateName(_, "k") = $0 { return true } else { return false } }
    }

    func testUnsupportedTypeAndMissingTensor() throws {
        var b = GGUFBytes.header(tensors: 1, keys: 0)
        b.tensor("iq", dims: [256], type: GGMLType.iq2_xxs.rawValue, offset: 0)
        b.data([UInt8](repeating: 0, count: 66))
        let url = write(b)
        let file = try open(url)
        assertFormatError(url, { try file.tensor(named: "iq") }) {
            if case .unsupportedDType(_, "iq", "IQ2_XXS") = $0 { return true } else { return false }
        }
        assertFormatError(url, { try file.tensor(named: "nope") }) {
            if case .tensorNotFound(_, "nope", _) = $0 { return true } else { return false }
        }
    }

    func testInspectorSummarisesGGUF() throws {
        let text = try ModelFileInspector.describe(url: formatFixture("gguf_all_types.gguf"))
        XCTAssertTrue(text.contains("format: GGUF v3, 12 tensors, 21 metadata keys, alignment 32"), text)
        XCTAssertTrue(text.contains("array<string>[4]"), text)
        XCTAssertTrue(text.contains("array<i32>[2]"), text)
        XCTAssertTrue(text.contains("q6_k"), text)
        XCTAssertTrue(text.contains("Q4_K"), text)
        XCTAssertTrue(text.contains("[2, 3, 32]"), text)
        XCTAssertTrue(text.contains("total: 12 tensors"), text)
    }

    // MARK: The real SmolLM2 model (skipped when the cache does not have it)

    private func realModelURL() throws -> URL {
        // scripts/setup puts the models in the repository's cache/ (or SURA_CACHE).
        let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let cache = ProcessInfo.processInfo.environment["SURA_CACHE"].map { URL(fileURLWithPath: $0) } ?? repository.appendingPathComponent("cache")
        let url = cache.appendingPathComponent("models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
        guard FileManager.default.fileExists(atPath: url.path) else {
            throw XCTSkip("real model not in cache: \(url.path)")
        }
        return url
    }

    func testRealSmolLM2File() throws {
        let url = try realModelURL()
        let start = Date()
        let file = try open(url)
        let parsed = Date()
        let m = file.metadata
        XCTAssertEqual(m["general.architecture"]?.string, "llama")
        XCTAssertEqual(m["llama.block_count"]?.int, 30)
        XCTAssertEqual(m["llama.embedding_length"]?.int, 576)
        XCTAssertEqual(m["llama.feed_forward_length"]?.int, 1536)
        XCTAssertEqual(m["llama.attention.head_count"]?.int, 9)
        XCTAssertEqual(m["llama.attention.head_count_kv"]?.int, 3)
        XCTAssertEqual(m["tokenizer.ggml.model"]?.string, "gpt2")
        let tokens = try XCTUnwrap(m["tokenizer.ggml.tokens"]?.stringArray)
        XCTAssertEqual(tokens.count, 49152)
        XCTAssertEqual(tokens.first, "<|endoftext|>")
        XCTAssertGreaterThan(m["tokenizer.ggml.merges"]?.stringArray?.count ?? 0, 40000)

        let embedding = try XCTUnwrap(file.tensorInfo(named: "token_embd.weight"))
        XCTAssertEqual(embedding.type, .q8_0)
        XCTAssertEqual(embedding.shape, [49152, 576])
        XCTAssertEqual(file.tensorInfo(named: "blk.0.attn_q.weight")?.type, .q4_1)
        XCTAssertEqual(file.tensorInfo(named: "blk.0.attn_norm.weight")?.type, .f32)

        var parameters = 0
        for info in file.tensors {
            let t = try file.tensor(named: info.name)
            parameters += t.count
            let p = t.pointer
            var finite = true
            for i in 0..<t.count where !p[i].isFinite { finite = false; break }
            XCTAssertTrue(finite, "\(info.name) has non-finite values")
        }
        let loaded = Date()
        XCTAssertGreaterThan(parameters, 130_000_000)
        print("SmolLM2: parsed \(file.tensors.count) tensors and \(file.metadataKeys.count) keys in "
              + String(format: "%.3f s, dequantised %d parameters in %.3f s", parsed.timeIntervalSince(start),
                       parameters, loaded.timeIntervalSince(parsed)))

        let text = try ModelFileInspector.describe(url: url)
        XCTAssertTrue(text.contains("array<string>[49152]"), "tokens are summarised")
        XCTAssertLessThan(text.count, 60_000, "the listing must not print every token")
        XCTAssertTrue(text.contains("token_embd.weight"))
    }
}
