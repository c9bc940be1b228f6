import ArgumentParser
import Foundation
import Models
import Tensor

/// `sura forward --model PATH --input IN.safetensors --output OUT.safetensors [--text …]`: runs a
/// model on named input tensors and writes its named outputs, with the names diffusers and
/// transformers use, so results compare one to one with the reference libraries.
struct ForwardCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "forward",
        abstract: "Run a model on named input tensors (safetensors) and write its named outputs.",
        discussion: ForwardModels.summary)

    @Option(help: "Model folder with config.json (diffusers or transformers layout), or a Llama .gguf file.")
    var model: String

    @Option(help: "Input tensors (safetensors) named as the model's forward arguments.")
    var input: String?

    @Option(help: "Output file (safetensors).")
    var output: String

    @Option(name: .customLong("text"), help: "Text models: a text to tokenize with the model's tokenizer; repeat for a batch.")
    var texts: [String] = []

    @OptionGroup var compute: ComputeOptions

    func run() throws {
        try compute.apply()
        guard input != nil || !texts.isEmpty else { throw ValidationError("give --input IN.safetensors, or --text for a text model") }
        let modelURL = URL(fileURLWithPath: model)
        let outputURL = URL(fileURLWithPath: output)
        do {
            let spec = ForwardModels.spec(for: try ModelKind.detect(at: modelURL))
            var tensors: [String: Tensor] = [:]
            var source = "--text"
            if let input {
                tensors = try SafeTensorsFile(contentsOf: URL(fileURLWithPath: input)).loadAll()
                source = input
            }
            var tokenized: [(String, Tensor)] = []
            if !texts.isEmpty {
                guard let tokenize = spec.tokenize else {
                    throw CommandFailure("--text: a \(spec.kind.rawValue) takes no text; pass its inputs with --input")
                }
                tokenized = try tokenize(modelURL, texts)
                for (name, tensor) in tokenized {
                    guard tensors[name] == nil else { throw CommandFailure("\(source) already has \(name); give either --text or \(name), not both") }
                    tensors[name] = tensor
                }
            }
            let inputs = try ForwardInputs(tensors, source: source, spec: spec)
            let start = BenchmarkTimer.now()
            let outputs = try withoutGrad { try spec.run(modelURL, inputs) } + tokenized
            let seconds = BenchmarkTimer.now() - start
            try FileManager.default.createDirectory(at: outputURL.deletingLastPathComponent(), withIntermediateDirectories: true)
            try SafeTensorsWriter.write(outputs, metadata: ["model": modelURL.path, "model_class": spec.kind.rawValue],
                                        to: outputURL)
            var table = TextTable(header: ["output", "shape"])
            for (name, tensor) in outputs.sorted(by: { $0.0 < $1.0 }) { table.add([name, "\(tensor.shape)"]) }
            print("\(spec.kind.rawValue) in \(String(format: "%.1f", seconds * 1e3)) ms → \(outputURL.path)")
            print(table.render())
        } catch let error as CommandFailure {
            throw error
        } catch {
            throw CommandFailure("\(error)")
        }
    }
}

/// The input tensors of one `sura forward` run, checked against the model's input names.
struct ForwardInputs {
    let tensors: [String: Tensor]
    let source: String
    let spec: ForwardSpec

    /// Every required input present, at least one of `spec.oneOf`, nothing unknown.
    init(_ tensors: [String: Tensor], source: String, spec: ForwardSpec) throws {
        self.tensors = tensors
        self.source = source
        self.spec = spec
        let known = Set(spec.inputs.map(\.name))
        for name in tensors.keys.sorted() where !known.contains(name) {
            throw CommandFailure("\(source): unexpected input tensor '\(name)'; \(spec.expectation)")
        }
        for input in spec.inputs where input.required && tensors[input.name] == nil {
            throw CommandFailure("\(source): missing input tensor '\(input.name)'; \(spec.expectation); the file has: "
                                 + (tensors.isEmpty ? "nothing" : tensors.keys.sorted().joined(separator: ", ")))
        }
        if !spec.oneOf.isEmpty && !spec.oneOf.contains(where: { tensors[$0] != nil }) {
            throw CommandFailure("\(source): needs \(spec.oneOf.joined(separator: " or ")); \(spec.expectation)")
        }
    }

    /// A required input.
    func tensor(_ name: String) -> Tensor { tensors[name]! }
    func optional(_ name: String) -> Tensor? { tensors[name] }

    /// A [B, L] tensor of whole numbers ≥ 0 as rows of ints (token ids, masks).
    func rows(_ name: String) throws -> [[Int]]? {
        guard let t = tensors[name] else { return nil }
        guard t.rank == 2, t.shape[0] > 0, t.shape[1] > 0 else {
            throw CommandFailure("\(source): \(name) has shape \(t.shape); expected [batch, length]")
        }
        let values = t.scalars, width = t.shape[1]
        if let bad = values.firstIndex(where: { !($0 >= 0 && $0 == $0.rounded() && $0 < 1e9) }) {
            throw CommandFailure("\(source): \(name)[\(bad / width)][\(bad % width)] = \(values[bad]) is not a whole number ≥ 0")
        }
        return (0..<t.shape[0]).map { r in values[(r * width)..<((r + 1) * width)].map { Int($0) } }
    }
}

/// What `sura forward` knows about one model kind: its inputs (for checks and messages), how to
/// load and run it, and how to tokenize `--text` for it.
struct ForwardSpec {
    struct Input {
        let name: String
        let shape: String
        let required: Bool
    }

    let kind: ModelKind
    let inputs: [Input]
    /// At least one of these inputs must be given (the VAE: sample and/or latents).
    var oneOf: [String] = []
    let outputs: String
    /// Loads the model at the URL and runs it on the checked inputs (called inside `withoutGrad`).
    let run: (URL, ForwardInputs) throws -> [(String, Tensor)]
    /// Tokenizes texts with the model's tokenizer into input tensors; nil for non-text models.
    var tokenize: ((URL, [String]) throws -> [(String, Tensor)])? = nil

    /// "a BertModel takes input_ids [B, L], attention_mask [B, L] (optional)".
    var expectation: String {
        "a \(kind.rawValue) takes " + inputs.map { "\($0.name) \($0.shape)" + ($0.required ? "" : " (optional)") }.joined(separator: ", ")
    }
}

/// The per-model-kind table of `sura forward`. A new model kind is a `ModelKind` case and one
/// entry in `spec(for:)`.
enum ForwardModels {
    static func spec(for kind: ModelKind) -> ForwardSpec {
        switch kind {
        case .unet2DCondition: return unet
        case .autoencoderKL: return vae
        case .bert: return bert
        case .clipText, .clipTextWithProjection: return clip(kind)
        case .llama: return llama
        }
    }

    static var summary: String {
        ModelKind.allCases.filter { $0 != .clipTextWithProjection }.map { kind in
            let spec = Self.spec(for: kind)
            return "\(kind.rawValue): \(spec.inputs.map(\.name).joined(separator: ", ")) → \(spec.outputs)"
        }.joined(separator: "\n")
    }

    // MARK: Diffusion

    static let unet = ForwardSpec(
        kind: .unet2DCondition,
        inputs: [.init(name: "sample", shape: "[N, C, H, W]", required: true),
                 .init(name: "timestep", shape: "[N] or []", required: true),
                 .init(name: "encoder_hidden_states", shape: "[N, L, D]", required: true),
                 .init(name: "encoder_attention_mask", shape: "[N, L]", required: false)],
        outputs: "sample",
        run: { url, inputs in
            let unet = try UNet2DConditionModel.load(directory: url)
            unet.eval()
            let out = try unet.forward(sample: inputs.tensor("sample"), timestep: inputs.tensor("timestep"),
                                       encoderHiddenStates: inputs.tensor("encoder_hidden_states"),
                                       encoderAttentionMask: inputs.optional("encoder_attention_mask"))
            return [("sample", out)]
        })

    static let vae = ForwardSpec(
        kind: .autoencoderKL,
        inputs: [.init(name: "sample", shape: "[N, C, H, W] images to encode", required: false),
                 .init(name: "latents", shape: "[N, latent, h, w] to decode", required: false)],
        oneOf: ["sample", "latents"],
        outputs: "latent_dist.mean, latent_dist.logvar (from sample); sample (from latents)",
        run: { url, inputs in
            let vae = try AutoencoderKL.load(directory: url)
            vae.eval()
            var outputs: [(String, Tensor)] = []
            if let sample = inputs.optional("sample") {
                let dist = try vae.encode(sample)
                outputs += [("latent_dist.mean", dist.mean), ("latent_dist.logvar", dist.logvar)]
            }
            if let latents = inputs.optional("latents") { outputs.append(("sample", try vae.decode(latents))) }
            return outputs
        })

    // MARK: Text encoders

    static let bert = ForwardSpec(
        kind: .bert,
        inputs: [.init(name: "input_ids", shape: "[B, L]", required: true),
                 .init(name: "attention_mask", shape: "[B, L]", required: false),
                 .init(name: "token_type_ids", shape: "[B, L]", required: false)],
        outputs: "last_hidden_state, pooler_output (with a pooler), hidden_states.0…N",
        run: { url, inputs in
            let model = try BertModel.load(directory: url)
            model.eval()
            let out = try model(inputIds: inputs.rows("input_ids")!, attentionMask: inputs.rows("attention_mask"),
                                tokenTypeIds: inputs.rows("token_type_ids"), outputHiddenStates: true)
            return [("last_hidden_state", out.lastHiddenState)] + (out.poolerOutput.map { [("pooler_output", $0)] } ?? [])
                + hiddenStates(out.hiddenStates)
        },
        tokenize: { url, texts in
            let tokenizer = try TokenizerFolder.load(directory: url)
            return idsAndMask(tokenizer.encodeBatch(texts, padding: .longest), mask: true)
        })

    static func clip(_ kind: ModelKind) -> ForwardSpec {
        ForwardSpec(
            kind: kind,
            inputs: [.init(name: "input_ids", shape: "[B, L]", required: true),
                     .init(name: "attention_mask", shape: "[B, L]", required: false)],
            outputs: "last_hidden_state, pooler_output, hidden_states.0…N" + (kind == .clipTextWithProjection ? ", text_embeds" : ""),
            run: { url, inputs in
                let ids = try inputs.rows("input_ids")!, mask = try inputs.rows("attention_mask")
                if kind == .clipTextWithProjection {
                    let model = try CLIPTextModelWithProjection.load(directory: url)
                    model.eval()
                    let out = try model(inputIds: ids, attentionMask: mask, outputHiddenStates: true)
                    return [("last_hidden_state", out.lastHiddenState), ("pooler_output", out.poolerOutput)]
                        + (out.textEmbeds.map { [("text_embeds", $0)] } ?? []) + hiddenStates(out.hiddenStates)
                }
                let model = try CLIPTextModel.load(directory: url)
                model.eval()
                let out = try model(inputIds: ids, attentionMask: mask, outputHiddenStates: true)
                return [("last_hidden_state", out.lastHiddenState), ("pooler_output", out.poolerOutput)]
                    + hiddenStates(out.hiddenStates)
            },
            tokenize: { url, texts in
                let tokenizer = try TokenizerFolder.load(directory: url)
                // Stable Diffusion's rows: padded to the context length with <|endoftext|>, no mask.
                if let clip = tokenizer as? CLIPTokenizer { return idsAndMask(clip.encodeForTextEncoder(texts), mask: false) }
                return idsAndMask(tokenizer.encodeBatch(texts, padding: .longest), mask: true)
            })
    }

    // MARK: Language models

    static let llama = ForwardSpec(
        kind: .llama,
        inputs: [.init(name: "input_ids", shape: "[B, L]", required: true),
                 .init(name: "attention_mask", shape: "[B, L]", required: false)],
        outputs: "logits, hidden_states.0…N",
        run: { url, inputs in
            let model = try LlamaForCausalLM.load(from: url)
            model.eval()
            let out = try model(inputIds: inputs.rows("input_ids")!, attentionMask: inputs.rows("attention_mask"),
                                outputHiddenStates: true, logits: .all)
            return (out.logits.map { [("logits", $0)] } ?? []) + hiddenStates(out.hiddenStates)
        },
        tokenize: { url, texts in
            let tokenizer = try LlamaTokenizerLoader.tokenizer(for: url)
            let pad = tokenizer.specialTokens.pad ?? tokenizer.specialTokens.eos ?? 0
            return idsAndMask(tokenizer.encodeBatch(texts, padding: .longest, padId: pad), mask: true)
        })

    // MARK: Helpers

    static func hiddenStates(_ states: [Tensor]) -> [(String, Tensor)] {
        states.enumerated().map { ("hidden_states.\($0.offset)", $0.element) }
    }

    static func idsAndMask(_ encoding: BatchEncoding, mask: Bool) -> [(String, Tensor)] {
        func tensor(_ rows: [[Int]]) -> Tensor {
            Tensor(shape: [rows.count, rows.first?.count ?? 0], data: rows.flatMap { $0.map(Float.init) })
        }
        return [("input_ids", tensor(encoding.ids))] + (mask ? [("attention_mask", tensor(encoding.attentionMask))] : [])
    }
}
