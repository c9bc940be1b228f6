import Foundation
import Tensor

/// SUR-adapter's two knowledge-distillation terms (Qrange-group/SUR-adapter,
/// SUR_adapter_train.py), added to the diffusion loss:
///
///     L = L_diffusion + λ_llm·D(P, e) + λ_prompt·D(c, out)
///
/// - P = the LLM's feature of the simple prompt through the frozen projection
///   (`SURAdapter.projectedLLMFeature`), [B, 1, d] (or [B, L, d]);
/// - e = the adapter's transformer-encoder output, [B, L, d];
/// - c = the text encoder's features of the complex (keyword) prompt, [B, L, d];
/// - out = the adapter's conditioning, [B, L, d];
///
/// and the distillation D(x, y) = T²·F.kl_div(log_softmax(x/T), softmax(y/T), "batchmean"), the
/// softmax taken over the channel (last) dimension of every token:
///
///     D(x, y) = T²/B · Σ_{b,l,c} p_{blc}·(log p_{blc} − log q_{blc}),  p = softmax(y/T), q = softmax(x/T)
///
/// i.e. KL(softmax(y) ‖ softmax(x)) summed over tokens and averaged over the batch. The student
/// is the second argument, as in the reference; gradients reach both arguments wherever they
/// require them. A [B, 1, d] x is broadcast over y's tokens, as PyTorch broadcasts it.
public struct SURAdapterLoss: Sendable {
    /// λ_llm, the LLM-distillation weight (the design's 1e-5).
    public var llmWeight: Float
    /// λ_prompt, the complex-prompt distillation weight (the design's 1e-5).
    public var promptWeight: Float
    /// T, the softmax temperature (the reference's 1).
    public var temperature: Float

    public init(llmWeight: Float = 1e-5, promptWeight: Float = 1e-5, temperature: Float = 1) {
        self.llmWeight = llmWeight
        self.promptWeight = promptWeight
        self.temperature = temperature
    }

    /// The two terms, unweighted, and their weighted sum λ_llm·llm + λ_prompt·prompt.
    public struct Terms {
        public let llm: Tensor
        public let prompt: Tensor
        public let weighted: Tensor
    }

    /// Both terms for one adapter pass.
    /// - Parameters:
    ///   - output: the adapter's `forward` result (its `encoderOutput` and `output` are the students).
    ///   - projectedLLM: P, [B, 1, d] or [B, L, d].
    ///   - complexPrompt: c, [B, L, d].
    /// - Throws: `AdapterError.inputShape` naming the mis-shaped tensor; `.invalidConfig` naming
    ///   `temperature` when it is not positive.
    public func callAsFunction(_ output: SURAdapterOutput, projectedLLM: Tensor, complexPrompt: Tensor) throws -> Terms {
        let llm = try llmTerm(projectedLLM: projectedLLM, encoderOutput: output.encoderOutput)
        let prompt = try promptTerm(complexPrompt: complexPrompt, adapterOutput: output.output)
        return Terms(llm: llm, prompt: prompt, weighted: llm * llmWeight + prompt * promptWeight)
    }

    /// D(P, e): the LLM feature against the encoder output (the reference's `llm_loss`).
    public func llmTerm(projectedLLM: Tensor, encoderOutput: Tensor) throws -> Tensor {
        try Self.distillation(projectedLLM, encoderOutput, temperature: temperature,
                              names: ("projectedLLM", "encoderOutput"))
    }

    /// D(c, out): the complex prompt's features against the conditioning (`prompt_loss`).
    public func promptTerm(complexPrompt: Tensor, adapterOutput: Tensor) throws -> Tensor {
        try Self.distillation(complexPrompt, adapterOutput, temperature: temperature,
                              names: ("complexPrompt", "adapterOutput"))
    }

    /// D(x, y) = T²·F.kl_div(log_softmax(x/T), softmax(y/T), "batchmean"), a scalar.
    /// - Parameters:
    ///   - x: [B, L, d] or [B, 1, d] (broadcast over y's tokens).
    ///   - y: [B, L, d].
    ///   - names: how x and y are named in errors.
    /// - Throws: `AdapterError.inputShape` when the shapes do not fit; `.invalidConfig` for T ≤ 0.
    public static func distillation(_ x: Tensor, _ y: Tensor, temperature: Float = 1,
                                    names: (x: String, y: String) = ("x", "y")) throws -> Tensor {
        guard temperature > 0, temperature.isFinite else {
            throw AdapterError.invalidConfig(key: "temperature", value: String(temperature), allowed: "a number > 0")
        }
        guard y.rank == 3, y.shape.allSatisfy({ $0 >= 1 }) else {
            throw AdapterError.inputShape(adapter: SURAdapter.typeName, input: names.y, expected: "[B, L, d]", got: y.shape)
        }
        let (b, l, d) = (y.shape[0], y.shape[1], y.shape[2])
        guard x.rank == 3, x.shape[0] == b, x.shape[1] == l || x.shape[1] == 1, x.shape[2] == d else {
            throw AdapterError.inputShape(adapter: SURAdapter.typeName, input: names.x,
                                          expected: "[\(b), \(l), \(d)] or [\(b), 1, \(d)] (the shape of \(names.y))", got: x.shape)
        }
        let inverseT = 1 / temperature
        let logQ = (x * inverseT).logSoftmax(axis: -1).expanded(to: y.shape)
        let p = (y * inverseT).softmax(axis: -1)
        return Loss.klDivergence(input: logQ, target: p, reduction: .batchMean) * (temperature * temperature)
    }
}
