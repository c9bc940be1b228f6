import Foundation
import Tensor

/// One object the checker found in an image.
public struct DetectedObject: Sendable {
    public let component: ImageComponent
    /// The nearest of the five colours by mean hue, or nil when the object is gray (mean
    /// saturation below the checker's minimum).
    public let color: SceneColor?
    /// The classifier's class for the object's crop.
    public let classIndex: Int
}

/// How one expected item fared.
public struct ItemCheck: Sendable {
    public let expected: SceneItem
    /// Index into `SceneCheck.detected`, or nil when no object was left to match it.
    public let match: Int?
    public let colorCorrect: Bool
    public let classCorrect: Bool
}

/// The checker's verdict on one image against one scene.
public struct SceneCheck: Sendable {
    public let expectedCount: Int
    public let detected: [DetectedObject]
    public let items: [ItemCheck]
    /// Exactly as many objects as items.
    public var countCorrect: Bool { detected.count == expectedCount }
    /// Every item in its place (see `SemanticChecker`); false when the count is wrong.
    public let positionCorrect: Bool
    public var colorsCorrect: Int { items.filter(\.colorCorrect).count }
    public var classesCorrect: Int { items.filter(\.classCorrect).count }
    /// Count, position and every item's class and colour all right.
    public var allCorrect: Bool {
        countCorrect && positionCorrect && items.allSatisfy { $0.colorCorrect && $0.classCorrect }
    }
}

/// Scores an image against a scene's attributes, the way a person reading the prompt would:
///
/// - **count**: connected components of the non-black mask (`ComponentLabeling`);
/// - **colour**: each object's intensity-weighted mean hue, nearest of the five scene colours;
/// - **class**: the `FashionClassifier` on each object's crop, normalised by `ItemCrop`;
/// - **position**: objects are matched to items by appearance (most items with the right colour
///   and class, then nearest to where the item was drawn); then for every pair of items whose
///   positions differ in horizontal (vertical) rank, their objects must appear in that order
///   along x (y). A single item must lie within a quarter of the canvas from the centre.
///
/// Class and colour are scored on the same matching, so an item counts as right when the image
/// shows it anywhere, as in T2I-CompBench-style attribute binding.
public struct SemanticChecker {
    public let classifier: FashionClassifier
    public var threshold: Float = ComponentLabeling.defaultThreshold
    public var minimumPixels = ComponentLabeling.defaultMinimumPixels
    /// Objects whose mean saturation is below this have no colour.
    public var minimumSaturation = 0.25
    /// At most this many objects (the largest) are considered for matching.
    public var maximumObjects = 12

    public init(classifier: FashionClassifier) {
        self.classifier = classifier
    }

    /// An image to check: bytes [height, width, channels] (channels 1, 3 or 4).
    public struct Image: Sendable {
        public let pixels: [UInt8]
        public let width: Int
        public let height: Int
        public let channels: Int

        public init(pixels: [UInt8], width: Int, height: Int, channels: Int) {
            self.pixels = pixels
            self.width = width
            self.height = height
            self.channels = channels
        }

        public init(_ png: PNGImage) {
            self.init(pixels: png.pixels, width: png.width, height: png.height, channels: png.channels)
        }
    }

    /// Objects in each image (classified in one batch).
    public func detect(_ images: [Image]) -> [[DetectedObject]] {
        let labelings = images.map { image -> ComponentLabeling in
            ComponentLabeling(pixels: image.pixels, width: image.width, height: image.height, channels: image.channels,
                              threshold: threshold, minimumPixels: minimumPixels)
        }
        var crops: [[Float]] = []
        var kept: [[Int]] = []
        for labeling in labelings {
            let order = labeling.components.indices.sorted { labeling.components[$0].pixels.count > labeling.components[$1].pixels.count }
            let chosen = Array(order.prefix(maximumObjects)).sorted()
            kept.append(chosen)
            for k in chosen { crops.append(labeling.crop(k, side: FashionClassifier.side)) }
        }
        let classes = classifier.predict(crops)
        var next = 0
        return zip(labelings, kept).map { labeling, chosen in
            chosen.map { k in
                let c = labeling.components[k]
                defer { next += 1 }
                return DetectedObject(component: c, color: c.saturation >= minimumSaturation ? SceneColor.nearest(toHue: c.hue) : nil,
                                      classIndex: classes[next])
            }
        }
    }

    /// Checks each image against its scene (in one classifier batch).
    public func check(_ images: [Image], against scenes: [SceneSpec]) -> [SceneCheck] {
        precondition(images.count == scenes.count, "check: \(images.count) images for \(scenes.count) scenes")
        let detections = detect(images)
        return (0..<images.count).map { SemanticChecker.judge(detections[$0], scene: scenes[$0], width: images[$0].width, height: images[$0].height) }
    }

    /// Checks one image.
    public func check(_ image: Image, against scene: SceneSpec) -> SceneCheck {
        check([image], against: [scene])[0]
    }

    /// The verdict for detected objects against a scene drawn on a `width × height` image.
    static func judge(_ objects: [DetectedObject], scene: SceneSpec, width: Int, height: Int) -> SceneCheck {
        let items = scene.items
        let sx = Double(width) / Double(scene.canvas), sy = Double(height) / Double(scene.canvas)
        // Best injective matching item → object (or none), by (both right, attributes right, −distance).
        var best: [Int?] = Array(repeating: nil, count: items.count)
        var bestKey = (-1, -1, -Double.infinity)
        var current: [Int?] = []
        var used = Set<Int>()
        var unmatched = 0
        func search(_ i: Int) {
            if i == items.count {
                var both = 0, attributes = 0, distance = 0.0
                for (k, m) in current.enumerated() {
                    guard let m else { continue }
                    let colorOK = objects[m].color == items[k].color, classOK = objects[m].classIndex == items[k].classIndex
                    both += colorOK && classOK ? 1 : 0
                    attributes += (colorOK ? 1 : 0) + (classOK ? 1 : 0)
                    let c = items[k].boxCenter
                    distance += hypot(objects[m].component.centerX + 0.5 - c.x * sx, objects[m].component.centerY + 0.5 - c.y * sy)
                }
                let key = (both, attributes, -distance)
                if key > bestKey { bestKey = key; best = current }
                return
            }
            for m in objects.indices where !used.contains(m) {
                used.insert(m); current.append(m)
                search(i + 1)
                used.remove(m); current.removeLast()
            }
            // With fewer objects than items, any items may be the ones left without an object.
            if unmatched < items.count - objects.count {
                unmatched += 1; current.append(nil)
                search(i + 1)
                unmatched -= 1; current.removeLast()
            }
        }
        search(0)
        let checks = items.enumerated().map { k, item -> ItemCheck in
            guard let m = best[k] else { return ItemCheck(expected: item, match: nil, colorCorrect: false, classCorrect: false) }
            return ItemCheck(expected: item, match: m, colorCorrect: objects[m].color == item.color,
                             classCorrect: objects[m].classIndex == item.classIndex)
        }
        var position = objects.count == items.count
        if position && items.count == 1, let m = best[0] {
            let c = objects[m].component
            position = abs(c.centerX + 0.5 - Double(width) / 2) <= Double(width) / 4
                && abs(c.centerY + 0.5 - Double(height) / 2) <= Double(height) / 4
        } else if position {
            for i in items.indices {
                for j in items.indices where i < j {
                    guard let a = best[i].map({ objects[$0].component }), let b = best[j].map({ objects[$0].component }) else {
                        position = false
                        continue
                    }
                    // Objects must be in the items' order by at least a pixel on every axis where ranks differ.
                    let dh = items[j].position.horizontalRank - items[i].position.horizontalRank
                    if dh != 0 && (b.centerX - a.centerX) * Double(dh.signum()) < 1 { position = false }
                    let dv = items[j].position.verticalRank - items[i].position.verticalRank
                    if dv != 0 && (b.centerY - a.centerY) * Double(dv.signum()) < 1 { position = false }
                }
            }
        }
        return SceneCheck(expectedCount: items.count, detected: objects, items: checks, positionCorrect: position)
    }
}
