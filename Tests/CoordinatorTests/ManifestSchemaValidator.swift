import Foundation
import Yams

/// A JSON value, as a Kubernetes API server sees a YAML manifest after conversion.
enum JSONValue: Equatable, Decodable {
    case null
    case bool(Bool)
    case int(Int)
    case double(Double)
    case string(String)
    case array([JSONValue])
    case object([String: JSONValue])

    init(from decoder: Decoder) throws {
        let container = try decoder.singleValueContainer()
        if container.decodeNil() { self = .null }
        else if let value = try? container.decode(Bool.self) { self = .bool(value) }
        else if let value = try? container.decode(Int.self) { self = .int(value) }
        else if let value = try? container.decode(Double.self) { self = .double(value) }
        else if let value = try? container.decode(String.self) { self = .string(value) }
        else if let value = try? container.decode([JSONValue].self) { self = .array(value) }
        else { self = .object(try container.decode([String: JSONValue].self)) }
    }

    subscript(key: String) -> JSONValue? {
        if case let .object(fields) = self { return fields[key] }
        return nil
    }

    subscript(index: Int) -> JSONValue? {
        if case let .array(items) = self, items.indices.contains(index) { return items[index] }
        return nil
    }

    var string: String? { if case let .string(value) = self { return value }; return nil }
    var int: Int? { if case let .int(value) = self { return value }; return nil }
    var array: [JSONValue]? { if case let .array(value) = self { return value }; return nil }
    var object: [String: JSONValue]? { if case let .object(value) = self { return value }; return nil }

    /// Converts a YAML node the way Kubernetes does (YAML → JSON): plain scalars resolve to
    /// null, booleans, integers and floats; quoted scalars stay strings.
    init(yaml node: Node) throws {
        switch node {
        case .scalar(let scalar):
            if scalar.style != .plain { self = .string(scalar.string); return }
            let text = scalar.string
            if ["", "~", "null", "Null", "NULL"].contains(text) { self = .null }
            else if ["true", "True", "TRUE"].contains(text) { self = .bool(true) }
            else if ["false", "False", "FALSE"].contains(text) { self = .bool(false) }
            else if let value = Int(text) { self = .int(value) }
            else if text.range(of: #"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$"#, options: .regularExpression) != nil,
                    let value = Double(text) { self = .double(value) }
            else { self = .string(text) }
        case .sequence(let sequence):
            self = .array(try sequence.map(JSONValue.init(yaml:)))
        case .mapping(let mapping):
            var fields: [String: JSONValue] = [:]
            for (key, value) in mapping {
                guard case let .scalar(scalar) = key else { throw ManifestError("non-scalar mapping key at \(key.mark.map(String.init(describing:)) ?? "?")") }
                guard fields[scalar.string] == nil else { throw ManifestError("duplicate key '\(scalar.string)' at line \(key.mark?.line ?? 0)") }
                fields[scalar.string] = try JSONValue(yaml: value)
            }
            self = .object(fields)
        case .alias:
            throw ManifestError("YAML aliases are not used in Sura's manifests")
        }
    }

    /// Every document of a multi-document YAML text (empty documents skipped).
    static func documents(yaml text: String) throws -> [JSONValue] {
        try Yams.compose_all(yaml: text).map(JSONValue.init(yaml:)).filter { $0 != .null }
    }
}

struct ManifestError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// The subset of JSON Schema the Kubernetes and CRD schemas use: `$ref` (to `#/$defs/NAME`),
/// `type` (one name or a list), `enum`, `properties`, `required`, `additionalProperties`
/// (false or a schema), `items`, `oneOf`, `anyOf`, `minimum`, `minLength`, `minItems`.
/// Unknown keywords (`format`, …) are ignored, as JSON Schema prescribes.
struct SchemaValidator {
    private(set) var definitions: [String: JSONValue] = [:]
    /// "apiVersion/Kind" → definition name.
    private(set) var roots: [String: String] = [:]

    /// Loads every `*.json` in `folder`; each holds `roots` and `$defs`.
    init(folder: URL) throws {
        let files = try FileManager.default.contentsOfDirectory(atPath: folder.path).filter { $0.hasSuffix(".json") }.sorted()
        guard !files.isEmpty else { throw ManifestError("no schema files in \(folder.path)") }
        for file in files {
            let data = try Data(contentsOf: folder.appendingPathComponent(file))
            let schema = try JSONDecoder().decode(JSONValue.self, from: data)
            for (name, definition) in schema["$defs"]?.object ?? [:] {
                guard definitions[name] == nil else { throw ManifestError("\(file): definition \(name) defined twice") }
                definitions[name] = definition
            }
            for (kind, name) in schema["roots"]?.object ?? [:] { roots[kind] = name.string }
        }
    }

    /// Problems in one manifest document, each as "path: message"; empty when valid.
    func validate(document: JSONValue) -> [String] {
        guard let api = document["apiVersion"]?.string, let kind = document["kind"]?.string else {
            return ["$: a manifest needs string apiVersion and kind"]
        }
        guard let root = roots["\(api)/\(kind)"] else {
            return ["$: no schema for \(api) \(kind) (known: \(roots.keys.sorted().joined(separator: ", ")))"]
        }
        var problems: [String] = []
        check(document, against: .object(["$ref": .string("#/$defs/\(root)")]), path: "$", problems: &problems)
        return problems
    }

    private func resolve(_ reference: String) -> JSONValue? {
        guard reference.hasPrefix("#/$defs/") else { return nil }
        return definitions[String(reference.dropFirst("#/$defs/".count))]
    }

    private func typeName(_ value: JSONValue) -> String {
        switch value {
        case .null: return "null"
        case .bool: return "boolean"
        case .int: return "integer"
        case .double: return "number"
        case .string: return "string"
        case .array: return "array"
        case .object: return "object"
        }
    }

    private func matches(_ value: JSONValue, type: String) -> Bool {
        let actual = typeName(value)
        return actual == type || (type == "number" && actual == "integer")
    }

    private func check(_ value: JSONValue, against schema: JSONValue, path: String, problems: inout [String]) {
        if let reference = schema["$ref"]?.string {
            guard let target = resolve(reference) else {
                problems.append("\(path): schema reference \(reference) is missing from the fixtures")
                return
            }
            check(value, against: target, path: path, problems: &problems)
        }
        if let type = schema["type"] {
            let allowed = type.array?.compactMap(\.string) ?? [type.string ?? ""]
            if !allowed.contains(where: { matches(value, type: $0) }) {
                problems.append("\(path): expected \(allowed.joined(separator: " or ")), got \(typeName(value))")
                return
            }
        }
        if let options = schema["enum"]?.array, !options.contains(value) {
            let listed = options.map { $0.string ?? "\($0)" }.joined(separator: ", ")
            problems.append("\(path): \(value.string.map { "'\($0)'" } ?? typeName(value)) is not one of \(listed)")
        }
        for keyword in ["oneOf", "anyOf"] {
            guard let choices = schema[keyword]?.array else { continue }
            let passing = choices.filter { choice in
                var scratch: [String] = []
                check(value, against: choice, path: path, problems: &scratch)
                return scratch.isEmpty
            }.count
            if keyword == "oneOf" ? passing != 1 : passing == 0 {
                problems.append("\(path): matches \(passing) of the \(choices.count) alternatives (\(keyword))")
            }
        }
        if let bound = schema["minimum"]?.int, case let .int(number) = value, number < bound {
            problems.append("\(path): \(number) is below the minimum \(bound)")
        }
        if let minLength = schema["minLength"]?.int, case let .string(text) = value, text.count < minLength {
            problems.append("\(path): shorter than \(minLength) characters")
        }
        switch value {
        case .object(let fields):
            for name in schema["required"]?.array?.compactMap(\.string) ?? [] where fields[name] == nil {
                problems.append("\(path): missing required field '\(name)'")
            }
            let properties = schema["properties"]?.object ?? [:]
            for (name, field) in fields.sorted(by: { $0.key < $1.key }) {
                let fieldPath = "\(path).\(name)"
                if let propertySchema = properties[name] {
                    check(field, against: propertySchema, path: fieldPath, problems: &problems)
                } else if let additional = schema["additionalProperties"] {
                    if additional == .bool(false) {
                        problems.append("\(fieldPath): unknown field (allowed: \(properties.keys.sorted().joined(separator: ", ")))")
                    } else if additional.object != nil {
                        check(field, against: additional, path: fieldPath, problems: &problems)
                    }
                }
            }
        case .array(let items):
            if let minItems = schema["minItems"]?.int, items.count < minItems {
                problems.append("\(path): fewer than \(minItems) items")
            }
            if let itemSchema = schema["items"] {
                for (index, item) in items.enumerated() {
                    check(item, against: itemSchema, path: "\(path)[\(index)]", problems: &problems)
                }
            }
        default:
            break
        }
    }
}

/// Paths in the repository, found from this file's location (tests run from the source tree).
enum RepositoryPaths {
    static let testsFolder = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
    static let root = testsFolder.deletingLastPathComponent().deletingLastPathComponent()
    static let schemas = testsFolder.appendingPathComponent("Fixtures/schemas", isDirectory: true)
    static let k8s = root.appendingPathComponent("k8s", isDirectory: true)
    static let cluster = root.appendingPathComponent("cluster", isDirectory: true)
}
