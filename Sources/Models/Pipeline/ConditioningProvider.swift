import Foundation
import Tensor

/// Anything that turns prompts into the conditioning tokens a UNet cross-attends to: a text
/// encoder, or an adapter on top of a language model and/or a text encoder.
///
/// The pipeline calls it inside `withoutGrad`, once per generation call, so a provider may cache
/// its negative conditioning. Conditioning of the prompts and the negative conditioning should
/// have the same length L: then both guidance branches run as one UNet batch (otherwise the
/// pipeline runs them as two calls, which gives the same images more slowly).
public protocol ConditioningProvider: AnyObject {
    /// Conditioning tokens for each prompt: [prompts.count, L, D], D the UNet's cross_attention_dim.
    func conditioning(for prompts: [String]) throws -> Tensor
    /// The unconditional branch of classifier-free guidance, [1, L, D]: what the model was
    /// trained to see for a dropped caption — the empty prompt's features for a text encoder, the
    /// adapter's own choice (mapper(0), CAM(text(""), LLM(""))) for an adapter.
    func negativeConditioning() throws -> Tensor
}

/// A provider whose conditioning changes along the denoising trajectory (ELLA's timestep-aware
/// connector): the pipeline asks again at every step with that step's timestep t.
public protocol TimestepConditioningProvider: ConditioningProvider {
    /// [prompts.count, L, D] at timestep t.
    func conditioning(for prompts: [String], timestep: Float) throws -> Tensor
    /// [1, L, D] at timestep t.
    func negativeConditioning(timestep: Float) throws -> Tensor
}

/// Conditioning straight from a text encoder's last hidden state, as Stable Diffusion does:
/// every prompt is tokenized, truncated and padded to exactly `maxLength` tokens, encoded, and
/// its [maxLength, D] token vectors are the conditioning. The negative conditioning is the empty
/// prompt's, computed once.
///
/// CLIP runs without an attention mask (Stable Diffusion's rows are padded with `<|endoftext|>`
/// and attend to it causally); BERT runs with its padding mask, so each real token's vector is the
/// one computed without padding. The UNet sees all `maxLength` positions in both cases.
public final class TextEncoderConditioning: ConditioningProvider {
    /// The encoder the features come from.
    public enum Encoder {
        case bert(BertModel)
        case clip(CLIPTextModel)
    }

    public let encoder: Encoder
    public let tokenizer: any Tokenizer
    /// Tokens per prompt, special tokens included.
    public let maxLength: Int
    private var cachedNegative: Tensor?
    private let lock = NSLock()

    /// The default length when none is given: CLIP's context length (77), also used for BERT.
    public static let defaultMaxLength = 77

    /// - Parameters:
    ///   - maxLength: tokens per prompt; nil means the CLIP tokenizer's own length, or 77.
    /// - Throws: `PipelineError.invalidOption` when `maxLength` is below 2 (room for the special
    ///   tokens) or above the encoder's `max_position_embeddings`.
    public init(encoder: Encoder, tokenizer: any Tokenizer, maxLength: Int? = nil) throws {
        let limit: Int
        switch encoder {
        case .bert(let model): limit = model.config.maxPositionEmbeddings
        case .clip(let model): limit = model.config.maxPositionEmbeddings
        }
        let length = maxLength ?? (tokenizer as? CLIPTokenizer)?.maxLength ?? Self.defaultMaxLength
        guard length >= 2 && length <= limit else {
            throw PipelineError.invalidOption(name: "max_length", value: "\(length)",
                                              message: "must be between 2 and the text encoder's max_position_embeddings = \(limit)")
        }
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.maxLength = length
    }

    /// D, the width of the conditioning tokens (the encoder's hidden size).
    public var width: Int {
        switch encoder {
        case .bert(let model): return model.config.hiddenSize
        case .clip(let model): return model.config.hiddenSize
        }
    }

    /// [prompts.count, maxLength, D].
    public func conditioning(for prompts: [String]) throws -> Tensor {
        guard !prompts.isEmpty else {
            throw PipelineError.invalidOption(name: "prompts", value: "[]", message: "at least one prompt is needed")
        }
        return try withoutGrad {
            switch encoder {
            case .bert(let model):
                let pad = tokenizer.specialTokens.pad ?? model.config.padTokenId ?? 0
                let encoding = tokenizer.encodeBatch(prompts, maxLength: maxLength, padding: .fixed(maxLength), padId: pad)
                return try model(encoding).lastHiddenState
            case .clip(let model):
                let pad = tokenizer.specialTokens.pad ?? tokenizer.specialTokens.eos ?? 0
                let encoding = tokenizer.encodeBatch(prompts, maxLength: maxLength, padding: .fixed(maxLength), padId: pad)
                return try model(encoding, useAttentionMask: false).lastHiddenState
            }
        }
    }

    /// The empty prompt's conditioning, [1, maxLength, D], computed on first use.
    public func negativeConditioning() throws -> Tensor {
        lock.lock()
        defer { lock.unlock() }
        if let cachedNegative { return cachedNegative }
        let negative = try conditioning(for: [""])
        cachedNegative = negative
        return negative
    }
}

/// Reads the tokenizer of a model folder in any of the layouts Hugging Face writes.
public enum TokenizerFolder {
    /// The files looked for, in order of preference.
    public static let layouts = ["tokenizer.json", "vocab.json + merges.txt (CLIP)", "vocab.txt (WordPiece)"]

    /// `tokenizer.json` (any supported model); else CLIP's `vocab.json` + `merges.txt`; else
    /// BERT's `vocab.txt`, lower-cased unless `tokenizer_config.json` says `do_lower_case: false`.
    /// - Throws: `PipelineError.missingComponent` naming the folder and the files looked for, or
    ///   the `TokenizerError` of a broken file.
    public static func load(directory: URL) throws -> any Tokenizer {
        let fm = FileManager.default
        func file(_ name: String) -> URL? {
            let url = directory.appendingPathComponent(name)
            return fm.fileExists(atPath: url.path) ? url : nil
        }
        if let json = file("tokenizer.json") { return try TokenizerJSON.load(contentsOf: json) }
        if let vocab = file("vocab.json"), let merges = file("merges.txt") {
            return try CLIPTokenizer(vocabJSON: vocab, mergesTxt: merges)
        }
        if let vocab = file("vocab.txt") {
            var lowercase = true
            if let config = file("tokenizer_config.json"), let data = try? Data(contentsOf: config),
               let json = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
               let flag = json["do_lower_case"] as? Bool {
                lowercase = flag
            }
            return try WordPieceTokenizer(vocabTxt: vocab, lowercase: lowercase)
        }
        throw PipelineError.missingComponent(folder: directory.path, component: "tokenizer",
                                             tried: ["tokenizer.json", "vocab.json and merges.txt", "vocab.txt"],
                                             hint: "copy the tokenizer files of the text encoder into this folder")
    }
}
