import ArgumentParser
import Foundation
import Tensor

/// `sura demo`: the README's main job. Until the full text-to-image pipeline is wired, it runs the
/// most complete path that works end to end: fitting a small MLP with the tensor core.
struct DemoCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "demo",
        abstract: "Run the end-to-end demo and print where its results are.")

    @Option(help: "Folder for the demo's outputs.")
    var output: String = "out/demo"

    @Option(help: "Training steps for the MLP.")
    var steps: Int = 600

    @Option(help: "Random seed.")
    var seed: UInt64 = 0

    @OptionGroup var compute: ComputeOptions

    func run() throws {
        try compute.apply()
        guard steps > 0 else { throw ValidationError("--steps must be positive") }
        let dir = URL(fileURLWithPath: output, isDirectory: true)
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let result = try MLPFitDemo(seed: seed, steps: steps).run()
        let chartURL = dir.appendingPathComponent("mlp_loss.png")
        try result.chart.write(to: chartURL)
        let csvURL = dir.appendingPathComponent("mlp_loss.csv")
        try (["step,train_loss"] + result.losses.enumerated().map { "\($0.offset),\($0.element)" })
            .joined(separator: "\n").write(to: csvURL, atomically: true, encoding: .utf8)
        print("MLP fit of y = sin(3·x1)·x2 + 0.5·x1² (2→64→64→1, SiLU, AdamW, cosine schedule)")
        for (step, loss) in result.losses.enumerated() where step % Swift.max(1, steps / 10) == 0 || step == steps - 1 {
            print(String(format: "  step %5d  loss %.5f", step, loss))
        }
        print(String(format: "held-out loss: %.5f (predicting the mean gives %.5f)", result.testLoss, result.baselineLoss))
        print("loss curve: \(chartURL.path)")
        print("loss values: \(csvURL.path)")
    }
}

/// Fits a two-hidden-layer MLP to a smooth 2-D function: proof that layers, autograd, the
/// optimizer, the schedule and PNG output work together.
struct MLPFitDemo {
    let seed: UInt64
    let steps: Int

    struct Result {
        var losses: [Double]
        var testLoss: Double
        var baselineLoss: Double
        var chart: PNGImage
    }

    static func target(_ x: Tensor) -> Tensor {
        let x1 = x.sliced(axis: 1, 0, 1), x2 = x.sliced(axis: 1, 1, 2)
        return (x1 * 3).sin() * x2 + x1.square() * 0.5
    }

    func run() throws -> Result {
        var rng = SeededGenerator(seed: seed)
        let xTrain = Tensor.uniform([512, 2], low: -1, high: 1, using: &rng)
        let xTest = Tensor.uniform([256, 2], low: -1, high: 1, using: &rng)
        let yTrain = withoutGrad { MLPFitDemo.target(xTrain) }
        let yTest = withoutGrad { MLPFitDemo.target(xTest) }
        let model = Sequential(Linear(2, 64, rng: &rng), Activation.silu(),
                               Linear(64, 64, rng: &rng), Activation.silu(), Linear(64, 1, rng: &rng))
        let optimizer = try AdamW(parameters: model.namedParameters().map { (name: $0.0, tensor: $0.1) },
                                  learningRate: 1e-2, weightDecay: 1e-4)
        let schedule = LearningRateSchedule.cosineWithWarmup(warmupSteps: steps / 20, totalSteps: steps)
        let progress = ProgressBar(total: steps, label: "mlp", unit: "steps")
        var losses: [Double] = []
        for step in 0..<steps {
            optimizer.learningRate = schedule.learningRate(base: 1e-2, atStep: step)
            let loss = Loss.mse(model(xTrain), yTrain)
            model.zeroGrad()
            loss.backward()
            try optimizer.step()
            losses.append(Double(loss.item))
            progress.update(step + 1, status: String(format: "loss %.4f", loss.item))
        }
        let testLoss = withoutGrad { Double(Loss.mse(model(xTest), yTest).item) }
        let baseline = withoutGrad { Double(Loss.mse(yTest.mean() + yTest * 0, yTest).item) }
        var chart = LineChart(title: "MLP TRAINING LOSS (MSE)", logY: true)
        chart.add("TRAIN", losses)
        let png = try PNGImage(width: chart.width, height: chart.height, channels: 3, pixels: chart.render())
        return Result(losses: losses, testLoss: testLoss, baselineLoss: baseline, chart: png)
    }
}
