import Foundation
import Tensor
import XCTest

/// A fixture written by Tests/Reference/make_format_fixtures.py.
func formatFixture(_ name: String) -> URL {
    Bundle.module.resourceURL!.appendingPathComponent("Fixtures/formats/\(name)")
}

/// A fresh empty directory, removed when the test ends.
func formatScratchDirectory(_ test: XCTestCase) -> URL {
    let dir = FileManager.default.temporaryDirectory
        .appendingPathComponent("sura-format-tests-\(UUID().uuidString)")
    try! FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    test.addTeardownBlock { try? FileManager.default.removeItem(at: dir) }
    return dir
}

/// Asserts that `body` throws a `FileFormatError` accepted by `matches` whose message names `file`.
func assertFormatError<T>(_ file: URL?, _ body: () throws -> T, _ matches: (FileFormatError) -> Bool,
                          sourceFile: StaticString = #filePath, line: UInt = #line) {
    do {
        _ = try body()
        XCTFail("expected a FileFormatError", file: sourceFile, line: line)
    } catch let error as FileFormatError {
        XCTAssertTrue(matches(error), "unexpected error: \(error)", file: sourceFile, line: line)
        if let file {
            XCTAssertTrue(error.description.contains(file.lastPathComponent),
                          "message does not name the file: \(error)", file: sourceFile, line: line)
        }
    } catch {
        XCTFail("unexpected error type: \(error)", file: sourceFile, line: line)
    }
}

final class SafeTensorsTests: XCTestCase {
    /// The tensors of the writer fixtures: tensor k has v[i] = Float(i)·0.37 − k.
    static let writerTensors: [(String, [Int])] = [
        ("z", [3]), ("a", [2, 3]), ("B", [4]), ("a.b", [1, 2, 2]), ("a_b", [5]),
        ("layer.10.weight", [2, 2]), ("layer.2.weight", [3, 1]), ("été", [2]), ("scalar", []), ("empty", [0, 3]),
    ]
    static let trickyNote = "quote \" backslash \\ newline \n tab \t bell \u{07} del \u{7f} unicode é→😀 slash /"

    static func writerValues(_ k: Int, _ shape: [Int]) -> [Float] {
        let n = shape.reduce(1, *)
        return (0..<n).map { Float($0) * Float(0.37) - Float(k) }
    }

    static func writerTensorList() -> [(String, Tensor)] {
        writerTensors.enumerated().map { k, entry in
            (entry.0, Tensor(shape: entry.1, data: writerValues(k, entry.1)))
        }
    }

    private func bytes(_ url: URL) throws -> [UInt8] { [UInt8](try Data(contentsOf: url)) }

    // MARK: Reading

    func testReadsPythonWrittenFile() throws {
        let file = try SafeTensorsFile(contentsOf: formatFixture("st_writer_f32.safetensors"))
        XCTAssertEqual(file.metadata, ["format": "pt"])
        XCTAssertEqual(file.names, ["B", "a", "a.b", "a_b", "empty", "layer.10.weight", "layer.2.weight", "scalar", "z", "été"])
        for (k, (name, shape)) in Self.writerTensors.enumerated() {
            let entry = try XCTUnwrap(file.entry(named: name))
            XCTAssertEqual(entry.dtype, .f32)
            XCTAssertEqual(entry.shape, shape)
            XCTAssertEqual(entry.byteCount, shape.reduce(4, *))
            let t = try file.tensor(named: name)
            XCTAssertEqual(t.shape, shape)
            XCTAssertEqual(t.scalars, Self.writerValues(k, shape), name)
        }
        XCTAssertEqual(try file.loadAll().count, Self.writerTensors.count)
    }

    func testReadsHalfAndBFloat16() throws {
        let f16 = try SafeTensorsFile(contentsOf: formatFixture("st_writer_f16.safetensors"))
        let bf16 = try SafeTensorsFile(contentsOf: formatFixture("st_writer_bf16.safetensors"))
        XCTAssertEqual(f16.metadata, ["note": Self.trickyNote])
        XCTAssertEqual(bf16.metadata, [:])
        for (k, (name, shape)) in Self.writerTensors.enumerated() {
            let exact = Self.writerValues(k, shape)
            let a = try f16.tensor(named: name).scalars
            let b = try bf16.tensor(named: name).scalars
            for i in 0..<exact.count {
                XCTAssertEqual(a[i], exact[i], accuracy: abs(exact[i]) / 1024 + 1e-7, "\(name)[\(i)] f16")
                XCTAssertEqual(b[i], exact[i], accuracy: abs(exact[i]) / 128 + 1e-7, "\(name)[\(i)] bf16")
                XCTAssertEqual(HalfFloat.half(from: a[i]), HalfFloat.half(from: exact[i]), "\(name)[\(i)] f16 rounding")
                XCTAssertEqual(HalfFloat.bfloat16(from: b[i]), HalfFloat.bfloat16(from: exact[i]), "\(name)[\(i)] bf16 rounding")
            }
        }
    }

    func testReadsEveryDType() throws {
        let file = try SafeTensorsFile(contentsOf: formatFixture("st_all_dtypes.safetensors"))
        XCTAssertEqual(file.metadata, ["format": "pt", "epoch": "3", "note": Self.trickyNote])
        let base = (0..<12).map { Float($0 % 7) }
        let signed = base.map { $0 - 3 }
        let expected: [String: ([Int], [Float])] = [
            "f64": ([3, 4], signed.map { $0 * 0.25 }), "f32": ([2, 6], signed.map { $0 * 0.5 }),
            "f16": ([12], signed.map { $0 * 0.125 }), "bf16": ([4, 3], signed.map { $0 * 2 }),
            "i64": ([6, 2], signed.map { $0 * 1000 }), "i32": ([12], signed.map { $0 * 100 }),
            "i16": ([12], signed.map { $0 * 10 }), "i8": ([12], signed),
            "u8": ([12], base.map { $0 * 30 }), "u16": ([12], base.map { $0 * 9000 }),
            "u32": ([12], base.map { $0 * 600_000 }), "u64": ([12], base.map { $0 * 5 }),
            "bool": ([12], base.map { Float(Int($0) % 2) }), "scalar": ([], [7.5]), "empty": ([0, 4], []),
        ]
        XCTAssertEqual(Set(file.names), Set(expected.keys))
        for (name, (shape, values)) in expected {
            let t = try file.tensor(named: name)
            XCTAssertEqual(t.shape, shape, name)
            XCTAssertEqual(t.scalars, values, name)
        }
        XCTAssertEqual(file.entry(named: "bf16")?.dtype, .bf16)
        XCTAssertEqual(file.entry(named: "bool")?.dtype, .bool)
    }

    // MARK: Writing, byte for byte against Python

    func testWriterMatchesPythonBytesF32() throws {
        let out = formatScratchDirectory(self).appendingPathComponent("w.safetensors")
        try SafeTensorsWriter.write(Self.writerTensorList(), metadata: ["format": "pt"], to: out)
        XCTAssertEqual(try bytes(out), try bytes(formatFixture("st_writer_f32.safetensors")))
    }

    func testWriterMatchesPythonBytesF16WithEscapedMetadata() throws {
        let out = formatScratchDirectory(self).appendingPathComponent("w.safetensors")
        try SafeTensorsWriter.write(Self.writerTensorList(), metadata: ["note": Self.trickyNote], to: out, dtype: .f16)
        XCTAssertEqual(try bytes(out), try bytes(formatFixture("st_writer_f16.safetensors")))
    }

    func testWriterMatchesPythonBytesBF16WithoutMetadata() throws {
        let out = formatScratchDirectory(self).appendingPathComponent("w.safetensors")
        let dict = Dictionary(uniqueKeysWithValues: Self.writerTensorList())
        try SafeTensorsWriter.write(dict, to: out, dtype: .bf16)
        XCTAssertEqual(try bytes(out), try bytes(formatFixture("st_writer_bf16.safetensors")))
    }

    func testRoundTripOfViewsAndSortedMetadata() throws {
        let dir = formatScratchDirectory(self)
        let out = dir.appendingPathComponent("model.safetensors")
        let base = Tensor(shape: [2, 3], data: [1, 2, 3, 4, 5, 6])
        let transposed = base.transposed(0, 1)  // a non-contiguous view is written row-major
        try SafeTensorsWriter.write(["t": transposed, "b": base], metadata: ["z": "1", "a": "2"], to: out)
        let file = try SafeTensorsFile(contentsOf: out)
        XCTAssertEqual(file.metadata, ["z": "1", "a": "2"])
        XCTAssertEqual(try file.tensor(named: "t").shape, [3, 2])
        XCTAssertEqual(try file.tensor(named: "t").scalars, [1, 4, 2, 5, 3, 6])
        XCTAssertEqual(try file.tensor(named: "b").scalars, [1, 2, 3, 4, 5, 6])
        let header = String(decoding: try bytes(out)[8..<(8 + 40)], as: UTF8.self)
        XCTAssertTrue(header.hasPrefix("{\"__metadata__\":{\"a\":\"2\",\"z\":\"1\"}"), header)

        // Overwriting replaces the file and leaves no temporary files behind.
        try SafeTensorsWriter.write(["only": Tensor(shape: [1], data: [9])], to: out)
        XCTAssertEqual(try SafeTensorsFile(contentsOf: out).names, ["only"])
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir.path), ["model.safetensors"])
    }

    func testWriterRejectsBadInput() {
        let dir = formatScratchDirectory(self)
        let out = dir.appendingPathComponent("bad.safetensors")
        let t = Tensor(shape: [1], data: [0])
        assertFormatError(out, { try SafeTensorsWriter.write([("x", t), ("x", t)], to: out) }) {
            if case .duplicateName(_, "x") = $0 { return true } else { return false }
        }
        assertFormatError(out, { try SafeTensorsWriter.write([("__metadata__", t)], to: out) }) {
            if case .invalidEntry = $0 { return true } else { return false }
        }
        let missing = dir.appendingPathComponent("no/such/dir/x.safetensors")
        assertFormatError(missing, { try SafeTensorsWriter.write([("x", t)], to: missing) }) {
            if case .writeFailed = $0 { return true } else { return false }
        }
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir.path), [])
    }

    func testHalfConversionEdgeCases() {
        let cases: [(Float, UInt16)] = [
            (0, 0x0000), (-0.0, 0x8000), (1, 0x3C00), (-2, 0xC000), (65504, 0x7BFF), (65520, 0x7C00),
            (65519.99, 0x7BFF), (1e9, 0x7C00), (.infinity, 0x7C00), (-.infinity, 0xFC00),
            (5.960464477539063e-08, 0x0001), (2.9802322387695312e-08, 0x0000), (4.470348358154297e-08, 0x0001),
            (6.097555160522461e-05, 0x03FF), (6.103515625e-05, 0x0400), (1.0009765625, 0x3C01),
            (1.00048828125, 0x3C00), (1.00146484375, 0x3C02),
        ]
        for (f, h) in cases {
            XCTAssertEqual(HalfFloat.half(from: f), h, "\(f)")
        }
        XCTAssertTrue(HalfFloat.float(fromHalf: HalfFloat.half(from: .nan)).isNaN)
        for h in UInt16.min...UInt16.max where (h & 0x7C00) != 0x7C00 {
            XCTAssertEqual(HalfFloat.half(from: HalfFloat.float(fromHalf: h)), h)
        }
        XCTAssertEqual(HalfFloat.bfloat16(from: 1.00390625), 0x3F80)  // tie to even
        XCTAssertEqual(HalfFloat.bfloat16(from: 1.01171875), 0x3F82)
        XCTAssertTrue(HalfFloat.float(fromBFloat16: HalfFloat.bfloat16(from: .nan)).isNaN)
    }

    // MARK: Corrupt files

    /// Writes `u64 len(header) ‖ header ‖ data` and returns its URL.
    private func rawFile(_ header: String, data: [UInt8] = [], length: UInt64? = nil, name: String = "corrupt.safetensors") -> URL {
        let url = formatScratchDirectory(self).appendingPathComponent(name)
        let h = Array(header.utf8)
        var bytes = withUnsafeBytes(of: (length ?? UInt64(h.count)).littleEndian) { Array($0) }
        bytes += h + data
        try! Data(bytes).write(to: url)
        return url
    }

    private func open(_ url: URL) throws -> SafeTensorsFile { try SafeTensorsFile(contentsOf: url) }

    func testTruncatedAndOversizedHeaders() {
        let empty = rawFile("", name: "empty.safetensors")
        try! Data().write(to: empty)
        assertFormatError(empty, { try open(empty) }) { if case .truncated = $0 { return true } else { return false } }
        let short = rawFile("", name: "short.safetensors")
        try! Data([1, 2, 3]).write(to: short)
        assertFormatError(short, { try open(short) }) { if case .truncated = $0 { return true } else { return false } }
        let beyond = rawFile("{}", length: 1000)
        assertFormatError(beyond, { try open(beyond) }) { if case .headerTooLarge(_, 1000, _) = $0 { return true } else { return false } }
        let huge = rawFile("{}", length: UInt64.max)
        assertFormatError(huge, { try open(huge) }) { if case .headerTooLarge = $0 { return true } else { return false } }
        let missing = formatScratchDirectory(self).appendingPathComponent("missing.safetensors")
        assertFormatError(missing, { try open(missing) }) { if case .unreadable = $0 { return true } else { return false } }
    }

    func testInvalidJSON() {
        for header in ["{\"a\":", "not json", "[1,2]", "\"text\""] {
            let url = rawFile(header)
            assertFormatError(url, { try open(url) }) { if case .invalidHeader = $0 { return true } else { return false } }
        }
    }

    func testMalformedEntries() {
        let cases = [
            "{\"x\":[1]}", "{\"x\":{\"shape\":[1],\"data_offsets\":[0,4]}}",
            "{\"x\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}",
            "{\"x\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,4]}}",
            "{\"x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,0]}}",
            "{\"x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0]}}",
            "{\"__metadata__\":{\"k\":1}}", "{\"__metadata__\":[\"k\"]}",
        ]
        for header in cases {
            let url = rawFile(header, data: [0, 0, 0, 0])
            assertFormatError(url, { try open(url) }) {
                if case .invalidEntry(_, let key, _) = $0 { return key == "x" || key.hasPrefix("__metadata__") }
                return false
            }
        }
    }

    func testBadOffsetsAndDTypes() {
        let data = [UInt8](repeating: 0, count: 16)
        let outside = rawFile("{\"w\":{\"dtype\":\"F32\",\"shape\":[5],\"data_offsets\":[0,20]}}", data: data)
        assertFormatError(outside, { try open(outside) }) {
            if case .offsetsOutOfBounds(_, "w", 0, 20, 16) = $0 { return true } else { return false }
        }
        let overlap = rawFile("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                              + "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", data: data)
        assertFormatError(overlap, { try open(overlap) }) {
            if case .overlappingTensors(_, "b", "a") = $0 { return true } else { return false }
        }
        let mismatch = rawFile("{\"w\":{\"dtype\":\"F16\",\"shape\":[2,2],\"data_offsets\":[0,16]}}", data: data)
        assertFormatError(mismatch, { try open(mismatch) }) {
            if case .sizeMismatch(_, "w", 8, 16) = $0 { return true } else { return false }
        }
        let overflow = rawFile("{\"w\":{\"dtype\":\"F32\",\"shape\":[4611686018427387904,4],\"data_offsets\":[0,16]}}", data: data)
        assertFormatError(overflow, { try open(overflow) }) {
            if case .invalidShape(_, "w", _) = $0 { return true } else { return false }
        }
        let unknown = rawFile("{\"w\":{\"dtype\":\"F7\",\"shape\":[4],\"data_offsets\":[0,16]}}", data: data)
        assertFormatError(unknown, { try open(unknown) }) {
            if case .unknownDType(_, "w", "F7") = $0 { return true } else { return false }
        }
    }

    func testTensorNotFoundSuggestsSimilarNames() throws {
        let url = formatFixture("st_writer_f32.safetensors")
        let file = try open(url)
        assertFormatError(url, { try file.tensor(named: "layer.3.weight") }) {
            if case let .tensorNotFound(_, "layer.3.weight", similar) = $0 {
                return similar == ["layer.10.weight", "layer.2.weight"]
            }
            return false
        }
    }

    func testInspectorListsSafeTensors() throws {
        let text = try ModelFileInspector.describe(url: formatFixture("st_all_dtypes.safetensors"))
        XCTAssertTrue(text.contains("format: safetensors, 15 tensors"), text)
        XCTAssertTrue(text.contains("epoch"), text)
        XCTAssertTrue(text.contains("\\n"), "newlines in metadata are escaped:\n\(text)")
        XCTAssertTrue(text.contains("[4, 3]"), text)
        XCTAssertTrue(text.contains("total: 15 tensors, 157 parameters, 568 bytes"), text)
        let junk = rawFile("", name: "junk.bin")
        try Data("hello world, not a model".utf8).write(to: junk)
        assertFormatError(junk, { try ModelFileInspector.describe(url: junk) }) {
            if case .unrecognizedFormat = $0 { return true } else { return false }
        }
    }
}
