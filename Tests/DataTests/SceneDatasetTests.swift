import Foundation
import XCTest
import Tensor
import Data

final class SceneDatasetTests: XCTestCase {
    private func builder(seed: UInt64 = 7, canvas: Int = 32, maxItems: Int = 2) throws -> SceneDatasetBuilder {
        var options = SceneDatasetOptions()
        options.canvas = canvas
        options.maxItems = maxItems
        return try SceneDatasetBuilder(options: options, source: TestSupport.syntheticSource(), seed: seed)
    }

    func testSameSeedGivesSameFiles() throws {
        let a = try TestSupport.temporaryFolder(self), b = try TestSupport.temporaryFolder(self)
        _ = try builder().build(count: 30, into: a)
        _ = try builder().build(count: 30, into: b)
        let names = try FileManager.default.contentsOfDirectory(atPath: a.path).sorted()
        XCTAssertEqual(names.count, 31)
        XCTAssertEqual(names, try FileManager.default.contentsOfDirectory(atPath: b.path).sorted())
        for name in names {
            XCTAssertEqual(try Foundation.Data(contentsOf: a.appendingPathComponent(name)),
                           try Foundation.Data(contentsOf: b.appendingPathComponent(name)), name)
        }
        // Examples do not depend on which came before, and another seed differs.
        let one = try builder(), other = try builder(seed: 8)
        XCTAssertEqual(one.example(17).complexPrompt, try builder().example(17).complexPrompt)
        XCTAssertEqual(one.render(one.example(17)), one.render(one.example(17)))
        XCTAssertNotEqual((0..<20).map { one.example($0).complexPrompt }, (0..<20).map { other.example($0).complexPrompt })
    }

    func testEveryAttributeAppearsAndIsStated() throws {
        let b = try builder(canvas: 48, maxItems: 3)
        var classes = Set<Int>(), colors = Set<SceneColor>(), counts = Set<Int>(), layouts = Set<SceneLayout>()
        for i in 0..<800 {
            let example = b.example(i)
            let scene = example.scene
            counts.insert(scene.count)
            layouts.insert(scene.layout)
            XCTAssertEqual(scene.items.map(\.position), scene.layout.positions)
            XCTAssertTrue(example.complexPrompt.hasPrefix(scene.count == 1 ? "1 object, " : "\(scene.count) objects, "))
            for item in scene.items {
                classes.insert(item.classIndex)
                colors.insert(item.color)
                let keyword = "\(item.color.rawValue) \(SceneVocabulary.className(item.classIndex)) at \(item.position.rawValue)"
                XCTAssertTrue(example.complexPrompt.contains(keyword), "\(example.complexPrompt) lacks \(keyword)")
                XCTAssertTrue(item.x >= 0 && item.y >= 0 && item.x + item.size <= 48 && item.y + item.size <= 48)
                // The simple prompt names the colour and the class with one of their words.
                let colorWords = SceneVocabulary.colors[item.color]!.map(\.singular)
                XCTAssertTrue(colorWords.contains { example.simplePrompt.contains($0) }, example.simplePrompt)
                let nouns = SceneVocabulary.nouns[item.classIndex].flatMap { [$0.singular, $0.plural] }
                XCTAssertTrue(nouns.contains { example.simplePrompt.contains($0) }, example.simplePrompt)
            }
            // Boxes keep a gap of at least 3 pixels, and positions agree with the drawing.
            for (i, p) in scene.items.enumerated() {
                for q in scene.items[(i + 1)...] {
                    let gapX = max(q.x - (p.x + p.size), p.x - (q.x + q.size))
                    let gapY = max(q.y - (p.y + p.size), p.y - (q.y + q.size))
                    XCTAssertGreaterThanOrEqual(max(gapX, gapY), 3, "\(scene)")
                    let dh = q.position.horizontalRank - p.position.horizontalRank
                    if dh != 0 { XCTAssertGreaterThan((q.boxCenter.x - p.boxCenter.x) * Double(dh), 0, "\(scene)") }
                    let dv = q.position.verticalRank - p.position.verticalRank
                    if dv != 0 { XCTAssertGreaterThan((q.boxCenter.y - p.boxCenter.y) * Double(dv), 0, "\(scene)") }
                }
            }
        }
        XCTAssertEqual(classes, Set(0..<10))
        XCTAssertEqual(colors, Set(SceneColor.allCases))
        XCTAssertEqual(counts, [1, 2, 3])
        XCTAssertEqual(layouts, Set(SceneLayout.allCases))
    }

    func testHeldOutTemplatesAndWordsNeverReachTraining() throws {
        let b = try builder(maxItems: 3)
        var trainTemplates = Set<String>(), heldOutTemplates = Set<String>(), heldOut = 0
        let reserved = SceneVocabulary.heldOutPhrases
        XCTAssertFalse(reserved.isEmpty)
        let n = 1500
        for i in 0..<n {
            let example = b.example(i)
            if example.split == "train" {
                trainTemplates.insert(example.templateID)
                let words = " " + example.simplePrompt.lowercased().map { $0.isLetter || $0 == "-" ? $0 : " " } + " "
                for phrase in reserved where words.contains(" \(phrase.lowercased()) ") {
                    XCTFail("training prompt '\(example.simplePrompt)' uses held-out '\(phrase)'")
                }
            } else {
                XCTAssertEqual(example.split, "heldout")
                heldOutTemplates.insert(example.templateID)
                heldOut += 1
            }
        }
        XCTAssertTrue(trainTemplates.isDisjoint(with: heldOutTemplates), "\(trainTemplates.intersection(heldOutTemplates))")
        XCTAssertEqual(Double(heldOut) / Double(n), 0.1, accuracy: 0.04)
        // The catalogue: unique ids, and both splits can describe every kind of scene.
        let ids = PromptTemplates.all.map(\.id)
        XCTAssertEqual(Set(ids).count, ids.count)
        for shape in PromptTemplate.Shape.allCases {
            let templates = PromptTemplates.all.filter { $0.shape == shape || ($0.shape == .many && shape != .one) }
            XCTAssertTrue(templates.contains { $0.heldOut }, "\(shape) has no held-out template")
            XCTAssertTrue(templates.contains { !$0.heldOut }, "\(shape) has no training template")
        }
        XCTAssertGreaterThan(trainTemplates.count, 15)
        XCTAssertGreaterThan(heldOutTemplates.count, 6)
    }

    func testNarrativePhrasings() throws {
        let b = try builder(canvas: 48, maxItems: 3)
        let prompts = (0..<1500).map { b.example($0).simplePrompt }
        for phrase in ["next to", "to the left of", "a couple of", "two ", "three ", "on the left"] {
            XCTAssertTrue(prompts.contains { $0.contains(phrase) }, "no prompt says '\(phrase)'")
        }
    }

    func testManifestRoundTripThroughTheStrictReader() throws {
        let folder = try TestSupport.temporaryFolder(self)
        let b = try builder()
        let summary = try b.build(count: 25, into: folder)
        XCTAssertEqual(summary.examples, 25)
        XCTAssertEqual(summary.splitCounts.values.reduce(0, +), 25)
        let manifest = try DatasetManifest(contentsOf: folder, imageCheck: .decode)
        XCTAssertEqual(manifest.records.count, 25)
        for (k, record) in manifest.records.enumerated() {
            let example = b.example(k)
            XCTAssertEqual(record.text, example.simplePrompt)
            XCTAssertEqual(record.prompt, example.complexPrompt)
            XCTAssertEqual(record.split, example.split)
            XCTAssertEqual(record.extra["template"], .string(example.templateID))
            XCTAssertEqual(try SceneSpec(json: record.extra["scene"]!), example.scene)
            let png = try PNGImage(contentsOf: record.imageURL)
            XCTAssertEqual([png.width, png.height, png.channels], [32, 32, 3])
            XCTAssertEqual(png.pixels, b.render(example))
        }
    }

    func testRenderingTintsIntensityOnBlack() throws {
        let item = SceneItem(classIndex: 0, color: .yellow, position: .center, x: 1, y: 2, size: 2, source: -1)
        let scene = SceneSpec(canvas: 4, layout: .single, items: [item])
        let pixels = SceneRenderer.render(scene, images: [[1, 0.5, 0, 0.25]])
        func rgb(_ x: Int, _ y: Int) -> [UInt8] { Array(pixels[((y * 4 + x) * 3)..<((y * 4 + x) * 3 + 3)]) }
        XCTAssertEqual(rgb(1, 2), [255, 220, 0])
        XCTAssertEqual(rgb(2, 2), [128, 110, 0])
        XCTAssertEqual(rgb(1, 3), [0, 0, 0])
        XCTAssertEqual(rgb(2, 3), [64, 55, 0])
        XCTAssertEqual(rgb(0, 0), [0, 0, 0])
    }

    func testBadOptionsNameTheSetting() throws {
        func field(_ change: (inout SceneDatasetOptions) -> Void) -> String? {
            var options = SceneDatasetOptions()
            change(&options)
            do {
                _ = try SceneDatasetBuilder(options: options, source: TestSupport.syntheticSource(), seed: 0)
                return nil
            } catch {
                return (error as? SceneError)?.field
            }
        }
        XCTAssertNil(field { _ in })
        XCTAssertEqual(field { $0.canvas = 28 }, "canvas")      // two items need 31 pixels
        XCTAssertEqual(field { $0.canvas = 100 }, "canvas")
        XCTAssertEqual(field { $0.maxItems = 4 }, "max_items")
        XCTAssertEqual(field { $0.gap = 2 }, "gap")
        XCTAssertEqual(field { $0.classes = [3, 12] }, "classes")
        XCTAssertEqual(field { $0.classes = [] }, "classes")
        XCTAssertEqual(field { $0.colors = [.red, .red] }, "colors")
        XCTAssertEqual(field { $0.heldOutFraction = 1.5 }, "heldout_fraction")
        var options = SceneDatasetOptions()
        options.canvas = 28
        options.maxItems = 1
        XCTAssertNoThrow(try SceneDatasetBuilder(options: options, source: TestSupport.syntheticSource(), seed: 0))
        XCTAssertThrowsError(try builder().build(count: 0, into: FileManager.default.temporaryDirectory))
    }

    func testSceneJSONErrorsNameTheField() throws {
        let good = try builder().example(3).scene
        XCTAssertEqual(try SceneSpec(json: good.json), good)
        func field(_ json: JSONValue) -> String? {
            do { _ = try SceneSpec(json: json); return nil } catch { return (error as? SceneError)?.field }
        }
        guard case .object(var object) = good.json, case .array(var items) = object["items"]!,
              case .object(var item) = items[0] else { return XCTFail("scene JSON is not an object") }
        item["color"] = .string("orange")
        items[0] = .object(item)
        object["items"] = .array(items)
        XCTAssertEqual(field(.object(object)), "scene.items[0].color")
        item["color"] = .string("red")
        item["class"] = .int(10)
        items[0] = .object(item)
        object["items"] = .array(items)
        XCTAssertEqual(field(.object(object)), "scene.items[0].class")
        object["layout"] = .string("spiral")
        XCTAssertEqual(field(.object(object)), "scene.layout")
        XCTAssertEqual(field(.string("x")), "scene")
    }
}
