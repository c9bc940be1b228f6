import Foundation
import Tensor

/// The item images scenes are made of: square grayscale intensity images in [0, 1] per class.
public struct SceneItemSource: Sendable {
    /// Side of every item image.
    public let side: Int
    /// For each class 0…9, the source indices available (empty when the class has none).
    public let indicesByClass: [[Int]]
    private let lookup: @Sendable (Int) -> [Float]

    /// Items from a Fashion-MNIST split, each image reduced by 2×2 averaging (28×28 → 14×14).
    public init(dataset: FashionMNIST, factor: Int = 2) {
        side = dataset.rows / factor
        indicesByClass = dataset.indicesByClass()
        lookup = { dataset.downsampled($0, factor: factor) }
    }

    /// Items from memory: `images[k]` has class `labels[k]` and `side × side` intensities.
    public init(side: Int, images: [[Float]], labels: [Int]) {
        precondition(images.count == labels.count && images.allSatisfy { $0.count == side * side }, "SceneItemSource: sizes do not match")
        self.side = side
        var byClass = Array(repeating: [Int](), count: 10)
        for (k, label) in labels.enumerated() where (0..<10).contains(label) { byClass[label].append(k) }
        indicesByClass = byClass
        lookup = { images[$0] }
    }

    /// The intensities of source image `index`.
    public func image(_ index: Int) -> [Float] { lookup(index) }
}

/// Places items on the canvas and draws scenes.
public enum SceneRenderer {
    /// Layouts with `count` items that fit a `canvas`-sized square.
    public static func layouts(count: Int, canvas: Int, item: Int, gap: Int) -> [SceneLayout] {
        SceneLayout.allCases.filter { $0.itemCount == count && $0.minimumCanvas(item: item, gap: gap) <= canvas }
    }

    /// Top-left corners for the items of `layout`, with random gaps of at least `gap` pixels
    /// between boxes and a small random offset across the layout's axis.
    public static func place(_ layout: SceneLayout, canvas: Int, item s: Int, gap g: Int,
                             using rng: inout SeededGenerator) -> [(x: Int, y: Int)] {
        let spare = canvas - s
        // How far an item may wander across the layout's axis: a few pixels, more on big canvases.
        let jitter = min(spare / 2, max(2, canvas / 10))
        func across() -> Int { spare / 2 + rng.between(-jitter, jitter) }
        /// Starts of `n` boxes along an axis with gaps ≥ g.
        func along(_ n: Int) -> [Int] {
            let free = canvas - n * s
            var gaps: [Int] = []
            var left = free - (n - 1) * g
            for _ in 0..<(n - 1) {
                let extra = rng.between(0, left / 2)
                gaps.append(g + extra)
                left -= extra
            }
            var start = rng.between(0, left)
            var result = [start]
            for k in 0..<(n - 1) {
                start += s + gaps[k]
                result.append(start)
            }
            return result
        }
        switch layout {
        case .single:
            let j = min(2, spare / 2)
            return [(spare / 2 + rng.between(-j, j), spare / 2 + rng.between(-j, j))]
        case .horizontal, .row:
            return along(layout.itemCount).map { (x: $0, y: across()) }
        case .vertical, .column:
            return along(layout.itemCount).map { (x: across(), y: $0) }
        case .triangleUp, .triangleDown:
            let xs = along(2), ys = along(2)
            let middle = (xs[0] + xs[1]) / 2
            if layout == .triangleUp {
                return [(middle, ys[0]), (xs[0], ys[1]), (xs[1], ys[1])]
            }
            return [(xs[0], ys[0]), (xs[1], ys[0]), (middle, ys[1])]
        }
    }

    /// Draws `scene` as RGB bytes [canvas, canvas, 3]: black, with each item's intensity v
    /// tinting its colour: pixel = round(colour · v). `images[k]` holds item k's intensities.
    public static func render(_ scene: SceneSpec, images: [[Float]]) -> [UInt8] {
        precondition(images.count == scene.items.count, "render: \(images.count) images for \(scene.items.count) items")
        let n = scene.canvas
        var pixels = [UInt8](repeating: 0, count: n * n * 3)
        for (item, image) in zip(scene.items, images) {
            precondition(image.count == item.size * item.size, "render: item image has \(image.count) values for size \(item.size)")
            let (r, g, b) = item.color.rgb
            for i in 0..<item.size {
                let y = item.y + i
                guard y >= 0 && y < n else { continue }
                for j in 0..<item.size {
                    let x = item.x + j
                    guard x >= 0 && x < n else { continue }
                    let v = min(max(image[i * item.size + j], 0), 1)
                    guard v > 0 else { continue }
                    let o = (y * n + x) * 3
                    pixels[o] = UInt8((Float(r) * v).rounded())
                    pixels[o + 1] = UInt8((Float(g) * v).rounded())
                    pixels[o + 2] = UInt8((Float(b) * v).rounded())
                }
            }
        }
        return pixels
    }
}
