import Foundation

/// Type tags of GGUF metadata values.
public enum GGUFValueType: UInt32, Sendable {
    case uint8 = 0, int8, uint16, int16, uint32, int32, float32, bool, string, array, uint64, int64, float64

    /// Fewest bytes one value of this type can occupy; bounds array counts before allocation.
    var minimumSize: Int {
        switch self {
        case .uint8, .int8, .bool: return 1
        case .uint16, .int16: return 2
        case .uint32, .int32, .float32: return 4
        case .uint64, .int64, .float64, .string: return 8
        case .array: return 12
        }
    }

    public var name: String {
        switch self {
        case .uint8: return "u8"
        case .int8: return "i8"
        case .uint16: return "u16"
        case .int16: return "i16"
        case .uint32: return "u32"
        case .int32: return "i32"
        case .float32: return "f32"
        case .bool: return "bool"
        case .string: return "string"
        case .array: return "array"
        case .uint64: return "u64"
        case .int64: return "i64"
        case .float64: return "f64"
        }
    }
}

/// One GGUF metadata value. Arrays keep their element type (needed for empty arrays).
public enum GGUFValue: Sendable, Equatable {
    case uint8(UInt8), int8(Int8), uint16(UInt16), int16(Int16)
    case uint32(UInt32), int32(Int32), uint64(UInt64), int64(Int64)
    case float32(Float), float64(Double), bool(Bool), string(String)
    case array(GGUFValueType, [GGUFValue])

    public var type: GGUFValueType {
        switch self {
        case .uint8: return .uint8
        case .int8: return .int8
        case .uint16: return .uint16
        case .int16: return .int16
        case .uint32: return .uint32
        case .int32: return .int32
        case .uint64: return .uint64
        case .int64: return .int64
        case .float32: return .float32
        case .float64: return .float64
        case .bool: return .bool
        case .string: return .string
        case .array: return .array
        }
    }

    public var string: String? {
        if case let .string(s) = self { return s }
        return nil
    }

    /// Any integer value as `Int` (nil for floats, or a u64 beyond `Int.max`).
    public var int: Int? {
        switch self {
        case let .uint8(v): return Int(v)
        case let .int8(v): return Int(v)
        case let .uint16(v): return Int(v)
        case let .int16(v): return Int(v)
        case let .uint32(v): return Int(v)
        case let .int32(v): return Int(v)
        case let .uint64(v): return Int(exactly: v)
        case let .int64(v): return Int(v)
        default: return nil
        }
    }

    /// Any numeric value as `Double`.
    public var float: Double? {
        switch self {
        case let .float32(v): return Double(v)
        case let .float64(v): return v
        default: return int.map(Double.init)
        }
    }

    public var bool: Bool? {
        if case let .bool(b) = self { return b }
        return nil
    }

    public var array: [GGUFValue]? {
        if case let .array(_, values) = self { return values }
        return nil
    }

    /// An array of strings, or nil when this is not one.
    public var stringArray: [String]? {
        guard case let .array(type, values) = self, type == .string else { return nil }
        return values.map { $0.string ?? "" }
    }

    /// An array of integers, or nil when this is not one.
    public var intArray: [Int]? {
        guard let values = array else { return nil }
        let ints = values.compactMap(\.int)
        return ints.count == values.count ? ints : nil
    }

    /// An array of numbers as floats, or nil when this is not one.
    public var floatArray: [Float]? {
        guard let values = array else { return nil }
        let floats = values.compactMap { $0.float.map(Float.init) }
        return floats.count == values.count ? floats : nil
    }
}

/// ggml tensor element types: block size (elements) and bytes per block.
public enum GGMLType: UInt32, Sendable, CaseIterable {
    case f32 = 0, f16 = 1, q4_0 = 2, q4_1 = 3, q5_0 = 6, q5_1 = 7, q8_0 = 8, q8_1 = 9
    case q2_K = 10, q3_K = 11, q4_K = 12, q5_K = 13, q6_K = 14, q8_K = 15
    case iq2_xxs = 16, iq2_xs = 17, iq3_xxs = 18, iq1_s = 19, iq4_nl = 20, iq3_s = 21, iq2_s = 22, iq4_xs = 23
    case i8 = 24, i16 = 25, i32 = 26, i64 = 27, f64 = 28, iq1_m = 29, bf16 = 30
    case tq1_0 = 34, tq2_0 = 35, mxfp4 = 39

    /// (elements per block, bytes per block), as in ggml's type traits.
    public var blockLayout: (elements: Int, bytes: Int) {
        switch self {
        case .f32, .i32: return (1, 4)
        case .f16, .bf16, .i16: return (1, 2)
        case .i8: return (1, 1)
        case .f64, .i64: return (1, 8)
        case .q4_0, .iq4_nl: return (32, 18)
        case .q4_1: return (32, 20)
        case .q5_0: return (32, 22)
        case .q5_1: return (32, 24)
        case .q8_0: return (32, 34)
        case .q8_1: return (32, 40)
        case .q2_K: return (256, 84)
        case .q3_K: return (256, 110)
        case .q4_K: return (256, 144)
        case .q5_K: return (256, 176)
        case .q6_K: return (256, 210)
        case .q8_K: return (256, 292)
        case .iq2_xxs: return (256, 66)
        case .iq2_xs: return (256, 74)
        case .iq3_xxs: return (256, 98)
        case .iq1_s: return (256, 50)
        case .iq3_s: return (256, 110)
        case .iq2_s: return (256, 82)
        case .iq4_xs: return (256, 136)
        case .iq1_m: return (256, 56)
        case .tq1_0: return (256, 54)
        case .tq2_0: return (256, 66)
        case .mxfp4: return (32, 17)
        }
    }

    /// The name ggml and llama.cpp print, e.g. `Q4_K`.
    public var name: String { String(describing: self).uppercased() }
}

/// One tensor listed in a GGUF file.
public struct GGUFTensorInfo: Sendable, Equatable {
    public let name: String
    /// ggml order, innermost first: `ggmlDims[0]` is the row length.
    public let ggmlDims: [Int]
    /// PyTorch order, outermost first (`ggmlDims` reversed).
    public var shape: [Int] { ggmlDims.reversed() }
    public let type: GGMLType
    /// Byte offset relative to the start of the data section.
    public let offset: Int
    public let byteCount: Int
    public var elementCount: Int { ggmlDims.reduce(1, *) }
}

/// A GGUF (v2 or v3) model file, memory-mapped read-only.
///
/// Layout: "GGUF", u32 version, u64 tensor count, u64 metadata count, metadata (string key,
/// u32 type, value), tensor infos (name, u32 n_dims, u64 dims innermost first, u32 type,
/// u64 offset), padding to `general.alignment` (default 32), then the data section.
public struct GGUFFile: @unchecked Sendable {
    public let url: URL
    public let version: UInt32
    public let metadata: [String: GGUFValue]
    /// Metadata keys in file order.
    public let metadataKeys: [String]
    /// Tensors in the order they are listed.
    public let tensors: [GGUFTensorInfo]
    public let alignment: Int
    /// Absolute byte offset of the data section.
    public let dataOffset: Int
    private let file: MappedFile
    private let index: [String: Int]

    /// Nested arrays deeper than this are refused rather than recursed into.
    static let maxArrayDepth = 8
    /// Longest metadata array accepted (real vocabularies are under 300k entries); each element
    /// costs 24 bytes in memory, so a cap keeps a hostile file from costing 24× its size.
    public static let maxArrayLength = 1 << 24

    public init(contentsOf url: URL) throws {
        self.url = url
        file = try MappedFile(url: url)
        let path = file.path
        var cursor = ByteCursor(file)
        try cursor.require(4, "GGUF magic")
        let magic = UnsafeRawBufferPointer(start: file.base, count: 4)
        guard Array(magic) == Array("GGUF".utf8) else {
            throw FileFormatError.badMagic(file: path, found: Self.printable(Array(magic)) + " (expected \"GGUF\")")
        }
        cursor.position = 4
        version = try cursor.read(UInt32.self, "GGUF version")
        guard version == 2 || version == 3 else {
            throw FileFormatError.unsupportedVersion(file: path, version: version)
        }
        let tensorCount = try cursor.read(UInt64.self, "tensor count")
        let keyCount = try cursor.read(UInt64.self, "metadata count")
        // A key-value pair takes at least 13 bytes, a tensor info at least 24.
        try Self.checkCount(keyCount, minimumSize: 13, cursor: cursor, context: "metadata count")
        try Self.checkCount(tensorCount, minimumSize: 24, cursor: cursor, context: "tensor count")

        var metadata: [String: GGUFValue] = [:]
        var keys: [String] = []
        for i in 0..<Int(keyCount) {
            let key = try cursor.readString("metadata key #\(i)")
            let rawType = try cursor.read(UInt32.self, "type of metadata '\(key)'")
            guard let type = GGUFValueType(rawValue: rawType) else {
                throw FileFormatError.unknownValueType(file: path, key: key, type: rawType)
            }
            let value = try Self.readValue(type, &cursor, key: key, depth: 0)
            if metadata.updateValue(value, forKey: key) != nil {
                throw FileFormatError.duplicateName(file: path, name: key)
            }
            keys.append(key)
        }
        if let a = metadata["general.alignment"] {
            guard case let .uint32(v) = a, v > 0, v & (v - 1) == 0 else {
                throw FileFormatError.invalidEntry(file: path, key: "general.alignment", reason: "must be a u32 power of two, got \(a)")
            }
            alignment = Int(v)
        } else {
            alignment = 32
        }

        var infos: [GGUFTensorInfo] = []
        var raw: [(name: String, dims: [Int], type: GGMLType, offset: UInt64)] = []
        for i in 0..<Int(tensorCount) {
            let name = try cursor.readString("name of tensor #\(i)")
            let rank = try cursor.read(UInt32.self, "rank of tensor '\(name)'")
            guard rank <= 4 else {
                throw FileFormatError.invalidShape(file: path, tensor: name, reason: "\(rank) dimensions (ggml allows at most 4)")
            }
            var dims: [Int] = []
            for d in 0..<Int(rank) {
                let n = try cursor.read(UInt64.self, "dimension \(d) of tensor '\(name)'")
                guard n <= UInt64(Int64.max) else {
                    throw FileFormatError.invalidShape(file: path, tensor: name, reason: "dimension \(d) is \(n)")
                }
                dims.append(Int(n))
            }
            let rawType = try cursor.read(UInt32.self, "type of tensor '\(name)'")
            guard let type = GGMLType(rawValue: rawType) else {
                throw FileFormatError.unknownDType(file: path, tensor: name, dtype: "ggml type \(rawType)")
            }
            let offset = try cursor.read(UInt64.self, "offset of tensor '\(name)'")
            raw.append((name, dims, type, offset))
        }
        dataOffset = (cursor.position + alignment - 1) / alignment * alignment
        let dataSize = max(0, file.size - dataOffset)
        if !raw.isEmpty && dataOffset > file.size {
            throw FileFormatError.truncated(file: path, context: "data section", needed: dataOffset - cursor.position,
                                            available: cursor.remaining)
        }

        var seen = Set<String>()
        for t in raw {
            guard seen.insert(t.name).inserted else { throw FileFormatError.duplicateName(file: path, name: t.name) }
            let (elements, blockBytes) = t.type.blockLayout
            var count = 1
            for d in t.dims {
                let (p, overflow) = count.multipliedReportingOverflow(by: d)
                if overflow { throw FileFormatError.invalidShape(file: path, tensor: t.name, reason: "\(t.dims) overflows") }
                count = p
            }
            let rowLength = t.dims.first ?? 1
            guard rowLength % elements == 0 else {
                throw FileFormatError.invalidShape(file: path, tensor: t.name,
                                                   reason: "row length \(rowLength) is not a multiple of the \(t.type.name) block size \(elements)")
            }
            let (bytes, overflow) = (count / elements).multipliedReportingOverflow(by: blockBytes)
            guard !overflow, t.offset <= UInt64(Int.max - bytes) else {
                throw FileFormatError.invalidShape(file: path, tensor: t.name, reason: "\(t.dims) × \(t.type.name) overflows")
            }
            let start = Int(t.offset)
            guard start + bytes <= dataSize else {
                throw FileFormatError.offsetsOutOfBounds(file: path, tensor: t.name, start: start, end: start + bytes, limit: dataSize)
            }
            guard start % alignment == 0 else {
                throw FileFormatError.invalidEntry(file: path, key: t.name, reason: "offset \(start) is not a multiple of the alignment \(alignment)")
            }
            infos.append(GGUFTensorInfo(name: t.name, ggmlDims: t.dims, type: t.type, offset: start, byteCount: bytes))
        }
        let byStart = infos.filter { $0.byteCount > 0 }.sorted { $0.offset < $1.offset }
        for (a, b) in zip(byStart, byStart.dropFirst()) where b.offset < a.offset + a.byteCount {
            throw FileFormatError.overlappingTensors(file: path, tensor: b.name, other: a.name)
        }

        self.metadata = metadata
        metadataKeys = keys
        tensors = infos
        index = Dictionary(uniqueKeysWithValues: infos.enumerated().map { ($1.name, $0) })
    }

    private static func checkCount(_ count: UInt64, minimumSize: Int, cursor: ByteCursor, context: String) throws {
        let limit = cursor.remaining / minimumSize
        if count > UInt64(limit) {
            throw FileFormatError.absurdCount(file: cursor.file.path, context: context, count: count, limit: limit)
        }
    }

    private static func readValue(_ type: GGUFValueType, _ c: inout ByteCursor, key: String, depth: Int) throws -> GGUFValue {
        let context = "metadata '\(key)'"
        switch type {
        case .uint8: return .uint8(try c.read(UInt8.self, context))
        case .int8: return .int8(try c.read(Int8.self, context))
        case .uint16: return .uint16(try c.read(UInt16.self, context))
        case .int16: return .int16(try c.read(Int16.self, context))
        case .uint32: return .uint32(try c.read(UInt32.self, context))
        case .int32: return .int32(try c.read(Int32.self, context))
        case .uint64: return .uint64(try c.read(UInt64.self, context))
        case .int64: return .int64(try c.read(Int64.self, context))
        case .float32: return .float32(try c.readFloat(context))
        case .float64: return .float64(try c.readDouble(context))
        case .bool:
            let b = try c.read(UInt8.self, context)
            guard b <= 1 else { throw FileFormatError.invalidEntry(file: c.file.path, key: key, reason: "bool byte \(b)") }
            return .bool(b == 1)
        case .string: return .string(try c.readString(context))
        case .array:
            guard depth < maxArrayDepth else {
                throw FileFormatError.invalidEntry(file: c.file.path, key: key, reason: "arrays nested more than \(maxArrayDepth) deep")
            }
            let rawType = try c.read(UInt32.self, "element type of \(context)")
            guard let elementType = GGUFValueType(rawValue: rawType) else {
                throw FileFormatError.unknownValueType(file: c.file.path, key: key, type: rawType)
            }
            let count = try c.read(UInt64.self, "length of \(context)")
            try checkCount(count, minimumSize: elementType.minimumSize, cursor: c, context: "length of \(context)")
            if count > UInt64(maxArrayLength) {
                throw FileFormatError.absurdCount(file: c.file.path, context: "length of \(context)", count: count, limit: maxArrayLength)
            }
            var values: [GGUFValue] = []
            values.reserveCapacity(Int(count))
            for _ in 0..<Int(count) { values.append(try readValue(elementType, &c, key: key, depth: depth + 1)) }
            return .array(elementType, values)
        }
    }

    private static func printable(_ bytes: [UInt8]) -> String {
        let text = bytes.map { (32..<127).contains($0) ? String(UnicodeScalar($0)) : "." }.joined()
        return "\"\(text)\" (" + bytes.map { String(format: "%02x", $0) }.joined(separator: " ") + ")"
    }

    /// The info for `name`, if present.
    public func tensorInfo(named name: String) -> GGUFTensorInfo? {
        index[name].map { tensors[$0] }
    }

    /// Loads one tensor dequantised to float32, with `shape` in PyTorch order.
    public func tensor(named name: String) throws -> Tensor {
        guard let info = tensorInfo(named: name) else {
            throw FileFormatError.tensorNotFound(file: file.path, name: name,
                                                 similar: FileFormatError.similarNames(to: name, in: tensors.map(\.name)))
        }
        guard GGMLDequantizer.supports(info.type) else {
            throw FileFormatError.unsupportedDType(file: file.path, tensor: name, dtype: info.type.name)
        }
        let out = Tensor(zeros: info.shape)
        GGMLDequantizer.dequantize(info.type, from: file.base + dataOffset + info.offset,
                                   count: info.elementCount, into: out.storage.pointer)
        return out
    }

    /// A copy of a tensor's raw (still quantised) bytes.
    public func rawBytes(named name: String) throws -> [UInt8] {
        guard let info = tensorInfo(named: name) else {
            throw FileFormatError.tensorNotFound(file: file.path, name: name,
                                                 similar: FileFormatError.similarNames(to: name, in: tensors.map(\.name)))
        }
        return Array(UnsafeRawBufferPointer(start: file.base + dataOffset + info.offset, count: info.byteCount))
    }

    /// Loads every tensor, dequantised.
    public func loadAll() throws -> [String: Tensor] {
        var out: [String: Tensor] = [:]
        for info in tensors { out[info.name] = try tensor(named: info.name) }
        return out
    }
}
