import Foundation
import Models
import Tensor
import XCTest

/// MiniGPT-5's voken rows of the LM head: the two-constant reduction of the extended-vocabulary
/// cross-entropy is exact, its gradient passes a finite-difference check, and with the real
/// SmolLM2 a head trained on "prompt [IMG0] [IMG1]" documents makes the generator put an image
/// right after a held-out scene description, with the voken states the mapper was trained on.
final class VokenLanguageHeadTests: XCTestCase {
    /// Synthetic final states [B, T, D] and text logits [B, T, |T|] for prompts of 3 and 2 tokens.
    func synthetic() -> (final: Tensor, logits: Tensor, rows: [[Int]], v: Int, vocab: Int) {
        var rng = SeededGenerator(seed: 5)
        let v = 2, vocab = 11, d = 6, longest = 3
        let final = Tensor.randn([2, longest + v, d], using: &rng)
        let logits = Tensor.randn([2, longest + v, vocab], using: &rng) * 3
        return (final, logits, [[4, 7, 1], [9, 2]], v, vocab)
    }

    func testReductionEqualsTheCrossEntropyOverTheExtendedVocabulary() throws {
        let (final, logits, rows, v, vocab) = synthetic()
        let d = final.shape[2], longest = final.shape[1] - v
        let examples = LMExampleRows.make(final: final, textLogits: logits, rows: rows, maxLength: 4, vokens: v)
        let positions = LMExampleRows.positions(maxLength: 4, vokens: v)
        XCTAssertEqual(examples.shape, [2, positions, d + 4])
        var rng = SeededGenerator(seed: 9)
        let weight = Tensor.randn([v, d], using: &rng)
        let reduced = try XCTUnwrap(VokenLanguageHead.loss(rows: examples.reshaped([2 * positions, d + 4]), weight: weight))

        // The same loss with every text logit: [N, |T| + V] rows and their targets, built directly.
        var full: [Tensor] = [], targets: [Int] = []
        for (r, tokens) in rows.enumerated() {
            let start = longest - tokens.count
            for position in start ..< longest + v - 1 {
                let h = final.sliced(axis: 0, r, r + 1).sliced(axis: 1, position, position + 1).reshaped([1, d])
                let z = logits.sliced(axis: 0, r, r + 1).sliced(axis: 1, position, position + 1).reshaped([1, vocab])
                full.append(Tensor.concat([z, h.matmul(weight.transposed())], axis: 1))
                targets.append(position + 1 < longest ? tokens[position + 1 - start] : vocab + position + 1 - longest)
            }
        }
        XCTAssertEqual(targets.count, (3 - 1 + v) + (2 - 1 + v), "n − 1 text targets and V voken targets per prompt")
        let direct = Loss.crossEntropy(logits: Tensor.concat(full, axis: 0), targets: targets)
        XCTAssertEqual(reduced.item, direct.item, accuracy: 1e-5)
    }

    func testGradientOfTheVokenRowsMatchesFiniteDifferences() throws {
        let (final, logits, rows, v, _) = synthetic()
        let d = final.shape[2]
        let examples = LMExampleRows.make(final: final, textLogits: logits, rows: rows, maxLength: 4, vokens: v)
            .reshaped([2 * LMExampleRows.positions(maxLength: 4, vokens: v), d + 4])
        var rng = SeededGenerator(seed: 11)
        let weight = Tensor.randn([v, d], using: &rng).asParameter()
        let result = GradientChecker.check([weight]) { VokenLanguageHead.loss(rows: examples, weight: $0[0])! }
        XCTAssertTrue(result.passed, result.description)
        // Rows marked invalid contribute nothing: an all-invalid batch has no loss at all.
        XCTAssertNil(VokenLanguageHead.loss(rows: Tensor(zeros: [3, d + 4]), weight: weight))
    }

    static let smolLM2 = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .appendingPathComponent("../../cache/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf").standardizedFileURL

    func testTrainedHeadEmitsAnImageAfterASceneDescription() throws {
        guard FileManager.default.fileExists(atPath: Self.smolLM2.path) else {
            XCTFail("SmolLM2 is missing from \(Self.smolLM2.path): run scripts/setup")
            return
        }
        let encoder = try LLMPromptEncoder(model: Self.smolLM2, layer: -1, maxLength: 16)
        let v = 2, d = encoder.width
        let vokens = withoutGrad { encoder.llm.model.embedTokens.weight.mean(axes: [0], keepDims: true) }
            .expanded(to: [v, d]).contiguous()
        let head = VokenLanguageHead(initial: withoutGrad { encoder.llm.lmHead.weight.mean(axes: [0], keepDims: true) }
            .expanded(to: [v, d]).contiguous())
        var prompts: [String] = []
        for colour in ["red", "blue", "yellow", "black"] {
            for (count, item) in [("a", "shirt"), ("two", "bags"), ("a", "dress"), ("three", "sneakers"), ("one", "coat")] {
                prompts.append("\(count) \(colour) \(item)\(prompts.count % 2 == 0 ? " on the left" : "")")
            }
        }
        let (states, rowsByPrompt) = try LMExampleRows.encode(prompts, encoder: encoder, vokens: vokens)
        XCTAssertEqual(states.shape, [prompts.count, v, d])
        let width = d + LMExampleRows.extraChannels
        let rows = rowsByPrompt.reshaped([rowsByPrompt.shape[0] * rowsByPrompt.shape[1], width])
        // Voken-target rows only (class ≥ 2): what the head must learn.
        let all = rows.contiguous().scalars
        let vokenRows = stride(from: 0, to: all.count, by: width).filter { all[$0 + d + 3] > 0.5 && all[$0 + d + 2] >= 2 }
            .flatMap { Array(all[$0 ..< $0 + width]) }
        let vokenOnly = Tensor(shape: [vokenRows.count / width, width], data: vokenRows)
        let before = try XCTUnwrap(withoutGrad { head.loss(rows: vokenOnly) }).item

        let optimizer = try AdamW(parameters: head.namedParameters().map { ($0.0, $0.1) }, learningRate: 1e-2, weightDecay: 0)
        for _ in 0..<150 {
            optimizer.zeroGrad()
            try XCTUnwrap(head.loss(rows: rows)).backward()
            try optimizer.step()
        }
        let after = try XCTUnwrap(withoutGrad { head.loss(rows: vokenOnly) }).item
        XCTAssertLessThan(after, 0.2, "voken positions: \(before) → \(after)")
        XCTAssertLessThan(after, before / 4)

        let generator = try InterleavedGenerator(encoder: encoder, vokens: vokens, head: head)
        let held = "two green coats on the right"
        let parts = try generator.generate(prompt: held, maxNewTokens: 6, maxImages: 1)
        guard case .image(let generated)? = parts.first else {
            return XCTFail("expected an image right after the scene description, got \(parts)")
        }
        // The generator's voken states (cached decoding) are those the mapper trains on.
        let expected = try withoutGrad { try encoder.vokenStates([held], vokens: vokens) }
        XCTAssertEqual(generated.shape, [1, v, d])
        let difference = zip(generated.contiguous().scalars, expected.contiguous().scalars).map { abs($0 - $1) }.max() ?? 0
        XCTAssertLessThan(difference, 2e-3, "cached decoding vs one pass")
        XCTAssertEqual(parts.filter { if case .image = $0 { return true } else { return false } }.count, 1, "max_images caps the images")

        let textOnly = try generator.generate(prompt: held, maxNewTokens: 4, maxImages: 0)
        XCTAssertFalse(textOnly.contains { if case .image = $0 { return true } else { return false } })
        XCTAssertFalse(textOnly.isEmpty)
    }

    func testMismatchedHeadIsRejectedNamingIt() throws {
        guard FileManager.default.fileExists(atPath: Self.smolLM2.path) else { return }
        let encoder = try LLMPromptEncoder(model: Self.smolLM2, layer: -1, maxLength: 8)
        let vokens = Tensor(zeros: [2, encoder.width])
        XCTAssertThrowsError(try InterleavedGenerator(encoder: encoder, vokens: vokens, head: VokenLanguageHead(initial: Tensor(zeros: [3, encoder.width])))) {
            XCTAssertTrue("\($0)".contains("voken_lm_head"), "\($0)")
        }
    }
}
