import Foundation
import Yams

/// A problem in a job file, naming the file, the line, the key (dotted, e.g. `slurm.nodes`) and
/// what would have been accepted.
public struct JobSpecError: Error, CustomStringConvertible, Equatable, Sendable {
    public let file: String
    public let line: Int?
    /// Dotted path of the offending key; empty for problems with the document as a whole.
    public let key: String
    public let message: String

    public init(file: String, line: Int?, key: String, message: String) {
        self.file = file
        self.line = line
        self.key = key
        self.message = message
    }

    public var description: String {
        let place = line.map { "\(file):\($0)" } ?? file
        return key.isEmpty ? "\(place): \(message)" : "\(place): key '\(key)': \(message)"
    }
}

/// Reads one YAML mapping of a job file key by key, remembering which keys were read so that
/// every key left over is reported as unknown (a misspelt key must not be silently ignored).
struct JobYAMLReader {
    let file: String
    /// Dotted path of this mapping ("" at the top).
    let path: String
    let line: Int?
    private let entries: [(key: String, value: Node, line: Int?)]

    init(file: String, path: String, node: Node) throws {
        self.file = file
        self.path = path
        self.line = node.mark?.line
        guard case let .mapping(mapping) = node else {
            throw JobSpecError(file: file, line: node.mark?.line, key: path,
                               message: "expected a mapping of keys to values, got \(JobYAMLReader.describe(node))")
        }
        var entries: [(String, Node, Int?)] = []
        for (keyNode, value) in mapping {
            guard case let .scalar(scalar) = keyNode else {
                throw JobSpecError(file: file, line: keyNode.mark?.line, key: path, message: "keys must be plain words")
            }
            entries.append((scalar.string, value, keyNode.mark?.line))
        }
        self.entries = entries
    }

    /// Parses a whole document; an empty file or a non-mapping top level is an error.
    static func document(_ text: String, file: String) throws -> JobYAMLReader {
        let node: Node?
        do {
            node = try Yams.compose(yaml: text)
        } catch let error as YamlError {
            throw JobSpecError(file: file, line: nil, key: "", message: "not valid YAML: \(error)")
        }
        guard let node else {
            throw JobSpecError(file: file, line: nil, key: "", message: "the file is empty; a job needs at least 'name', 'config' and 'ranks'")
        }
        return try JobYAMLReader(file: file, path: "", node: node)
    }

    func dotted(_ key: String) -> String { path.isEmpty ? key : "\(path).\(key)" }

    func error(_ key: String, _ message: String) -> JobSpecError {
        JobSpecError(file: file, line: entry(key)?.line ?? line, key: dotted(key), message: message)
    }

    func has(_ key: String) -> Bool { entry(key) != nil }

    private func entry(_ key: String) -> (key: String, value: Node, line: Int?)? {
        entries.first { $0.key == key }
    }

    /// Throws for the first key not in `allowed`, suggesting the closest allowed key.
    func rejectUnknownKeys(allowed: [String]) throws {
        var seen = Set<String>()
        for entry in entries {
            if !seen.insert(entry.key).inserted {
                throw JobSpecError(file: file, line: entry.line, key: dotted(entry.key), message: "appears twice")
            }
            guard !allowed.contains(entry.key) else { continue }
            var message = "unknown key; allowed keys here: \(allowed.joined(separator: ", "))"
            if let near = allowed.min(by: { JobYAMLReader.editDistance($0, entry.key) < JobYAMLReader.editDistance($1, entry.key) }),
               JobYAMLReader.editDistance(near, entry.key) <= max(2, entry.key.count / 3) {
                message = "unknown key (did you mean '\(near)'?); allowed keys here: \(allowed.joined(separator: ", "))"
            }
            throw JobSpecError(file: file, line: entry.line, key: dotted(entry.key), message: message)
        }
    }

    /// A scalar's text; numbers and booleans are accepted as their text (`cpu: 2` is "2").
    func string(_ key: String) throws -> String? {
        guard let entry = entry(key) else { return nil }
        guard case let .scalar(scalar) = entry.value else {
            throw error(key, "expected a single value, got \(JobYAMLReader.describe(entry.value))")
        }
        if scalar.style == .plain, ["", "~", "null", "Null", "NULL"].contains(scalar.string) {
            throw error(key, "needs a value")
        }
        return scalar.string
    }

    /// A whole number within `range`.
    func int(_ key: String, in range: ClosedRange<Int>) throws -> Int? {
        guard let text = try string(key) else { return nil }
        guard let value = Int(text.replacingOccurrences(of: "_", with: "")) else {
            throw error(key, "expected a whole number, got '\(text)'")
        }
        guard range.contains(value) else {
            throw error(key, "must be between \(range.lowerBound) and \(range.upperBound), got \(value)")
        }
        return value
    }

    /// A YAML boolean (`true`/`false`, also `yes`/`no` and `on`/`off` as YAML 1.1 reads them).
    func bool(_ key: String) throws -> Bool? {
        guard let text = try string(key) else { return nil }
        switch text.lowercased() {
        case "true", "yes", "on": return true
        case "false", "no", "off": return false
        default: throw error(key, "expected true or false, got '\(text)'")
        }
    }

    /// One of an enumeration's raw values.
    func choice<E: RawRepresentable & CaseIterable>(_ key: String, _ type: E.Type) throws -> E? where E.RawValue == String {
        guard let text = try string(key) else { return nil }
        guard let value = E(rawValue: text) else {
            throw error(key, "'\(text)' is not allowed; allowed values: \(E.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        return value
    }

    /// A list of scalars (a single scalar is refused: lists are written as lists).
    func strings(_ key: String) throws -> [String]? {
        guard let entry = entry(key) else { return nil }
        guard case let .sequence(sequence) = entry.value else {
            throw error(key, "expected a list, got \(JobYAMLReader.describe(entry.value))")
        }
        return try sequence.enumerated().map { index, item in
            guard case let .scalar(scalar) = item else {
                throw JobSpecError(file: file, line: item.mark?.line, key: "\(dotted(key))[\(index)]",
                                   message: "expected a single value, got \(JobYAMLReader.describe(item))")
            }
            return scalar.string
        }
    }

    /// A nested mapping.
    func mapping(_ key: String) throws -> JobYAMLReader? {
        guard let entry = entry(key) else { return nil }
        if case let .scalar(scalar) = entry.value, scalar.style == .plain, ["", "~", "null"].contains(scalar.string) {
            return nil
        }
        return try JobYAMLReader(file: file, path: dotted(key), node: entry.value)
    }

    /// Every key with its scalar value, in file order (for free-form maps such as `env`).
    func scalarPairs() throws -> [(String, String)] {
        try entries.map { entry in
            guard case let .scalar(scalar) = entry.value else {
                throw JobSpecError(file: file, line: entry.line, key: dotted(entry.key),
                                   message: "expected a single value, got \(JobYAMLReader.describe(entry.value))")
            }
            return (entry.key, scalar.string)
        }
    }

    static func describe(_ node: Node) -> String {
        switch node {
        case .scalar(let scalar): return "'\(scalar.string)'"
        case .mapping: return "a mapping"
        case .sequence: return "a list"
        case .alias: return "an alias"
        }
    }
}

extension JobYAMLReader {
    /// Levenshtein distance, for "did you mean" suggestions on short key names.
    static func editDistance(_ a: String, _ b: String) -> Int {
        let a = Array(a), b = Array(b)
        if a.isEmpty { return b.count }
        if b.isEmpty { return a.count }
        var previous = Array(0...b.count)
        for i in 1...a.count {
            var current = [i] + Array(repeating: 0, count: b.count)
            for j in 1...b.count {
                current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1))
            }
            previous = current
        }
        return previous[b.count]
    }
}
