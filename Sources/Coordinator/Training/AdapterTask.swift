import Foundation
import Tensor
import Models
import Data
import Collective

/// Trains one adapter against a frozen base model: the adapter turns a prompt's features (the
/// text encoder's tokens and/or the LLM's hidden states) into the UNet's conditioning, and the
/// LDM loss through the frozen UNet teaches it what the UNet needs, plus each paper's own terms
/// (SUR-adapter's KL distillation, MiniGPT-5's caption-feature MSE and LM loss on the vokens).
///
/// The text encoder and the LLM are frozen, so each distinct prompt's features are computed
/// once at start and looked up per batch (`PromptFeatureTable`), SUR-adapter's prompt2vec step.
/// With `adapter.llm_lora` the LLM carries trainable LoRA and runs, with a graph, in every step
/// (LLM4GEN's joint training); `PipelinedAdapterTraining` then splits its layers over pp stages.
public final class AdapterTask: TrainingTask {
    public let type: AdapterType
    public let adapter: any ConditioningAdapter
    public let unet: UNet2DConditionModel
    public let dataset: ImageTextDataset
    public let section: TrainingConfig.AdapterSection
    /// The frozen text encoder's token features of every prompt used: [Lt, Dt] each.
    let text: PromptFeatureTable?
    /// The LLM's hidden states with the mask as one extra channel: [Ll, Dl + 1] each.
    let llmTable: PromptFeatureTable?
    /// The voken mapper's voken states: [V, Dl] each.
    let vokenTable: PromptFeatureTable?
    let llm: LLMPromptEncoder?
    /// LoRA on the LLM (`adapter.llm_lora`): the LLM then runs in every step, with a graph, and
    /// its LoRA tensors train with the adapter.
    public let llmLoRA: LlamaLoRAConfig?
    /// The voken embeddings [V, Dl]: every row the mean of the LLM's input embeddings, as
    /// MiniGPT-5 initialises new vocabulary rows.
    let vokens: Tensor?
    /// The voken rows of the LM head, trained by the LM loss (`loss.lm` > 0), and the LM
    /// examples of every prompt's document "prompt [IMG0] … [IMG(V−1)]" ([P, Dl + 4] each,
    /// `LMExampleRows`).
    let vokenHead: VokenLanguageHead?
    let lmTable: PromptFeatureTable?
    /// What the optimiser updates: the adapter, or the voken mapper with `vokenHead`.
    public let module: Module
    let textEncoder: TextEncoderConditioning?
    let lossFunction: DiffusionLoss
    let schedulerConfig: SchedulerConfig
    public let evaluationRecords: [DatasetRecord]

    /// Loads the base model and the LLM, builds the adapter (random init from `seed`) and
    /// encodes every prompt of the dataset once.
    /// - Throws: `TrainingError.config` naming the key at fault: `adapter.base_model`,
    ///   `adapter.llm`, `adapter.llm_layer`, `adapter.config.<key>`, or `adapter.config.output_dim`
    ///   when the adapter's width does not match the UNet's `cross_attention_dim`.
    /// - Parameter pipeline: the pipeline group when `topology.pp` > 1: the LLM's layers are
    ///   split over its ranks to compute the features (`PipelinedLLMFeatures`).
    /// - Parameter replicas: with `pipeline`, the same stage of every dp replica: the replicas'
    ///   pipelines each encode a share of the prompts.
    /// - Parameter agreement: the job's ranks, which share the encoding of the prompts
    ///   (`PromptTableEncoder`); nil: this process encodes them all.
    public init(config: TrainingConfig, dataset: ImageTextDataset, pipeline: Communicator? = nil, replicas: Communicator? = nil,
                agreement: RankAgreement? = nil, log: (String) -> Void) throws {
        guard let section = config.adapter, let type = config.task.adapterType else {
            throw TrainingError.config(file: config.file, key: "adapter", message: "is required")
        }
        self.type = type
        self.section = section
        self.dataset = dataset
        func fail(_ key: String, _ message: String) -> TrainingError { .config(file: config.file, key: key, message: message) }

        let folder: PipelineFolder
        do {
            folder = try PipelineFolder.load(URL(fileURLWithPath: section.baseModel))
        } catch {
            throw fail("adapter.base_model", "cannot load \(section.baseModel): \(error)")
        }
        unet = folder.unet
        unet.freeze()
        unet.eval()
        let width = unet.config.crossAttentionDim.value(at: 0)

        var rng = SeededGenerator(seed: config.seed)
        do {
            adapter = try AdapterFactory.make(type, json: section.configJSON, rng: &rng)
        } catch let error as AdapterError {
            if case let .invalidConfig(key, _, _) = error { throw fail("adapter.config.\(key)", "\(error)") }
            throw fail("adapter.config", "\(error)")
        }
        guard adapter.outputWidth == width else {
            throw fail("adapter.config.output_dim", "the adapter gives \(adapter.outputWidth)-wide tokens but the base UNet's cross_attention_dim is \(width) (\(section.baseModel))")
        }
        let needsText = adapter.requirements.contains(.textTokens) || type == .surAdapter || type == .vokenMapper
        textEncoder = folder.textConditioning
        if needsText && textEncoder == nil {
            throw fail("adapter.base_model", "\(section.baseModel) names no text encoder in sura.json, and \(type.rawValue) needs one")
        }

        let needsLLM = adapter.requirements.contains(.llmHidden) || (type == .surAdapter && section.loss.klLLM > 0 && section.llm != nil)
        if needsLLM, let path = section.llm {
            let model: LlamaForCausalLM
            do {
                model = try LlamaForCausalLM.load(from: URL(fileURLWithPath: path))
            } catch {
                throw fail("adapter.llm", "cannot load \(path): \(error)")
            }
            let n = model.config.numHiddenLayers
            guard section.llmLayer >= -(n + 1) && section.llmLayer <= n else {
                throw fail("adapter.llm_layer", "\(section.llmLayer) is beyond the LLM's \(n) layers: use 0...\(n) (0 = embeddings, \(n) = after the final norm) or -\(n + 1)...-1")
            }
            do {
                llm = try LLMPromptEncoder(llm: model, tokenizer: try LlamaTokenizerLoader.tokenizer(for: URL(fileURLWithPath: path)),
                                           layer: section.llmLayer, maxLength: section.llmMaxLength, source: URL(fileURLWithPath: path))
            } catch {
                throw fail("adapter.llm", "\(error)")
            }
        } else {
            llm = nil
        }
        if let llm, adapter.requirements.contains(.llmHidden), let expected = adapter.llmInputWidth, expected != llm.width {
            let key = type == .crossAdapter ? "llm_dim" : "input_dim"
            throw fail("adapter.config.\(key)", "the adapter reads \(expected)-wide LLM states but \(section.llm ?? "the LLM") has hidden size \(llm.width)")
        }
        if let sur = adapter as? SURAdapter, let llm, sur.config.llmDim != llm.width {
            throw fail("adapter.config.llm_dim", "\(sur.config.llmDim.map(String.init) ?? "null") must be the LLM's hidden size \(llm.width) for the kl_llm distillation term (or set adapter.loss.kl_llm: 0)")
        }

        // Every prompt the loss can ask for, encoded once.
        let records = dataset.records
        let shown = records.map { section.promptField == "text" ? $0.text : $0.prompt }
        var textPrompts = shown + [""]
        if type == .surAdapter || type == .vokenMapper { textPrompts += records.map(\.prompt) }
        let tables = PromptTableEncoder(agreement: agreement, chunk: Self.llmChunk, cache: config.featureTableCache)
        // What decides each table besides its prompts, for the feature cache.
        let llmIdentity = section.llm.map { FeatureTableCache.fingerprint(of: $0) + ["max_length \(section.llmMaxLength)"] } ?? []
        if needsText, let textEncoder {
            text = try tables.table("text encoder", textPrompts, identity: FeatureTableCache.fingerprint(of: section.baseModel),
                                    log: log) { try textEncoder.conditioning(for: $0) }
        } else {
            text = nil
        }
        if type == .vokenMapper, let llm {
            let count = (adapter as? VokenMapper)?.config.numVokens ?? 8
            let mean = withoutGrad { llm.llm.model.embedTokens.weight.mean(axes: [0], keepDims: true) }
            let rows = mean.expanded(to: [count, llm.width]).contiguous()
            vokens = rows
            if section.loss.lm > 0 {
                // One frozen pass per prompt gives both the voken states and the LM examples.
                let outputMean = withoutGrad { llm.llm.lmHead.weight.mean(axes: [0], keepDims: true) }
                let head = VokenLanguageHead(initial: outputMean.expanded(to: [count, llm.width]).contiguous())
                vokenHead = head
                // One frozen pass per chunk gives the voken states [V, Dl] and LM example rows [P, Dl + 4] of each prompt.
                let both = try tables.tables("LLM voken documents", shown, identity: llmIdentity + ["vokens \(count)"], log: log) { prompts in
                    let pass = try LMExampleRows.encode(prompts, encoder: llm, vokens: rows)
                    return [pass.states, pass.rows]
                }
                vokenTable = both[0]
                lmTable = both[1]
            } else {
                vokenHead = nil
                lmTable = nil
                vokenTable = try tables.table("LLM voken states", shown, identity: llmIdentity + ["vokens \(count)"], log: log) { prompts in try withoutGrad { try llm.vokenStates(prompts, vokens: rows) } }
            }
            llmTable = nil
        } else if let llm, let lora = section.llmLoRA {
            vokens = nil
            vokenTable = nil
            vokenHead = nil
            lmTable = nil
            llmTable = nil
            do {
                try LlamaLoRA.apply(lora, to: llm.llm, layers: 0 ..< llm.decoderLayersRun, seed: config.seed)
            } catch {
                throw fail("adapter.llm_lora", "\(error)")
            }
            let count = LlamaLoRA.tensors(of: llm.llm).reduce(0) { $0 + $1.tensor.count }
            log("LLM LoRA: rank \(lora.rank), alpha \(lora.alpha), \(lora.targets.joined(separator: "+")) of layers 1…\(llm.decoderLayersRun), \(count) parameters; the LLM runs in every step")
        } else if let llm {
            vokens = nil
            vokenTable = nil
            vokenHead = nil
            lmTable = nil
            let started = Date()
            if let path = section.llmFeatures {
                let distinct = PromptFeatureTable.distinct(shown + [""])
                // Every rank reads the folder; one that cannot stops them all.
                func read() throws -> PromptFeatureTable {
                    try Self.storedLLMTable(URL(fileURLWithPath: path), prompts: distinct, llm: llm, field: section.promptField,
                                            fail: { fail("adapter.llm_features", $0) }, log: log)
                }
                llmTable = try agreement.map { try $0("reading adapter.llm_features") { try read() } } ?? read()
            } else if let pipeline, pipeline.size > 1 {
                // Every rank must have loaded its models before the stages start exchanging activations.
                try agreement?("loading the models") {}
                // Bitwise the pp = 1 table, so both share one cache entry.
                let distinct = PromptFeatureTable.distinct(shown + [""])
                llmTable = try tables.cached("LLM layer \(llm.layer)", distinct, identity: llmIdentity, log: log) {
                    [try PipelinedLLMFeatures.table(prompts: distinct, encoder: llm, communicator: pipeline, replicas: replicas,
                                                    chunk: Self.llmChunk,
                                                    topology: config.topology, file: config.file, log: log)]
                }[0]
            } else {
                llmTable = try tables.table("LLM layer \(llm.layer)", shown + [""], identity: llmIdentity, log: log) { prompts in
                    let (hidden, mask) = try llm.encode(prompts)
                    return Self.llmTableRows(hidden: hidden, mask: mask)
                }
            }
            // The checksum lets runs with other topologies prove they computed the same features.
            log(String(format: "LLM features: %d prompts, layer %d, %.1f s, checksum %016llx", llmTable!.count, llm.layer,
                       Date().timeIntervalSince(started), llmTable!.checksum()))
        } else {
            vokens = nil
            vokenTable = nil
            vokenHead = nil
            lmTable = nil
            llmTable = nil
        }
        llmLoRA = llm == nil ? nil : section.llmLoRA
        if let mapper = adapter as? VokenMapper, let vokenHead {
            module = VokenMapperWithHead(mapper: mapper, head: vokenHead)
        } else if let llm, llmLoRA != nil {
            module = AdapterWithLLMLoRA(adapter: adapter, llm: llm.llm)
        } else {
            module = adapter
        }
        if type == .vokenMapper, let mapper = adapter as? VokenMapper, let text, section.loss.caption > 0,
           mapper.config.numQueries != text.length {
            throw fail("adapter.config.num_queries", "\(mapper.config.numQueries) must equal the text encoder's \(text.length) tokens, since the caption loss compares the mapper's output with the caption's features")
        }

        schedulerConfig = folder.schedulerConfig
        let diffusion = config.diffusion
        lossFunction = DiffusionLoss(schedule: try NoiseSchedule(config: schedulerConfig), predictionType: schedulerConfig.predictionType,
                                     snrGamma: diffusion.snrGamma, noiseOffset: diffusion.noiseOffset)
        evaluationRecords = Array(dataset.records.prefix(32))
    }

    /// Prompts per LLM forward pass (the same chunks with and without a pipeline, so the
    /// features are bitwise equal).
    static let llmChunk = 32

    /// The LLM table [N, Ll, Dl + 1] of `prompts` from a `sura features` folder; the prompts it
    /// lacks (at least the empty one) are encoded here, in `llmChunk`s.
    static func storedLLMTable(_ folder: URL, prompts: [String], llm: LLMPromptEncoder, field: String,
                               fail: (String) -> TrainingError, log: (String) -> Void) throws -> PromptFeatureTable {
        let started = Date()
        do {
            let shards = try LLMFeatureShards(directory: folder)
            try shards.check(model: llm.source, layer: llm.layer, field: field, hiddenSize: llm.width)
            let (table, computed) = try shards.table(prompts: prompts, tokenCounts: prompts.map { llm.tokens($0).count },
                                                     maxLength: llm.maxLength) { missing in
                var parts: [Tensor] = []
                for start in stride(from: 0, to: missing.count, by: llmChunk) {
                    let (hidden, mask) = try llm.encode(Array(missing[start ..< min(start + llmChunk, missing.count)]))
                    parts.append(llmTableRows(hidden: hidden, mask: mask))
                }
                return parts.count == 1 ? parts[0] : Tensor.concat(parts, axis: 0)
            }
            log(String(format: "LLM features: %d of %d prompts read from %@, %d encoded here (not stored there, or stored shorter than llm_max_length), %.1f s",
                       prompts.count - computed, prompts.count, folder.path, computed, Date().timeIntervalSince(started)))
            return table
        } catch let error as LLMFeatureShardsError {
            throw fail(error.message)
        }
    }

    func prompt(_ record: DatasetRecord) -> String { section.promptField == "text" ? record.text : record.prompt }

    /// LLM table rows [B, Ll, Dl + 1] from hidden [B, Ll, Dl] and mask [B, Ll]: the mask is the
    /// last channel (`llmFeatures` splits them again).
    static func llmTableRows(hidden: Tensor, mask: Tensor) -> Tensor {
        Tensor.concat([hidden, mask.unsqueezed(2)], axis: 2)
    }

    /// The LLM table's rows for `prompts`, split back into hidden [B, Ll, Dl] and mask [B, Ll]
    /// (the table stores the mask as one extra channel); nil without an LLM table.
    func llmFeatures(_ prompts: [String]) throws -> (hidden: Tensor, mask: Tensor)? {
        if llmLoRA != nil, let llm { return try llm.encodeKeepingGraph(prompts) }
        guard let llmTable else { return nil }
        let parts = try llmTable.features(prompts).split([llmTable.width - 1, 1], axis: 2)
        return (parts[0].contiguous(), parts[1].squeezed(2).contiguous())
    }

    /// The adapter's inputs for a batch; `dropped[b]` gives sample b the unconditional input.
    /// `llmStates`, when given, are the LLM's states of the batch's prompts (a pipeline's last
    /// stage computed them) instead of the table's or a fresh pass's.
    func inputs(records: [DatasetRecord], dropped: [Bool], llmStates: (hidden: Tensor, mask: Tensor)? = nil) throws -> AdapterInputs {
        let prompts = zip(records, dropped).map { $1 ? "" : prompt($0) }
        var inputs = AdapterInputs()
        if adapter.requirements.contains(.textTokens), let text { inputs.textTokens = try text.features(prompts) }
        if let vokenTable {
            // MiniGPT-5's CFG: a dropped sample's vokens are zeros (mapper(0) is the negative).
            let states = try vokenTable.features(records.map(prompt))
            let keep = Tensor(shape: [records.count, 1, 1], data: dropped.map { $0 ? 0 : 1 })
            inputs.llmHidden = dropped.contains(true) ? states * keep : states
        } else if let llm = try llmStates ?? llmFeatures(prompts) {
            inputs.llmHidden = llm.hidden
            inputs.llmMask = llm.mask
        }
        return inputs
    }

    /// One micro-batch's samples and which of them train the unconditional branch: the first
    /// draw of every sample's stream, so each pipeline stage can make the same batch.
    struct PreparedBatch {
        let indices: [Int]
        let records: [DatasetRecord]
        let dropped: [Bool]
        /// What the adapter's encoders see: the prompt, or "" for a dropped sample.
        var prompts: [String]
    }

    func prepare(indices: [Int], generators: inout [SeededGenerator]) -> PreparedBatch {
        let records = indices.map { dataset.records[$0] }
        if let first = generators.first { reseedDropout(from: first) }
        var dropped: [Bool] = []
        for b in indices.indices { dropped.append(Double(generators[b].nextUniform()) < section.conditionDropout) }
        return PreparedBatch(indices: indices, records: records, dropped: dropped,
                             prompts: zip(records, dropped).map { $1 ? "" : prompt($0) })
    }

    public func loss(indices: [Int], generators: inout [SeededGenerator]) throws -> (total: Tensor, parts: [String: Double]) {
        try loss(prepare(indices: indices, generators: &generators), generators: &generators)
    }

    /// The loss of a prepared batch; `llmStates` as in `inputs`.
    func loss(_ batch: PreparedBatch, llmStates: (hidden: Tensor, mask: Tensor)? = nil,
              generators: inout [SeededGenerator]) throws -> (total: Tensor, parts: [String: Double]) {
        let records = batch.records, dropped = batch.dropped
        // [B, 3, H, W]
        let images = dataset.images(batch.indices)
        let inputs = try inputs(records: records, dropped: dropped, llmStates: llmStates)
        var parts: [String: Double] = [:]
        var conditioning: Tensor? = nil
        var surOutput: SURAdapterOutput? = nil
        let diffusion: Tensor
        if let sur = adapter as? SURAdapter, let tokens = inputs.textTokens {
            // The distillation terms need the encoder output too, so run the adapter once here.
            let output = try sur.forward(tokens)
            surOutput = output
            conditioning = output.output
            diffusion = try lossFunction(unet: unet, original: images, conditioning: output.output, generators: &generators)
        } else if adapter.requirements.contains(.timesteps) {
            diffusion = try lossFunction(unet: unet, original: images, conditioning: Tensor(zeros: [1]), generators: &generators,
                                         timestepConditioning: { timesteps in
                var timed = inputs
                timed.timesteps = timesteps.map(Float.init)
                return try self.adapter.conditioning(timed)
            })
        } else {
            // [B, L, D]
            let c = try adapter.conditioning(inputs)
            conditioning = c
            diffusion = try lossFunction(unet: unet, original: images, conditioning: c, generators: &generators)
        }
        parts["diffusion"] = Double(diffusion.item)
        var total = diffusion * Float(section.loss.diffusion)
        if type == .vokenMapper, section.loss.caption > 0, let conditioning, let text {
            // MiniGPT-5's caption loss: the mapped vokens should look like the text encoder's
            // features of the caption (the empty caption's for a dropped sample).
            let target = try text.features(zip(records, dropped).map { $1 ? "" : $0.prompt })
            let difference = conditioning - target
            let caption = (difference * difference).mean()
            parts["caption"] = Double(caption.item)
            total = total + caption * Float(section.loss.caption)
        }
        if let vokenHead, let lmTable, section.loss.lm > 0 {
            // MiniGPT-5's LM loss on each sample's document, text and voken positions alike.
            let rows = try lmTable.features(records.map(prompt))
            if let lm = vokenHead.loss(rows: rows.reshaped([records.count * lmTable.length, lmTable.width])) {
                parts["lm"] = Double(lm.item)
                total = total + lm * Float(section.loss.lm)
            }
        }
        if let sur = adapter as? SURAdapter, let surOutput {
            // SUR-adapter's distillation: the encoder output towards the LLM's feature of the
            // simple prompt (through the frozen projection), the conditioning towards the text
            // encoder's features of the complex prompt.
            if section.loss.klLLM > 0, let llm = try llmFeatures(records.map(prompt)) {
                let target = try sur.projectedLLMFeature(llm.hidden, mask: llm.mask)
                let term = try SURAdapterLoss.distillation(target, surOutput.encoderOutput, names: ("projectedLLM", "encoderOutput"))
                parts["kl_llm"] = Double(term.item)
                total = total + term * Float(section.loss.klLLM)
            }
            if section.loss.klComplex > 0, let text {
                let complex = try text.features(records.map(\.prompt))
                let term = try SURAdapterLoss.distillation(complex, surOutput.output, names: ("complexPrompt", "adapterOutput"))
                parts["kl_complex"] = Double(term.item)
                total = total + term * Float(section.loss.klComplex)
            }
        }
        return (total, parts)
    }

    /// Dropout layers inside the adapter (SUR-adapter's encoder layers) own generators that a
    /// checkpoint does not hold; reseeding them every micro-batch from the first sample's stream
    /// (which the checkpoint restores) makes a resumed run draw the same masks. `stream` is a
    /// copy: the sample's own draws are untouched, and the seed is mixed so the masks do not
    /// repeat its noise.
    func reseedDropout(from stream: SeededGenerator) {
        var stream = stream
        var seeds = SeededGenerator(seed: stream.next() ^ 0x5355_5244_524f_504f)
        for (_, module) in adapter.namedModules() {
            if let dropout = module as? Dropout { dropout.generator = SeededGenerator(seed: seeds.next()) }
            if let attention = module as? MultiHeadAttention { attention.generator = SeededGenerator(seed: seeds.next()) }
        }
    }

    public func sampleImages(step: Int, range: Range<Int>) throws -> Tensor {
        let provider = try conditioningProvider()
        let pipeline = try TextToImagePipeline(unet: unet, vae: nil, scheduler: SchedulerRegistry.makeScheduler(config: schedulerConfig),
                                               conditioningProvider: provider)
        let prompts = range.map { ImagePrompt(prompt(evaluationRecords[$0]), seed: UInt64($0)) }
        return try pipeline.generate(prompts, options: TextToImageOptions(steps: 25, guidanceScale: 4, height: dataset.height,
                                                                          width: dataset.width)).images
    }

    /// The adapter as inference uses it (the same encoders, the same voken rows).
    public func conditioningProvider() throws -> AdapterConditioning {
        try AdapterConditioning(type: type, adapter: adapter, textEncoder: textEncoder, llm: llm, vokens: vokens)
    }

    /// Writes the adapter checkpoint `sura generate --adapter` and `sura eval semantic` load.
    public func export(to path: String) throws -> [String] {
        var metadata = ["base_model": section.baseModel, "prompt_field": section.promptField]
        if let path = section.llm, let llm {
            metadata["llm"] = path
            metadata["llm_layer"] = "\(llm.layer)"
            metadata["llm_max_length"] = "\(llm.maxLength)"
        }
        if let llmLoRA { metadata["llm_lora"] = try llmLoRA.json() }
        var checkpoint = AdapterCheckpoint(type: type, adapter: adapter, metadata: metadata)
        if let llm, llmLoRA != nil {
            for (name, tensor) in LlamaLoRA.tensors(of: llm.llm) {
                checkpoint.extraTensors[AdapterConditioning.loraPrefix + name] = tensor.contiguousCopy()
            }
        }
        if let vokens { checkpoint.extraTensors["vokens"] = vokens }
        if let vokenHead { checkpoint.extraTensors["voken_lm_head"] = vokenHead.weight.contiguousCopy() }
        let url = URL(fileURLWithPath: path)
        try checkpoint.write(to: url)
        return [url.path]
    }
}

/// The voken mapper trained together with its voken LM-head rows: the mapper's parameters keep
/// their own names, the rows are `voken_lm_head.weight`.
final class VokenMapperWithHead: Module {
    @ModuleKey("") var mapper: VokenMapper
    @ModuleKey("voken_lm_head") var head: VokenLanguageHead

    init(mapper: VokenMapper, head: VokenLanguageHead) {
        _mapper.wrappedValue = mapper
        _head.wrappedValue = head
        super.init()
    }
}

/// An adapter trained together with LoRA on the LLM: the adapter's parameters keep their own
/// names, the LLM's are `llm.model.layers.N.…` (its frozen base weights are not trainable, so
/// training checkpoints hold only the LoRA tensors of it).
final class AdapterWithLLMLoRA: Module {
    @ModuleKey("") var adapter: Module
    var llm: LlamaForCausalLM

    init(adapter: Module, llm: LlamaForCausalLM) {
        _adapter.wrappedValue = adapter
        self.llm = llm
        super.init()
    }
}
