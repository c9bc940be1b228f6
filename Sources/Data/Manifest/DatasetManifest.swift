import Foundation
import Tensor

/// A manifest problem, always naming the manifest file and the 1-based line at fault (0 when the
/// problem concerns the whole file), so a user can open the file at that line and fix it.
public struct ManifestError: Error, CustomStringConvertible, Equatable, Sendable {
    /// The manifest file.
    public let file: String
    /// 1-based line number, or 0 for the whole file.
    public let line: Int
    /// What is wrong.
    public let reason: String

    public init(file: String, line: Int, reason: String) {
        self.file = file
        self.line = line
        self.reason = reason
    }

    public var description: String { line > 0 ? "\(file):\(line): \(reason)" : "\(file): \(reason)" }
}

/// One training triple of a SUR-adapter style dataset: an image with its simple (narrative)
/// prompt and its complex (keyword) prompt, plus any other fields of the line.
public struct DatasetRecord: Equatable, Sendable {
    /// 1-based line number in the manifest.
    public let line: Int
    /// `file_name` as written: a relative path inside the dataset folder.
    public let fileName: String
    /// The image file (inside the dataset folder).
    public let imageURL: URL
    /// `text`: the simple prompt.
    public let text: String
    /// `prompt`: the complex prompt.
    public let prompt: String
    /// Every other field of the line, unchanged (e.g. `split`, `scene`).
    public let extra: [String: JSONValue]

    public init(line: Int, fileName: String, imageURL: URL, text: String, prompt: String, extra: [String: JSONValue]) {
        self.line = line
        self.fileName = fileName
        self.imageURL = imageURL
        self.text = text
        self.prompt = prompt
        self.extra = extra
    }

    /// `split` when present as a string ("train", "heldout").
    public var split: String? { extra["split"]?.stringValue }

    /// The line as a JSON object again (the three known keys and the extras).
    public var jsonObject: [String: JSONValue] {
        var object = extra
        object["file_name"] = .string(fileName)
        object["text"] = .string(text)
        object["prompt"] = .string(prompt)
        return object
    }
}

/// SUR-adapter's `metadata.jsonl`, read strictly: one JSON object per line beside the images,
/// with string keys `file_name` (a relative path inside the folder), `text` (simple prompt) and
/// `prompt` (complex prompt); other keys are kept as `extra`. Blank lines are skipped but still
/// counted, so line numbers match an editor's.
///
/// Refused, with the file and line: invalid JSON, a line that is not an object, a missing or
/// non-string key, an empty, absolute or `..`-containing `file_name`, a path that resolves (through
/// symbolic links) outside the dataset folder, a missing image, and — with `.decode` — an image
/// that is not a readable PNG.
public struct DatasetManifest: Sendable {
    /// How much `init` checks the images.
    public enum ImageCheck: Sendable {
        /// Paths only (shape and containment), no file-system access per image.
        case none
        /// Each image exists and is a regular file (the default).
        case exists
        /// Each image decodes as PNG.
        case decode
    }

    /// The manifest file.
    public let url: URL
    /// The folder holding the manifest and the images.
    public let directory: URL
    /// The records in file order.
    public let records: [DatasetRecord]

    /// The conventional manifest name inside a dataset folder.
    public static let fileName = "metadata.jsonl"
    /// Keys every line must have.
    public static let requiredKeys = ["file_name", "text", "prompt"]

    /// Reads `url`, which is either the manifest file or a folder holding `metadata.jsonl`.
    /// - Throws: `ManifestError` naming the file and line.
    public init(contentsOf url: URL, imageCheck: ImageCheck = .exists) throws {
        var isDirectory: ObjCBool = false
        let manifestURL: URL
        if FileManager.default.fileExists(atPath: url.path, isDirectory: &isDirectory), isDirectory.boolValue {
            manifestURL = url.appendingPathComponent(DatasetManifest.fileName)
        } else {
            manifestURL = url
        }
        let path = manifestURL.path
        let bytes: Foundation.Data
        do {
            bytes = try Foundation.Data(contentsOf: manifestURL)
        } catch {
            throw ManifestError(file: path, line: 0, reason: "cannot read manifest: \(error.localizedDescription)")
        }
        guard let text = String(data: bytes, encoding: .utf8) else {
            throw ManifestError(file: path, line: 0, reason: "manifest is not valid UTF-8")
        }
        let directory = manifestURL.deletingLastPathComponent()
        let resolvedRoot = directory.resolvingSymlinksInPath().standardizedFileURL.path
        var records: [DatasetRecord] = []
        let decoder = JSONDecoder()
        // Split on line ends only (keeping empty pieces) so numbering matches an editor's. Swift
        // treats "\r\n" as one character, so Windows line ends are separators too.
        let lines = text.split(omittingEmptySubsequences: false, whereSeparator: { $0 == "\n" || $0 == "\r\n" })
        for (index, rawLine) in lines.enumerated() {
            let lineNumber = index + 1
            var line = Substring(rawLine)
            if line.hasSuffix("\r") { line = line.dropLast() }
            if line.allSatisfy({ $0 == " " || $0 == "\t" }) { continue }
            func fail(_ reason: String) -> ManifestError { ManifestError(file: path, line: lineNumber, reason: reason) }

            let value: JSONValue
            do {
                value = try decoder.decode(JSONValue.self, from: Foundation.Data(line.utf8))
            } catch {
                throw fail("invalid JSON: \(DatasetManifest.summarise(error))")
            }
            guard var object = value.objectValue else { throw fail("expected a JSON object, got \(value.kindName)") }
            var strings: [String: String] = [:]
            for key in DatasetManifest.requiredKeys {
                guard let field = object.removeValue(forKey: key) else {
                    throw fail("missing key '\(key)' (every line needs \(DatasetManifest.requiredKeys.map { "'\($0)'" }.joined(separator: ", ")))")
                }
                guard let s = field.stringValue else { throw fail("key '\(key)' must be a string, got \(field.kindName)") }
                strings[key] = s
            }
            let fileName = strings["file_name"]!
            let imageURL = try DatasetManifest.resolve(fileName, in: directory, resolvedRoot: resolvedRoot, fail: fail)
            switch imageCheck {
            case .none:
                break
            case .exists, .decode:
                var isDir: ObjCBool = false
                guard FileManager.default.fileExists(atPath: imageURL.path, isDirectory: &isDir) else {
                    throw fail("image '\(fileName)' does not exist (looked for \(imageURL.path))")
                }
                if isDir.boolValue { throw fail("image '\(fileName)' is a folder, not a file") }
                if imageCheck == .decode {
                    do {
                        _ = try PNGImage(contentsOf: imageURL)
                    } catch {
                        throw fail("image '\(fileName)' is unreadable: \(error)")
                    }
                }
            }
            records.append(DatasetRecord(line: lineNumber, fileName: fileName, imageURL: imageURL,
                                         text: strings["text"]!, prompt: strings["prompt"]!, extra: object))
        }
        guard !records.isEmpty else { throw ManifestError(file: path, line: 0, reason: "manifest has no records") }
        self.url = manifestURL
        self.directory = directory
        self.records = records
    }

    /// The image URL for a `file_name`, refusing paths that could leave the dataset folder.
    static func resolve(_ fileName: String, in directory: URL, resolvedRoot: String,
                        fail: (String) -> ManifestError) throws -> URL {
        guard !fileName.isEmpty else { throw fail("'file_name' is empty") }
        guard !fileName.hasPrefix("/") && !fileName.hasPrefix("~") else {
            throw fail("'file_name' \"\(fileName)\" is absolute; it must be relative to the dataset folder")
        }
        guard !fileName.contains("\0") else { throw fail("'file_name' contains a NUL character") }
        let parts = fileName.split(separator: "/", omittingEmptySubsequences: true)
        guard !parts.contains(where: { $0 == ".." }) else {
            throw fail("'file_name' \"\(fileName)\" contains '..'; it must stay inside the dataset folder")
        }
        let url = directory.appendingPathComponent(fileName)
        // A symbolic link anywhere on the path may still point outside: compare real paths.
        let real = url.resolvingSymlinksInPath().standardizedFileURL.path
        let root = resolvedRoot.hasSuffix("/") ? resolvedRoot : resolvedRoot + "/"
        guard real.hasPrefix(root) else {
            throw fail("'file_name' \"\(fileName)\" resolves to \(real), outside the dataset folder \(resolvedRoot)")
        }
        return url
    }

    /// A one-line reason from a JSON decoding error.
    static func summarise(_ error: Error) -> String {
        if let decoding = error as? DecodingError {
            switch decoding {
            case .dataCorrupted(let context):
                if let underlying = context.underlyingError as NSError?,
                   let detail = underlying.userInfo[NSDebugDescriptionErrorKey] as? String {
                    return detail
                }
                return context.debugDescription
            case .typeMismatch(_, let context), .valueNotFound(_, let context), .keyNotFound(_, let context):
                return context.debugDescription
            @unknown default:
                return "\(decoding)"
            }
        }
        return "\(error)"
    }

    /// Counts of records per `split` value ("none" for records without one).
    public var splitCounts: [String: Int] {
        records.reduce(into: [:]) { $0[$1.split ?? "none", default: 0] += 1 }
    }

    /// The records of one split.
    public func records(inSplit split: String) -> [DatasetRecord] { records.filter { $0.split == split } }

    /// Writes records as `metadata.jsonl` (one compact, key-sorted object per line) via a
    /// temporary file renamed into place.
    public static func write(_ lines: [[String: JSONValue]], to url: URL) throws {
        let encoder = JSONValue.compactEncoder
        var out = Foundation.Data()
        for line in lines {
            out.append(try encoder.encode(JSONValue.object(line)))
            out.append(0x0A)
        }
        do {
            try out.write(to: url, options: .atomic)
        } catch {
            throw ManifestError(file: url.path, line: 0, reason: "cannot write manifest: \(error.localizedDescription)")
        }
    }
}
