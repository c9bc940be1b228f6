import Foundation

/// Every way a model or image file can be wrong, each naming the file and the tensor or key
/// at fault, so that a user can see at once what to fix.
///
/// Readers never trap on bad bytes: every length, count and offset read from a file is checked
/// against the bytes that are really there before it is used.
public enum FileFormatError: Error, CustomStringConvertible, Equatable, Sendable {
    /// The file could not be opened, sized or mapped.
    case unreadable(file: String, reason: String)
    /// The file ends before `context` could be read.
    case truncated(file: String, context: String, needed: Int, available: Int)
    /// A safetensors header length larger than the file (or than the 100 MB limit).
    case headerTooLarge(file: String, length: UInt64, fileSize: Int)
    /// The safetensors JSON header is not valid JSON or not a JSON object.
    case invalidHeader(file: String, reason: String)
    /// A header entry or metadata key with a malformed field.
    case invalidEntry(file: String, key: String, reason: String)
    /// A tensor whose bytes lie outside the data section.
    case offsetsOutOfBounds(file: String, tensor: String, start: Int, end: Int, limit: Int)
    /// Two tensors whose byte ranges overlap.
    case overlappingTensors(file: String, tensor: String, other: String)
    /// A tensor whose byte range does not equal dtype size × element count.
    case sizeMismatch(file: String, tensor: String, expected: Int, actual: Int)
    /// A dtype name or number this reader does not know.
    case unknownDType(file: String, tensor: String, dtype: String)
    /// A known dtype that Sura cannot convert to float32.
    case unsupportedDType(file: String, tensor: String, dtype: String)
    /// The file does not start with the expected magic bytes.
    case badMagic(file: String, found: String)
    /// A GGUF version other than 2 or 3.
    case unsupportedVersion(file: String, version: UInt32)
    /// A GGUF metadata value type outside 0…12.
    case unknownValueType(file: String, key: String, type: UInt32)
    /// A length-prefixed string that runs past the end of the file.
    case stringOverrun(file: String, context: String, length: UInt64, remaining: Int)
    /// A count so large that the file cannot possibly hold it; refused before allocating.
    case absurdCount(file: String, context: String, count: UInt64, limit: Int)
    /// A tensor name or metadata key that appears twice.
    case duplicateName(file: String, name: String)
    /// No tensor of that name; `similar` lists a few names that share its last component.
    case tensorNotFound(file: String, name: String, similar: [String])
    /// A shape with negative, overflowing or block-misaligned dimensions.
    case invalidShape(file: String, tensor: String, reason: String)
    /// libpng rejected the image, or the pixels do not fit the description.
    case image(file: String, reason: String)
    /// Writing or renaming the output failed.
    case writeFailed(file: String, reason: String)
    /// Neither safetensors nor GGUF.
    case unrecognizedFormat(file: String)

    public var description: String {
        switch self {
        case let .unreadable(file, reason):
            return "\(file): cannot read file: \(reason)"
        case let .truncated(file, context, needed, available):
            return "\(file): file is truncated: \(context) needs \(needed) bytes but only \(available) remain"
        case let .headerTooLarge(file, length, fileSize):
            return "\(file): safetensors header length \(length) is beyond the file size (\(fileSize) bytes) or the 100 MB limit"
        case let .invalidHeader(file, reason):
            return "\(file): invalid safetensors JSON header: \(reason)"
        case let .invalidEntry(file, key, reason):
            return "\(file): entry '\(key)': \(reason)"
        case let .offsetsOutOfBounds(file, tensor, start, end, limit):
            return "\(file): tensor '\(tensor)': byte range \(start)..<\(end) lies outside the data section of \(limit) bytes"
        case let .overlappingTensors(file, tensor, other):
            return "\(file): tensor '\(tensor)' overlaps tensor '\(other)'"
        case let .sizeMismatch(file, tensor, expected, actual):
            return "\(file): tensor '\(tensor)': dtype and shape need \(expected) bytes but its offsets cover \(actual)"
        case let .unknownDType(file, tensor, dtype):
            return "\(file): tensor '\(tensor)': unknown dtype \(dtype)"
        case let .unsupportedDType(file, tensor, dtype):
            return "\(file): tensor '\(tensor)': dtype \(dtype) cannot be converted to float32"
        case let .badMagic(file, found):
            return "\(file): bad magic \(found)"
        case let .unsupportedVersion(file, version):
            let swapped = version.byteSwapped
            let hint = swapped == 2 || swapped == 3 ? "; this looks like a big-endian file, which Sura does not read" : ""
            return "\(file): unsupported GGUF version \(version) (Sura reads versions 2 and 3\(hint))"
        case let .unknownValueType(file, key, type):
            return "\(file): metadata '\(key)': unknown GGUF value type \(type)"
        case let .stringOverrun(file, context, length, remaining):
            return "\(file): \(context): string of \(length) bytes runs past the end of the file (\(remaining) bytes remain)"
        case let .absurdCount(file, context, count, limit):
            return "\(file): \(context): count \(count) cannot fit in the file (at most \(limit))"
        case let .duplicateName(file, name):
            return "\(file): '\(name)' appears more than once"
        case let .tensorNotFound(file, name, similar):
            let hint = similar.isEmpty ? "" : " (similar: \(similar.joined(separator: ", ")))"
            return "\(file): no tensor named '\(name)'\(hint)"
        case let .invalidShape(file, tensor, reason):
            return "\(file): tensor '\(tensor)': invalid shape: \(reason)"
        case let .image(file, reason):
            return "\(file): PNG: \(reason)"
        case let .writeFailed(file, reason):
            return "\(file): cannot write: \(reason)"
        case let .unrecognizedFormat(file):
            return "\(file): not a safetensors or GGUF file"
        }
    }

    /// Up to five names from `names` that share `name`'s last dotted component.
    static func similarNames(to name: String, in names: [String]) -> [String] {
        let last = name.split(separator: ".").last.map(String.init) ?? name
        return Array(names.filter { $0 != name && $0.hasSuffix(last) }.prefix(5))
    }
}
