import Foundation
import Tensor

/// A small CNN that tells the ten Fashion-MNIST classes apart on 14×14 item crops
/// (normalised by `ItemCrop`): the class judge of the semantic checker.
///
///     x [N, 1, 14, 14]
///     conv1 3×3, 1→16, pad 1, ReLU             → [N, 16, 14, 14]
///     conv2 3×3, 16→32, stride 2, pad 1, ReLU  → [N, 32, 7, 7]
///     conv3 3×3, 32→64, stride 2, pad 1, ReLU  → [N, 64, 4, 4]
///     flatten, fc1 1024→128, ReLU, fc2 128→10  → logits [N, 10]
///
/// 155,786 parameters (0.62 MB as float32 safetensors). Parameter names follow PyTorch
/// (`conv1.weight`, `fc2.bias`), so the same file loads into an equivalent `nn.Module`.
public final class FashionClassifier: Module {
    public let conv1: Conv2d
    public let conv2: Conv2d
    public let conv3: Conv2d
    public let fc1: Linear
    public let fc2: Linear

    /// Input side in pixels.
    public static let side = 14
    /// Number of classes.
    public static let classCount = 10
    /// The `format` metadata value of classifier files.
    public static let formatName = "sura-fashion-classifier-v1"

    /// A randomly initialised classifier.
    public init(rng: inout SeededGenerator) {
        conv1 = Conv2d(1, 16, kernelSize: 3, padding: 1, rng: &rng)
        conv2 = Conv2d(16, 32, kernelSize: 3, stride: 2, padding: 1, rng: &rng)
        conv3 = Conv2d(32, 64, kernelSize: 3, stride: 2, padding: 1, rng: &rng)
        fc1 = Linear(64 * 4 * 4, 128, rng: &rng)
        fc2 = Linear(128, FashionClassifier.classCount, rng: &rng)
        super.init()
    }

    /// Loads weights written by `save(to:)` (strict: every tensor present with its shape).
    /// - Throws: the file's `FileFormatError`, or `StateDictError` naming missing, unexpected and
    ///   mis-shaped tensors.
    public convenience init(contentsOf url: URL) throws {
        var rng = SeededGenerator(seed: 0)
        self.init(rng: &rng)
        let file = try SafeTensorsFile(contentsOf: url)
        _ = try load(try file.loadAll())
        eval()
    }

    /// x [N, 1, 14, 14] (intensities in [0, 1]) → logits [N, 10].
    public func callAsFunction(_ x: Tensor) -> Tensor {
        var h = conv1(x).relu()
        h = conv2(h).relu()
        h = conv3(h).relu()
        h = h.reshaped([h.shape[0], 64 * 4 * 4])
        return fc2(fc1(h).relu())
    }

    /// The most likely class of each crop (each `side × side` values), in batches of `batch`.
    public func predict(_ crops: [[Float]], batch: Int = 512) -> [Int] {
        var result: [Int] = []
        result.reserveCapacity(crops.count)
        var start = 0
        while start < crops.count {
            let end = min(crops.count, start + batch)
            let n = end - start
            let s = FashionClassifier.side
            var values = [Float]()
            values.reserveCapacity(n * s * s)
            for k in start..<end {
                precondition(crops[k].count == s * s, "predict: crop \(k) has \(crops[k].count) values, need \(s * s)")
                values += crops[k]
            }
            let logits = withoutGrad { self(Tensor(shape: [n, 1, s, s], data: values)) }
            result += logits.argmax(axis: 1)
            start = end
        }
        return result
    }

    /// Writes the weights as safetensors with `metadata` (plus `format`).
    public func save(to url: URL, metadata: [String: String] = [:]) throws {
        var meta = metadata
        meta["format"] = FashionClassifier.formatName
        try SafeTensorsWriter.write(namedParameters(), metadata: meta, to: url)
    }
}

/// Labelled 14×14 crops ready for the classifier.
public struct ClassifierExamples: Sendable {
    /// `count × 196` normalised intensities.
    public let inputs: [Float]
    public let labels: [Int]
    public var count: Int { labels.count }

    /// Every image of a Fashion-MNIST split, downsampled to 14×14 and normalised by `ItemCrop`.
    public init(dataset: FashionMNIST, limit: Int? = nil) {
        let n = min(dataset.count, limit ?? dataset.count)
        let side = FashionClassifier.side, factor = dataset.rows / side
        var inputs = [Float](repeating: 0, count: n * side * side)
        inputs.withUnsafeMutableBufferPointer { out in
            let base = out.baseAddress!
            parallelFor(n, grain: 256) { s, e in
                for i in s..<e {
                    let small = dataset.downsampled(i, factor: factor)
                    let crop = ItemCrop.normalise(small, width: side, height: side, side: side)
                    for k in 0..<(side * side) { base[i * side * side + k] = crop[k] }
                }
            }
        }
        self.inputs = inputs
        self.labels = dataset.labels.prefix(n).map(Int.init)
    }

    /// Crops `indices` as a batch tensor [n, 1, 14, 14] with their labels.
    public func batch(_ indices: ArraySlice<Int>) -> (Tensor, [Int]) {
        let s = FashionClassifier.side * FashionClassifier.side
        var values = [Float](repeating: 0, count: indices.count * s)
        for (row, i) in indices.enumerated() {
            for k in 0..<s { values[row * s + k] = inputs[i * s + k] }
        }
        return (Tensor(shape: [indices.count, 1, FashionClassifier.side, FashionClassifier.side], data: values),
                indices.map { labels[$0] })
    }
}

/// Trains a `FashionClassifier`: AdamW with a cosine schedule, shuffled mini-batches.
public struct FashionClassifierTrainer {
    public var epochs = 8
    public var batchSize = 128
    public var learningRate = 2e-3
    public var weightDecay = 1e-4
    public var seed: UInt64 = 0

    public init() {}

    /// What a run produced.
    public struct Result {
        public let model: FashionClassifier
        /// Mean training loss per logging interval.
        public let losses: [Double]
        /// Samples seen at each loss value.
        public let samplesSeen: [Int]
        /// Test accuracy after each epoch.
        public let epochAccuracies: [Double]
        public let testAccuracy: Double
        public let seconds: Double
    }

    /// Trains on `train`, measuring accuracy on `test` after each epoch. `progress(step, total,
    /// loss)` is called after every step.
    public func train(on train: ClassifierExamples, test: ClassifierExamples,
                      progress: ((Int, Int, Double) -> Void)? = nil) throws -> Result {
        let start = Date()
        var rng = SeededGenerator(seed: seed)
        let model = FashionClassifier(rng: &rng)
        let optimizer = try AdamW(parameters: model.namedParameters().map { (name: $0.0, tensor: $0.1) },
                                  learningRate: learningRate, weightDecay: weightDecay,
                                  exemptFromWeightDecay: AdamW.exemptBiasesAndNorms)
        let stepsPerEpoch = (train.count + batchSize - 1) / batchSize
        let totalSteps = stepsPerEpoch * epochs
        let schedule = LearningRateSchedule.cosineWithWarmup(warmupSteps: min(100, totalSteps / 10), totalSteps: totalSteps, floor: 0.02)
        var losses: [Double] = [], seen: [Int] = [], accuracies: [Double] = []
        var running = 0.0, runningCount = 0, step = 0
        let logEvery = max(1, stepsPerEpoch / 20)
        for _ in 0..<epochs {
            var order = Array(0..<train.count)
            for i in stride(from: order.count - 1, to: 0, by: -1) { order.swapAt(i, rng.below(i + 1)) }
            model.train()
            for b in 0..<stepsPerEpoch {
                let slice = order[(b * batchSize)..<min(order.count, (b + 1) * batchSize)]
                let (x, y) = train.batch(slice)
                optimizer.learningRate = schedule.learningRate(base: learningRate, atStep: step)
                optimizer.zeroGrad()
                let loss = Loss.crossEntropy(logits: model(x), targets: y)
                loss.backward()
                try optimizer.step()
                step += 1
                let value = Double(loss.item)
                running += value
                runningCount += 1
                if step % logEvery == 0 {
                    losses.append(running / Double(runningCount))
                    seen.append(step * batchSize)
                    running = 0
                    runningCount = 0
                }
                progress?(step, totalSteps, value)
            }
            model.eval()
            accuracies.append(FashionClassifierTrainer.accuracy(model, on: test))
        }
        return Result(model: model, losses: losses, samplesSeen: seen, epochAccuracies: accuracies,
                      testAccuracy: accuracies.last ?? 0, seconds: Date().timeIntervalSince(start))
    }

    /// Fraction of `examples` classified correctly.
    public static func accuracy(_ model: FashionClassifier, on examples: ClassifierExamples) -> Double {
        guard examples.count > 0 else { return 0 }
        let s = FashionClassifier.side * FashionClassifier.side
        let crops = (0..<examples.count).map { Array(examples.inputs[($0 * s)..<(($0 + 1) * s)]) }
        let predicted = model.predict(crops)
        return Double(zip(predicted, examples.labels).filter { $0 == $1 }.count) / Double(examples.count)
    }
}
