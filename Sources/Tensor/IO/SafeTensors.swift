import Foundation

/// Element types of the safetensors format, named as in the file's JSON header.
///
/// `Comparable` follows the order the reference writer sorts by (its dtype enum order), so a
/// writer can reproduce its byte layout.
public enum SafeTensorsDType: String, CaseIterable, Sendable, Comparable {
    case bool = "BOOL", u8 = "U8", i8 = "I8", i16 = "I16", u16 = "U16"
    case f16 = "F16", bf16 = "BF16", i32 = "I32", u32 = "U32", f32 = "F32"
    case f64 = "F64", i64 = "I64", u64 = "U64"

    /// Bytes per element.
    public var size: Int {
        switch self {
        case .bool, .u8, .i8: return 1
        case .i16, .u16, .f16, .bf16: return 2
        case .i32, .u32, .f32: return 4
        case .f64, .i64, .u64: return 8
        }
    }

    var rank: Int { Self.allCases.firstIndex(of: self)! }
    public static func < (a: Self, b: Self) -> Bool { a.rank < b.rank }
}

/// One tensor listed in a safetensors header.
public struct SafeTensorsEntry: Sendable, Equatable {
    public let name: String
    public let dtype: SafeTensorsDType
    /// PyTorch order, outermost first.
    public let shape: [Int]
    /// Byte range relative to the start of the data section (just after the header).
    public let dataOffsets: Range<Int>
    public var elementCount: Int { shape.reduce(1, *) }
    public var byteCount: Int { dataOffsets.count }
}

/// A safetensors file, memory-mapped read-only.
///
/// Layout: u64 little-endian header length N, N bytes of JSON
/// `{"__metadata__": {str: str}, name: {"dtype", "shape", "data_offsets": [begin, end]}, …}`,
/// then the data section. All offsets, dtypes and sizes are validated on open.
public struct SafeTensorsFile: @unchecked Sendable {
    /// Header lengths above this are refused, as the reference implementation does.
    public static let maxHeaderLength = 100_000_000

    public let url: URL
    /// The `__metadata__` string map (empty when absent).
    public let metadata: [String: String]
    /// Tensors in the order their bytes appear in the file.
    public let entries: [SafeTensorsEntry]
    /// 8 + JSON header length: where the data section starts.
    public let dataStart: Int
    private let file: MappedFile
    private let index: [String: Int]

    public init(contentsOf url: URL) throws {
        self.url = url
        file = try MappedFile(url: url)
        let path = file.path
        var cursor = ByteCursor(file)
        let length = try cursor.read(UInt64.self, "safetensors header length")
        guard length <= UInt64(file.size - 8), length <= UInt64(Self.maxHeaderLength) else {
            throw FileFormatError.headerTooLarge(file: path, length: length, fileSize: file.size)
        }
        dataStart = 8 + Int(length)
        let header = Data(bytes: file.base + 8, count: Int(length))
        let json: Any
        do {
            json = try JSONSerialization.jsonObject(with: header, options: [])
        } catch {
            throw FileFormatError.invalidHeader(file: path, reason: "\(error.localizedDescription)")
        }
        guard let object = json as? [String: Any] else {
            throw FileFormatError.invalidHeader(file: path, reason: "the header is not a JSON object")
        }
        var metadata: [String: String] = [:]
        var entries: [SafeTensorsEntry] = []
        let dataSize = file.size - dataStart
        for (key, value) in object {
            if key == "__metadata__" {
                guard let map = value as? [String: Any] else {
                    throw FileFormatError.invalidEntry(file: path, key: key, reason: "must be an object of strings")
                }
                for (k, v) in map {
                    guard let s = v as? String else {
                        throw FileFormatError.invalidEntry(file: path, key: "__metadata__.\(k)", reason: "value is not a string")
                    }
                    metadata[k] = s
                }
                continue
            }
            entries.append(try Self.parseEntry(name: key, value, dataSize: dataSize, path: path))
        }
        entries.sort { ($0.dataOffsets.lowerBound, $0.dataOffsets.upperBound, $0.name) < ($1.dataOffsets.lowerBound, $1.dataOffsets.upperBound, $1.name) }
        var lastNonEmpty: SafeTensorsEntry?
        for entry in entries where !entry.dataOffsets.isEmpty {
            if let previous = lastNonEmpty, entry.dataOffsets.lowerBound < previous.dataOffsets.upperBound {
                throw FileFormatError.overlappingTensors(file: path, tensor: entry.name, other: previous.name)
            }
            lastNonEmpty = entry
        }
        self.metadata = metadata
        self.entries = entries
        index = Dictionary(uniqueKeysWithValues: entries.enumerated().map { ($1.name, $0) })
    }

    private static func parseEntry(name: String, _ value: Any, dataSize: Int, path: String) throws -> SafeTensorsEntry {
        guard let fields = value as? [String: Any] else {
            throw FileFormatError.invalidEntry(file: path, key: name, reason: "is not an object")
        }
        guard let dtypeName = fields["dtype"] as? String else {
            throw FileFormatError.invalidEntry(file: path, key: name, reason: "missing string field 'dtype'")
        }
        guard let dtype = SafeTensorsDType(rawValue: dtypeName) else {
            throw FileFormatError.unknownDType(file: path, tensor: name, dtype: dtypeName)
        }
        guard let shape = integers(fields["shape"]), shape.allSatisfy({ $0 >= 0 }) else {
            throw FileFormatError.invalidEntry(file: path, key: name, reason: "'shape' must be a list of non-negative integers")
        }
        guard let offsets = integers(fields["data_offsets"]), offsets.count == 2,
              offsets[0] >= 0, offsets[0] <= offsets[1] else {
            throw FileFormatError.invalidEntry(file: path, key: name, reason: "'data_offsets' must be [begin, end] with 0 ≤ begin ≤ end")
        }
        guard offsets[1] <= dataSize else {
            throw FileFormatError.offsetsOutOfBounds(file: path, tensor: name, start: offsets[0], end: offsets[1], limit: dataSize)
        }
        var bytes = dtype.size
        for d in shape {
            let (product, overflow) = bytes.multipliedReportingOverflow(by: d)
            if overflow { throw FileFormatError.invalidShape(file: path, tensor: name, reason: "\(shape) overflows") }
            bytes = product
        }
        guard bytes == offsets[1] - offsets[0] else {
            throw FileFormatError.sizeMismatch(file: path, tensor: name, expected: bytes, actual: offsets[1] - offsets[0])
        }
        return SafeTensorsEntry(name: name, dtype: dtype, shape: shape, dataOffsets: offsets[0]..<offsets[1])
    }

    /// JSON numbers as exact non-fractional integers, or nil.
    private static func integers(_ value: Any?) -> [Int]? {
        guard let list = value as? [Any] else { return nil }
        var out: [Int] = []
        out.reserveCapacity(list.count)
        for item in list {
            guard let number = item as? NSNumber else { return nil }
            let d = number.doubleValue
            guard d.rounded() == d, abs(d) < 9.0e18, let i = item as? Int else { return nil }
            out.append(i)
        }
        return out
    }

    /// Tensor names in file order.
    public var names: [String] { entries.map(\.name) }

    /// The header entry for `name`, if present.
    public func entry(named name: String) -> SafeTensorsEntry? {
        index[name].map { entries[$0] }
    }

    /// Loads one tensor, converting its elements to float32 (booleans become 0 or 1).
    public func tensor(named name: String) throws -> Tensor {
        guard let entry = entry(named: name) else {
            throw FileFormatError.tensorNotFound(file: file.path, name: name,
                                                 similar: FileFormatError.similarNames(to: name, in: names))
        }
        let out = Tensor(zeros: entry.shape)
        SafeTensorsFile.convert(entry.dtype, from: file.base + dataStart + entry.dataOffsets.lowerBound,
                                count: entry.elementCount, into: out.storage.pointer)
        return out
    }

    /// Loads every tensor.
    public func loadAll() throws -> [String: Tensor] {
        var out: [String: Tensor] = [:]
        for entry in entries { out[entry.name] = try tensor(named: entry.name) }
        return out
    }

    static func convert(_ dtype: SafeTensorsDType, from src: UnsafeRawPointer, count: Int,
                        into dst: UnsafeMutablePointer<Float>) {
        parallelFor(count, grain: 1 << 16) { start, end in
            func each<T>(_: T.Type, _ f: (T) -> Float) {
                let size = MemoryLayout<T>.size
                for i in start..<end { dst[i] = f(src.loadUnaligned(fromByteOffset: i * size, as: T.self)) }
            }
            switch dtype {
            case .f32: memcpy(dst + start, src + start * 4, (end - start) * 4)
            case .f16: each(UInt16.self) { HalfFloat.float(fromHalf: UInt16(littleEndian: $0)) }
            case .bf16: each(UInt16.self) { HalfFloat.float(fromBFloat16: UInt16(littleEndian: $0)) }
            case .f64: each(UInt64.self) { Float(Double(bitPattern: UInt64(littleEndian: $0))) }
            case .i64: each(Int64.self) { Float(Int64(littleEndian: $0)) }
            case .u64: each(UInt64.self) { Float(UInt64(littleEndian: $0)) }
            case .i32: each(Int32.self) { Float(Int32(littleEndian: $0)) }
            case .u32: each(UInt32.self) { Float(UInt32(littleEndian: $0)) }
            case .i16: each(Int16.self) { Float(Int16(littleEndian: $0)) }
            case .u16: each(UInt16.self) { Float(UInt16(littleEndian: $0)) }
            case .i8: each(Int8.self) { Float($0) }
            case .u8: each(UInt8.self) { Float($0) }
            case .bool: each(UInt8.self) { $0 != 0 ? 1 : 0 }
            }
        }
    }
}

/// Writes safetensors files byte-identical to Python `safetensors` (`save_file`) output.
///
/// The reference writer orders tensors by dtype (largest enum first), then by name compared
/// byte-wise, lays their bytes out in that order, writes compact JSON with the metadata first,
/// and pads the header with spaces to a multiple of 8. Metadata keys are written sorted (the
/// reference writes them in hash order, so files with several metadata keys can only match it
/// up to key order).
public enum SafeTensorsWriter {
    /// Element types Sura can write.
    public enum OutputType: Sendable {
        case f32, f16, bf16
        var dtype: SafeTensorsDType { self == .f32 ? .f32 : self == .f16 ? .f16 : .bf16 }
    }

    /// Writes `tensors` (any layout; values are read row-major) to `url` via a temporary file.
    public static func write(_ tensors: [String: Tensor], metadata: [String: String]? = nil,
                             to url: URL, dtype: OutputType = .f32) throws {
        try write(tensors.map { ($0.key, $0.value) }, metadata: metadata, to: url, dtype: dtype)
    }

    /// Writes named tensors; names must be unique and must not be `__metadata__`.
    public static func write(_ tensors: [(String, Tensor)], metadata: [String: String]? = nil,
                             to url: URL, dtype: OutputType = .f32) throws {
        var seen = Set<String>()
        for (name, _) in tensors {
            if name == "__metadata__" {
                throw FileFormatError.invalidEntry(file: url.path, key: name, reason: "reserved name")
            }
            if !seen.insert(name).inserted { throw FileFormatError.duplicateName(file: url.path, name: name) }
        }
        let ordered = tensors.sorted { Array($0.0.utf8).lexicographicallyPrecedes(Array($1.0.utf8)) }
        let header = headerBytes(ordered.map { ($0.0, $0.1.shape) }, metadata: metadata, dtype: dtype.dtype)

        var writer = try AtomicFileWriter(url: url)
        do {
            var length = UInt64(header.count).littleEndian
            try withUnsafeBytes(of: &length) { try writer.write($0) }
            try writer.write(header)
            for (_, tensor) in ordered { try writeValues(tensor, as: dtype, to: &writer) }
            try writer.commit()
        } catch {
            writer.discard()
            throw error
        }
    }

    /// The padded JSON header for tensors of one dtype, in the order given.
    static func headerBytes(_ tensors: [(String, [Int])], metadata: [String: String]?,
                            dtype: SafeTensorsDType) -> [UInt8] {
        var json: [UInt8] = Array("{".utf8)
        var first = true
        func separator() { if !first { json.append(UInt8(ascii: ",")) }; first = false }
        if let metadata {
            separator()
            appendJSONString("__metadata__", to: &json)
            json.append(contentsOf: Array(":{".utf8))
            let keys = metadata.keys.sorted { Array($0.utf8).lexicographicallyPrecedes(Array($1.utf8)) }
            for (i, key) in keys.enumerated() {
                if i > 0 { json.append(UInt8(ascii: ",")) }
                appendJSONString(key, to: &json)
                json.append(UInt8(ascii: ":"))
                appendJSONString(metadata[key]!, to: &json)
            }
            json.append(UInt8(ascii: "}"))
        }
        var offset = 0
        for (name, shape) in tensors {
            separator()
            let bytes = shape.reduce(dtype.size, *)
            appendJSONString(name, to: &json)
            let shapeText = shape.map(String.init).joined(separator: ",")
            json.append(contentsOf: Array(":{\"dtype\":\"\(dtype.rawValue)\",\"shape\":[\(shapeText)],\"data_offsets\":[\(offset),\(offset + bytes)]}".utf8))
            offset += bytes
        }
        json.append(UInt8(ascii: "}"))
        json.append(contentsOf: [UInt8](repeating: UInt8(ascii: " "), count: (8 - json.count % 8) % 8))
        return json
    }

    /// JSON string escaping exactly as serde_json does it: `"` `\` and control characters only.
    static func appendJSONString(_ s: String, to out: inout [UInt8]) {
        let hex = Array("0123456789abcdef".utf8)
        out.append(UInt8(ascii: "\""))
        for byte in s.utf8 {
            switch byte {
            case UInt8(ascii: "\""): out.append(contentsOf: [0x5C, 0x22])
            case UInt8(ascii: "\\"): out.append(contentsOf: [0x5C, 0x5C])
            case 0x08: out.append(contentsOf: [0x5C, UInt8(ascii: "b")])
            case 0x0C: out.append(contentsOf: [0x5C, UInt8(ascii: "f")])
            case 0x0A: out.append(contentsOf: [0x5C, UInt8(ascii: "n")])
            case 0x0D: out.append(contentsOf: [0x5C, UInt8(ascii: "r")])
            case 0x09: out.append(contentsOf: [0x5C, UInt8(ascii: "t")])
            case 0..<0x20: out.append(contentsOf: Array("\\u00".utf8) + [hex[Int(byte >> 4)], hex[Int(byte & 15)]])
            default: out.append(byte)
            }
        }
        out.append(UInt8(ascii: "\""))
    }

    /// Streams a tensor's row-major values in 1 MiB chunks, converted to the output type.
    private static func writeValues(_ tensor: Tensor, as dtype: OutputType, to writer: inout AtomicFileWriter) throws {
        let values = tensor.isContiguous ? tensor : tensor.contiguousCopy()
        let src = values.pointer
        let n = values.count
        let chunk = 1 << 18
        var buffer = [UInt8](repeating: 0, count: chunk * dtype.dtype.size)
        var start = 0
        while start < n {
            let m = min(chunk, n - start)
            let byteCount = m * dtype.dtype.size
            try buffer.withUnsafeMutableBytes { raw in
                switch dtype {
                case .f32:
                    for i in 0..<m { raw.storeBytes(of: src[start + i].bitPattern.littleEndian, toByteOffset: i * 4, as: UInt32.self) }
                case .f16:
                    for i in 0..<m { raw.storeBytes(of: HalfFloat.half(from: src[start + i]).littleEndian, toByteOffset: i * 2, as: UInt16.self) }
                case .bf16:
                    for i in 0..<m { raw.storeBytes(of: HalfFloat.bfloat16(from: src[start + i]).littleEndian, toByteOffset: i * 2, as: UInt16.self) }
                }
                try writer.write(UnsafeRawBufferPointer(rebasing: raw[0..<byteCount]))
            }
            start += m
        }
    }
}
