import Foundation
import Tensor
import Models
import Data
import Collective
import Worker

/// Adapter training with LoRA on an LLM split over pipeline stages (`adapter.llm_lora` with
/// `topology.pp` > 1). Stage s runs its share of the decoder layers (cut by
/// `topology.partition`, balanced by parameter count unless told) with their LoRA; the last stage also runs the adapter and the diffusion loss. Each
/// step's micro-batches flow by `topology.schedule` (1F1B by default): activations forward and
/// their gradients back by send/receive, then every stage's gradients are averaged over its dp
/// group (bucketed, during the stage's last backward), clipped by the norm over all stages, and
/// applied.
///
/// Every rank holds the whole module and one optimizer over all of its trainable tensors, but
/// only its stage's tensors get gradients, so only they move (AdamW skips a tensor without a
/// gradient). `synchronize()` copies each tensor and its optimizer and EMA state from the stage
/// that owns it to the whole pipeline group, so checkpoints, samples and the export — which read
/// everything — see the trained values; resuming then loads the same state on every rank.
///
/// Data: replica r of `dp` takes global samples p·dp + r as `TrainingRun` does; a step has
/// pp × A micro-batches of batch_size / (dp·pp·A) samples, so the step covers batch_size / dp
/// samples per replica, the same samples (and noise) as pp = 1.
final class PipelinedAdapterTraining {
    let task: AdapterTask
    let groups: TopologyGroups
    let encoder: LLMPromptEncoder
    let stage: PipelineStage
    let replica: DataParallelReplica
    /// This stage's decoder layers.
    let layers: Range<Int>
    /// The tensors this rank trains (its layers' LoRA, and the adapter on the last stage).
    let owned: [(name: String, tensor: Tensor)]
    /// Every trainable tensor of the module, in the optimizer's order.
    let all: [(name: String, tensor: Tensor)]
    let ownedNames: Set<String>
    /// The micro-batches of the step being run (filled before `stage.run`, read by its closures).
    private var tokenized: [LLMPromptEncoder.TokenizedBatch] = []

    /// - Throws: `TrainingError.config` naming `topology.pp` when the stages outnumber the
    ///   decoder layers the adapter reads; the communicator's errors naming the dead rank.
    init(task: AdapterTask, groups: TopologyGroups, topology: TrainingConfig.TopologySection, parameters: [(name: String, tensor: Tensor)],
         options: DataParallelOptions, file: String, log: (String) -> Void) throws {
        guard let encoder = task.llm else {
            throw TrainingError.config(file: file, key: "adapter.llm_lora", message: "needs adapter.llm")
        }
        self.task = task
        self.groups = groups
        self.encoder = encoder
        all = parameters
        let stages = groups.pipeline.size
        let costs = encoder.llm.model.layers.prefix(encoder.decoderLayersRun).map { layer in layer.parameters().reduce(0) { $0 + $1.count } }
        let partition = try topology.partition(costs: costs, file: file)
        let layers = partition.stages[groups.ppRank]
        self.layers = layers
        let isLast = groups.ppRank == stages - 1
        // Module names: the LLM's tensors are `llm.model.layers.N.…`, the adapter's have no prefix.
        owned = parameters.filter { named in
            if named.name.hasPrefix("llm.") {
                return LlamaLoRA.layerIndex(of: String(named.name.dropFirst(4))).map(layers.contains) ?? false
            }
            return isLast
        }
        ownedNames = Set(owned.map(\.name))
        replica = try DataParallelReplica(parameters: owned, communicator: groups.dataParallel, options: options)
        let encoderRef = encoder
        var batches: () -> [LLMPromptEncoder.TokenizedBatch] = { [] }
        stage = try PipelineStage(communicator: groups.pipeline, parameters: owned) { x, k in
            encoderRef.layers(layers, x, batch: batches()[k])
        }
        batches = { [unowned self] in self.tokenized }
        log("LLM LoRA pipeline: layers \(partition.stages.map { "\($0.lowerBound + 1)…\($0.upperBound)" }.joined(separator: " | ")) over \(stages) stages; "
            + "this rank (stage \(groups.ppRank)) trains \(owned.count) tensors, \(owned.reduce(0) { $0 + $1.tensor.count }) values")
    }

    /// What one step reports: the global mean loss and its parts (on every rank) and the
    /// gradient norm over all stages before clipping.
    struct StepReport {
        var loss: Double
        var parts: [String: Double]
        var gradientNorm: Float?
        /// Per stage: 1 − busy/wall, averaged over the dp replicas (bubble, communication and
        /// imbalance: a stage with less work than the others idles while they finish).
        var stageIdle: [Double] = []
    }

    /// One optimizer step over `microBatches` micro-batches; `samples(k)` gives micro-batch k's
    /// dataset indices and their per-sample generators (every stage draws the same).
    func step(microBatches m: Int, kind: PipelineSchedule.Kind, optimizer: AdamW, maxGradientNorm: Float?,
              samples: (Int) -> (indices: [Int], generators: [SeededGenerator])) throws -> StepReport {
        var prepared: [AdapterTask.PreparedBatch] = []
        var generators: [[SeededGenerator]] = []
        for k in 0 ..< m {
            var (indices, streams) = samples(k)
            prepared.append(task.prepare(indices: indices, generators: &streams))
            generators.append(streams)
        }
        tokenized = try prepared.map { try encoder.tokenize($0.prompts) }
        let scale = 1 / Float(m)
        var parts: [String: Double] = [:]
        let result = try stage.run(kind, microBatches: m, input: { k in
            try withoutGrad { try self.encoder.embeddings(self.tokenized[k]) }
        }, loss: { states, k in
            let packed = self.encoder.packKeepingGraph(states, batch: self.tokenized[k])
            let (total, lossParts) = try self.task.loss(prepared[k], llmStates: packed, generators: &generators[k])
            for (key, value) in lossParts { parts[key, default: 0] += value / Double(m) }
            return total * scale
        }, gradientSync: replica)

        let norm = try clip(maxGradientNorm)
        try optimizer.step()
        optimizer.zeroGrad()

        // The loss lives on the last stages: sum their replica means over the world.
        let keys = Self.partNames
        let dp = Double(groups.dataParallel.size)
        // Then per stage s its busy and wall seconds (slots 1 + keys + 2s, + 1), replica means.
        let stages = groups.pipeline.size
        var values = [Double](repeating: 0, count: 1 + keys.count + 2 * stages)
        if stage.isLast {
            values[0] = result.losses.reduce(0) { $0 + Double($1) } / dp
            for (i, key) in keys.enumerated() { values[1 + i] = (parts[key] ?? 0) / dp }
        }
        values[1 + keys.count + 2 * groups.ppRank] = result.busySeconds / dp
        values[2 + keys.count + 2 * groups.ppRank] = result.seconds / dp
        try groups.world.allreduce(&values, op: .sum)
        var report = StepReport(loss: values[0], parts: [:], gradientNorm: norm)
        for (i, key) in keys.enumerated() where stage.isLast ? parts[key] != nil : true { report.parts[key] = values[1 + i] }
        let walls = (0 ..< stages).map { values[2 + keys.count + 2 * $0] }
        let makespan = walls.max() ?? 0
        report.stageIdle = (0 ..< stages).map { makespan > 0 ? max(0, 1 - values[1 + keys.count + 2 * $0] / makespan) : 0 }
        return report
    }

    /// The loss parts an adapter with LLM LoRA reports (cross_adapter and ella: the LDM term).
    static let partNames = ["diffusion"]

    /// Scales the owned gradients so that the norm over every stage's gradients is at most
    /// `maxNorm` (clip_grad_norm_ over the whole model): ‖g‖² summed over the pipeline group.
    private func clip(_ maxNorm: Float?) throws -> Float? {
        guard let maxNorm else { return nil }
        return try clipGradientNorm(owned, maxNorm: maxNorm) { local in
            Float(try groups.pipeline.allreduce(Double(local) * Double(local), op: .sum).squareRoot())
        }
    }

    /// Copies every trainable tensor, its AdamW state and its EMA shadow from the stage that
    /// trains it to every stage (a sum over the pipeline group where only the owner contributes).
    /// Collective over the pipeline group.
    func synchronize(optimizer: AdamW, ema: ExponentialMovingAverage?) throws {
        let state = optimizer.stateDict()
        let shadows = ema?.stateDict() ?? [:]
        // Per tensor: value, exp_avg, exp_avg_sq, update count, EMA shadow (when there is one).
        var layout: [(offset: Int, count: Int)] = []
        var size = 0
        for p in all {
            let n = p.tensor.count
            layout.append((size, n))
            size += 3 * n + 1 + (ema == nil ? 0 : n)
        }
        var flat = [Float](repeating: 0, count: size)
        for (i, p) in all.enumerated() where ownedNames.contains(p.name) {
            let (o, n) = layout[i]
            func put(_ t: Tensor?, at offset: Int) {
                guard let t else { return }
                let c = t.contiguousCopy()
                for j in 0 ..< n { flat[offset + j] = c.pointer[j] }
            }
            put(p.tensor, at: o)
            put(state["exp_avg.\(p.name)"], at: o + n)
            put(state["exp_avg_sq.\(p.name)"], at: o + 2 * n)
            flat[o + 3 * n] = state["step.\(p.name)"].map { Float($0.item) } ?? 0
            if ema != nil { put(shadows["ema.\(p.name)"], at: o + 3 * n + 1) }
        }
        try groups.pipeline.allreduce(&flat, op: .sum)

        var newState: [String: Tensor] = ["step": state["step"] ?? Tensor(shape: [1], data: [0])]
        var newShadows = shadows
        for (i, p) in all.enumerated() {
            let (o, n) = layout[i]
            func take(_ offset: Int) -> Tensor { Tensor(shape: p.tensor.shape, data: Array(flat[offset ..< offset + n])) }
            p.tensor.assign(take(o))
            let updates = flat[o + 3 * n]
            if updates > 0 {
                newState["exp_avg.\(p.name)"] = take(o + n)
                newState["exp_avg_sq.\(p.name)"] = take(o + 2 * n)
                newState["step.\(p.name)"] = Tensor(shape: [1], data: [updates])
            }
            if ema != nil { newShadows["ema.\(p.name)"] = take(o + 3 * n + 1) }
        }
        try optimizer.loadStateDict(newState)
        if let ema { try ema.loadStateDict(newShadows) }
    }
}
