import Data
import Foundation
import Tensor
import Worker

/// Finished prompt feature tables kept on disk between runs, so a restart (`--resume`), a second
/// experiment on the same data or `sura bench train --config` loads the frozen encoders' tables
/// instead of running the text encoder or the LLM over every prompt again.
///
/// One safetensors file per table set: `table_0`, `table_1`, … ([N, L, D] float32, the tables in
/// the order the encoder returns them) and metadata `format` "sura-feature-tables", `version`,
/// `label`, `identity` (the lines below, joined by newlines), `prompts` (the count) and
/// `prompts_fnv1a` (hex FNV-1a of the distinct prompts in order). The file name is the label
/// and the FNV-1a of all of that, so another encoder, layer, length, prompt list or build of Sura
/// gets another file.
///
/// The identity lines name what decides the features: the encoder's files with their sizes and
/// modification times (`fingerprint(of:)`) and the layer and length, from the caller; `entry`
/// adds this executable's own fingerprint, because a rebuilt Sura may compute slightly different
/// bits. A file that does not
/// match its key exactly, or cannot be read, is a miss (the reason is logged) and is rewritten.
public struct FeatureTableCache: Sendable {
    public static let format = "sura-feature-tables"
    public static let version = 1

    public let directory: URL
    /// The folder's budget for table files (`feature_cache_max_gb`); nil: unlimited. Storing a
    /// table set evicts the least recently used others until the folder fits (`evict(keeping:)`).
    public let maxBytes: Int64?

    public init(directory: URL, maxBytes: Int64? = nil) {
        self.directory = directory
        self.maxBytes = maxBytes
    }

    /// A table file of this cache's naming (`<label slug>-<16 hex>.safetensors`), its size and
    /// when it was last stored or loaded (its modification time, which `Entry.load` refreshes).
    public struct StoredFile: Sendable, Equatable {
        public let url: URL
        public let bytes: Int64
        public let lastUsed: Date
    }

    /// The table files in the folder, least recently used first; other files are not listed.
    public func storedFiles() -> [StoredFile] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory.path)) ?? []
        return names.filter(Self.isTableFileName).compactMap { name -> StoredFile? in
            let url = directory.appendingPathComponent(name)
            guard let attributes = try? FileManager.default.attributesOfItem(atPath: url.path),
                  (attributes[.type] as? FileAttributeType) == .typeRegular else { return nil }
            return StoredFile(url: url, bytes: (attributes[.size] as? NSNumber)?.int64Value ?? 0,
                              lastUsed: attributes[.modificationDate] as? Date ?? .distantPast)
        }.sorted { ($0.lastUsed, $0.url.path) < ($1.lastUsed, $1.url.path) }
    }

    static func isTableFileName(_ name: String) -> Bool {
        guard name.hasSuffix(".safetensors") else { return false }
        let stem = name.dropLast(".safetensors".count)
        guard let dash = stem.lastIndex(of: "-") else { return false }
        let hex = stem[stem.index(after: dash)...]
        return hex.count == 16 && hex.allSatisfy(\.isHexDigit)
    }

    /// Removes the least recently used table files, never `kept`, until the folder's table files
    /// fit `maxBytes`; returns what it removed. A folder shared by many experiments otherwise
    /// grows by one file per encoder and prompt list for good.
    @discardableResult
    public func evict(keeping kept: URL) -> [StoredFile] {
        guard let maxBytes else { return [] }
        let files = storedFiles()
        var total = files.reduce(0) { $0 + $1.bytes }
        var removed: [StoredFile] = []
        for file in files where total > maxBytes && file.url.standardizedFileURL != kept.standardizedFileURL {
            // Another rank or job may have removed it already: that counts as removed.
            try? FileManager.default.removeItem(at: file.url)
            total -= file.bytes
            removed.append(file)
        }
        return removed
    }

    /// Where the table set of `label`, `identity` and `prompts` (distinct, in table order) lives.
    /// The identity it records and hashes ends with `executableFingerprint`.
    public func entry(label: String, identity callerIdentity: [String], prompts: [String]) -> Entry {
        let identity = callerIdentity + Self.executableFingerprint
        var promptHash = FNV1a()
        for prompt in prompts { promptHash.add(prompt) }
        var key = FNV1a()
        key.add("\(Self.format) \(Self.version)")
        key.add(label)
        for line in identity { key.add(line) }
        key.add(String(promptHash.value, radix: 16))
        let slug = String(label.lowercased().map { $0.isLetter || $0.isNumber ? $0 : "-" })
        let name = slug + "-" + String(format: "%016llx", key.value) + ".safetensors"
        return Entry(url: directory.appendingPathComponent(name), label: label, identity: identity.joined(separator: "\n"),
                     prompts: prompts, promptHash: String(format: "%016llx", promptHash.value))
    }

    /// One table set's file and what it must hold.
    public struct Entry: Sendable {
        public let url: URL
        let label: String
        let identity: String
        let prompts: [String]
        let promptHash: String

        /// The tables, or nil and why not (no file yet, or one that does not match or cannot be read).
        public func load() -> (tables: [PromptFeatureTable]?, miss: String?) {
            guard FileManager.default.fileExists(atPath: url.path) else { return (nil, nil) }
            do {
                let file = try SafeTensorsFile(contentsOf: url)
                let expected = ["format": FeatureTableCache.format, "version": String(FeatureTableCache.version), "label": label,
                                "identity": identity, "prompts": String(prompts.count), "prompts_fnv1a": promptHash]
                for (key, value) in expected.sorted(by: { $0.key < $1.key }) where file.metadata[key] != value {
                    return (nil, "\(url.path): metadata '\(key)' is \(file.metadata[key].map { "'\($0)'" } ?? "missing"), expected '\(value)'")
                }
                let names = file.names.filter { $0.hasPrefix("table_") }
                guard !names.isEmpty, names.count == file.names.count else {
                    return (nil, "\(url.path): expected tensors table_0 … table_k, found \(file.names)")
                }
                var tables: [PromptFeatureTable] = []
                for index in 0 ..< names.count {
                    let name = "table_\(index)"
                    guard let entry = file.entry(named: name) else { return (nil, "\(url.path): no tensor '\(name)'") }
                    guard entry.dtype == .f32, entry.shape.count == 3, entry.shape[0] == prompts.count else {
                        return (nil, "\(url.path): tensor '\(name)' is \(entry.dtype.rawValue) \(entry.shape), expected F32 [\(prompts.count), L, D]")
                    }
                    tables.append(try PromptFeatureTable(prompts: prompts, values: try file.tensor(named: name)))
                }
                // Loading counts as use: eviction goes by modification time.
                try? FileManager.default.setAttributes([.modificationDate: Date()], ofItemAtPath: url.path)
                return (tables, nil)
            } catch {
                return (nil, "\(url.path): \(error)")
            }
        }

        /// Writes `tables` through a temporary file, so a reader never sees half a file.
        public func store(_ tables: [PromptFeatureTable]) throws {
            try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
            let tensors = try tables.enumerated().map { index, table in
                ("table_\(index)", try table.features(table.prompts))
            }
            try SafeTensorsWriter.write(tensors, metadata: [
                "format": FeatureTableCache.format, "version": String(FeatureTableCache.version), "label": label,
                "identity": identity, "prompts": String(prompts.count), "prompts_fnv1a": promptHash,
            ], to: url)
        }
    }

    /// "PATH: SIZE bytes, modified T" for a file; for a folder, one such line per regular file
    /// under it (hidden ones skipped), sorted by path; "PATH: missing" when there is nothing.
    public static func fingerprint(of path: String) -> [String] {
        let url = URL(fileURLWithPath: path).standardizedFileURL.resolvingSymlinksInPath()
        var isFolder: ObjCBool = false
        guard FileManager.default.fileExists(atPath: url.path, isDirectory: &isFolder) else { return ["\(url.path): missing"] }
        var files = [url]
        if isFolder.boolValue {
            let walker = FileManager.default.enumerator(at: url, includingPropertiesForKeys: [.isRegularFileKey],
                                                        options: [.skipsHiddenFiles])
            files = (walker?.allObjects as? [URL] ?? []).filter {
                (try? $0.resourceValues(forKeys: [.isRegularFileKey]).isRegularFile) == true
            }.sorted { $0.path < $1.path }
        }
        return files.map { file in
            let attributes = try? FileManager.default.attributesOfItem(atPath: file.path)
            let size = (attributes?[.size] as? NSNumber)?.int64Value ?? -1
            let modified = (attributes?[.modificationDate] as? Date)?.timeIntervalSince1970 ?? 0
            return String(format: "%@: %lld bytes, modified %.6f", file.path, size, modified)
        }
    }

    /// The fingerprint of the running executable (`/proc/self/exe`), read once: another build of
    /// Sura is another key.
    public static let executableFingerprint: [String] = {
        let executable = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe"))
            ?? CommandLine.arguments.first ?? "sura"
        return fingerprint(of: executable).map { "executable " + $0 }
    }()
}
