import Foundation
import Tensor
import XCTest

/// Checkpoints of parameters + optimizer state resume training exactly, and bad files are named.
final class TrainingCheckpointTests: XCTestCase {
    func makeModel(seed: UInt64) -> Sequential {
        var rng = SeededGenerator(seed: seed)
        return Sequential(Linear(3, 8, rng: &rng), Activation.tanh(), Linear(8, 2, rng: &rng))
    }

    func trainSteps(_ model: Sequential, _ optimizer: AdamW, from start: Int, to end: Int) throws {
        for step in start..<end {
            var rng = SeededGenerator(seed: UInt64(100 + step))
            let x = Tensor.randn([4, 3], using: &rng), y = Tensor.randn([4, 2], using: &rng)
            model.zeroGrad()
            Loss.mse(model(x), y).backward()
            try optimizer.step()
        }
    }

    func directory() throws -> URL {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("sura-ckpt-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(at: dir) }
        return dir
    }

    func testResumeContinuesTheSameTrajectory() throws {
        let reference = makeModel(seed: 1)
        let refOpt = try AdamW(parameters: reference.namedParameters(), learningRate: 1e-2)
        try trainSteps(reference, refOpt, from: 0, to: 5)

        let first = makeModel(seed: 1)
        let firstOpt = try AdamW(parameters: first.namedParameters(), learningRate: 1e-2)
        try trainSteps(first, firstOpt, from: 0, to: 3)
        let url = try directory().appendingPathComponent("latest.safetensors")
        try TrainingCheckpoint(module: first, optimizer: firstOpt, metadata: ["step": "3"]).write(to: url)

        let resumed = makeModel(seed: 99)  // different initial weights: everything must come from the file
        let resumedOpt = try AdamW(parameters: resumed.namedParameters(), learningRate: 1e-2)
        let checkpoint = try TrainingCheckpoint(contentsOf: url)
        XCTAssertEqual(checkpoint.metadata["step"], "3")
        try checkpoint.restore(into: resumed, optimizer: resumedOpt)
        try trainSteps(resumed, resumedOpt, from: 3, to: 5)

        for ((name, a), (_, b)) in zip(reference.namedParameters(), resumed.namedParameters()) {
            XCTAssertEqual(a.scalars, b.scalars, "parameter \(name) diverged after resume")
        }
    }

    func testFrozenParametersAreNotSavedAndNotRequired() throws {
        let model = makeModel(seed: 2)
        model.freeze(prefix: "0")
        let url = try directory().appendingPathComponent("adapter.safetensors")
        try TrainingCheckpoint(module: model, optimizer: nil).write(to: url)
        let loaded = try TrainingCheckpoint(contentsOf: url)
        XCTAssertEqual(Set(loaded.parameters.keys), ["2.weight", "2.bias"])
        try loaded.restore(into: makeModel(seed: 3), optimizer: nil)
    }

    func testBadCheckpointsAreNamed() throws {
        let dir = try directory()
        let plain = dir.appendingPathComponent("plain.safetensors")
        try SafeTensorsWriter.write(["w": Tensor(shape: [2], data: [1, 2])], to: plain)
        XCTAssertThrowsError(try TrainingCheckpoint(contentsOf: plain)) { error in
            XCTAssertTrue("\(error)".contains("plain.safetensors") && "\(error)".contains("not a Sura training checkpoint"), "\(error)")
        }
        let foreign = dir.appendingPathComponent("foreign.safetensors")
        try TrainingCheckpoint(parameters: ["no.such.layer": Tensor(shape: [1], data: [0])]).write(to: foreign)
        XCTAssertThrowsError(try TrainingCheckpoint(contentsOf: foreign).restore(into: makeModel(seed: 4), optimizer: nil)) { error in
            XCTAssertTrue("\(error)".contains("no.such.layer"), "\(error)")
        }
        let truncated = dir.appendingPathComponent("truncated.safetensors")
        let bytes = try Data(contentsOf: foreign)
        try bytes.prefix(bytes.count - 2).write(to: truncated)
        XCTAssertThrowsError(try TrainingCheckpoint(contentsOf: truncated)) { error in
            XCTAssertTrue("\(error)".contains("truncated.safetensors"), "\(error)")
        }
    }
}
