import Foundation
import Tensor

/// A problem with scene settings or a scene description, naming the field.
public struct SceneError: Error, CustomStringConvertible, Equatable, Sendable {
    public let field: String
    public let reason: String
    public init(field: String, reason: String) {
        self.field = field
        self.reason = reason
    }
    public var description: String { "\(field): \(reason)" }
}

/// The five item colours. An item is drawn as colour × its grayscale intensity on black, so
/// every lit pixel has the colour's hue; each colour has a channel at 255, so the brightest
/// channel of a pixel is the item's intensity.
public enum SceneColor: String, CaseIterable, Codable, Sendable {
    case red, yellow, green, blue, purple

    /// The fully lit colour.
    public var rgb: (UInt8, UInt8, UInt8) {
        switch self {
        case .red: return (255, 0, 0)
        case .yellow: return (255, 220, 0)
        case .green: return (0, 255, 0)
        case .blue: return (0, 64, 255)
        case .purple: return (170, 0, 255)
        }
    }

    /// Hue of `rgb` in degrees [0, 360).
    public var hue: Double { SceneColor.hue(r: Double(rgb.0), g: Double(rgb.1), b: Double(rgb.2)) }

    /// The HSV hue in degrees [0, 360) of an RGB triple (0 for grays).
    public static func hue(r: Double, g: Double, b: Double) -> Double {
        let mx = max(r, g, b), mn = min(r, g, b), d = mx - mn
        guard d > 0 else { return 0 }
        var h: Double
        if mx == r { h = (g - b) / d } else if mx == g { h = (b - r) / d + 2 } else { h = (r - g) / d + 4 }
        h *= 60
        return h < 0 ? h + 360 : h
    }

    /// The colour whose hue is nearest `hue` on the colour circle.
    public static func nearest(toHue hue: Double) -> SceneColor {
        allCases.min { circularDistance($0.hue, hue) < circularDistance($1.hue, hue) }!
    }

    static func circularDistance(_ a: Double, _ b: Double) -> Double {
        let d = abs(a - b).truncatingRemainder(dividingBy: 360)
        return min(d, 360 - d)
    }
}

/// Where an item sits, as a prompt would say it. Each position has a horizontal rank
/// (left 0, centre 1, right 2) and a vertical rank (top 0, middle 1, bottom 2); two items whose
/// ranks differ on an axis must appear in that order along it.
public enum ScenePosition: String, CaseIterable, Codable, Sendable {
    case center, left, right, top, bottom, middle
    case topLeft = "top left", topRight = "top right", bottomLeft = "bottom left", bottomRight = "bottom right"

    public var horizontalRank: Int {
        switch self {
        case .left, .topLeft, .bottomLeft: return 0
        case .right, .topRight, .bottomRight: return 2
        default: return 1
        }
    }

    public var verticalRank: Int {
        switch self {
        case .top, .topLeft, .topRight: return 0
        case .bottom, .bottomLeft, .bottomRight: return 2
        default: return 1
        }
    }

    /// The prepositional phrase: "on the left", "at the top left", "in the center".
    public var phrase: String {
        switch self {
        case .left, .right: return "on the \(rawValue)"
        case .center, .middle: return "in the \(rawValue)"
        default: return "at the \(rawValue)"
        }
    }
}

/// How the items are arranged; each layout fixes the positions of its items in order.
public enum SceneLayout: String, CaseIterable, Codable, Sendable {
    case single, horizontal, vertical, row, column, triangleUp = "triangle_up", triangleDown = "triangle_down"

    /// The positions of the items, in item order.
    public var positions: [ScenePosition] {
        switch self {
        case .single: return [.center]
        case .horizontal: return [.left, .right]
        case .vertical: return [.top, .bottom]
        case .row: return [.left, .middle, .right]
        case .column: return [.top, .middle, .bottom]
        case .triangleUp: return [.top, .bottomLeft, .bottomRight]
        case .triangleDown: return [.topLeft, .topRight, .bottom]
        }
    }

    public var itemCount: Int { positions.count }

    /// The smallest square canvas that holds this layout with items of side `item` and gaps of `gap`.
    public func minimumCanvas(item: Int, gap: Int) -> Int {
        switch self {
        case .single: return item
        case .horizontal, .vertical, .triangleUp, .triangleDown: return 2 * item + gap
        case .row, .column: return 3 * item + 2 * gap
        }
    }
}

/// One item of a scene: a Fashion-MNIST image of `classIndex`, tinted `color`, with its
/// `size × size` box's top-left corner at (`x`, `y`).
public struct SceneItem: Equatable, Sendable {
    public var classIndex: Int
    public var color: SceneColor
    public var position: ScenePosition
    public var x: Int
    public var y: Int
    public var size: Int
    /// Index of the source image in its Fashion-MNIST split (−1 when synthetic).
    public var source: Int

    public init(classIndex: Int, color: SceneColor, position: ScenePosition, x: Int, y: Int, size: Int, source: Int) {
        self.classIndex = classIndex
        self.color = color
        self.position = position
        self.x = x
        self.y = y
        self.size = size
        self.source = source
    }

    /// Centre of the item's box in pixels.
    public var boxCenter: (x: Double, y: Double) { (Double(x) + Double(size) / 2, Double(y) + Double(size) / 2) }
}

/// Everything a scene shows: what the checker scores a generated image against.
///
/// Stored in each manifest line under `scene` as
/// `{"canvas":32,"layout":"horizontal","items":[{"class":7,"class_name":"sneaker","color":"red","position":"left","x":1,"y":9,"size":14,"source":123},…]}`.
public struct SceneSpec: Equatable, Sendable {
    public var canvas: Int
    public var layout: SceneLayout
    public var items: [SceneItem]

    public init(canvas: Int, layout: SceneLayout, items: [SceneItem]) {
        self.canvas = canvas
        self.layout = layout
        self.items = items
    }

    public var count: Int { items.count }

    /// True when every item has the same class and colour.
    public var itemsIdentical: Bool {
        guard let first = items.first else { return true }
        return items.allSatisfy { $0.classIndex == first.classIndex && $0.color == first.color }
    }

    /// The JSON stored in the manifest.
    public var json: JSONValue {
        .object([
            "canvas": .int(canvas),
            "layout": .string(layout.rawValue),
            "items": .array(items.map { item in
                .object(["class": .int(item.classIndex),
                         "class_name": .string(SceneVocabulary.className(item.classIndex)),
                         "color": .string(item.color.rawValue),
                         "position": .string(item.position.rawValue),
                         "x": .int(item.x), "y": .int(item.y), "size": .int(item.size),
                         "source": .int(item.source)])
            }),
        ])
    }

    /// Reads the JSON written by `json`.
    /// - Throws: `SceneError` naming the missing or malformed field (e.g. `scene.items[1].color`).
    public init(json: JSONValue) throws {
        guard let object = json.objectValue else { throw SceneError(field: "scene", reason: "expected an object, got \(json.kindName)") }
        func int(_ o: [String: JSONValue], _ key: String, _ path: String) throws -> Int {
            guard let v = o[key] else { throw SceneError(field: "\(path).\(key)", reason: "missing") }
            guard let i = v.intValue else { throw SceneError(field: "\(path).\(key)", reason: "expected an integer, got \(v.kindName)") }
            return i
        }
        func string(_ o: [String: JSONValue], _ key: String, _ path: String) throws -> String {
            guard let v = o[key] else { throw SceneError(field: "\(path).\(key)", reason: "missing") }
            guard let s = v.stringValue else { throw SceneError(field: "\(path).\(key)", reason: "expected a string, got \(v.kindName)") }
            return s
        }
        let canvas = try int(object, "canvas", "scene")
        guard (1...4096).contains(canvas) else { throw SceneError(field: "scene.canvas", reason: "\(canvas) is not a canvas size") }
        let layoutName = try string(object, "layout", "scene")
        guard let layout = SceneLayout(rawValue: layoutName) else {
            throw SceneError(field: "scene.layout", reason: "unknown layout '\(layoutName)' (known: \(SceneLayout.allCases.map(\.rawValue).joined(separator: ", ")))")
        }
        guard let itemValues = object["items"]?.arrayValue else { throw SceneError(field: "scene.items", reason: "missing or not an array") }
        guard itemValues.count == layout.itemCount else {
            throw SceneError(field: "scene.items", reason: "layout \(layout.rawValue) needs \(layout.itemCount) items, found \(itemValues.count)")
        }
        var items: [SceneItem] = []
        for (i, value) in itemValues.enumerated() {
            let path = "scene.items[\(i)]"
            guard let o = value.objectValue else { throw SceneError(field: path, reason: "expected an object, got \(value.kindName)") }
            let cls = try int(o, "class", path)
            guard (0..<10).contains(cls) else { throw SceneError(field: "\(path).class", reason: "\(cls) is outside 0…9") }
            let colorName = try string(o, "color", path)
            guard let color = SceneColor(rawValue: colorName) else {
                throw SceneError(field: "\(path).color", reason: "unknown colour '\(colorName)' (known: \(SceneColor.allCases.map(\.rawValue).joined(separator: ", ")))")
            }
            let positionName = try string(o, "position", path)
            guard let position = ScenePosition(rawValue: positionName) else {
                throw SceneError(field: "\(path).position", reason: "unknown position '\(positionName)'")
            }
            let size = try int(o, "size", path)
            let x = try int(o, "x", path), y = try int(o, "y", path)
            guard size > 0, x >= 0, y >= 0, x + size <= canvas, y + size <= canvas else {
                throw SceneError(field: path, reason: "box at (\(x), \(y)) of size \(size) does not fit the \(canvas)×\(canvas) canvas")
            }
            items.append(SceneItem(classIndex: cls, color: color, position: position, x: x, y: y, size: size,
                                   source: o["source"]?.intValue ?? -1))
        }
        self.init(canvas: canvas, layout: layout, items: items)
    }
}

/// Deterministic random choices that do not depend on the standard library's algorithms
/// (which may change between Swift versions), so a seed gives the same dataset everywhere.
extension SeededGenerator {
    /// Uniform integer in 0..<n (n ≥ 1), by multiply-shift (bias below 2⁻³²·n).
    mutating func below(_ n: Int) -> Int {
        precondition(n >= 1, "below(\(n))")
        return Int((UInt64(truncatingIfNeeded: next() >> 32) &* UInt64(n)) >> 32)
    }

    /// Uniform integer in lo...hi.
    mutating func between(_ lo: Int, _ hi: Int) -> Int {
        precondition(hi >= lo, "between(\(lo), \(hi))")
        return lo + below(hi - lo + 1)
    }

    /// A uniformly chosen element.
    mutating func pick<T>(_ items: [T]) -> T { items[below(items.count)] }

    /// True with probability p.
    mutating func chance(_ p: Double) -> Bool { Double(next() >> 11) * (1.0 / 9_007_199_254_740_992.0) < p }
}
