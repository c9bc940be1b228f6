import Foundation
import Tensor
import Models
import Data
import Collective
import Worker

/// The LLM's features of a prompt list computed pipeline-parallel: the decoder layers up to the
/// configured hidden state are split over the ranks of a pipeline group (balanced by parameter
/// count), micro-batches of prompts flow stage to stage by send/receive (GPipe, forward only: the
/// LLM is frozen), and the last stage's states are broadcast to the group so every rank holds the
/// table.
///
/// With dp > 1 the replicas share the prompts out: each replica's pipeline encodes one run of
/// whole chunks (`RankShares`), and the runs are then exchanged between the replicas' ranks of
/// the same stage, so every rank ends with the whole table at the cost of one replica's share.
///
/// Micro-batches are the same chunks of `chunk` prompts the one-process path encodes, so every
/// layer sees the same shapes and the features are bitwise those of pp = 1.
enum PipelinedLLMFeatures {
    /// Micro-batches in flight per pipeline pass (bounds the activations held at once).
    static let microBatchesPerPass = 8

    /// [N, L, D + 1] per distinct prompt: hidden states and the mask as one extra channel.
    /// - Parameters:
    ///   - communicator: this rank's pipeline group (one rank per stage).
    ///   - replicas: the same stage of every dp replica (nil or size 1: this pipeline encodes all).
    /// - Throws: `TrainingError.config` naming `topology.pp` when the stages outnumber the
    ///   layers to split; the communicator's errors (a dead stage) naming the rank.
    static func table(prompts: [String], encoder: LLMPromptEncoder, communicator: Communicator, replicas: Communicator? = nil,
                      chunk: Int, topology: TrainingConfig.TopologySection, file: String,
                      log: (String) -> Void) throws -> PromptFeatureTable {
        let runs = RankShares.runs(count: prompts.count, ranks: replicas?.size ?? 1, unit: chunk)
        let own = runs[replicas?.rank ?? 0]
        if runs.count > 1 {
            log("LLM pipeline: \(runs.count) replicas share \(prompts.count) prompts, rows \(runs.map { "\($0.lowerBound)…\($0.upperBound - 1)" }.joined(separator: " | "))")
        }
        let d = encoder.width, l = encoder.maxLength
        let rowSize = l * (d + 1)
        let label = runs.count > 1 ? "LLM features (pipeline, replica \(replicas?.rank ?? 0)'s share)" : "LLM features (pipeline)"
        var values = try share(Array(prompts[own]), encoder: encoder, communicator: communicator, chunk: chunk,
                               topology: topology, file: file, label: label, log: log)
        if let replicas, runs.count > 1 {
            values = try RankShares.assemble(values, rowSize: rowSize, runs: runs, count: prompts.count, communicator: replicas)
        }
        return try PromptFeatureTable(prompts: prompts, values: Tensor(shape: [prompts.count, l, d + 1], data: values))
    }

    /// The rows of `prompts` through this replica's pipeline, on every stage: [N·L·(D + 1)].
    private static func share(_ prompts: [String], encoder: LLMPromptEncoder, communicator: Communicator, chunk: Int,
                              topology: TrainingConfig.TopologySection, file: String, label: String,
                              log: (String) -> Void) throws -> [Float] {
        let stages = communicator.size, stage = communicator.rank
        // The pipeline group has topology.pp ranks, one stage each.
        let costs = encoder.llm.model.layers.prefix(encoder.decoderLayersRun).map { layer in layer.parameters().reduce(0) { $0 + $1.count } }
        let partition = try topology.partition(costs: costs, file: file)
        let range = partition.stages[stage]
        log("LLM pipeline: layers \(partition.stages.map { "\($0.lowerBound + 1)…\($0.upperBound)" }.joined(separator: " | ")) over \(stages) stages")

        let chunks = stride(from: 0, to: prompts.count, by: chunk).map { Array(prompts[$0 ..< min($0 + chunk, prompts.count)]) }
        var batches: [LLMPromptEncoder.TokenizedBatch] = []
        let pipeline = try PipelineStage(communicator: communicator, parameters: []) { input, k in
            encoder.layers(range, input, batch: batches[k])
        }
        let d = encoder.width, l = encoder.maxLength
        let rowSize = l * (d + 1)
        var values = [Float](repeating: 0, count: stage == stages - 1 ? prompts.count * rowSize : 0)
        var done = 0
        let bar = communicator.rank == stages - 1 && !prompts.isEmpty ? ProgressBar(total: prompts.count, label: label, unit: "prompts") : nil
        var first = 0
        while first < chunks.count {
            let pass = Array(chunks[first ..< min(first + microBatchesPerPass, chunks.count)])
            batches = try pass.map { try encoder.tokenize($0) }
            let outputs = try withoutGrad {
                try pipeline.forward(microBatches: pass.count) { k in try encoder.embeddings(batches[k]) }
            }
            if stage == stages - 1 {
                for (k, states) in outputs.enumerated() {
                    let (hidden, mask) = encoder.pack(states, batch: batches[k])
                    let joined = AdapterTask.llmTableRows(hidden: hidden, mask: mask).contiguousCopy()
                    values.withUnsafeMutableBufferPointer { buffer in
                        (buffer.baseAddress! + done * rowSize).update(from: joined.storage.pointer, count: joined.count)
                    }
                    done += pass[k].count
                }
                bar?.update(done)
            }
            first += pass.count
        }
        // Every stage gets the rows (the adapter trains on every rank). A replica whose share is
        // empty skips the broadcast on all its stages alike.
        if stage != stages - 1 { values = [Float](repeating: 0, count: prompts.count * rowSize) }
        if !values.isEmpty { try communicator.broadcast(&values, root: stages - 1) }
        return values
    }
}
