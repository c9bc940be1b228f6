import ArgumentParser
import Data
import Foundation
import Tensor

/// `sura data …`: the built-in scene dataset, manifests and the semantic checker.
struct DataCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "data",
        abstract: "Build the scene dataset, validate manifests, train and score the semantic checker.",
        subcommands: [DataScenesCommand.self, DataCheckCommand.self, DataTrainCheckerCommand.self, DataScoreCheckerCommand.self])
}

/// Where Fashion-MNIST is read from.
struct FashionMNISTOptions: ParsableArguments {
    @Option(name: .customLong("fashion-mnist"),
            help: "Folder with the Fashion-MNIST IDX files (default: SURA_FASHION_MNIST or /usr/share/datasets/fashion-mnist).")
    var directory: String?

    var url: URL { directory.map { URL(fileURLWithPath: $0) } ?? FashionMNIST.defaultDirectory }

    func load(_ split: FashionMNIST.Split) throws -> FashionMNIST {
        do {
            return try FashionMNIST(split: split, directory: url)
        } catch {
            throw CommandFailure("\(error)")
        }
    }
}

/// Scene settings shared by `scenes` and `score-checker`.
struct SceneOptions: ParsableArguments {
    @Option(help: "Canvas side in pixels (16…64).")
    var canvas: Int = 32

    @Option(help: "Scenes hold 1…N items (N in 1…3; 3 items need a canvas of 31 or more).")
    var maxItems: Int = 2

    @Option(help: "Fashion-MNIST classes, by index or keyword name, comma separated (default: all ten).")
    var classes: String?

    @Option(help: "Colours, comma separated, from red, yellow, green, blue, purple (default: all five).")
    var colors: String?

    @Option(help: "Minimum gap in pixels between item boxes (3…16).")
    var gap: Int = 3

    @Option(help: "Fraction of scenes whose simple prompt is held out for evaluation (0…1).")
    var heldoutFraction: Double = 0.1

    func makeOptions() throws -> SceneDatasetOptions {
        var options = SceneDatasetOptions()
        options.canvas = canvas
        options.maxItems = maxItems
        options.gap = gap
        options.heldOutFraction = heldoutFraction
        if let classes {
            options.classes = try classes.split(separator: ",").map { raw in
                let word = raw.trimmingCharacters(in: .whitespaces).lowercased()
                if let i = Int(word) { return i }
                if let i = SceneVocabulary.keywordNames.firstIndex(of: word) { return i }
                throw ValidationError("--classes: unknown class '\(word)' (use 0…9 or \(SceneVocabulary.keywordNames.joined(separator: ", ")))")
            }
        }
        if let colors {
            options.colors = try colors.split(separator: ",").map { raw in
                let word = raw.trimmingCharacters(in: .whitespaces).lowercased()
                guard let color = SceneColor(rawValue: word) else {
                    throw ValidationError("--colors: unknown colour '\(word)' (use \(SceneColor.allCases.map(\.rawValue).joined(separator: ", ")))")
                }
                return color
            }
        }
        return options
    }
}

/// `sura data scenes --out DIR --count N --seed S`: writes the scene dataset.
struct DataScenesCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "scenes",
        abstract: "Write scenes of Fashion-MNIST items as PNG files with metadata.jsonl (simple and complex prompts, attributes, split).")

    @Option(help: "Output folder (created if needed).")
    var out: String

    @Option(help: "Number of scenes.")
    var count: Int = 10_000

    @Option(help: "Random seed: the same seed gives the same files.")
    var seed: UInt64 = 0

    @Option(help: "Fashion-MNIST split the items come from (train or test).")
    var sourceSplit: String = "train"

    @OptionGroup var scene: SceneOptions
    @OptionGroup var fashion: FashionMNISTOptions

    func run() throws {
        guard count >= 1 else { throw ValidationError("--count must be at least 1, got \(count)") }
        guard let split = FashionMNIST.Split(rawValue: sourceSplit) else {
            throw ValidationError("--source-split must be train or test, got '\(sourceSplit)'")
        }
        let options = try scene.makeOptions()
        let dataset = try fashion.load(split)
        do {
            let builder = try SceneDatasetBuilder(options: options, source: SceneItemSource(dataset: dataset), seed: seed)
            let bar = ProgressBar(total: count, label: "scenes", unit: "scene")
            let summary = try builder.build(count: count, into: URL(fileURLWithPath: out)) { bar.update($0) }
            print(summary.description)
        } catch let error as SceneError {
            throw ValidationError("\(error)")
        } catch {
            throw CommandFailure("\(error)")
        }
    }
}

/// `sura data check --manifest M`: validates a manifest and its images.
struct DataCheckCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check",
        abstract: "Validate a metadata.jsonl manifest: JSON, keys, paths inside the folder, readable images, scene attributes.")

    @Option(help: "The manifest file, or the folder holding metadata.jsonl.")
    var manifest: String

    @Flag(help: "Only check that images exist instead of decoding every one.")
    var noDecode = false

    func run() throws {
        let url = URL(fileURLWithPath: manifest)
        let loaded: DatasetManifest
        do {
            loaded = try DatasetManifest(contentsOf: url, imageCheck: noDecode ? .exists : .decode)
        } catch {
            throw CommandFailure("\(error)")
        }
        var scenes = 0
        for record in loaded.records {
            guard let json = record.extra["scene"] else { continue }
            do {
                _ = try SceneSpec(json: json)
                scenes += 1
            } catch {
                throw CommandFailure("\(loaded.url.path):\(record.line): \(error)")
            }
        }
        let extras = Set(loaded.records.flatMap { $0.extra.keys }).sorted()
        let splits = loaded.splitCounts.keys.sorted().map { "\($0) \(loaded.splitCounts[$0]!)" }.joined(separator: ", ")
        print("\(loaded.url.path): \(loaded.records.count) records, \(Set(loaded.records.map(\.fileName)).count) images \(noDecode ? "found" : "decoded")")
        print("splits: \(splits)")
        print("distinct prompts: \(Set(loaded.records.map(\.prompt)).count) complex, \(Set(loaded.records.map(\.text)).count) simple")
        print("extra fields: \(extras.isEmpty ? "none" : extras.joined(separator: ", "))" + (scenes > 0 ? " (\(scenes) scene descriptions valid)" : ""))
        print("ok")
    }
}

/// `sura data train-checker --out FILE`: trains the checker's classifier.
struct DataTrainCheckerCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "train-checker",
        abstract: "Train the 14×14 Fashion-MNIST classifier the semantic checker uses; write safetensors, a loss curve and a log.")

    @Option(help: "Output safetensors file; the loss curve (.png) and log (.csv) go beside it.")
    var out: String = "models/checker/fashion_classifier.safetensors"

    @Option(help: "Passes over the 60,000 training images.")
    var epochs: Int = 8

    @Option(help: "Mini-batch size.")
    var batchSize: Int = 128

    @Option(help: "Peak learning rate (AdamW, cosine schedule).")
    var lr: Double = 2e-3

    @Option(help: "Random seed.")
    var seed: UInt64 = 0

    @Option(help: "Use only the first N training images (for a quick run).")
    var limit: Int?

    @OptionGroup var fashion: FashionMNISTOptions
    @OptionGroup var compute: ComputeOptions

    func run() throws {
        try compute.apply()
        guard epochs >= 1 else { throw ValidationError("--epochs must be at least 1") }
        guard batchSize >= 1 else { throw ValidationError("--batch-size must be at least 1") }
        guard lr > 0 else { throw ValidationError("--lr must be positive") }
        if let limit, limit < 1 { throw ValidationError("--limit must be at least 1") }
        let outURL = URL(fileURLWithPath: out)
        let train = ClassifierExamples(dataset: try fashion.load(.train), limit: limit)
        let test = ClassifierExamples(dataset: try fashion.load(.test))
        var trainer = FashionClassifierTrainer()
        trainer.epochs = epochs
        trainer.batchSize = batchSize
        trainer.learningRate = lr
        trainer.seed = seed
        let steps = epochs * ((train.count + batchSize - 1) / batchSize)
        let bar = ProgressBar(total: steps, label: "train-checker", unit: "step")
        var smoothed = Double.nan
        let result = try trainer.train(on: train, test: test) { step, _, loss in
            smoothed = smoothed.isNaN ? loss : 0.98 * smoothed + 0.02 * loss
            bar.update(step, status: String(format: "loss %.4f", smoothed))
        }
        do {
            try FileManager.default.createDirectory(at: outURL.deletingLastPathComponent(), withIntermediateDirectories: true)
            try result.model.save(to: outURL, metadata: [
                "test_accuracy": String(format: "%.4f", result.testAccuracy),
                "recipe": "sura data train-checker --epochs \(epochs) --batch-size \(batchSize) --lr \(lr) --seed \(seed)"
                    + (limit.map { " --limit \($0)" } ?? ""),
                "input": "1x14x14 ItemCrop-normalised intensities in [0,1]",
                "classes": SceneVocabulary.keywordNames.joined(separator: ","),
            ])
            let base = outURL.deletingPathExtension()
            var chart = LineChart(title: "checker training loss", logY: true)
            chart.add("train loss", result.losses, xs: result.samplesSeen.map(Double.init))
            let png = try PNGImage(width: chart.width, height: chart.height, channels: 3, pixels: chart.render())
            let chartURL = base.appendingPathExtension("loss.png")
            try png.write(to: chartURL)
            var log = ["samples,train_loss"] + zip(result.samplesSeen, result.losses).map { "\($0),\($1)" }
            log += result.epochAccuracies.enumerated().map { "# epoch \($0.offset + 1) test accuracy \(String(format: "%.4f", $0.element))" }
            let logURL = base.appendingPathExtension("log.csv")
            try (log.joined(separator: "\n") + "\n").write(to: logURL, atomically: true, encoding: .utf8)
            for (e, a) in result.epochAccuracies.enumerated() { print(String(format: "epoch %d: test accuracy %.4f", e + 1, a)) }
            print(String(format: "test accuracy %.4f after %.0f s (%d parameters)", result.testAccuracy, result.seconds, result.model.parameterCount))
            print("weights: \(outURL.path)\nloss curve: \(chartURL.path)\nlog: \(logURL.path)")
        } catch {
            throw CommandFailure("\(error)")
        }
    }
}

/// `sura data score-checker`: the checker's own accuracy on rendered test-split scenes.
struct DataScoreCheckerCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "score-checker",
        abstract: "Score the semantic checker on scenes rendered from the Fashion-MNIST test split (its accuracy ceiling).")

    @Option(help: "Classifier weights written by train-checker.")
    var weights: String = "models/checker/fashion_classifier.safetensors"

    @Option(help: "Number of scenes.")
    var scenes: Int = 2000

    @Option(help: "Random seed.")
    var seed: UInt64 = 1

    @Flag(help: "Print the report as JSON.")
    var json = false

    @OptionGroup var scene: SceneOptions
    @OptionGroup var fashion: FashionMNISTOptions
    @OptionGroup var compute: ComputeOptions

    func run() throws {
        try compute.apply()
        guard scenes >= 1 else { throw ValidationError("--scenes must be at least 1") }
        let options = try scene.makeOptions()
        let classifier: FashionClassifier
        do {
            classifier = try FashionClassifier(contentsOf: URL(fileURLWithPath: weights))
        } catch {
            throw CommandFailure("cannot load the checker from \(weights): \(error)\n(train one with: sura data train-checker --out \(weights))")
        }
        let dataset = try fashion.load(.test)
        let report: CheckerReport
        do {
            let builder = try SceneDatasetBuilder(options: options, source: SceneItemSource(dataset: dataset), seed: seed)
            report = SceneCheckerScoring.score(checker: SemanticChecker(classifier: classifier), builder: builder, scenes: scenes)
        } catch let error as SceneError {
            throw ValidationError("\(error)")
        }
        if json {
            print(report.json.description)
        } else {
            print("checker accuracy on \(scenes) rendered test-split scenes (\(options.canvas)×\(options.canvas), seed \(seed)):")
            print(report.table)
        }
    }
}
