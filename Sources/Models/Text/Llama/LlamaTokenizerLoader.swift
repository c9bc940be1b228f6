import Foundation
import Tensor

/// The tokenizer (and chat template) that goes with a Llama model file: the byte-level BPE
/// stored in a GGUF's `tokenizer.ggml.*` metadata, or a folder's `tokenizer.json`.
public enum LlamaTokenizerLoader {
    /// The byte-level BPE of a GGUF file (`tokenizer.ggml.model` "gpt2": tokens, merges, token
    /// types, the `tokenizer.ggml.pre` pre-tokenization, bos / eos / pad / unk ids, add_bos_token).
    /// - Throws: `LlamaError.missingConfigKey` / `.unsupportedConfig` naming the metadata key, or
    ///   the `TokenizerError` of inconsistent arrays.
    public static func tokenizer(gguf file: GGUFFile) throws -> ByteLevelBPETokenizer {
        let source = file.url.path
        let arrays = try GGUFTokenizerArrays(file)
        return try ByteLevelBPETokenizer(
            tokens: arrays.tokens, merges: arrays.merges, tokenTypes: arrays.tokenTypes,
            specialTokens: arrays.specialTokens,
            preTokenization: ByteLevelBPETokenizer.PreTokenization(ggmlPre: arrays.pre, source: "\(source): tokenizer.ggml.pre"),
            addBosToken: arrays.addBosToken, source: source)
    }

    /// The GGUF's `tokenizer.chat_template` as a `ChatTemplate` (nil when absent or not ChatML).
    public static func chatTemplate(gguf file: GGUFFile) -> ChatTemplate? {
        guard let jinja = file.metadata["tokenizer.chat_template"]?.string else { return nil }
        return try? ChatTemplate(jinja: jinja)
    }

    /// A folder's `tokenizer.json`, with bos / eos / pad ids from its `config.json` (a
    /// tokenizer.json does not say which tokens those are).
    /// - Throws: `LlamaError.missingFile` naming the folder and tokenizer.json.
    public static func tokenizer(directory: URL) throws -> ByteLevelBPETokenizer {
        let url = directory.appendingPathComponent("tokenizer.json")
        guard FileManager.default.fileExists(atPath: url.path) else {
            throw LlamaError.missingFile(directory: directory.path, tried: ["tokenizer.json"], hint: nil)
        }
        var special = SpecialTokens()
        let configURL = directory.appendingPathComponent("config.json")
        if FileManager.default.fileExists(atPath: configURL.path) {
            let config = try LlamaConfig(contentsOf: configURL)
            special = SpecialTokens(bos: config.bosTokenId, eos: config.eosTokenIds.first, pad: config.padTokenId)
        }
        return try ByteLevelBPETokenizer(tokenizerJSON: url, specialTokens: special)
    }

    /// The tokenizer of a `.gguf` file or of a folder, whichever `url` is.
    public static func tokenizer(for url: URL) throws -> ByteLevelBPETokenizer {
        var isDirectory: ObjCBool = false
        if FileManager.default.fileExists(atPath: url.path, isDirectory: &isDirectory), isDirectory.boolValue {
            return try tokenizer(directory: url)
        }
        return try tokenizer(gguf: GGUFFile(contentsOf: url))
    }
}

/// The `tokenizer.ggml.*` arrays and ids of a GGUF file, checked.
struct GGUFTokenizerArrays {
    let tokens: [String]
    let merges: [String]
    let tokenTypes: [Int]?
    let pre: String
    let specialTokens: SpecialTokens
    let addBosToken: Bool
    let chatTemplate: String?

    init(_ file: GGUFFile) throws {
        let source = file.url.path
        let m = file.metadata
        guard let model = m["tokenizer.ggml.model"]?.string else {
            throw LlamaError.missingConfigKey(source: source, key: "tokenizer.ggml.model")
        }
        guard model == "gpt2" else {
            throw LlamaError.unsupportedConfig(source: source, key: "tokenizer.ggml.model", value: "\"\(model)\"",
                                               reason: "only byte-level BPE (\"gpt2\") tokenizers are implemented")
        }
        guard let tokens = m["tokenizer.ggml.tokens"]?.stringArray else {
            throw LlamaError.missingConfigKey(source: source, key: "tokenizer.ggml.tokens")
        }
        guard let merges = m["tokenizer.ggml.merges"]?.stringArray else {
            throw LlamaError.missingConfigKey(source: source, key: "tokenizer.ggml.merges")
        }
        self.tokens = tokens
        self.merges = merges
        tokenTypes = m["tokenizer.ggml.token_type"]?.intArray
        pre = m["tokenizer.ggml.pre"]?.string ?? "gpt2"
        func id(_ key: String) -> Int? { m[key]?.int.flatMap { $0 >= 0 && $0 < tokens.count ? $0 : nil } }
        specialTokens = SpecialTokens(bos: id("tokenizer.ggml.bos_token_id"), eos: id("tokenizer.ggml.eos_token_id"),
                                      pad: id("tokenizer.ggml.padding_token_id"), unk: id("tokenizer.ggml.unknown_token_id"))
        addBosToken = m["tokenizer.ggml.add_bos_token"]?.bool ?? false
        chatTemplate = m["tokenizer.chat_template"]?.string
    }
}
