import Foundation
import Tensor
import XCTest

/// LoRA on the LLM, trained with the adapter (`adapter.llm_lora`): one process, and the LLM's
/// layers split over two pipeline ranks with activations and their gradients sent between them
/// (1F1B). The tests share AdapterTrainProcessTests' tiny base model and dataset.
extension AdapterTrainProcessTests {
    static let lora = "llm_lora: {rank: 2, alpha: 4, targets: [q_proj, v_proj]}"

    func loraConfig(_ output: String, steps: Int, pp: Int = 1, dp: Int = 1, batch: Int = 4, partition: String? = nil) throws -> String {
        let path = try writeConfig("cross_adapter", output: output, steps: steps, dp: dp, pp: pp)
        let text = try String(contentsOfFile: path, encoding: .utf8)
            .replacingOccurrences(of: "pp: \(pp)}", with: "pp: \(pp)" + (partition.map { ", partition: \($0)" } ?? "") + "}")
            .replacingOccurrences(of: "  llm_max_length: 16", with: "  llm_max_length: 16\n  \(Self.lora)")
            .replacingOccurrences(of: "batch_size: 4}", with: "batch_size: \(batch), max_grad_norm: 0.01}")
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    func mpi(_ ranks: Int, _ config: String, _ extra: [String] = []) throws -> (status: Int32, output: String) {
        try Self.launch(try TrainProcessTests.mpirun(),
                        TrainProcessTests.mpiFlags + ["-np", "\(ranks)", try TrainProcessTests.executable("train"), "--config", config] + extra)
    }

    func exported(_ output: String) throws -> [String: Tensor] {
        try SafeTensorsFile(contentsOf: URL(fileURLWithPath: path(output + ".safetensors"))).loadAll()
    }

    /// pp = 2 trains the same LoRA and adapter as one process: the same losses and gradient
    /// norms (the clip at 0.01 acts, so the norm over both stages must be right), and exported
    /// tensors within float rounding — the two micro-batches' gradients are summed in another
    /// order than the whole batch's, which moves the last bits. A resumed pipelined run continues
    /// the same curve, and the exported adapter generates with its LoRA.
    func testLLMLoRATrainsThroughAPipelineLikeOneProcess() throws {
        let one = try run("train", ["--config", try loraConfig("lora1", steps: 3)])
        XCTAssertEqual(one.status, 0, one.output)
        XCTAssertTrue(one.output.contains("LLM LoRA: rank 2"), one.output)
        let two = try mpi(2, try loraConfig("lora2", steps: 3, pp: 2))
        XCTAssertEqual(two.status, 0, two.output)
        XCTAssertTrue(two.output.contains("LLM LoRA pipeline: layers 1…15 | 16…30 over 2 stages"), two.output)

        let a = try TrainProcessTests.metrics(inRun: path("lora1")), b = try TrainProcessTests.metrics(inRun: path("lora2"))
        XCTAssertEqual(a.count, 3)
        XCTAssertEqual(a.count, b.count)
        for (x, y) in zip(a, b) {
            for key in ["loss", "grad_norm"] {
                let u = try XCTUnwrap(x[key] as? Double, key), v = try XCTUnwrap(y[key] as? Double, key)
                XCTAssertEqual(u, v, accuracy: 1e-5 * max(1, abs(u)), "\(key) at step \(x["step"] ?? "?")")
            }
        }
        XCTAssertGreaterThan(try XCTUnwrap(a[0]["grad_norm"] as? Double), 0.01, "the clip must act for the test to cover it")
        XCTAssertNil(a[0]["pipeline_idle"], "one process has no pipeline")
        for line in b {
            let idle = try XCTUnwrap(line["pipeline_idle"] as? [Double], "pp = 2 reports each stage's idle share")
            XCTAssertEqual(idle.count, 2)
            XCTAssertTrue(idle.allSatisfy { $0 >= 0 && $0 < 1 }, "\(idle)")
        }

        let p = try exported("lora1"), q = try exported("lora2")
        XCTAssertEqual(p.keys.sorted(), q.keys.sorted())
        let loraKeys = p.keys.filter { $0.contains("llm_lora.model.layers.") }
        XCTAssertEqual(loraKeys.count, 30 * 2 * 2, "A and B of q_proj and v_proj in 30 layers")
        var moved = 0
        for key in p.keys {
            let u = p[key]!.scalars, v = q[key]!.scalars
            let worst = zip(u, v).map { abs($0 - $1) }.max() ?? 0
            XCTAssertLessThan(worst, 1e-5, key)
            if key.hasSuffix("lora_B.weight"), u.contains(where: { $0 != 0 }) { moved += 1 }
        }
        XCTAssertEqual(moved, 60, "every B was trained off zero, on both stages")

        let parted = try loraConfig("lora2-parted", steps: 3, pp: 2)
        XCTAssertEqual(try mpi(2, parted, ["--max-steps", "2"]).status, 0)
        let resumed = try mpi(2, parted, ["--resume"])
        XCTAssertEqual(resumed.status, 0, resumed.output)
        XCTAssertEqual(try losses("lora2"), try losses("lora2-parted"), "a resumed pipelined run continues the same curve")

        // A hand-made cut moves layers between the stages, not the math.
        let cut = try mpi(2, try loraConfig("lora2-cut", steps: 2, pp: 2, partition: "[18, 12]"))
        XCTAssertEqual(cut.status, 0, cut.output)
        XCTAssertTrue(cut.output.contains("LLM LoRA pipeline: layers 1…18 | 19…30 over 2 stages"), cut.output)
        let balanced = try losses("lora2"), handCut = try losses("lora2-cut")
        XCTAssertEqual(handCut.count, 2)
        for (step, loss) in handCut { XCTAssertEqual(loss, try XCTUnwrap(balanced[step]), accuracy: 1e-5 * max(1, abs(loss))) }

        let generated = try run("sura", ["generate", "--model", path("base"), "--adapter", path("lora2.safetensors"),
                                         "--prompt", "a red shoe", "--steps", "2", "--output", path("lora2-images")])
        XCTAssertEqual(generated.status, 0, generated.output)
        XCTAssertTrue(FileManager.default.fileExists(atPath: path("lora2-images/image-0.png")), generated.output)
    }

    func testBadLLMLoRAConfigsNameTheKey() throws {
        let sur = try writeConfig("sur_adapter", output: "lora-sur")
        try String(contentsOfFile: sur, encoding: .utf8)
            .replacingOccurrences(of: "  llm_max_length: 16", with: "  llm_max_length: 16\n  \(Self.lora)")
            .write(toFile: sur, atomically: true, encoding: .utf8)
        let target = try loraConfig("lora-target", steps: 1)
        try String(contentsOfFile: target, encoding: .utf8).replacingOccurrences(of: "v_proj]", with: "w_proj]")
            .write(toFile: target, atomically: true, encoding: .utf8)
        for (config, key, detail) in [(sur, "adapter.llm_lora", "sur_adapter"), (target, "adapter.llm_lora.targets", "w_proj"),
                                      (try loraConfig("lora-cut-length", steps: 1, pp: 2, partition: "[30]"), "topology.partition", "1 stage(s) but topology.pp is 2"),
                                      (try loraConfig("lora-cut-word", steps: 1, pp: 2, partition: "even"), "topology.partition", "'even' is not allowed")] {
            let result = try run("train", ["--config", config])
            XCTAssertNotEqual(result.status, 0, result.output)
            XCTAssertTrue(result.output.contains(key) && result.output.contains(detail), "expected '\(key)' and '\(detail)' in:\n\(result.output)")
        }
        // The counts must add up to the LLM's layers, which only the loaded LLM knows: every rank stops.
        let sum = try mpi(2, try loraConfig("lora-cut-sum", steps: 1, pp: 2, partition: "[10, 10]"))
        XCTAssertNotEqual(sum.status, 0, sum.output)
        XCTAssertTrue(sum.output.contains("topology.partition") && sum.output.contains("add up to 20, but there are 30 layers"), sum.output)
    }
}
