import Foundation
import Tensor

/// Settings of the built-in scene dataset.
public struct SceneDatasetOptions: Sendable, Equatable {
    /// Side of the square canvas in pixels (16…64).
    public var canvas: Int = 32
    /// Scenes hold 1…maxItems items, uniformly (1…3).
    public var maxItems: Int = 2
    /// The Fashion-MNIST classes items are drawn from.
    public var classes: [Int] = Array(0..<10)
    /// The colours items are drawn in.
    public var colors: [SceneColor] = SceneColor.allCases
    /// Minimum empty pixels between two item boxes (≥ 3, so a 3×3 dilation never joins items).
    public var gap: Int = 3
    /// Fraction of scenes whose simple prompt uses held-out templates and words (`split` = heldout).
    public var heldOutFraction: Double = 0.1
    /// Chance that a multi-item scene repeats one item (same class and colour), for "two …" prompts.
    public var identicalChance: Double = 0.2

    public init() {}

    /// - Throws: `SceneError` naming the first bad setting, with the allowed values.
    public func validate(itemSide: Int) throws {
        guard (16...64).contains(canvas) else { throw SceneError(field: "canvas", reason: "\(canvas) is outside 16…64") }
        guard (1...3).contains(maxItems) else { throw SceneError(field: "max_items", reason: "\(maxItems) is outside 1…3") }
        guard gap >= 3 && gap <= 16 else { throw SceneError(field: "gap", reason: "\(gap) is outside 3…16") }
        guard itemSide <= canvas else { throw SceneError(field: "canvas", reason: "\(canvas) is smaller than the \(itemSide)-pixel items") }
        for count in 1...maxItems where SceneRenderer.layouts(count: count, canvas: canvas, item: itemSide, gap: gap).isEmpty {
            let needed = SceneLayout.allCases.filter { $0.itemCount == count }.map { $0.minimumCanvas(item: itemSide, gap: gap) }.min()!
            throw SceneError(field: "canvas", reason: "\(count) items of \(itemSide) px with gaps of \(gap) px need a canvas of at least \(needed), got \(canvas)")
        }
        guard !classes.isEmpty else { throw SceneError(field: "classes", reason: "no classes given (allowed 0…9)") }
        if let bad = classes.first(where: { !(0..<10).contains($0) }) {
            throw SceneError(field: "classes", reason: "class \(bad) is outside 0…9")
        }
        guard Set(classes).count == classes.count else { throw SceneError(field: "classes", reason: "classes \(classes) repeat") }
        guard !colors.isEmpty, Set(colors).count == colors.count else {
            throw SceneError(field: "colors", reason: "need distinct colours from \(SceneColor.allCases.map(\.rawValue))")
        }
        guard (0...1).contains(heldOutFraction) else { throw SceneError(field: "heldout_fraction", reason: "\(heldOutFraction) is outside 0…1") }
        guard (0...1).contains(identicalChance) else { throw SceneError(field: "identical_chance", reason: "\(identicalChance) is outside 0…1") }
    }
}

/// One generated example: its scene, both prompts and where it belongs.
public struct SceneExample: Sendable {
    public let index: Int
    public let scene: SceneSpec
    /// The narrative prompt (`text`).
    public let simplePrompt: String
    /// The keyword prompt (`prompt`).
    public let complexPrompt: String
    public let templateID: String
    /// "train" or "heldout".
    public let split: String
    /// Whether the simple prompt says where the items are.
    public let positionStated: Bool

    /// The image file name inside the dataset folder.
    public var fileName: String { String(format: "scene_%06d.png", index) }

    /// The manifest line.
    public var manifestLine: [String: JSONValue] {
        ["file_name": .string(fileName), "text": .string(simplePrompt), "prompt": .string(complexPrompt),
         "split": .string(split), "template": .string(templateID), "position_stated": .bool(positionStated),
         "scene": scene.json]
    }
}

/// What a build wrote.
public struct SceneDatasetSummary: Sendable {
    public var directory: URL
    public var manifest: URL
    public var examples: Int
    public var splitCounts: [String: Int]
    public var itemCounts: [Int: Int]
    public var distinctComplexPrompts: Int
    public var distinctSimplePrompts: Int

    public var description: String {
        let splits = splitCounts.keys.sorted().map { "\($0) \(splitCounts[$0]!)" }.joined(separator: ", ")
        let items = itemCounts.keys.sorted().map { "\($0) item\($0 == 1 ? "" : "s"): \(itemCounts[$0]!)" }.joined(separator: ", ")
        return """
        \(examples) scenes in \(directory.path) (\(splits); \(items))
        distinct prompts: \(distinctComplexPrompts) complex, \(distinctSimplePrompts) simple
        manifest: \(manifest.path)
        """
    }
}

/// Builds the scene dataset: `count` scenes, each made from its own random stream
/// (seed, index), so the same seed gives the same files whatever else changes.
public struct SceneDatasetBuilder: Sendable {
    public let options: SceneDatasetOptions
    public let source: SceneItemSource
    public let seed: UInt64

    /// - Throws: `SceneError` for bad options or a class with no source images.
    public init(options: SceneDatasetOptions, source: SceneItemSource, seed: UInt64) throws {
        try options.validate(itemSide: source.side)
        if let empty = options.classes.first(where: { source.indicesByClass[$0].isEmpty }) {
            throw SceneError(field: "classes", reason: "class \(empty) has no source images")
        }
        self.options = options
        self.source = source
        self.seed = seed
    }

    /// Example `index` (deterministic for the builder's seed).
    public func example(_ index: Int) -> SceneExample {
        var rng = SeededGenerator.stream(seed: seed, index: index)
        let count = 1 + rng.below(options.maxItems)
        let layouts = SceneRenderer.layouts(count: count, canvas: options.canvas, item: source.side, gap: options.gap)
        let layout = rng.pick(layouts)
        let corners = SceneRenderer.place(layout, canvas: options.canvas, item: source.side, gap: options.gap, using: &rng)
        let identical = count > 1 && rng.chance(options.identicalChance)
        var items: [SceneItem] = []
        for (k, position) in layout.positions.enumerated() {
            let cls = identical && k > 0 ? items[0].classIndex : rng.pick(options.classes)
            let color = identical && k > 0 ? items[0].color : rng.pick(options.colors)
            let sourceIndex = rng.pick(source.indicesByClass[cls])
            items.append(SceneItem(classIndex: cls, color: color, position: position, x: corners[k].x, y: corners[k].y,
                                   size: source.side, source: sourceIndex))
        }
        let scene = SceneSpec(canvas: options.canvas, layout: layout, items: items)
        let heldOut = rng.chance(options.heldOutFraction)
        let (text, template) = PromptTemplates.simplePrompt(for: scene, heldOut: heldOut, using: &rng)
        return SceneExample(index: index, scene: scene, simplePrompt: text, complexPrompt: PromptTemplates.complexPrompt(for: scene),
                            templateID: template.id, split: heldOut ? "heldout" : "train", positionStated: template.statesPosition)
    }

    /// The RGB bytes of an example's image.
    public func render(_ example: SceneExample) -> [UInt8] {
        SceneRenderer.render(example.scene, images: example.scene.items.map { source.image($0.source) })
    }

    /// Writes `count` scenes as PNG files and `metadata.jsonl` into `directory` (created if
    /// needed). `progress` is called with the number of scenes written so far.
    public func build(count: Int, into directory: URL, progress: ((Int) -> Void)? = nil) throws -> SceneDatasetSummary {
        guard count >= 1 else { throw SceneError(field: "count", reason: "\(count) scenes requested, need at least 1") }
        do {
            try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        } catch {
            throw SceneError(field: "out", reason: "cannot create \(directory.path): \(error.localizedDescription)")
        }
        var lines: [[String: JSONValue]] = []
        var summary = SceneDatasetSummary(directory: directory, manifest: directory.appendingPathComponent(DatasetManifest.fileName),
                                          examples: count, splitCounts: [:], itemCounts: [:],
                                          distinctComplexPrompts: 0, distinctSimplePrompts: 0)
        var complex = Set<String>(), simple = Set<String>()
        for index in 0..<count {
            let example = example(index)
            let image = try PNGImage(width: options.canvas, height: options.canvas, channels: 3, pixels: render(example))
            try SceneDatasetBuilder.writeUnsynced(try image.pngData(name: example.fileName),
                                                  to: directory.appendingPathComponent(example.fileName))
            lines.append(example.manifestLine)
            summary.splitCounts[example.split, default: 0] += 1
            summary.itemCounts[example.scene.count, default: 0] += 1
            complex.insert(example.complexPrompt)
            simple.insert(example.simplePrompt)
            if (index + 1) % 256 == 0 || index + 1 == count { progress?(index + 1) }
        }
        // The manifest, written last and atomically, is what makes the folder a dataset.
        try DatasetManifest.write(lines, to: summary.manifest)
        summary.distinctComplexPrompts = complex.count
        summary.distinctSimplePrompts = simple.count
        return summary
    }

    /// Writes a small file without `fsync`: Foundation syncs every `Data.write`, which costs
    /// milliseconds per image on virtual disks and dominated building a dataset.
    static func writeUnsynced(_ data: Foundation.Data, to url: URL) throws {
        let fd = open(url.path, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        guard fd >= 0 else {
            throw SceneError(field: "out", reason: "cannot create \(url.path): \(String(cString: strerror(errno)))")
        }
        defer { close(fd) }
        try data.withUnsafeBytes { raw in
            var offset = 0
            while offset < raw.count {
                let n = write(fd, raw.baseAddress! + offset, raw.count - offset)
                if n < 0 && errno == EINTR { continue }
                guard n > 0 else {
                    throw SceneError(field: "out", reason: "cannot write \(url.path): \(String(cString: strerror(errno)))")
                }
                offset += n
            }
        }
    }
}
