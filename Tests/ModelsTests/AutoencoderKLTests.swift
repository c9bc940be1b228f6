import Foundation
import XCTest
import Models
import Tensor

private func vaeFixtures() throws -> URL {
    let root = try XCTUnwrap(Bundle.module.url(forResource: "Fixtures", withExtension: nil), "test bundle has no Fixtures folder")
    return root.appendingPathComponent("diffusion")
}

/// max |a − b| / max |b|.
private func vaeRelativeError(_ a: Tensor, _ b: Tensor) -> Float {
    let x = a.scalars, y = b.scalars
    var diff: Float = 0, scale: Float = 0
    for i in x.indices {
        diff = max(diff, abs(x[i] - y[i]))
        scale = max(scale, abs(y[i]))
    }
    return diff / max(scale, 1e-30)
}

private func assertVAEParity(_ a: Tensor, _ b: Tensor, _ what: String, file: StaticString = #filePath, line: UInt = #line) {
    XCTAssertEqual(a.shape, b.shape, "\(what) shape", file: file, line: line)
    guard a.shape == b.shape else { return }
    let err = vaeRelativeError(a, b)
    print("parity \(what): relative error \(err)")
    XCTAssertLessThan(err, 1e-4, "\(what): relative error \(err)", file: file, line: line)
}

final class AutoencoderKLTests: XCTestCase {
    func testEncoderAndDecoderMatchDiffusers() throws {
        let vae = try AutoencoderKL.load(directory: vaeFixtures().appendingPathComponent("vae"))
        XCTAssertEqual(vae.scalingFactor, 0.5)
        let io = try SafeTensorsFile(contentsOf: vaeFixtures().appendingPathComponent("vae_io.safetensors")).loadAll()
        let (dist, decoded) = try withoutGrad { (try vae.encode(io["x"]!), try vae.decode(io["z"]!)) }
        assertVAEParity(dist.mean, io["mean"]!, "vae latent_dist.mean")
        assertVAEParity(dist.logvar, io["logvar"]!, "vae latent_dist.logvar")
        assertVAEParity(decoded, io["decoded"]!, "vae decoder output")
        XCTAssertEqual(dist.mode().shape, [2, 4, 8, 8])
        var rng = SeededGenerator(seed: 1)
        XCTAssertEqual(dist.sample(using: &rng).shape, [2, 4, 8, 8])
        XCTAssertEqual(dist.kl().shape, [2])
    }

    func testDecoderGradientReachesLatents() throws {
        let vae = try AutoencoderKL.load(directory: vaeFixtures().appendingPathComponent("vae"))
        vae.freeze()
        var rng = SeededGenerator(seed: 2)
        let z = Tensor.randn([1, 4, 4, 4], using: &rng)
        z.requiresGrad = true
        try vae.decode(z).square().mean().backward()
        XCTAssertEqual(z.grad?.shape, [1, 4, 4, 4])
        XCTAssertTrue(vae.parameters().allSatisfy { $0.grad == nil })
    }

    /// Checkpoints written before diffusers renamed the VAE attention (`query`, `key`, `value`,
    /// `proj_attn`, sometimes as 1×1 convs) load into the current names.
    func testLegacyAttentionNamesAreRenamed() throws {
        let dir = try vaeFixtures().appendingPathComponent("vae")
        let current = try SafeTensorsFile(contentsOf: dir.appendingPathComponent("diffusion_pytorch_model.safetensors")).loadAll()
        var legacy: [String: Tensor] = [:]
        let renames = ["to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"]
        for (name, tensor) in current {
            var renamed = name, value = tensor
            for (new, old) in renames where name.contains(".attentions.0.\(new).") {
                renamed = name.replacingOccurrences(of: ".attentions.0.\(new).", with: ".attentions.0.\(old).")
                if tensor.rank == 2 { value = tensor.reshaped(tensor.shape + [1, 1]) }
            }
            legacy[renamed] = value
        }
        XCTAssertNotNil(legacy["encoder.mid_block.attentions.0.proj_attn.weight"])
        let vae = try AutoencoderKL(config: AutoencoderKLConfig(contentsOf: dir.appendingPathComponent("config.json")))
        try vae.loadWeights(legacy, file: "legacy.safetensors")
        let reference = try AutoencoderKL.load(directory: dir)
        for (name, tensor) in reference.stateDict() {
            XCTAssertEqual(vae.tensor(named: name)?.scalars, tensor.scalars, name)
        }
    }

    func testSaveAndLoadRoundTrip() throws {
        var config = AutoencoderKLConfig()
        config.blockOutChannels = [8, 16]
        config.downBlockTypes = ["DownEncoderBlock2D", "DownEncoderBlock2D"]
        config.upBlockTypes = ["UpDecoderBlock2D", "UpDecoderBlock2D"]
        config.normNumGroups = 4
        config.latentChannels = 2
        var rng = SeededGenerator(seed: 3)
        let vae = try AutoencoderKL(config: config, rng: &rng)
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("sura-vae-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: dir) }
        try vae.save(to: dir)
        let loaded = try AutoencoderKL.load(directory: dir)
        XCTAssertEqual(loaded.config, config)
        let x = Tensor.randn([1, 3, 8, 8], using: &rng)
        let a = try withoutGrad { try vae.encode(x).mean }
        let b = try withoutGrad { try loaded.encode(x).mean }
        XCTAssertEqual(a.scalars, b.scalars)
    }

    func testErrorsNameTheKeyOrTensor() throws {
        let vae = try AutoencoderKL.load(directory: vaeFixtures().appendingPathComponent("vae"))
        do {
            _ = try vae.encode(Tensor(zeros: [1, 3, 15, 16]))
            XCTFail("odd image size accepted")
        } catch let DiffusionConfigError.invalidInput(tensor, _, got) {
            XCTAssertEqual(tensor, "sample")
            XCTAssertEqual(got, [1, 3, 15, 16])
        }
        do {
            _ = try vae.decode(Tensor(zeros: [1, 3, 4, 4]))
            XCTFail("wrong latent channels accepted")
        } catch let DiffusionConfigError.invalidInput(tensor, _, _) {
            XCTAssertEqual(tensor, "latents")
        }
        var config = AutoencoderKLConfig()
        config.downBlockTypes = ["AttnDownEncoderBlock2D"]
        do {
            try config.validate()
            XCTFail("unknown block type accepted")
        } catch let DiffusionConfigError.unknownBlockType(key, _, _) {
            XCTAssertEqual(key, "down_block_types[0]")
        }
        config = AutoencoderKLConfig()
        config.blockOutChannels = [48]
        do {
            try config.validate()
            XCTFail("48 channels in 32 groups accepted")
        } catch let DiffusionConfigError.channelsNotDivisible(key, _, _) {
            XCTAssertEqual(key, "block_out_channels[0]")
        }
        // A UNet folder is not a VAE.
        XCTAssertThrowsError(try AutoencoderKL.load(directory: vaeFixtures().appendingPathComponent("unet_small")))
    }
}
