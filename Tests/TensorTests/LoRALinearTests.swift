import XCTest
import Tensor

/// LoRA's layer: it starts as the base layer, trains only A and B, merges exactly, and its
/// gradients match finite differences (the check that must fail is in CoreOpTests).
final class LoRALinearTests: XCTestCase {
    func makeBase(seed: UInt64 = 1) -> Linear {
        var rng = SeededGenerator(seed: seed)
        return Linear(6, 5, rng: &rng)
    }

    func testStartsAsTheBaseLayerWithOnlyTheLowRankTensorsTrainable() {
        let base = makeBase()
        let x = randomTensor([3, 6], requiresGrad: false)
        let before = base(x).scalars
        var rng = SeededGenerator(seed: 2)
        let lora = LoRALinear(wrapping: base, rank: 2, alpha: 4, rng: &rng)
        XCTAssertEqual(lora(x).scalars, before, "B starts at zero, so the output is the base layer's")
        XCTAssertEqual(lora.namedTrainableParameters().map(\.0).sorted(), ["lora_A.weight", "lora_B.weight"])
        XCTAssertEqual(lora.namedParameters().map(\.0).sorted(), ["bias", "lora_A.weight", "lora_B.weight", "weight"])
        XCTAssertEqual(lora.scaling, 2)
        XCTAssertTrue(lora.weight === base.weight, "the base tensors are shared, not copied")
    }

    func testMergedWeightGivesTheSameOutput() {
        var rng = SeededGenerator(seed: 3)
        let lora = LoRALinear(wrapping: makeBase(), rank: 3, alpha: 6, rng: &rng)
        lora.loraB.weight.assign(randomTensor([5, 3], seed: 9, requiresGrad: false))
        let x = randomTensor([4, 6], seed: 5, requiresGrad: false)
        let merged = Linear(weight: lora.mergedWeight(), bias: lora.bias)
        assertClose(lora(x).scalars, merged(x).scalars, atol: 1e-5, rtol: 1e-5)
    }

    func testGradientsMatchFiniteDifferences() {
        var rng = SeededGenerator(seed: 4)
        let lora = LoRALinear(wrapping: makeBase(), rank: 2, alpha: 3, rng: &rng)
        lora.loraB.weight.assign(randomTensor([5, 2], seed: 11, requiresGrad: false))
        let x = randomTensor([3, 6], seed: 6)
        let a = lora.loraA.weight, b = lora.loraB.weight
        assertGradients([x, a, b]) { inputs in
            let saved = (lora.loraA.weight, lora.loraB.weight)
            lora.loraA.weight = inputs[1]
            lora.loraB.weight = inputs[2]
            defer { (lora.loraA.weight, lora.loraB.weight) = saved }
            let y = lora(inputs[0])
            return (y * y).sum()
        }
        let y = lora(x)
        (y * y).sum().backward()
        XCTAssertNil(lora.weight.grad, "the base weight is frozen")
        XCTAssertNotNil(lora.loraA.weight.grad)
    }
}
