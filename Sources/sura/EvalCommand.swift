import ArgumentParser
import Data
import Foundation
import Models
import Tensor

/// `sura eval`: evaluations of trained models.
struct EvalCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "eval",
        abstract: "Evaluate trained models.",
        subcommands: [EvalSemanticCommand.self])
}

/// `sura eval semantic`: SUR-adapter's counting/colour study and LLM4GEN's colour result at CPU
/// scale. For held-out simple prompts (templates and words never trained on) it generates one
/// image per prompt and seed with: the base model given the simple prompt, the base model given
/// the complex prompt (the ceiling: what the base model does when told every attribute), and each
/// adapter given the simple prompt; the semantic checker scores count, colour, class and
/// position against each scene.
struct EvalSemanticCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "semantic",
        abstract: "Counting / colour / class / position accuracy of the base model and adapters on held-out simple prompts.")

    @Option(help: "An adapter checkpoint (train's export); repeat for several.")
    var adapter: [String] = []

    @Option(help: "The base model folder (default: the first adapter's base_model, else models/base).")
    var model: String?

    @Option(help: "The scene dataset (sura data scenes) whose held-out split is evaluated.")
    var data: String = "data/scenes"

    @Option(help: "Which split of the dataset.")
    var split: String = "heldout"

    @Option(help: "Prompts evaluated (the split's first N records).")
    var count: Int = 64

    @Option(help: "Denoising steps.")
    var steps: Int = 25

    @Option(help: "Guidance scale.")
    var guidance: Float = 4

    @Option(help: "Seed of prompt i is seed + i (the same for every variant).")
    var seed: UInt64 = 0

    @Option(help: "Classifier weights of the semantic checker.")
    var checker: String = "models/checker/fashion_classifier.safetensors"

    @Option(help: "Where the table (eval.json) and the example grid (eval.png) go.")
    var output: String = "out/eval"

    @Option(help: "The LLM for the adapters (default: the path each checkpoint names).")
    var llm: String?

    @Option(help: "Images per variant shown in the grid.")
    var gridColumns: Int = 8

    @OptionGroup var compute: ComputeOptions

    struct Row {
        var name: String
        var tally: CheckerReport.Tally
        var images: [PNGImage]
    }

    func run() throws {
        try compute.apply()
        guard count >= 1 else { throw ValidationError("--count must be at least 1") }
        guard steps >= 1 else { throw ValidationError("--steps must be at least 1") }
        do {
            try evaluate()
        } catch let error as ValidationError {
            throw error
        } catch let error as CommandFailure {
            throw error
        } catch {
            throw CommandFailure("\(error)")
        }
    }

    private func evaluate() throws {
        let classifier: FashionClassifier
        do {
            classifier = try FashionClassifier(contentsOf: URL(fileURLWithPath: checker))
        } catch {
            throw CommandFailure("cannot load the checker from \(checker): \(error)")
        }
        let semantic = SemanticChecker(classifier: classifier)
        guard FileManager.default.fileExists(atPath: data) else {
            throw CommandFailure("\(data) does not exist; build it with `sura data scenes --out \(data)`")
        }
        let manifest = try DatasetManifest(contentsOf: URL(fileURLWithPath: data), imageCheck: .none)
        let records = Array(manifest.records.filter { $0.split == split }.prefix(count))
        guard !records.isEmpty else { throw CommandFailure("\(data): no records in split '\(split)'") }
        let scenes = try records.map { record -> SceneSpec in
            guard let json = record.extra["scene"] else {
                throw CommandFailure("\(manifest.url.path):\(record.line): no 'scene' field; eval semantic needs a scene dataset")
            }
            return try SceneSpec(json: json)
        }

        var modelPath = model ?? "models/base"
        if model == nil, let first = adapter.first, let base = try? SafeTensorsFile(contentsOf: URL(fileURLWithPath: first)).metadata["base_model"] {
            modelPath = base
        }
        let folder = try PipelineFolder.load(URL(fileURLWithPath: modelPath))
        let seeds = records.indices.map { seed &+ UInt64($0) }
        let options = TextToImageOptions(steps: steps, guidanceScale: guidance)

        func run(_ name: String, provider: (any ConditioningProvider)?, prompts: [String]) throws -> Row {
            let pipeline = try folder.makePipeline(conditioning: provider)
            let bar = ProgressBar(total: prompts.count, label: name, unit: "images")
            var images: [PNGImage] = []
            var tally = CheckerReport()
            var start = 0
            while start < prompts.count {
                let end = min(start + 16, prompts.count)
                let items = (start..<end).map { ImagePrompt(prompts[$0], seed: seeds[$0]) }
                let result = try pipeline.generate(items, options: options)
                for (k, png) in try result.pngImages().enumerated() {
                    images.append(png)
                    tally.add(semantic.check(SemanticChecker.Image(png), against: scenes[start + k]))
                }
                start = end
                bar.update(end)
            }
            return Row(name: name, tally: tally.overall, images: images)
        }

        var rows: [Row] = []
        rows.append(try run("base, simple prompt", provider: nil, prompts: records.map(\.text)))
        rows.append(try run("base, complex prompt (ceiling)", provider: nil, prompts: records.map(\.prompt)))
        for path in adapter {
            let provider = try AdapterConditioning.load(checkpoint: URL(fileURLWithPath: path), folder: folder, llm: llm)
            rows.append(try run("\(provider.type.rawValue), simple prompt", provider: provider, prompts: records.map(\.text)))
        }
        try report(rows, records: records, modelPath: modelPath)
    }

    /// count, colour, class, position as fractions (position: nan when no scene states it).
    static func accuracies(_ t: CheckerReport.Tally) -> [(String, Double)] {
        [("count", t.countAccuracy), ("colour", t.colorAccuracy), ("class", t.classAccuracy), ("position", t.positionAccuracy)]
    }

    /// Mean over the four accuracies of (adapter − base) / (ceiling − base), skipping any
    /// accuracy where the ceiling does not beat the base.
    static func gapClosed(_ row: Row, base: Row, ceiling: Row) -> Double? {
        let a = accuracies(row.tally), b = accuracies(base.tally), c = accuracies(ceiling.tally)
        var shares: [Double] = []
        for k in a.indices where c[k].1 - b[k].1 > 1e-9 && !a[k].1.isNaN { shares.append((a[k].1 - b[k].1) / (c[k].1 - b[k].1)) }
        return shares.isEmpty ? nil : shares.reduce(0, +) / Double(shares.count)
    }

    private func report(_ rows: [Row], records: [DatasetRecord], modelPath: String) throws {
        func pct(_ v: Double) -> String { v.isNaN ? "   –  " : String(format: "%5.1f%%", 100 * v) }
        let base = rows[0], ceiling = rows[1]
        print("semantic accuracy on \(records.count) held-out simple prompts (\(data), split \(split), seeds \(seed)…, \(steps) steps, guidance \(guidance), model \(modelPath))")
        let header = "variant".padding(toLength: 34, withPad: " ", startingAt: 0) + " count  colour   class  position    all   gap closed"
        print(header)
        var json: [[String: Any]] = []
        for (i, row) in rows.enumerated() {
            let t = row.tally
            let gap = i >= 2 ? Self.gapClosed(row, base: base, ceiling: ceiling) : nil
            print(row.name.padding(toLength: 34, withPad: " ", startingAt: 0)
                  + " \(pct(t.countAccuracy))  \(pct(t.colorAccuracy))  \(pct(t.classAccuracy))  \(pct(t.positionAccuracy))  \(pct(t.allAccuracy))"
                  + (gap.map { String(format: "   %5.1f%%", 100 * $0) } ?? ""))
            var entry: [String: Any] = ["variant": row.name, "scenes": t.scenes, "items": t.items]
            for (key, value) in Self.accuracies(t) + [("all", t.allAccuracy)] where !value.isNaN { entry[key] = value }
            if let gap { entry["gap_closed"] = gap }
            json.append(entry)
        }
        let directory = URL(fileURLWithPath: output, isDirectory: true)
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let document: [String: Any] = ["data": data, "split": split, "prompts": records.count, "seed": seed, "steps": steps,
                                       "guidance": Double(guidance), "model": modelPath, "adapters": adapter, "results": json,
                                       "examples": records.prefix(gridColumns).map { ["text": $0.text, "prompt": $0.prompt] }]
        let jsonURL = directory.appendingPathComponent("eval.json")
        try JSONSerialization.data(withJSONObject: document, options: [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes])
            .write(to: jsonURL, options: .atomic)
        // One row per variant, the same prompts and seeds in every column.
        let columns = min(gridColumns, records.count)
        let grid = try PNGImage.grid(rows.flatMap { $0.images.prefix(columns) }, columns: columns, spacing: 2)
        let gridURL = directory.appendingPathComponent("eval.png")
        try grid.write(to: gridURL)
        print("\(jsonURL.path)\n\(gridURL.path)  (rows: \(rows.map(\.name).joined(separator: " | ")))")
    }
}
