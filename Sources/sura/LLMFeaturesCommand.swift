import ArgumentParser
import Coordinator
import Data
import Foundation
import Models
import Tensor

/// Which prompt of a manifest record is encoded.
enum FeatureField: String, ExpressibleByArgument, CaseIterable {
    /// The simple (narrative) prompt.
    case text
    /// The complex (keyword) prompt.
    case prompt
}

/// `sura features`: SUR-adapter's prompt2vec step — one LLM hidden layer for every prompt of a
/// dataset manifest, computed once and stored as a sharded safetensors cache.
///
/// Layout of OUTPUT/:
/// - `features-NNNNN.safetensors`, one per shard of up to `--shard-size` records in manifest
///   order: `hidden_states` [count, maxLen, hidden] float32, right-padded to the shard's longest
///   prompt with zeros; `attention_mask` [count, maxLen] float32, 1 for a token, 0 for padding.
///   Metadata: `format` "sura-llm-features", `model`, `layer`, `field`, `max_length`, `records`
///   (JSON array of 0-based record indices) and `lines` (JSON array of 1-based manifest lines).
/// - `index.json`, written last through a temporary file: `format`, `version`, `model`,
///   `manifest`, `layer`, `num_hidden_layers`, `field`, `count`, `hidden_size`, `max_length`,
///   `shard_size`, `truncated`, `prompts_fnv1a` (`LLMFeatureShards.promptsFingerprint` of the
///   prompts in record order) and `shards` ([{file, count, first_record, max_length}]).
///
/// `train` reads the folder through `adapter.llm_features` (`LLMFeatureShards`).
///
/// A run is resumable: a shard file already present with the same settings and records is kept,
/// so an interrupted run continues where it stopped. Settings that differ are refused unless
/// `--overwrite`.
struct FeaturesCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "features",
        abstract: "Cache one LLM hidden layer for every prompt of a dataset manifest (sharded safetensors + index.json).")

    static let format = LLMFeatureShards.format

    @Option(help: "A Llama .gguf file or a transformers folder with tokenizer.json.")
    var model: String

    @Option(help: "The dataset manifest (metadata.jsonl) or its folder.")
    var manifest: String

    @Option(help: "Hidden state to store: 0 = embeddings, i = output of layer i, N = after the final norm; negative counts from the end (write --layer=-1).")
    var layer: Int

    @Option(help: "Output folder for the shards and index.json.")
    var output: String

    @Option(help: "Which prompt of each record: text (simple) or prompt (complex).")
    var field: FeatureField = .text

    @Option(help: "Records per shard file.")
    var shardSize: Int = 256

    @Option(help: "Prompts per forward pass.")
    var batch: Int = 16

    @Option(help: "Tokens kept per prompt (longer prompts are truncated); default and upper bound: the model's max_position_embeddings.")
    var maxLength: Int?

    @Flag(help: "Replace a cache in OUTPUT written with other settings.")
    var overwrite = false

    @OptionGroup var compute: ComputeOptions

    func run() throws {
        try compute.apply()
        guard shardSize >= 1 else { throw ValidationError("--shard-size must be at least 1, got \(shardSize)") }
        guard batch >= 1 else { throw ValidationError("--batch must be at least 1, got \(batch)") }
        if let maxLength, maxLength < 1 { throw ValidationError("--max-length must be at least 1, got \(maxLength)") }
        do {
            try extract()
        } catch let error as CommandFailure {
            throw error
        } catch {
            throw CommandFailure("\(error)")
        }
    }

    private func extract() throws {
        let modelURL = URL(fileURLWithPath: model).standardizedFileURL
        let outputURL = URL(fileURLWithPath: output).standardizedFileURL
        let data = try DatasetManifest(contentsOf: URL(fileURLWithPath: manifest), imageCheck: .none)
        guard !data.records.isEmpty else { throw CommandFailure("\(data.url.path): the manifest has no records") }

        let llm = try LlamaForCausalLM.load(from: modelURL)
        llm.freeze()
        let c = llm.config
        let n = c.numHiddenLayers
        guard layer >= -(n + 1) && layer <= n else {
            throw CommandFailure("--layer \(layer) is beyond the model's \(n) layers (\(modelURL.path)): use 0...\(n) "
                + "(0 = embeddings, \(n) = after the final norm) or -\(n + 1)...-1 counting from the end")
        }
        let resolvedLayer = layer < 0 ? layer + n + 1 : layer
        let limit = min(maxLength ?? c.maxPositionEmbeddings, c.maxPositionEmbeddings)
        let tokenizer = try LlamaTokenizerLoader.tokenizer(for: modelURL)

        // Tokenize everything first, so a bad record fails before any compute.
        var ids: [[Int]] = []
        var truncated: [Int] = []
        for record in data.records {
            let text = field == .text ? record.text : record.prompt
            var tokens = tokenizer.encode(text, addSpecialTokens: true)
            if tokens.isEmpty {
                throw CommandFailure("\(data.url.path):\(record.line): field \"\(field.rawValue)\" encodes to no tokens; give it some text")
            }
            if tokens.count > limit {
                tokens = Array(tokens.prefix(limit))
                truncated.append(record.line)
            }
            ids.append(tokens)
        }

        let fm = FileManager.default
        let indexURL = outputURL.appendingPathComponent("index.json")
        try fm.createDirectory(at: outputURL, withIntermediateDirectories: true)
        if overwrite {
            for name in (try? fm.contentsOfDirectory(atPath: outputURL.path)) ?? []
            where name == "index.json" || (name.hasPrefix("features-") && name.hasSuffix(".safetensors")) {
                try fm.removeItem(at: outputURL.appendingPathComponent(name))
            }
        }

        let shardCount = (ids.count + shardSize - 1) / shardSize
        var shards: [[String: Any]] = []
        let progress = ProgressBar(total: ids.count, label: "features", unit: "prompts")
        var done = 0, resumed = 0
        let start = BenchmarkTimer.now()
        for s in 0..<shardCount {
            let range = (s * shardSize)..<min((s + 1) * shardSize, ids.count)
            let name = String(format: "features-%05d.safetensors", s)
            let url = outputURL.appendingPathComponent(name)
            let metadata = shardMetadata(modelPath: modelURL.path, layer: resolvedLayer, maxLength: limit,
                                         records: Array(range), lines: range.map { data.records[$0].line })
            let longest = range.map { ids[$0].count }.max()!
            if fm.fileExists(atPath: url.path) {
                let existing = try SafeTensorsFile(contentsOf: url)
                guard existing.metadata == metadata else {
                    throw CommandFailure("\(url.path) was written with other settings or records (model, layer, field, "
                        + "max length or manifest lines differ); pass --overwrite or choose another --output")
                }
                resumed += range.count
                progress.update(done + range.count, status: "shard \(s + 1)/\(shardCount) (cached)")
            } else {
                try writeShard(llm: llm, ids: Array(ids[range]), length: longest, layer: resolvedLayer, metadata: metadata, to: url) { rows in
                    progress.update(done + rows, status: "shard \(s + 1)/\(shardCount)")
                }
            }
            done += range.count
            shards.append(["file": name, "count": range.count, "first_record": range.lowerBound, "max_length": longest])
        }

        let index: [String: Any] = [
            "format": Self.format, "version": 1, "model": modelURL.path, "manifest": data.url.path,
            "layer": resolvedLayer, "num_hidden_layers": n, "field": field.rawValue, "count": ids.count,
            "hidden_size": c.hiddenSize, "max_length": limit, "shard_size": shardSize,
            "truncated": truncated.count, "shards": shards,
            "prompts_fnv1a": LLMFeatureShards.promptsFingerprint(data.records.map { field == .text ? $0.text : $0.prompt }),
        ]
        do {
            let json = try JSONSerialization.data(withJSONObject: index, options: [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes])
            try json.write(to: indexURL, options: .atomic)
        } catch {
            throw CommandFailure("cannot write \(indexURL.path): \(error.localizedDescription)")
        }
        var summary = "\(ids.count) prompts (field \(field.rawValue), layer \(resolvedLayer) of \(n), hidden \(c.hiddenSize)) in "
            + "\(shardCount) shard(s) → \(outputURL.path) in " + String(format: "%.1f s", BenchmarkTimer.now() - start)
        if resumed > 0 { summary += "\n\(resumed) prompts were already cached (resumed)" }
        if let first = truncated.first {
            summary += "\n\(truncated.count) prompt(s) truncated to \(limit) tokens (first: \(data.url.path):\(first))"
        }
        print(summary)
    }

    /// The metadata a shard carries; a shard found on disk is reused only when it matches exactly.
    private func shardMetadata(modelPath: String, layer: Int, maxLength: Int, records: [Int], lines: [Int]) -> [String: String] {
        func list(_ values: [Int]) -> String { "[" + values.map(String.init).joined(separator: ",") + "]" }
        return ["format": Self.format, "model": modelPath, "layer": "\(layer)", "field": field.rawValue,
                "max_length": "\(maxLength)", "records": list(records), "lines": list(lines)]
    }

    /// Runs the prompts of one shard in batches of `batch` (right-padded, masked) and writes
    /// `hidden_states` [count, length, hidden] and `attention_mask` [count, length].
    private func writeShard(llm: LlamaForCausalLM, ids: [[Int]], length: Int, layer: Int, metadata: [String: String],
                            to url: URL, progress: (Int) -> Void) throws {
        let d = llm.config.hiddenSize
        let pad = llm.config.padTokenId ?? llm.config.eosTokenIds.first ?? 0
        var states = [Float](repeating: 0, count: ids.count * length * d)
        var mask = [Float](repeating: 0, count: ids.count * length)
        var first = 0
        while first < ids.count {
            let rows = Array(ids[first..<min(first + batch, ids.count)])
            let l = rows.map(\.count).max()!
            let padded = rows.map { $0 + [Int](repeating: pad, count: l - $0.count) }
            let rowMask = rows.map { [Int](repeating: 1, count: $0.count) + [Int](repeating: 0, count: l - $0.count) }
            let h = try withoutGrad {
                try llm.hiddenStates(inputIds: padded, attentionMask: rowMask, layers: [layer])[0]
            }.contiguousCopy().scalars
            for (r, row) in rows.enumerated() {
                let out = first + r
                // Padding positions stay zero: their hidden states mean nothing.
                for t in 0..<row.count {
                    let src = (r * l + t) * d, dst = (out * length + t) * d
                    states.replaceSubrange(dst..<(dst + d), with: h[src..<(src + d)])
                    mask[out * length + t] = 1
                }
            }
            first += rows.count
            progress(first)
        }
        try SafeTensorsWriter.write([("hidden_states", Tensor(shape: [ids.count, length, d], data: states)),
                                     ("attention_mask", Tensor(shape: [ids.count, length], data: mask))],
                                    metadata: metadata, to: url)
    }
}
