import Foundation
import Tensor

/// What `LlamaConversion.convert` wrote.
public struct LlamaConversionReport: Sendable {
    /// The output folder.
    public let directory: URL
    /// File names written into it, in the order written.
    public let files: [String]
    /// Tensors in model.safetensors.
    public let tensorCount: Int
    public let config: LlamaConfig
    /// Why no tokenizer.json was written (nil when one was).
    public let tokenizerSkipped: String?
}

/// Turns a Llama GGUF file into a Hugging Face transformers folder.
///
/// The folder holds `config.json` (transformers' `LlamaForCausalLM` keys), `model.safetensors`
/// (float32, dequantised, Q/K rows un-permuted back to the rotate-half layout, `lm_head.weight`
/// left out when tied, as `save_pretrained` does), and — when the GGUF carries a byte-level BPE
/// (`tokenizer.ggml.model` "gpt2") — `tokenizer.json` (vocab, merges, added tokens, the
/// pre-tokenizer named by `tokenizer.ggml.pre`, byte-level decoder), `tokenizer_config.json`
/// (special tokens, chat template) and `special_tokens_map.json`; optionally
/// `generation_config.json`. transformers' `AutoModelForCausalLM` / `AutoTokenizer` load it.
public enum LlamaConversion {
    /// Converts `gguf` into the folder `directory` (created if needed).
    /// - overwrite: allow writing into a folder that already has files.
    /// - Throws: `LlamaError.outputExists` for a non-empty folder without `overwrite`, every
    ///   loading error of `LlamaForCausalLM(gguf:)`, and `FileFormatError.writeFailed`.
    @discardableResult
    public static func convert(gguf url: URL, to directory: URL, overwrite: Bool = false,
                               generationConfig: Bool = true) throws -> LlamaConversionReport {
        let fm = FileManager.default
        if !overwrite, let contents = try? fm.contentsOfDirectory(atPath: directory.path), !contents.isEmpty {
            throw LlamaError.outputExists(path: directory.path)
        }
        let file = try GGUFFile(contentsOf: url)
        let model = try LlamaForCausalLM(gguf: file, ropeLayout: .rotateHalf)
        try model.save(to: directory)
        var files = ["config.json", "model.safetensors"]
        let tensorCount = model.stateDict(in: .rotateHalf).count

        var skipped: String? = nil
        do {
            let arrays = try GGUFTokenizerArrays(file)
            try write(tokenizerJSON(arrays, source: url.path), to: directory.appendingPathComponent("tokenizer.json"))
            try write(tokenizerConfig(arrays, config: model.config), to: directory.appendingPathComponent("tokenizer_config.json"))
            try write(specialTokensMap(arrays), to: directory.appendingPathComponent("special_tokens_map.json"))
            files += ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]
        } catch let error as LlamaError {
            skipped = error.description
        } catch let error as TokenizerError {
            skipped = error.description
        }
        if generationConfig {
            var g: [String: Any] = ["_from_model_config": true]
            if let bos = model.config.bosTokenId { g["bos_token_id"] = bos }
            if let eos = model.config.eosTokenIds.first {
                g["eos_token_id"] = model.config.eosTokenIds.count == 1 ? eos as Any : model.config.eosTokenIds as Any
            }
            if let pad = model.config.padTokenId { g["pad_token_id"] = pad }
            try write(g, to: directory.appendingPathComponent("generation_config.json"))
            files.append("generation_config.json")
        }
        return LlamaConversionReport(directory: directory, files: files, tensorCount: tensorCount,
                                     config: model.config, tokenizerSkipped: skipped)
    }

    /// The tokenizer.json object `tokenizers` reads for a byte-level BPE built from GGUF arrays.
    static func tokenizerJSON(_ a: GGUFTokenizerArrays, source: String) throws -> [String: Any] {
        let pre = try ByteLevelBPETokenizer.PreTokenization(ggmlPre: a.pre, source: "\(source): tokenizer.ggml.pre")
        let byteLevel: [String: Any] = ["type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true]
        let preTokenizer: [String: Any]
        switch pre {
        case .gpt2:
            preTokenizer = byteLevel
        case .individualDigits:
            preTokenizer = ["type": "Sequence", "pretokenizers": [["type": "Digits", "individual_digits": true], byteLevel]]
        }
        var vocab: [String: Int] = [:]
        for (id, token) in a.tokens.enumerated() where vocab[token] == nil { vocab[token] = id }
        // Control tokens (type 3) are special added tokens; user-defined ones (type 4) plain added tokens.
        var added: [[String: Any]] = []
        for (id, type) in (a.tokenTypes ?? []).enumerated() where type == 3 || type == 4 {
            added.append(["id": id, "content": a.tokens[id], "single_word": false, "lstrip": false, "rstrip": false,
                          "normalized": false, "special": type == 3])
        }
        var single: [[String: Any]] = [["Sequence": ["id": "A", "type_id": 0]]]
        var pair: [[String: Any]] = [["Sequence": ["id": "A", "type_id": 0]], ["Sequence": ["id": "B", "type_id": 1]]]
        var specials: [String: Any] = [:]
        if a.addBosToken, let bos = a.specialTokens.bos {
            let token = a.tokens[bos]
            single.insert(["SpecialToken": ["id": token, "type_id": 0]], at: 0)
            pair.insert(["SpecialToken": ["id": token, "type_id": 0]], at: 0)
            pair.insert(["SpecialToken": ["id": token, "type_id": 1]], at: 2)
            specials[token] = ["id": token, "ids": [bos], "tokens": [token]]
        }
        return [
            "version": "1.0", "truncation": NSNull(), "padding": NSNull(), "added_tokens": added,
            "normalizer": NSNull(), "pre_tokenizer": preTokenizer,
            "post_processor": ["type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": specials],
            "decoder": ["type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true],
            "model": ["type": "BPE", "dropout": NSNull(), "unk_token": NSNull(), "continuing_subword_prefix": NSNull(),
                      "end_of_word_suffix": NSNull(), "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                      "vocab": vocab, "merges": a.merges] as [String: Any],
        ]
    }

    private static func tokenName(_ a: GGUFTokenizerArrays, _ id: Int?) -> String? {
        id.map { a.tokens[$0] }
    }

    static func tokenizerConfig(_ a: GGUFTokenizerArrays, config: LlamaConfig) -> [String: Any] {
        var c: [String: Any] = [
            "add_bos_token": a.addBosToken, "add_eos_token": false, "add_prefix_space": false,
            "clean_up_tokenization_spaces": false, "model_max_length": config.maxPositionEmbeddings,
            "tokenizer_class": "GPT2Tokenizer",
        ]
        var decoder: [String: Any] = [:]
        var extra: [String] = []
        for (id, type) in (a.tokenTypes ?? []).enumerated() where type == 3 || type == 4 {
            decoder[String(id)] = ["content": a.tokens[id], "lstrip": false, "normalized": false, "rstrip": false,
                                   "single_word": false, "special": type == 3]
            if type == 3 { extra.append(a.tokens[id]) }
        }
        c["added_tokens_decoder"] = decoder
        let named = [("bos_token", a.specialTokens.bos), ("eos_token", a.specialTokens.eos),
                     ("pad_token", a.specialTokens.pad), ("unk_token", a.specialTokens.unk)]
        for (key, id) in named { c[key] = tokenName(a, id) ?? NSNull() }
        let namedTokens = Set(named.compactMap { tokenName(a, $0.1) })
        c["additional_special_tokens"] = extra.filter { !namedTokens.contains($0) }
        if let template = a.chatTemplate { c["chat_template"] = template }
        return c
    }

    static func specialTokensMap(_ a: GGUFTokenizerArrays) -> [String: Any] {
        var m: [String: Any] = [:]
        for (key, id) in [("bos_token", a.specialTokens.bos), ("eos_token", a.specialTokens.eos),
                          ("pad_token", a.specialTokens.pad), ("unk_token", a.specialTokens.unk)] {
            if let name = tokenName(a, id) {
                m[key] = ["content": name, "lstrip": false, "normalized": false, "rstrip": false, "single_word": false]
            }
        }
        return m
    }

    private static func write(_ object: [String: Any], to url: URL) throws {
        do {
            let data = try JSONSerialization.data(withJSONObject: object, options: [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes])
            try data.write(to: url, options: .atomic)
        } catch {
            throw FileFormatError.writeFailed(file: url.path, reason: error.localizedDescription)
        }
    }
}
