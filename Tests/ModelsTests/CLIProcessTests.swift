import Foundation
import Models
import SuraTestSupport
import Tensor
import XCTest

/// The `sura forward` and `sura generate` commands run as real processes on the fixture models,
/// their outputs compared with the reference libraries' fixtures.
final class CLIProcessTests: XCTestCase {
    /// Runs `sura arguments…` to completion (at most `timeout` s), returning (status, stdout + stderr).
    static func sura(_ arguments: [String], timeout: Double = 120) throws -> (Int32, String) {
        let run = try ChildProcess.run(try BuiltProducts.executable("sura").path, arguments, timeout: timeout)
        return (run.status, run.out + run.err)
    }

    private var scratch: URL!

    override func setUpWithError() throws {
        scratch = FileManager.default.temporaryDirectory.appendingPathComponent("sura-cli-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: scratch, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: scratch)
    }

    private func fixtures() throws -> URL {
        try XCTUnwrap(Bundle.module.url(forResource: "Fixtures", withExtension: nil), "test bundle has no Fixtures folder")
    }

    private func load(_ url: URL) throws -> [String: Tensor] { try SafeTensorsFile(contentsOf: url).loadAll() }

    private func write(_ tensors: [String: Tensor], _ name: String) throws -> URL {
        let url = scratch.appendingPathComponent(name)
        try SafeTensorsWriter.write(tensors, to: url)
        return url
    }

    /// max |a − b| / max |b|.
    private func assertClose(_ a: Tensor?, _ b: Tensor, _ what: String, tolerance: Float = 1e-4,
                             file: StaticString = #filePath, line: UInt = #line) {
        guard let a else { return XCTFail("\(what) missing from the output", file: file, line: line) }
        XCTAssertEqual(a.shape, b.shape, what, file: file, line: line)
        guard a.shape == b.shape else { return }
        let scale = b.scalars.map(abs).max() ?? 1
        let err = zip(a.scalars, b.scalars).map { abs($0 - $1) }.max()! / max(scale, 1e-30)
        XCTAssertLessThan(err, tolerance, "\(what): relative error \(err)", file: file, line: line)
    }

    // MARK: forward

    func testForwardUNetMatchesDiffusers() throws {
        let diffusion = try fixtures().appendingPathComponent("diffusion")
        let io = try load(diffusion.appendingPathComponent("unet_small_io.safetensors"))
        let input = try write(["sample": io["sample"]!, "timestep": io["timesteps"]!, "encoder_hidden_states": io["ehs_0"]!], "unet_in.safetensors")
        let output = scratch.appendingPathComponent("out/unet_out.safetensors")
        let (status, text) = try Self.sura(["forward", "--model", diffusion.appendingPathComponent("unet_small").path,
                                            "--input", input.path, "--output", output.path, "--threads", "1"])
        XCTAssertEqual(status, 0, text)
        XCTAssertTrue(text.contains("UNet2DConditionModel"), text)
        assertClose(try load(output)["sample"], io["out_0"]!, "sura forward unet_small sample")
    }

    func testForwardVAEEncodesAndDecodes() throws {
        let diffusion = try fixtures().appendingPathComponent("diffusion")
        let io = try load(diffusion.appendingPathComponent("vae_io.safetensors"))
        let input = try write(["sample": io["x"]!, "latents": io["z"]!], "vae_in.safetensors")
        let output = scratch.appendingPathComponent("vae_out.safetensors")
        let (status, text) = try Self.sura(["forward", "--model", diffusion.appendingPathComponent("vae").path,
                                            "--input", input.path, "--output", output.path])
        XCTAssertEqual(status, 0, text)
        let out = try load(output)
        assertClose(out["latent_dist.mean"], io["mean"]!, "vae latent_dist.mean")
        assertClose(out["latent_dist.logvar"], io["logvar"]!, "vae latent_dist.logvar")
        assertClose(out["sample"], io["decoded"]!, "vae decoded sample")
    }

    func testForwardBERTGivesEveryHiddenState() throws {
        let text = try fixtures().appendingPathComponent("text_encoders")
        let io = try load(text.appendingPathComponent("bert_tiny_io.safetensors"))
        let input = try write(["input_ids": io["input_ids"]!, "attention_mask": io["attention_mask"]!,
                               "token_type_ids": io["token_type_ids"]!], "bert_in.safetensors")
        let output = scratch.appendingPathComponent("bert_out.safetensors")
        let (status, log) = try Self.sura(["forward", "--model", text.appendingPathComponent("bert_tiny").path,
                                           "--input", input.path, "--output", output.path])
        XCTAssertEqual(status, 0, log)
        let out = try load(output)
        for name in ["last_hidden_state", "pooler_output", "hidden_states.0", "hidden_states.1", "hidden_states.2"] {
            assertClose(out[name], io[name]!, "bert_tiny \(name)")
        }
    }

    /// `--text` tokenizes with the folder's tokenizer: CLIP rows padded to 77 without a mask, as
    /// Stable Diffusion encodes prompts.
    func testForwardCLIPFromText() throws {
        let root = try fixtures()
        let folder = scratch.appendingPathComponent("clip")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        for name in ["config.json", "model.safetensors"] {
            try FileManager.default.createSymbolicLink(at: folder.appendingPathComponent(name),
                                                       withDestinationURL: root.appendingPathComponent("text_encoders/clip_sd/\(name)"))
        }
        try FileManager.default.copyItem(at: root.appendingPathComponent("tokenizers/clip-tokenizer.json"),
                                         to: folder.appendingPathComponent("tokenizer.json"))
        struct Prompts: Decodable { let prompts: [String] }
        let prompts = try JSONDecoder().decode(Prompts.self, from: Data(contentsOf: root.appendingPathComponent("text_encoders/clip_sd_prompts.json"))).prompts
        let io = try load(root.appendingPathComponent("text_encoders/clip_sd_io.safetensors"))
        let output = scratch.appendingPathComponent("clip_out.safetensors")
        let (status, log) = try Self.sura(["forward", "--model", folder.path, "--output", output.path]
                                          + prompts.flatMap { ["--text", $0] })
        XCTAssertEqual(status, 0, log)
        let out = try load(output)
        XCTAssertEqual(out["input_ids"]?.scalars, io["fixed_ids"]!.scalars)
        assertClose(out["last_hidden_state"], io["fixed.last_hidden_state"]!, "clip_sd last_hidden_state from --text")
        assertClose(out["pooler_output"], io["fixed.pooler_output"]!, "clip_sd pooler_output from --text")
    }

    /// A Llama folder (transformers layout) with right padding: logits and hidden states at the
    /// real tokens (padded positions are left undefined by both libraries' conventions).
    func testForwardLlamaGivesLogitsAndHiddenStates() throws {
        let llama = try fixtures().appendingPathComponent("llama")
        let io = try load(llama.appendingPathComponent("llama_io.safetensors"))
        let mask = io["tied.right.attention_mask"]!
        let input = try write(["input_ids": io["tied.right.input_ids"]!, "attention_mask": mask], "llama_in.safetensors")
        let output = scratch.appendingPathComponent("llama_out.safetensors")
        let (status, log) = try Self.sura(["forward", "--model", llama.appendingPathComponent("tied").path,
                                           "--input", input.path, "--output", output.path])
        XCTAssertEqual(status, 0, log)
        let out = try load(output)
        let real = mask.scalars.enumerated().filter { $0.element == 1 }.map(\.offset)
        func realRows(_ t: Tensor) -> Tensor {
            let width = t.shape[2], values = t.scalars
            return Tensor(shape: [real.count, width], data: real.flatMap { values[($0 * width)..<(($0 + 1) * width)] })
        }
        for name in ["logits", "hidden_states.0", "hidden_states.3"] {
            let got = try XCTUnwrap(out[name], "\(name) missing")
            assertClose(realRows(got), realRows(io["tied.right.\(name)"]!), "llama tied \(name)")
        }
    }

    func testForwardBadInputFailsWithAClearMessage() throws {
        let diffusion = try fixtures().appendingPathComponent("diffusion")
        let unet = diffusion.appendingPathComponent("unet_small").path
        let io = try load(diffusion.appendingPathComponent("unet_small_io.safetensors"))
        let output = scratch.appendingPathComponent("never.safetensors").path

        let missing = try write(["sample": io["sample"]!, "timestep": io["timesteps"]!], "missing.safetensors")
        var (status, text) = try Self.sura(["forward", "--model", unet, "--input", missing.path, "--output", output])
        XCTAssertNotEqual(status, 0)
        XCTAssertTrue(text.contains("missing input tensor 'encoder_hidden_states'"), text)
        XCTAssertTrue(text.contains("sample [N, C, H, W], timestep [N] or [], encoder_hidden_states [N, L, D]"), text)
        XCTAssertTrue(text.contains("the file has: sample, timestep"), text)

        let renamed = try write(["sample": io["sample"]!, "timesteps": io["timesteps"]!, "encoder_hidden_states": io["ehs_0"]!],
                                "renamed.safetensors")
        (status, text) = try Self.sura(["forward", "--model", unet, "--input", renamed.path, "--output", output])
        XCTAssertNotEqual(status, 0)
        XCTAssertTrue(text.contains("unexpected input tensor 'timesteps'"), text)

        let badShape = try write(["sample": Tensor(zeros: [2, 3, 16, 16]), "timestep": io["timesteps"]!,
                                  "encoder_hidden_states": io["ehs_0"]!], "shape.safetensors")
        (status, text) = try Self.sura(["forward", "--model", unet, "--input", badShape.path, "--output", output])
        XCTAssertNotEqual(status, 0)
        XCTAssertTrue(text.contains("sample") && text.contains("[2, 3, 16, 16]"), text)

        let unknown = scratch.appendingPathComponent("gpt2")
        try FileManager.default.createDirectory(at: unknown, withIntermediateDirectories: true)
        try Data("{\"model_type\": \"gpt2\", \"architectures\": [\"GPT2LMHeadModel\"]}".utf8)
            .write(to: unknown.appendingPathComponent("config.json"))
        (status, text) = try Self.sura(["forward", "--model", unknown.path, "--input", missing.path, "--output", output])
        XCTAssertNotEqual(status, 0)
        XCTAssertTrue(text.contains("model_type \"gpt2\" is not a model Sura runs"), text)

        (status, text) = try Self.sura(["forward", "--model", unet, "--text", "hello", "--output", output])
        XCTAssertNotEqual(status, 0)
        XCTAssertTrue(text.contains("takes no text"), text)
        XCTAssertFalse(FileManager.default.fileExists(atPath: output))
    }

    // MARK: generate

    func testGenerateWritesImagesAndGrid() throws {
        let root = try fixtures()
        let folder = scratch.appendingPathComponent("model")
        let fm = FileManager.default
        try fm.createDirectory(at: folder.appendingPathComponent("scheduler"), withIntermediateDirectories: true)
        try fm.createSymbolicLink(at: folder.appendingPathComponent("unet"), withDestinationURL: root.appendingPathComponent("diffusion/unet_small"))
        try fm.createSymbolicLink(at: folder.appendingPathComponent("vae"), withDestinationURL: root.appendingPathComponent("diffusion/vae"))
        try fm.createSymbolicLink(at: folder.appendingPathComponent("text_encoder"),
                                  withDestinationURL: root.appendingPathComponent("text_encoders/clip_sd"))
        try fm.createDirectory(at: folder.appendingPathComponent("tokenizer"), withIntermediateDirectories: true)
        try fm.copyItem(at: root.appendingPathComponent("tokenizers/clip-tokenizer.json"),
                        to: folder.appendingPathComponent("tokenizer/tokenizer.json"))
        var config = SchedulerConfig(className: "DDIMScheduler")
        config.clipSample = false
        try config.write(to: folder.appendingPathComponent("scheduler/scheduler_config.json"))

        let out = scratch.appendingPathComponent("images")
        let (status, text) = try Self.sura(["generate", "--model", folder.path, "--prompt", "a red shirt", "--prompt", "two sneakers",
                                            "--steps", "2", "--guidance", "3", "--scheduler", "dpm++2m", "--seed", "4",
                                            "--output", out.path])
        XCTAssertEqual(status, 0, text)
        for (name, seed) in [("image-0.png", 4), ("image-1.png", 5)] {
            let url = out.appendingPathComponent(name)
            XCTAssertTrue(text.contains("\(url.path)  seed \(seed)"), text)
            let png = try PNGImage(contentsOf: url)
            XCTAssertEqual([png.width, png.height, png.channels], [32, 32, 3])
        }
        XCTAssertTrue(text.contains(out.appendingPathComponent("image-grid.png").path), text)
        XCTAssertTrue(text.contains("DPMSolverMultistepScheduler, 2 steps"), text)

        let (badStatus, badText) = try Self.sura(["generate", "--model", folder.path, "--prompt", "a", "--scheduler", "heun",
                                                  "--output", out.path])
        XCTAssertNotEqual(badStatus, 0)
        XCTAssertTrue(badText.contains("scheduler = heun"), badText)
    }
}
