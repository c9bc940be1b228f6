import Foundation
import Tensor

// Loading a Llama decoder from a GGUF file (llama.cpp's layout, any dequantisable tensor type)
// or from a Hugging Face folder (config.json + model.safetensors, or shards listed in
// model.safetensors.index.json), and saving it as a Hugging Face folder.
//
// GGUF and Q/K layout: llama.cpp's converter permuted the rows of every Q and K projection
// (weights and biases) per head from the rotate-half layout to the adjacent-pair layout. By
// default the loader un-permutes them, so the model holds exactly the transformers weights
// (its state dict and saved checkpoints are Hugging Face's) and RoPE runs in the rotate-half
// layout. With `ropeLayout: .adjacentPairs` the weights are used as stored and RoPE runs in
// GGML's adjacent-pair layout instead; both give the same attention scores.

/// GGUF tensor names of a Llama model and their transformers names.
public enum LlamaGGUFNames {
    private static let layerParts: [(gguf: String, hf: String)] = [
        ("attn_q", "self_attn.q_proj"), ("attn_k", "self_attn.k_proj"), ("attn_v", "self_attn.v_proj"),
        ("attn_output", "self_attn.o_proj"), ("ffn_gate", "mlp.gate_proj"), ("ffn_up", "mlp.up_proj"),
        ("ffn_down", "mlp.down_proj"), ("attn_norm", "input_layernorm"), ("ffn_norm", "post_attention_layernorm"),
    ]

    /// The transformers name of a GGUF tensor (`blk.3.attn_q.weight` → `model.layers.3.self_attn.q_proj.weight`),
    /// or nil for a name outside the Llama layout.
    public static func huggingFaceName(_ gguf: String) -> String? {
        switch gguf {
        case "token_embd.weight": return "model.embed_tokens.weight"
        case "output_norm.weight": return "model.norm.weight"
        case "output.weight": return "lm_head.weight"
        default: break
        }
        let parts = gguf.split(separator: ".", omittingEmptySubsequences: false).map(String.init)
        guard parts.count == 4, parts[0] == "blk", let layer = Int(parts[1]), layer >= 0,
              parts[3] == "weight" || parts[3] == "bias",
              let hf = layerParts.first(where: { $0.gguf == parts[2] })?.hf else { return nil }
        return "model.layers.\(layer).\(hf).\(parts[3])"
    }

    /// The GGUF name of a transformers tensor, or nil.
    public static func ggufName(_ hf: String) -> String? {
        switch hf {
        case "model.embed_tokens.weight": return "token_embd.weight"
        case "model.norm.weight": return "output_norm.weight"
        case "lm_head.weight": return "output.weight"
        default: break
        }
        let parts = hf.split(separator: ".").map(String.init)
        guard parts.count >= 5, parts[0] == "model", parts[1] == "layers", let layer = Int(parts[2]),
              let suffix = parts.last else { return nil }
        let module = parts[3..<(parts.count - 1)].joined(separator: ".")
        guard let g = layerParts.first(where: { $0.hf == module })?.gguf else { return nil }
        return "blk.\(layer).\(g).\(suffix)"
    }
}

/// A size the config fixes and a tensor dimension that shows it: `tensor`.shape[`axis`] must
/// equal `value` · `unit` (the config's `key`); otherwise the weights imply `key` = dim / unit.
struct LlamaShapeCheck {
    let tensor: String
    let axis: Int
    let key: String
    let value: Int
    var unit: Int = 1
}

extension LlamaForCausalLM {
    /// Compares config sizes with tensor shapes before loading, so a contradiction is reported
    /// by key and tensor rather than as a list of mis-shaped tensors; also counts the layers.
    static func checkShapes(_ shapes: [String: [Int]], file: String, checks: [LlamaShapeCheck],
                            layerPrefix: String, layerKey: String, layers: Int) throws {
        for c in checks {
            guard let shape = shapes[c.tensor], c.axis < shape.count, shape[c.axis] != c.value * c.unit else { continue }
            throw LlamaError.configContradictsWeights(file: file, key: c.key, configValue: c.value,
                                                      impliedValue: shape[c.axis] / c.unit, tensor: c.tensor, shape: shape)
        }
        var indices = Set<Int>()
        for name in shapes.keys where name.hasPrefix(layerPrefix) {
            if let n = Int(name.dropFirst(layerPrefix.count).prefix { $0 != "." }) { indices.insert(n) }
        }
        guard let highest = indices.max(), highest + 1 != layers else { return }
        let example = shapes.keys.filter { $0.hasPrefix("\(layerPrefix)\(highest).") }.sorted().first ?? layerPrefix
        throw LlamaError.configContradictsWeights(file: file, key: layerKey, configValue: layers, impliedValue: highest + 1,
                                                  tensor: example, shape: shapes[example] ?? [])
    }

    /// Loads `weights` (transformers names, Q/K rows already in `ropeLayout`) strictly.
    func loadStrictly(_ weights: [String: Tensor], file: String) throws {
        var weights = weights
        // transformers ties lm_head to the embedding whatever the file holds under lm_head.
        if config.tieWordEmbeddings { weights["lm_head.weight"] = nil }
        do {
            try load(weights, strict: true)
        } catch let error as StateDictError {
            throw LlamaError.weightsDoNotMatch(file: file, error: error)
        }
    }

    // MARK: GGUF

    /// Loads a GGUF model (`general.architecture` "llama"), dequantising every tensor to float32.
    ///
    /// - ropeLayout: `.rotateHalf` (default) un-permutes Q/K to the transformers layout;
    ///   `.adjacentPairs` keeps llama.cpp's rows and runs RoPE on adjacent pairs.
    /// - Throws: `LlamaError.unsupportedArchitecture` for another architecture,
    ///   `.missingConfigKey` / `.invalidConfigValue` naming the metadata key,
    ///   `.configContradictsWeights` naming the key and the tensor, `.weightsDoNotMatch` for
    ///   missing or unknown tensors, and `FileFormatError` for a damaged file.
    public convenience init(gguf url: URL, ropeLayout: RotaryLayout = .rotateHalf) throws {
        try self.init(gguf: GGUFFile(contentsOf: url), ropeLayout: ropeLayout)
    }

    /// Loads an opened GGUF file; see `init(gguf:ropeLayout:)`.
    public convenience init(gguf file: GGUFFile, ropeLayout: RotaryLayout = .rotateHalf) throws {
        let config = try LlamaConfig(gguf: file)
        let path = file.url.path
        let c = config
        try LlamaForCausalLM.checkShapes(
            Dictionary(uniqueKeysWithValues: file.tensors.map { ($0.name, $0.shape) }), file: path,
            checks: [
                LlamaShapeCheck(tensor: "token_embd.weight", axis: 0, key: "llama.vocab_size", value: c.vocabSize),
                LlamaShapeCheck(tensor: "token_embd.weight", axis: 1, key: "llama.embedding_length", value: c.hiddenSize),
                LlamaShapeCheck(tensor: "blk.0.attn_q.weight", axis: 0, key: "llama.attention.head_count",
                                value: c.numAttentionHeads, unit: c.headDim),
                LlamaShapeCheck(tensor: "blk.0.attn_q.weight", axis: 1, key: "llama.embedding_length", value: c.hiddenSize),
                LlamaShapeCheck(tensor: "blk.0.attn_k.weight", axis: 0, key: "llama.attention.head_count_kv",
                                value: c.numKeyValueHeads, unit: c.headDim),
                LlamaShapeCheck(tensor: "blk.0.ffn_gate.weight", axis: 0, key: "llama.feed_forward_length", value: c.intermediateSize),
                LlamaShapeCheck(tensor: "output.weight", axis: 0, key: "llama.vocab_size", value: c.vocabSize),
            ],
            layerPrefix: "blk.", layerKey: "llama.block_count", layers: c.numHiddenLayers)
        var factory = LlamaParameterFactory(rng: nil, std: 0)
        self.init(config: config, ropeLayout: ropeLayout, factory: &factory)
        let weights = try LlamaForCausalLM.huggingFaceWeights(from: file, config: config, layout: ropeLayout)
        try loadStrictly(weights, file: path)
    }

    /// Every tensor of a GGUF file, dequantised, under its transformers name (names outside the
    /// Llama layout are kept as they are, so a strict load reports them), with Q/K rows in `layout`.
    public static func huggingFaceWeights(from file: GGUFFile, config: LlamaConfig,
                                          layout: RotaryLayout = .rotateHalf) throws -> [String: Tensor] {
        var weights: [String: Tensor] = [:]
        for info in file.tensors {
            var t = try file.tensor(named: info.name)
            guard let name = LlamaGGUFNames.huggingFaceName(info.name) else {
                weights[info.name] = t
                continue
            }
            if name.contains(".self_attn.q_proj.") {
                t = try convertRows(t, heads: config.numAttentionHeads, tensor: info.name, file: file.url.path, to: layout)
            } else if name.contains(".self_attn.k_proj.") {
                t = try convertRows(t, heads: config.numKeyValueHeads, tensor: info.name, file: file.url.path, to: layout)
            }
            weights[name] = t
        }
        return weights
    }

    private static func convertRows(_ t: Tensor, heads: Int, tensor: String, file: String, to layout: RotaryLayout) throws -> Tensor {
        guard t.rank >= 1, t.shape[0] % (2 * heads) == 0 else {
            throw LlamaError.invalidConfigValue(source: file, key: tensor, value: "\(t.shape)",
                                                message: "rows do not split into \(heads) heads of even width")
        }
        return RotaryLayout.adjacentPairs.convertRows(t, heads: heads, to: layout)
    }

    // MARK: Hugging Face folders

    /// Loads a transformers folder: `config.json` and `model.safetensors` (or the shards of
    /// `model.safetensors.index.json`), float32/float16/bfloat16.
    /// - Throws: `LlamaError.missingFile` naming the folder and the files looked for,
    ///   config errors naming the key, `.configContradictsWeights` naming the key and tensor,
    ///   `.weightsDoNotMatch` listing missing, unexpected and mis-shaped tensors.
    public convenience init(directory: URL) throws {
        let configURL = directory.appendingPathComponent("config.json")
        guard FileManager.default.fileExists(atPath: configURL.path) else {
            throw LlamaError.missingFile(directory: directory.path, tried: ["config.json"], hint: nil)
        }
        let config = try LlamaConfig(contentsOf: configURL)
        let (file, weights) = try LlamaForCausalLM.loadSafeTensors(directory)
        let c = config
        let layer0 = "model.layers.0."
        try LlamaForCausalLM.checkShapes(
            weights.mapValues(\.shape), file: file,
            checks: [
                LlamaShapeCheck(tensor: "model.embed_tokens.weight", axis: 0, key: "vocab_size", value: c.vocabSize),
                LlamaShapeCheck(tensor: "model.embed_tokens.weight", axis: 1, key: "hidden_size", value: c.hiddenSize),
                LlamaShapeCheck(tensor: layer0 + "self_attn.q_proj.weight", axis: 0, key: "num_attention_heads",
                                value: c.numAttentionHeads, unit: c.headDim),
                LlamaShapeCheck(tensor: layer0 + "self_attn.q_proj.weight", axis: 1, key: "hidden_size", value: c.hiddenSize),
                LlamaShapeCheck(tensor: layer0 + "self_attn.k_proj.weight", axis: 0, key: "num_key_value_heads",
                                value: c.numKeyValueHeads, unit: c.headDim),
                LlamaShapeCheck(tensor: layer0 + "mlp.gate_proj.weight", axis: 0, key: "intermediate_size", value: c.intermediateSize),
                LlamaShapeCheck(tensor: "lm_head.weight", axis: 0, key: "vocab_size", value: c.vocabSize),
            ],
            layerPrefix: "model.layers.", layerKey: "num_hidden_layers", layers: c.numHiddenLayers)
        var factory = LlamaParameterFactory(rng: nil, std: 0)
        self.init(config: config, ropeLayout: .rotateHalf, factory: &factory)
        try loadStrictly(weights, file: file)
    }

    /// Loads a GGUF file or a transformers folder, whichever `url` is.
    public static func load(from url: URL, ropeLayout: RotaryLayout = .rotateHalf) throws -> LlamaForCausalLM {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: url.path, isDirectory: &isDirectory) else {
            throw LlamaError.missingFile(directory: url.deletingLastPathComponent().path, tried: [url.lastPathComponent],
                                         hint: "expected a .gguf file or a folder with config.json and model.safetensors")
        }
        if isDirectory.boolValue {
            let model = try LlamaForCausalLM(directory: url)
            return ropeLayout == .rotateHalf ? model : try model.converted(to: ropeLayout)
        }
        return try LlamaForCausalLM(gguf: url, ropeLayout: ropeLayout)
    }

    /// The same model with Q/K rows (and RoPE) in `layout`.
    public func converted(to layout: RotaryLayout) throws -> LlamaForCausalLM {
        var factory = LlamaParameterFactory(rng: nil, std: 0)
        let copy = LlamaForCausalLM(config: config, ropeLayout: layout, factory: &factory)
        try copy.loadStrictly(stateDict(in: layout), file: "(in memory)")
        return copy
    }

    /// The weights under transformers names with Q/K rows in `layout` (`.rotateHalf`: exactly
    /// what transformers expects); tied `lm_head.weight` is left out, as transformers saves it.
    public func stateDict(in layout: RotaryLayout) -> [String: Tensor] {
        var out: [String: Tensor] = [:]
        for (name, t) in namedStateTensors() {
            if config.tieWordEmbeddings && name == "lm_head.weight" { continue }
            if name.contains(".self_attn.q_proj.") {
                out[name] = ropeLayout.convertRows(t, heads: config.numAttentionHeads, to: layout)
            } else if name.contains(".self_attn.k_proj.") {
                out[name] = ropeLayout.convertRows(t, heads: config.numKeyValueHeads, to: layout)
            } else {
                out[name] = t
            }
        }
        return out
    }

    /// Writes a transformers folder: `config.json` and `model.safetensors` (float32, metadata
    /// `format: pt`, Q/K in the rotate-half layout whatever this model's layout), each through
    /// a temporary file.
    public func save(to directory: URL) throws {
        let configURL = directory.appendingPathComponent("config.json")
        do {
            try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
            try config.jsonData().write(to: configURL, options: .atomic)
        } catch {
            throw FileFormatError.writeFailed(file: configURL.path, reason: error.localizedDescription)
        }
        try SafeTensorsWriter.write(stateDict(in: .rotateHalf), metadata: ["format": "pt"],
                                    to: directory.appendingPathComponent("model.safetensors"))
    }

    /// Every tensor of a folder's safetensors weights and the file (or index) they came from.
    static func loadSafeTensors(_ directory: URL) throws -> (file: String, tensors: [String: Tensor]) {
        let fm = FileManager.default
        let single = directory.appendingPathComponent("model.safetensors")
        let index = directory.appendingPathComponent("model.safetensors.index.json")
        if fm.fileExists(atPath: single.path) {
            return (single.path, try SafeTensorsFile(contentsOf: single).loadAll())
        }
        guard fm.fileExists(atPath: index.path) else {
            let others = ["pytorch_model.bin", "model.gguf"].filter { fm.fileExists(atPath: directory.appendingPathComponent($0).path) }
            let hint = others.isEmpty ? nil : "found \(others.joined(separator: ", ")), which this loader does not read; "
                + "save the model with save_pretrained(safe_serialization=True)"
            throw LlamaError.missingFile(directory: directory.path, tried: ["model.safetensors", "model.safetensors.index.json"], hint: hint)
        }
        let data: Data
        do { data = try Data(contentsOf: index) } catch {
            throw FileFormatError.unreadable(file: index.path, reason: error.localizedDescription)
        }
        guard let json = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
              let weightMap = json["weight_map"] as? [String: String] else {
            throw FileFormatError.invalidHeader(file: index.path, reason: "expected a JSON object with a \"weight_map\" of tensor name → shard file")
        }
        var tensors: [String: Tensor] = [:]
        for shard in Set(weightMap.values).sorted() {
            guard !shard.contains("/"), !shard.hasPrefix(".") else {
                throw FileFormatError.invalidEntry(file: index.path, key: shard, reason: "shard names must be plain file names in the same folder")
            }
            let shardURL = directory.appendingPathComponent(shard)
            guard fm.fileExists(atPath: shardURL.path) else {
                throw LlamaError.missingFile(directory: directory.path, tried: [shard], hint: "listed in \(index.lastPathComponent)")
            }
            let file = try SafeTensorsFile(contentsOf: shardURL)
            for name in file.names where weightMap[name] == shard { tensors[name] = try file.tensor(named: name) }
            if let listed = weightMap.first(where: { $0.value == shard && file.entry(named: $0.key) == nil }) {
                throw FileFormatError.tensorNotFound(file: shardURL.path, name: listed.key, similar: [])
            }
        }
        return (index.path, tensors)
    }
}
