import Data
import Foundation
import Tensor
import Worker

/// A folder written by `sura features` (SUR-adapter's prompt2vec step), read back by `train`
/// through `adapter.llm_features`, so a dataset's LLM features are computed once and shared by
/// every experiment on it.
///
/// The folder holds `index.json` (format "sura-llm-features", version 1) and shards
/// `features-NNNNN.safetensors` with `hidden_states` [count, L_shard, D] (zero at padding) and
/// `attention_mask` [count, L_shard]. The index names the manifest the prompts came from and a
/// fingerprint of them (`prompts_fnv1a`); prompts are matched to training prompts by their text,
/// so a training set that is a split of that manifest, or another manifest sharing prompts,
/// finds its rows. A prompt the folder lacks (the empty prompt of the unconditional branch, or
/// one stored with fewer tokens than `llm_max_length` keeps) is encoded by the LLM instead.
///
/// The stored rows were computed in other batches (other padding, so other GEMM shapes) than
/// `train` would use: they agree with freshly computed features to float rounding, not bitwise.
public struct LLMFeatureShards {
    public static let format = "sura-llm-features"
    public static let version = 1

    public let directory: URL
    public var indexURL: URL { directory.appendingPathComponent("index.json") }
    /// The LLM file or folder the features came from, as `sura features` resolved it.
    public let model: String
    /// The manifest the prompts came from.
    public let manifest: String
    /// The hidden state stored, in transformers' numbering (0 = embeddings, N = after the final norm).
    public let layer: Int
    /// Which prompt of each record: "text" (simple) or "prompt" (complex).
    public let field: String
    public let count: Int
    public let hiddenSize: Int
    public let promptsFingerprint: String
    public let shards: [Shard]

    /// One shard file of the folder: records `firstRecord ..< firstRecord + count` of the manifest.
    public struct Shard: Sendable {
        public let file: String
        public let count: Int
        public let firstRecord: Int
    }

    /// Reads and checks `index.json`.
    /// - Throws: `LLMFeatureShardsError` naming the file and the key that is missing or wrong.
    public init(directory: URL) throws {
        self.directory = directory.standardizedFileURL
        let url = self.directory.appendingPathComponent("index.json")
        func fail(_ message: String) -> LLMFeatureShardsError { LLMFeatureShardsError(message: "\(url.path): \(message)") }
        guard let data = FileManager.default.contents(atPath: url.path) else {
            throw fail("cannot be read (write the folder with `sura features --output \(directory.path)`)")
        }
        guard let object = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any] else {
            throw fail("is not a JSON object")
        }
        func value<T>(_ key: String, _ type: T.Type) throws -> T {
            guard let raw = object[key] else { throw fail("key '\(key)' is missing") }
            guard let typed = raw as? T else { throw fail("key '\(key)' has the wrong type (\(raw))") }
            return typed
        }
        func integer(_ key: String, in dictionary: [String: Any]? = nil, min: Int = 0) throws -> Int {
            let raw = (dictionary ?? object)[key]
            guard let number = raw as? NSNumber, let int = Int(exactly: number.doubleValue), int >= min else {
                throw fail("key '\(key)' must be a whole number ≥ \(min), got \(raw.map { "\($0)" } ?? "nothing")")
            }
            return int
        }
        guard (object["format"] as? String) == Self.format else {
            throw fail("key 'format' is \(object["format"].map { "'\($0)'" } ?? "missing"), expected '\(Self.format)'")
        }
        guard try integer("version") == Self.version else { throw fail("key 'version' must be \(Self.version)") }
        model = try value("model", String.self)
        manifest = try value("manifest", String.self)
        layer = try integer("layer")
        field = try value("field", String.self)
        count = try integer("count", min: 1)
        hiddenSize = try integer("hidden_size", min: 1)
        guard let fingerprint = object["prompts_fnv1a"] as? String else {
            throw fail("key 'prompts_fnv1a' is missing: the folder was written by an older `sura features`; run it again "
                + "with the same arguments (it keeps the shards and rewrites the index)")
        }
        promptsFingerprint = fingerprint
        var shards: [Shard] = []
        for (i, raw) in try value("shards", [Any].self).enumerated() {
            guard let entry = raw as? [String: Any], let file = entry["file"] as? String,
                  !file.contains("/"), file.hasSuffix(".safetensors") else {
                throw fail("shards[\(i)] must be an object whose 'file' names a .safetensors file in the folder")
            }
            let shard = Shard(file: file, count: try integer("count", in: entry, min: 1),
                              firstRecord: try integer("first_record", in: entry))
            guard shard.firstRecord == (shards.last.map { $0.firstRecord + $0.count } ?? 0) else {
                throw fail("shards[\(i)].first_record is \(shard.firstRecord); the shards must cover the records in order")
            }
            shards.append(shard)
        }
        guard (shards.last.map { $0.firstRecord + $0.count } ?? 0) == count else {
            throw fail("the shards hold \(shards.last.map { $0.firstRecord + $0.count } ?? 0) records, 'count' says \(count)")
        }
        self.shards = shards
    }

    /// Hex FNV-1a of the prompts in record order (each with a separator): the index's
    /// `prompts_fnv1a`, which ties the rows to the manifest's current text.
    public static func promptsFingerprint(_ prompts: [String]) -> String {
        var hash = FNV1a()
        for prompt in prompts { hash.add(prompt) }
        return String(format: "%016llx", hash.value)
    }

    /// Refuses a folder computed by another LLM, layer, prompt field or width than training uses.
    /// - Parameter layer: resolved (0…N).
    public func check(model llm: URL, layer: Int, field: String, hiddenSize: Int) throws {
        func canonical(_ path: String) -> String { URL(fileURLWithPath: path).standardizedFileURL.resolvingSymlinksInPath().path }
        func fail(_ message: String) -> LLMFeatureShardsError { LLMFeatureShardsError(message: "\(indexURL.path): \(message)") }
        guard canonical(model) == canonical(llm.path) else {
            throw fail("the features come from \(model), training uses \(llm.path)")
        }
        guard self.layer == layer else { throw fail("the features are layer \(self.layer), adapter.llm_layer resolves to \(layer)") }
        guard self.field == field else { throw fail("the features are of field '\(self.field)', adapter.prompt_field is '\(field)'") }
        guard self.hiddenSize == hiddenSize else { throw fail("hidden_size is \(self.hiddenSize), the LLM's is \(hiddenSize)") }
    }

    /// The record index of each prompt text of the manifest the folder was computed from (first
    /// occurrence), after checking that the manifest still holds those prompts.
    public func recordsByPrompt() throws -> [String: Int] {
        let data: DatasetManifest
        do {
            data = try DatasetManifest(contentsOf: URL(fileURLWithPath: manifest), imageCheck: .none)
        } catch {
            throw LLMFeatureShardsError(message: "\(indexURL.path): the manifest it names cannot be read: \(error)")
        }
        let prompts = data.records.map { field == "prompt" ? $0.prompt : $0.text }
        guard prompts.count == count, Self.promptsFingerprint(prompts) == promptsFingerprint else {
            throw LLMFeatureShardsError(message: "\(indexURL.path): \(manifest) has changed since the features were computed "
                + "(\(prompts.count) records, \(count) stored); run `sura features` again")
        }
        var rows: [String: Int] = [:]
        for (i, prompt) in prompts.enumerated() where rows[prompt] == nil { rows[prompt] = i }
        return rows
    }

    /// The training table of `prompts` (distinct): [N, maxLength, D + 1], each row the prompt's
    /// first `tokenCounts[i]` states, zeros after them and the token mask as the last channel,
    /// as `LLMPromptEncoder.encode` gives them.
    /// - Parameters:
    ///   - tokenCounts: the tokens `train` keeps of each prompt (1…maxLength).
    ///   - encode: [b] prompts → [b, maxLength, D + 1], for the prompts the folder lacks.
    /// - Returns: the table and how many prompts `encode` computed.
    public func table(prompts: [String], tokenCounts: [Int], maxLength: Int,
                      encode: ([String]) throws -> Tensor) throws -> (table: PromptFeatureTable, computed: Int) {
        precondition(tokenCounts.count == prompts.count)
        let d = hiddenSize, row = maxLength * (d + 1)
        let records = try recordsByPrompt()
        var values = [Float](repeating: 0, count: prompts.count * row)
        var found = [Bool](repeating: false, count: prompts.count)
        // Which table rows each shard serves: shard → [(table row, record)].
        var wanted: [Int: [(Int, Int)]] = [:]
        for (i, prompt) in prompts.enumerated() {
            guard let record = records[prompt] else { continue }
            let shard = shards.firstIndex { record < $0.firstRecord + $0.count }!
            wanted[shard, default: []].append((i, record))
        }
        for (s, rows) in wanted.sorted(by: { $0.key < $1.key }) {
            let url = directory.appendingPathComponent(shards[s].file)
            func fail(_ message: String) -> LLMFeatureShardsError { LLMFeatureShardsError(message: "\(url.path): \(message)") }
            let file: SafeTensorsFile
            do { file = try SafeTensorsFile(contentsOf: url) } catch { throw fail("\(error)") }
            guard file.metadata["format"] == Self.format, file.metadata["layer"] == "\(layer)", file.metadata["field"] == field else {
                throw fail("its metadata (format, layer, field) does not match \(indexURL.path)")
            }
            guard let states = file.entry(named: "hidden_states"), let masks = file.entry(named: "attention_mask"),
                  states.shape.count == 3, states.shape[0] == shards[s].count, states.shape[2] == d,
                  masks.shape == Array(states.shape.prefix(2)) else {
                throw fail("expected hidden_states [\(shards[s].count), L, \(d)] and attention_mask [\(shards[s].count), L]")
            }
            let hidden = try file.tensor(named: "hidden_states").contiguousCopy().scalars
            let mask = try file.tensor(named: "attention_mask").contiguousCopy().scalars
            let length = states.shape[1]
            for (i, record) in rows {
                let local = record - shards[s].firstRecord
                let stored = (0 ..< length).reduce(0) { $0 + (mask[local * length + $1] > 0 ? 1 : 0) }
                // Causal attention: the first t states of a prompt do not depend on its later tokens,
                // so a longer stored prompt serves a shorter one; a shorter one cannot.
                let keep = tokenCounts[i]
                guard stored >= keep else { continue }
                for t in 0 ..< keep {
                    let source = (local * length + t) * d, target = i * row + t * (d + 1)
                    for c in 0 ..< d { values[target + c] = hidden[source + c] }
                    values[target + d] = 1
                }
                found[i] = true
            }
        }
        let missing = prompts.indices.filter { !found[$0] }
        if !missing.isEmpty {
            let computed = try encode(missing.map { prompts[$0] }).contiguousCopy()
            guard computed.shape == [missing.count, maxLength, d + 1] else {
                throw LLMFeatureShardsError(message: "the LLM gave \(computed.shape) for \(missing.count) prompts, expected [\(missing.count), \(maxLength), \(d + 1)]")
            }
            let scalars = computed.scalars
            for (k, i) in missing.enumerated() {
                values.replaceSubrange(i * row ..< (i + 1) * row, with: scalars[k * row ..< (k + 1) * row])
            }
        }
        let table = try PromptFeatureTable(prompts: prompts, values: Tensor(shape: [prompts.count, maxLength, d + 1], data: values))
        return (table, missing.count)
    }
}

/// A `sura features` folder that cannot serve training, naming the file and what is wrong.
public struct LLMFeatureShardsError: Error, CustomStringConvertible, Sendable {
    public let message: String
    public var description: String { message }
}
