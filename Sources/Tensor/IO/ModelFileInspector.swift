import Foundation

/// Printable summaries of model files, for `sura inspect FILE`.
public enum ModelFileInspector {
    /// The container formats `describe` recognises.
    public enum Format: String, Sendable {
        case safetensors, gguf
    }

    /// Arrays longer than this are shown as their type, length and first items.
    static let shownArrayItems = 5
    /// Strings longer than this are cut with an ellipsis.
    static let shownStringLength = 80

    /// Sniffs the format: "GGUF" magic, or a safetensors header (u64 length, then `{`).
    public static func detectFormat(url: URL) throws -> Format {
        guard let handle = FileHandle(forReadingAtPath: url.path) else {
            throw FileFormatError.unreadable(file: url.path, reason: "cannot open")
        }
        defer { try? handle.close() }
        let head = [UInt8](handle.readData(ofLength: 9))
        if head.count >= 4 && head[0..<4] == [0x47, 0x47, 0x55, 0x46] { return .gguf }
        if head.count == 9 && head[8] == UInt8(ascii: "{") { return .safetensors }
        throw FileFormatError.unrecognizedFormat(file: url.path)
    }

    /// A listing of the file's metadata and of every tensor (name, dtype, shape, bytes) with totals.
    public static func describe(url: URL) throws -> String {
        switch try detectFormat(url: url) {
        case .gguf: return describe(try GGUFFile(contentsOf: url))
        case .safetensors: return describe(try SafeTensorsFile(contentsOf: url))
        }
    }

    static func describe(_ file: SafeTensorsFile) -> String {
        var lines = ["file: \(file.url.path)",
                     "format: safetensors, \(file.entries.count) tensors, header \(file.dataStart - 8) bytes"]
        if !file.metadata.isEmpty {
            lines.append("metadata:")
            let width = file.metadata.keys.map(\.count).max() ?? 0
            for key in file.metadata.keys.sorted() {
                lines.append("  " + pad(key, width) + "  " + quoted(file.metadata[key]!))
            }
        }
        let rows = file.entries.map { ($0.name, $0.dtype.rawValue, $0.shape, $0.byteCount) }
        lines += tensorTable(rows)
        return lines.joined(separator: "\n")
    }

    static func describe(_ file: GGUFFile) -> String {
        var lines = ["file: \(file.url.path)",
                     "format: GGUF v\(file.version), \(file.tensors.count) tensors, \(file.metadataKeys.count) metadata keys, "
                         + "alignment \(file.alignment), data at byte \(file.dataOffset)"]
        if !file.metadataKeys.isEmpty {
            lines.append("metadata:")
            let width = file.metadataKeys.map(\.count).max() ?? 0
            let types = file.metadataKeys.map { typeName(file.metadata[$0]!) }
            let typeWidth = types.map(\.count).max() ?? 0
            for (key, type) in zip(file.metadataKeys, types) {
                lines.append("  " + pad(key, width) + "  " + pad(type, typeWidth) + "  " + render(file.metadata[key]!))
            }
        }
        let rows = file.tensors.map { ($0.name, $0.type.name, $0.shape, $0.byteCount) }
        lines += tensorTable(rows)
        return lines.joined(separator: "\n")
    }

    private static func tensorTable(_ rows: [(String, String, [Int], Int)]) -> [String] {
        var lines = ["tensors:"]
        let shapes = rows.map { "[" + $0.2.map(String.init).joined(separator: ", ") + "]" }
        let nameWidth = max(4, rows.map(\.0.count).max() ?? 0)
        let typeWidth = max(5, rows.map(\.1.count).max() ?? 0)
        let shapeWidth = max(5, shapes.map(\.count).max() ?? 0)
        lines.append("  " + pad("name", nameWidth) + "  " + pad("dtype", typeWidth) + "  " + pad("shape", shapeWidth) + "  bytes")
        var elements = 0, bytes = 0
        for (row, shape) in zip(rows, shapes) {
            lines.append("  " + pad(row.0, nameWidth) + "  " + pad(row.1, typeWidth) + "  " + pad(shape, shapeWidth) + "  \(row.3)")
            elements += row.2.reduce(1, *)
            bytes += row.3
        }
        lines.append("total: \(rows.count) tensors, \(elements) parameters, \(bytes) bytes (\(humanBytes(bytes)))")
        return lines
    }

    private static func typeName(_ value: GGUFValue) -> String {
        guard case let .array(elementType, values) = value else { return value.type.name }
        var type = elementType.name
        if elementType == .array, let first = values.first { type = typeName(first) }
        return "array<\(type)>[\(values.count)]"
    }

    private static func render(_ value: GGUFValue) -> String {
        switch value {
        case let .string(s): return quoted(s)
        case let .bool(b): return b ? "true" : "false"
        case let .float32(f): return "\(f)"
        case let .float64(f): return "\(f)"
        case let .array(_, values):
            let shown = values.prefix(shownArrayItems).map(render)
            let more = values.count > shownArrayItems ? ", … (\(values.count - shownArrayItems) more)" : ""
            return "[" + shown.joined(separator: ", ") + more + "]"
        default: return value.int.map(String.init) ?? "\(value)"
        }
    }

    /// A string shown on one line: escaped, and cut when long.
    private static func quoted(_ s: String) -> String {
        var text = ""
        for ch in s.unicodeScalars {
            switch ch {
            case "\n": text += "\\n"
            case "\t": text += "\\t"
            case "\r": text += "\\r"
            case "\"": text += "\\\""
            default:
                text += ch.value < 0x20 ? String(format: "\\u%04x", ch.value) : String(ch)
            }
        }
        if text.count > shownStringLength { text = String(text.prefix(shownStringLength)) + "…" }
        return "\"" + text + "\""
    }

    private static func pad(_ s: String, _ width: Int) -> String {
        s.count >= width ? s : s + String(repeating: " ", count: width - s.count)
    }

    private static func humanBytes(_ n: Int) -> String {
        let units = ["B", "KiB", "MiB", "GiB", "TiB"]
        var value = Double(n), unit = 0
        while value >= 1024 && unit < units.count - 1 { value /= 1024; unit += 1 }
        return unit == 0 ? "\(n) B" : String(format: "%.1f", value) + " " + units[unit]
    }
}
