import Foundation
import SuraTestSupport
import Tensor
import XCTest

/// `train` as a user runs it: real processes on a tiny UNet and a 16-scene dataset, alone and
/// under mpirun. Resuming, data parallelism, SIGKILL during checkpoints and bad configs.
final class TrainProcessTests: XCTestCase {
    static let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()
    static let textEncoder = repository.appendingPathComponent("cache/models/minilm")

    var work: URL!

    override func setUpWithError() throws {
        guard FileManager.default.fileExists(atPath: Self.textEncoder.appendingPathComponent("model.safetensors").path) else {
            XCTFail("MiniLM is missing from \(Self.textEncoder.path): run scripts/setup")
            throw XCTSkip("no text encoder")
        }
        work = FileManager.default.temporaryDirectory.appendingPathComponent("sura-train-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: work, withIntermediateDirectories: true)
        let scenes = try run(Self.executable("sura"), ["data", "scenes", "--out", path("data"), "--count", "16", "--canvas", "16",
                                                     "--max-items", "1", "--seed", "3"])
        XCTAssertEqual(scenes.status, 0, scenes.output)
        try Self.tinyUNetConfig().write(to: work.appendingPathComponent("unet.json"), atomically: true, encoding: .utf8)
    }

    /// The config.json of a 16×16 RGB UNet conditioned on MiniLM's 384-wide tokens: (8, 16)
    /// channels by default, the tests' tiny model.
    static func tinyUNetConfig(channels: [Int] = [8, 16], normNumGroups: Int = 4, attentionHeadDim: Int = 2) -> String {
        """
        {"_class_name": "UNet2DConditionModel", "sample_size": 16, "in_channels": 3, "out_channels": 3,
         "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"], "mid_block_type": "UNetMidBlock2DCrossAttn",
         "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"], "block_out_channels": \(channels), "layers_per_block": 1,
         "norm_num_groups": \(normNumGroups), "cross_attention_dim": 384, "attention_head_dim": \(attentionHeadDim)}
        """
    }

    override func tearDownWithError() throws {
        if let work { try? FileManager.default.removeItem(at: work) }
    }

    func path(_ name: String) -> String { work.appendingPathComponent(name).path }

    /// A config for the tiny model; `extra` lines are appended (YAML).
    func writeConfig(_ name: String, output: String, dp: Int = 1, steps: Int = 4, batch: Int = 4, every: Int = 2,
                     sampleEvery: Int? = nil, seed: Int = 0, extra: String = "", base: String = "",
                     unet: String = "unet.json") throws -> String {
        let text = """
        task: base
        seed: \(seed)
        output_dir: \(path(output))
        data: {path: \(path("data"))}
        diffusion: {prediction_type: v_prediction, snr_gamma: 5}
        optim: {learning_rate: 1.0e-3, warmup_steps: 1, steps: \(steps), batch_size: \(batch), ema_decay: 0.9}
        checkpoint: {every: \(every)\(sampleEvery.map { ", sample_every: \($0)" } ?? "")}
        topology: {dp: \(dp), pp: 1}
        base: {unet: \(path(unet)), text_encoder: \(Self.textEncoder.path), max_length: 12\(base)}
        \(extra)
        """
        let url = work.appendingPathComponent(name)
        try text.write(to: url, atomically: true, encoding: .utf8)
        return url.path
    }

    func losses(_ output: String) throws -> [Int: Double] { try Self.losses(inRun: path(output)) }

    // MARK: Behaviour

    func testResumeContinuesTheSameLossCurve() throws {
        let straight = try writeConfig("straight.yaml", output: "straight")
        let full = try run(Self.executable("train"), ["--config", straight])
        XCTAssertEqual(full.status, 0, full.output)
        XCTAssertTrue(full.output.contains("done: step 4"), full.output)
        let interrupted = try writeConfig("interrupted.yaml", output: "interrupted")
        let first = try run(Self.executable("train"), ["--config", interrupted, "--max-steps", "2"])
        XCTAssertEqual(first.status, 0, first.output)
        let second = try run(Self.executable("train"), ["--config", interrupted, "--resume"])
        XCTAssertEqual(second.status, 0, second.output)
        XCTAssertTrue(second.output.contains("resumed at step 2"), second.output)
        XCTAssertTrue(second.output.contains("text encoder: ") && second.output.contains("distinct prompts loaded from "), second.output)
        let a = try losses("straight"), b = try losses("interrupted")
        XCTAssertEqual(Set(a.keys), Set(1...4))
        XCTAssertEqual(Set(b.keys), Set(1...4), "a resumed run keeps one line per step")
        // Same weights, optimizer state, data order and noise: the same arithmetic, so the same bits.
        for step in 1...4 { XCTAssertEqual(a[step]!, b[step]!, "step \(step)") }
        for file in ["loss.png", "train.log", "checkpoints/latest.safetensors"] {
            XCTAssertTrue(FileManager.default.fileExists(atPath: path("straight/\(file)")), file)
        }
    }

    /// `--deterministic` makes a run's bits independent of the thread count: one that stops at
    /// step 2 on 1 thread and resumes on 2 gives the uninterrupted 1-thread run's losses to the
    /// bit. Without it the 2-thread steps come out different in their last bits.
    func testDeterministicRunResumesOnAnotherThreadCount() throws {
        // Wide enough (32 and 64 channels) that its GEMMs are split over 2 threads.
        try Self.tinyUNetConfig(channels: [32, 64], normNumGroups: 8, attentionHeadDim: 8)
            .write(to: work.appendingPathComponent("unet-wide.json"), atomically: true, encoding: .utf8)
        func writeWideConfig(_ name: String, output: String) throws -> String {
            try writeConfig(name, output: output, unet: "unet-wide.json")
        }
        func resumed(_ name: String, _ flags: [String]) throws -> [Int: Double] {
            let config = try writeWideConfig("\(name).yaml", output: name)
            let first = try run(Self.executable("train"), ["--config", config, "--max-steps", "2", "--threads", "1"] + flags)
            XCTAssertEqual(first.status, 0, first.output)
            let second = try run(Self.executable("train"), ["--config", config, "--resume", "--threads", "2"] + flags)
            XCTAssertEqual(second.status, 0, second.output)
            XCTAssertTrue(second.output.contains("2 thread(s) per rank" + (flags.isEmpty ? "" : ", deterministic")), second.output)
            return try losses(name)
        }
        let straight = try run(Self.executable("train"), ["--config", try writeWideConfig("one-thread.yaml", output: "one-thread"),
                                                          "--threads", "1", "--deterministic"])
        XCTAssertEqual(straight.status, 0, straight.output)
        let a = try losses("one-thread")
        let b = try resumed("deterministic-resume", ["--deterministic"])
        for step in 1...4 { XCTAssertEqual(a[step]!, b[step]!, "step \(step)") }
        let c = try resumed("threaded-resume", [])
        XCTAssertEqual((1...2).map { a[$0]! }, (1...2).map { c[$0]! }, "the 1-thread steps")
        // The control needs GEMM kernels whose rounding follows the split (OpenBLAS's Haswell
        // kernels); some kernels (Cooperlake's) give every band the same bits, and then there is
        // no difference for the flag to remove.
        if Self.gemmBitsFollowTheThreadCount() {
            XCTAssertNotEqual((3...4).map { a[$0]! }, (3...4).map { c[$0]! }, "without --deterministic 2 threads round differently")
        } else {
            print("note: this machine's GEMM kernels (\(BLASKernels.summary)) give the same bits on 1 and 2 threads; control skipped")
        }
    }

    /// Whether a GEMM of the run's kind of shape (a 3×3 convolution's column product) comes out
    /// differently on 1 and 2 threads without `--deterministic`, in this process's OpenBLAS.
    static func gemmBitsFollowTheThreadCount() -> Bool {
        let saved = (Threads.count, Threads.deterministic)
        defer { (Threads.count, Threads.deterministic) = saved }
        Threads.deterministic = false
        var rng = SeededGenerator(seed: 5)
        return [(64, 1_024, 288), (1_024, 64, 288), (77, 1_000, 129)].contains { m, n, k in
            let a = (0 ..< m * k).map { _ in Float(rng.nextUniform() - 0.5) }
            let b = (0 ..< k * n).map { _ in Float(rng.nextUniform() - 0.5) }
            let bits = [1, 2].map { threads -> [UInt32] in
                Threads.count = threads
                var c = [Float](repeating: 0, count: m * n)
                c.withUnsafeMutableBufferPointer { cp in
                    parallelSgemm(transA: false, transB: false, m: m, n: n, k: k, a, lda: k, b, ldb: n, beta: 0, cp.baseAddress!, ldc: n)
                }
                return c.map(\.bitPattern)
            }
            return bits[0] != bits[1]
        }
    }

    /// A run without --resume into a folder that holds a run stops naming output_dir and leaves
    /// the checkpoint alone; with --overwrite it starts afresh and metrics.jsonl holds only its steps.
    func testAFreshRunNeverReplacesAnEarlierRunUnlessTold() throws {
        let config = try writeConfig("again.yaml", output: "again", steps: 2, every: 2)
        let first = try run(Self.executable("train"), ["--config", config])
        XCTAssertEqual(first.status, 0, first.output)
        let latest = URL(fileURLWithPath: path("again/checkpoints/latest.safetensors"))
        let before = try Data(contentsOf: latest)
        let refused = try run(Self.executable("train"), ["--config", config])
        XCTAssertNotEqual(refused.status, 0)
        XCTAssertTrue(refused.output.contains("key 'output_dir'") && refused.output.contains("already holds a run")
                      && refused.output.contains("--resume") && refused.output.contains("--overwrite"), refused.output)
        XCTAssertEqual(try Data(contentsOf: latest), before, "the earlier checkpoint is untouched")
        let both = try run(Self.executable("train"), ["--config", config, "--overwrite", "--resume"])
        XCTAssertNotEqual(both.status, 0)
        XCTAssertTrue(both.output.contains("pass one of them"), both.output)
        let replaced = try run(Self.executable("train"), ["--config", config, "--overwrite"])
        XCTAssertEqual(replaced.status, 0, replaced.output)
        let lines = try String(contentsOfFile: path("again/metrics.jsonl"), encoding: .utf8).split(separator: "\n")
        XCTAssertEqual(lines.count, 2, "one line per step of the new run, none of the old one's")
        XCTAssertEqual(try losses("again").keys.sorted(), [1, 2])
    }

    /// What a restarted cluster job runs: fresh the first time, resumed from the checkpoint after.
    func testResumeIfPresentStartsFreshThenContinues() throws {
        let config = try writeConfig("restarted.yaml", output: "restarted", steps: 4, every: 2)
        let first = try run(Self.executable("train"), ["--config", config, "--resume-if-present", "--max-steps", "2"])
        XCTAssertEqual(first.status, 0, first.output)
        XCTAssertTrue(first.output.contains("no checkpoint in"), first.output)
        let again = try run(Self.executable("train"), ["--config", config, "--resume-if-present"])
        XCTAssertEqual(again.status, 0, again.output)
        XCTAssertTrue(again.output.contains("resumed at step 2"), again.output)
        let lines = try String(contentsOfFile: path("restarted/metrics.jsonl"), encoding: .utf8).split(separator: "\n")
        XCTAssertEqual(lines.count, 4)
        XCTAssertEqual(try losses("restarted").keys.sorted(), [1, 2, 3, 4])
    }

    func testDataParallelMatchesOneProcess() throws {
        let mpirun = try Self.mpirun()
        let single = try writeConfig("single.yaml", output: "single", steps: 3, every: 3, sampleEvery: 3)
        let one = try run(Self.executable("train"), ["--config", single])
        XCTAssertEqual(one.status, 0, one.output)
        let double = try writeConfig("double.yaml", output: "double", dp: 2, steps: 3, every: 3, sampleEvery: 3)
        let two = try run(mpirun, Self.mpiFlags + ["-np", "2", try Self.executable("train"), "--config", double], timeout: 300)
        XCTAssertEqual(two.status, 0, two.output)
        XCTAssertTrue(FileManager.default.fileExists(atPath: path("double/logs/rank-1.log")), "rank 1 keeps its own log")
        let a = try losses("single"), b = try losses("double")
        // Each rank averages its half of the batch and the halves' gradients are averaged, so the
        // sums are grouped differently from one process: equal up to float rounding (~1e-7
        // relative per step), which the optimizer then carries forward over three steps.
        for step in 1...3 {
            XCTAssertEqual(a[step]!, b[step]!, accuracy: 1e-4 * abs(a[step]!), "step \(step): \(a[step]!) vs \(b[step]!)")
        }
        let p = try TrainingCheckpoint(contentsOf: URL(fileURLWithPath: path("single/checkpoints/latest.safetensors")))
        let q = try TrainingCheckpoint(contentsOf: URL(fileURLWithPath: path("double/checkpoints/latest.safetensors")))
        XCTAssertEqual(Set(p.parameters.keys), Set(q.parameters.keys))
        var worst: Float = 0
        for (name, tensor) in p.parameters {
            for (x, y) in zip(tensor.scalars, q.parameters[name]!.scalars) { worst = max(worst, abs(x - y)) }
        }
        XCTAssertLessThan(worst, 1e-4, "largest parameter difference after 3 steps")
        // The two ranks drew 16 of the 32 evaluation samples each, with the same seeds.
        let grids = try ["single", "double"].map { try PNGImage(contentsOf: URL(fileURLWithPath: path($0 + "/samples.png"))) }
        XCTAssertEqual(grids[0].pixels.count, grids[1].pixels.count)
        XCTAssertLessThanOrEqual(zip(grids[0].pixels, grids[1].pixels).map { abs(Int($0) - Int($1)) }.max() ?? 0, 2,
                                 "dp = 2 drew other samples than one process")

        // MPI's allreduce in place of Sura's ring (the default): the same training, summed in MPI's order.
        let nativeConfig = try writeConfig("native.yaml", output: "native", dp: 2, steps: 3, every: 3)
        try String(contentsOfFile: nativeConfig, encoding: .utf8).replacingOccurrences(of: "pp: 1}", with: "pp: 1, allreduce: native, bucket_mb: 1}")
            .write(toFile: nativeConfig, atomically: true, encoding: .utf8)
        let native = try run(mpirun, Self.mpiFlags + ["-np", "2", try Self.executable("train"), "--config", nativeConfig], timeout: 300)
        XCTAssertEqual(native.status, 0, native.output)
        XCTAssertTrue(native.output.contains("(cap 1.0 MB) by the native allreduce"), native.output)
        XCTAssertTrue(two.output.contains("by the ring allreduce"), two.output)
        let c = try losses("native")
        for step in 1...3 { XCTAssertEqual(c[step]!, b[step]!, accuracy: 1e-4 * abs(b[step]!), "native, step \(step)") }
    }

    func testKillDuringCheckpointWritesNeverBreakTheLatestCheckpoint() throws {
        let config = try writeConfig("kill.yaml", output: "kill", steps: 400, batch: 2, every: 1)
        let latest = URL(fileURLWithPath: path("kill/checkpoints/latest.safetensors"))
        var kills = 0
        for delay in [0.15, 0.4, 0.05, 0.3, 0.25] {
            let child = try Self.child(try Self.executable("train"), ["--config", config] + (kills > 0 ? ["--resume"] : []))
            // Wait for a first checkpoint, then kill at an arbitrary moment (checkpoints are written every step).
            XCTAssertTrue(child.wait(upTo: 120, until: { $0.contains("checkpoint") }), child.output)
            usleep(useconds_t(delay * 1e6))
            kill(child.process.processIdentifier, SIGKILL)
            child.process.waitUntilExit()
            kills += 1
            let checkpoint = try TrainingCheckpoint(contentsOf: latest)
            XCTAssertNotNil(Int(checkpoint.metadata["step"] ?? ""), "kill \(kills): the latest checkpoint has a step")
            let leftovers = try FileManager.default.contentsOfDirectory(atPath: latest.deletingLastPathComponent().path)
            XCTAssertTrue(leftovers.allSatisfy { $0 == "latest.safetensors" || $0.hasPrefix(".") || $0.contains("tmp") }, "\(leftovers)")
        }
        let finish = try run(Self.executable("train"), ["--config", config, "--resume", "--max-steps", "\(try resumedStep(latest) + 1)"])
        XCTAssertEqual(finish.status, 0, finish.output)
    }

    func resumedStep(_ url: URL) throws -> Int { Int(try TrainingCheckpoint(contentsOf: url).metadata["step"]!)! }

    func testARankKilledBySIGKILLEndsTheJob() throws {
        let mpirun = try Self.mpirun()
        let config = try writeConfig("dead.yaml", output: "dead", dp: 2, steps: 100_000, batch: 2, every: 1000)
        let child = try Self.child(mpirun, Self.mpiFlags + ["-np", "2", try Self.executable("train"), "--config", config])
        defer { child.stop() }
        XCTAssertTrue(child.wait(upTo: 120, until: { $0.contains("train base [") }), child.output)
        let ranks = try Self.pids(matching: config).filter { $0 != child.process.processIdentifier }
        XCTAssertEqual(ranks.count, 2, "two train ranks running: \(ranks)")
        kill(ranks.max()!, SIGKILL)
        let started = Date()
        child.process.waitUntilExit()
        XCTAssertLessThan(Date().timeIntervalSince(started), 30, "the job ends within 30 s")
        XCTAssertNotEqual(child.process.terminationStatus, 0)
        XCTAssertTrue(child.output.contains("signal 9") || child.output.contains("rank 1") || child.output.contains("rank"), child.output)
    }

    // MARK: Bad input

    func testBadConfigsStopWithAnErrorNamingTheKey() throws {
        let task = work.appendingPathComponent("task.yaml")
        try "task: dreambooth\noutput_dir: x\ndata: {path: y}\n".write(to: task, atomically: true, encoding: .utf8)
        let odd = try writeConfig("odd.yaml", output: "x", batch: 3)
        try String(contentsOfFile: odd, encoding: .utf8)
            .replacingOccurrences(of: "batch_size: 3", with: "batch_size: 3, gradient_accumulation: 2")
            .write(toFile: odd, atomically: true, encoding: .utf8)
        let tree = try writeConfig("allreduce.yaml", output: "x")
        try String(contentsOfFile: tree, encoding: .utf8).replacingOccurrences(of: "pp: 1}", with: "pp: 1, allreduce: tree}")
            .write(toFile: tree, atomically: true, encoding: .utf8)
        let tiny = try writeConfig("bucket.yaml", output: "x")
        try String(contentsOfFile: tiny, encoding: .utf8).replacingOccurrences(of: "pp: 1}", with: "pp: 1, bucket_mb: 0.5}")
            .write(toFile: tiny, atomically: true, encoding: .utf8)
        let cases: [(String, [String])] = [
            (tree, ["topology.allreduce", "'tree' is not allowed", "native, ring"]),
            (tiny, ["topology.bucket_mb", "between 1"]),
            (try writeConfig("unknown.yaml", output: "x", extra: "optimiser: {}"), ["optimiser", "unknown key", ":10:"]),
            (task.path, ["task", "dreambooth", "allowed values: base"]),
            (try writeConfig("topology.yaml", output: "x", dp: 2), ["topology", "dp × pp", "1 rank"]),
            (odd, ["optim.batch_size", "multiple of"]),
            (try writeConfig("steps.yaml", output: "x", steps: 0), ["optim.steps", "between 1"]),
            (try writeConfig("dropout.yaml", output: "x", base: ", condition_dropout: 2"), ["base.condition_dropout"]),
        ]
        for (config, expected) in cases {
            let name = URL(fileURLWithPath: config).lastPathComponent
            let result = try run(Self.executable("train"), ["--config", config])
            XCTAssertNotEqual(result.status, 0, name)
            for fragment in expected { XCTAssertTrue(result.output.contains(fragment), "\(name): '\(fragment)' not in: \(result.output)") }
            XCTAssertTrue(result.output.contains(name), "\(name): the error names the file: \(result.output)")
            XCTAssertFalse(result.output.contains("Fatal error"), result.output)
        }
    }

    func testMissingDatasetAndForeignCheckpointAreClearErrors() throws {
        let missing = try writeConfig("missing.yaml", output: "m")
        try String(contentsOfFile: missing, encoding: .utf8).replacingOccurrences(of: path("data"), with: path("nowhere"))
            .write(toFile: missing, atomically: true, encoding: .utf8)
        let noData = try run(Self.executable("train"), ["--config", missing])
        XCTAssertNotEqual(noData.status, 0)
        XCTAssertTrue(noData.output.contains("data.path") && noData.output.contains("nowhere"), noData.output)

        let original = try writeConfig("original.yaml", output: "shared", steps: 2)
        XCTAssertEqual(try run(Self.executable("train"), ["--config", original]).status, 0)
        let other = try writeConfig("other.yaml", output: "shared", steps: 4, seed: 7)
        let foreign = try run(Self.executable("train"), ["--config", other, "--resume"])
        XCTAssertNotEqual(foreign.status, 0)
        XCTAssertTrue(foreign.output.contains("different config"), foreign.output)
        let none = try run(Self.executable("train"), ["--config", try writeConfig("fresh.yaml", output: "fresh"), "--resume"])
        XCTAssertNotEqual(none.status, 0)
        XCTAssertTrue(none.output.contains("nothing to resume"), none.output)
    }

    func testExportedBaseModelGeneratesImages() throws {
        let config = try writeConfig("export.yaml", output: "export", steps: 2,
                                     extra: "", base: ", export: \(path("model"))")
        let trained = try run(Self.executable("train"), ["--config", config])
        XCTAssertEqual(trained.status, 0, trained.output)
        XCTAssertTrue(trained.output.contains("exported EMA weights"), trained.output)
        for file in ["unet/config.json", "unet/diffusion_pytorch_model.safetensors", "scheduler/scheduler_config.json", "sura.json"] {
            XCTAssertTrue(FileManager.default.fileExists(atPath: path("model/\(file)")), file)
        }
        let generated = try run(Self.executable("sura"), ["generate", "--model", path("model"), "--prompt", "red dress", "--steps", "3",
                                                        "--output", path("images")])
        XCTAssertEqual(generated.status, 0, generated.output)
        let image = try PNGImage(contentsOf: URL(fileURLWithPath: path("images")).appendingPathComponent(
            try XCTUnwrap(FileManager.default.contentsOfDirectory(atPath: path("images")).sorted().first { $0.hasSuffix(".png") })))
        XCTAssertEqual(image.width, 16)
    }

    // MARK: bench train --config

    func testBenchTrainMeasuresAConfigWithoutTouchingItsOutputs() throws {
        let scratchFolders = {
            try FileManager.default.contentsOfDirectory(atPath: FileManager.default.temporaryDirectory.path)
                .filter { $0.hasPrefix("sura-bench-train-") }.count
        }
        let before = try scratchFolders()
        let config = try writeConfig("bench.yaml", output: "user", dp: 2, steps: 50, batch: 4, every: 1)
        let bench = try run(try Self.mpirun(), Self.mpiFlags + ["-np", "2", try Self.executable("sura"), "bench", "train",
                                                                "--config", config, "--steps", "2", "--warmup-steps", "1",
                                                                "--rounds", "2"],
                            timeout: 300)
        XCTAssertEqual(bench.status, 0, bench.output)
        XCTAssertTrue(bench.output.contains("2 samples per rank per step, 2 measured steps"), bench.output)
        // The table's rows: ranks, samples/s, efficiency, then the two rounds "a, b".
        let lines: [[Substring]] = bench.output.split(separator: "\n").map { $0.split(separator: " ") }
        let rows = lines.filter { (fields: [Substring]) -> Bool in
            fields.count == 5 && Int(fields[0]) != nil && Double(fields[2]) != nil
        }
        XCTAssertEqual(rows.map { Int($0[0])! }, [1, 2], bench.output)
        for row in rows { XCTAssertGreaterThan(Double(row[1]) ?? 0, 0, bench.output) }
        XCTAssertFalse(FileManager.default.fileExists(atPath: path("user")), "the config's output_dir stays untouched")
        // The first run encodes the prompts into the scratch folder's feature cache, the later ones load them.
        XCTAssertEqual(bench.output.components(separatedBy: "text encoder: tables stored in ").count, 2, bench.output)
        XCTAssertEqual(bench.output.components(separatedBy: "distinct prompts loaded from ").count, 4, bench.output)
        XCTAssertEqual(try scratchFolders(), before, "the scratch runs are removed")

        let pipelined = try writeConfig("pipelined.yaml", output: "user", dp: 1)
        try String(contentsOfFile: pipelined, encoding: .utf8).replacingOccurrences(of: "pp: 1}", with: "pp: 2}")
            .write(toFile: pipelined, atomically: true, encoding: .utf8)
        let refused = try run(try Self.executable("sura"), ["bench", "train", "--config", pipelined])
        XCTAssertNotEqual(refused.status, 0)
        XCTAssertTrue(refused.output.contains("pipelined.yaml") && refused.output.contains("pp = 2"), refused.output)
        XCTAssertFalse(refused.output.contains("Fatal error"), refused.output)

        // Rank 0 fails alone (in its 1-rank run) while rank 1 waits: the job ends with the error.
        let lost = try writeConfig("lost.yaml", output: "user", dp: 2, batch: 4)
        try String(contentsOfFile: lost, encoding: .utf8).replacingOccurrences(of: path("data"), with: path("nowhere"))
            .write(toFile: lost, atomically: true, encoding: .utf8)
        let failed = try run(try Self.mpirun(), Self.mpiFlags + ["-np", "2", try Self.executable("sura"), "bench", "train",
                                                                 "--config", lost], timeout: 60)
        XCTAssertNotEqual(failed.status, 0)
        XCTAssertTrue(failed.output.contains("data.path") && failed.output.contains("nowhere"), failed.output)
    }
}
