import Foundation

/// One connected blob of lit pixels in an RGB image.
public struct ImageComponent: Sendable {
    /// Pixel indices (y · width + x) above the threshold.
    public let pixels: [Int]
    /// Bounding box of `pixels`: x in minX...maxX, y in minY...maxY.
    public let minX: Int, maxX: Int, minY: Int, maxY: Int
    /// Intensity-weighted centroid.
    public let centerX: Double, centerY: Double
    /// Mean intensity-weighted hue in degrees (circular mean) and mean saturation in [0, 1].
    public let hue: Double
    public let saturation: Double
    /// Label of this component in `ComponentLabeling.labels` (pixels of the dilated region).
    public let label: Int
}

/// Connected components of the non-black mask of an RGB image.
///
/// A pixel is lit when its brightest channel exceeds `threshold` (0…1). Lit pixels are joined
/// when they lie within 2 pixels of each other (8-connectivity after a 3×3 dilation), so an item
/// with small holes — sandal straps — stays one component while items with a gap of 3 or more
/// pixels stay apart. Components with fewer than `minimumPixels` lit pixels are dropped as noise.
public struct ComponentLabeling: Sendable {
    public let width: Int
    public let height: Int
    /// Per pixel: the brightest channel / 255 (for the items of a scene, the item's intensity).
    public let intensity: [Float]
    /// Per pixel: the component label of the dilated region (−1 = background or dropped).
    public let labels: [Int]
    public let components: [ImageComponent]

    public static let defaultThreshold: Float = 0.1
    public static let defaultMinimumPixels = 6

    /// Labels `pixels` ([height, width, channels] bytes, channels 1, 3 or 4; alpha is ignored).
    public init(pixels: [UInt8], width: Int, height: Int, channels: Int,
                threshold: Float = ComponentLabeling.defaultThreshold, minimumPixels: Int = ComponentLabeling.defaultMinimumPixels) {
        precondition(pixels.count == width * height * channels && channels >= 1, "ComponentLabeling: size mismatch")
        let n = width * height
        let colorChannels = channels >= 3 ? 3 : 1
        var intensity = [Float](repeating: 0, count: n)
        for p in 0..<n {
            var m: UInt8 = 0
            for c in 0..<colorChannels { m = max(m, pixels[p * channels + c]) }
            intensity[p] = Float(m) / 255
        }
        let lit = intensity.map { $0 > threshold }
        // 3×3 dilation of the lit mask.
        var grown = [Bool](repeating: false, count: n)
        for y in 0..<height {
            for x in 0..<width where lit[y * width + x] {
                for yy in max(0, y - 1)...min(height - 1, y + 1) {
                    for xx in max(0, x - 1)...min(width - 1, x + 1) { grown[yy * width + xx] = true }
                }
            }
        }
        // Flood fill (8-connectivity) over the dilated mask.
        var region = [Int](repeating: -1, count: n)
        var regions = 0
        var stack: [Int] = []
        for start in 0..<n where grown[start] && region[start] < 0 {
            region[start] = regions
            stack.append(start)
            while let p = stack.popLast() {
                let x = p % width, y = p / width
                for yy in max(0, y - 1)...min(height - 1, y + 1) {
                    for xx in max(0, x - 1)...min(width - 1, x + 1) {
                        let q = yy * width + xx
                        if grown[q] && region[q] < 0 { region[q] = regions; stack.append(q) }
                    }
                }
            }
            regions += 1
        }
        var members = Array(repeating: [Int](), count: regions)
        for p in 0..<n where lit[p] { members[region[p]].append(p) }
        var kept: [ImageComponent] = []
        var relabel = [Int](repeating: -1, count: regions)
        for r in 0..<regions where members[r].count >= minimumPixels {
            relabel[r] = kept.count
            kept.append(ComponentLabeling.describe(members[r], label: kept.count, pixels: pixels, channels: channels,
                                                   colorChannels: colorChannels, intensity: intensity, width: width))
        }
        self.width = width
        self.height = height
        self.intensity = intensity
        self.labels = region.map { $0 < 0 ? -1 : relabel[$0] }
        // Regions are numbered by their first pixel in reading order, so components come top to bottom.
        self.components = kept
    }

    private static func describe(_ members: [Int], label: Int, pixels: [UInt8], channels: Int, colorChannels: Int,
                                 intensity: [Float], width: Int) -> ImageComponent {
        var minX = Int.max, maxX = Int.min, minY = Int.max, maxY = Int.min
        var weight = 0.0, sx = 0.0, sy = 0.0, hueCos = 0.0, hueSin = 0.0, saturation = 0.0
        for p in members {
            let x = p % width, y = p / width
            minX = min(minX, x); maxX = max(maxX, x); minY = min(minY, y); maxY = max(maxY, y)
            let v = Double(intensity[p])
            weight += v
            sx += v * Double(x)
            sy += v * Double(y)
            if colorChannels == 3 {
                let r = Double(pixels[p * channels]), g = Double(pixels[p * channels + 1]), b = Double(pixels[p * channels + 2])
                let mx = max(r, g, b), mn = min(r, g, b)
                let s = mx > 0 ? (mx - mn) / mx : 0
                let h = SceneColor.hue(r: r, g: g, b: b) * Double.pi / 180
                // Weight hue by value and saturation: dark and gray pixels say little about colour.
                hueCos += v * s * cos(h)
                hueSin += v * s * sin(h)
                saturation += v * s
            }
        }
        var hue = atan2(hueSin, hueCos) * 180 / Double.pi
        if hue < 0 { hue += 360 }
        return ImageComponent(pixels: members, minX: minX, maxX: maxX, minY: minY, maxY: maxY,
                              centerX: sx / max(weight, 1e-12), centerY: sy / max(weight, 1e-12),
                              hue: hue, saturation: saturation / max(weight, 1e-12), label: label)
    }

    /// The classifier input for component `k`: its intensities (pixels outside its dilated
    /// region zeroed), cropped to its bounding box, centred in a square and resized to
    /// `side × side` by `ItemCrop.normalise`.
    public func crop(_ k: Int, side: Int = 14) -> [Float] {
        let c = components[k]
        let w = c.maxX - c.minX + 1, h = c.maxY - c.minY + 1
        var box = [Float](repeating: 0, count: w * h)
        for y in 0..<h {
            for x in 0..<w {
                let p = (c.minY + y) * width + c.minX + x
                if labels[p] == k { box[y * w + x] = intensity[p] }
            }
        }
        return ItemCrop.squareResize(box, width: w, height: h, side: side)
    }
}

/// The one normalisation used both to train the classifier and to check images: crop an item
/// to the bounding box of its lit pixels, centre it in a square, resize to 14×14. Training on
/// exactly what the checker will see makes the classifier indifferent to where an item sits.
public enum ItemCrop {
    /// Normalises a single-item intensity image (`width × height`, values in [0, 1]).
    /// An image with nothing above `threshold` is returned resized as it is.
    public static func normalise(_ image: [Float], width: Int, height: Int, side: Int = 14,
                                 threshold: Float = ComponentLabeling.defaultThreshold) -> [Float] {
        var minX = Int.max, maxX = Int.min, minY = Int.max, maxY = Int.min
        for y in 0..<height {
            for x in 0..<width where image[y * width + x] > threshold {
                minX = min(minX, x); maxX = max(maxX, x); minY = min(minY, y); maxY = max(maxY, y)
            }
        }
        guard minX <= maxX else { return squareResize(image, width: width, height: height, side: side) }
        let w = maxX - minX + 1, h = maxY - minY + 1
        var box = [Float](repeating: 0, count: w * h)
        for y in 0..<h {
            for x in 0..<w { box[y * w + x] = image[(minY + y) * width + minX + x] }
        }
        return squareResize(box, width: w, height: h, side: side)
    }

    /// Pads `image` with zeros to a centred square, then resamples it to `side × side` by box
    /// filtering: each output pixel is the area-weighted mean of the input pixels it covers.
    public static func squareResize(_ image: [Float], width: Int, height: Int, side: Int) -> [Float] {
        let n = max(width, height)
        var square = [Float](repeating: 0, count: n * n)
        let ox = (n - width) / 2, oy = (n - height) / 2
        for y in 0..<height {
            for x in 0..<width { square[(oy + y) * n + ox + x] = image[y * width + x] }
        }
        if n == side { return square }
        // Separable area resampling: out[i] = Σ_k in[k] · |[k, k+1) ∩ [i·r, (i+1)·r)| / r, r = n / side.
        let weights = areaWeights(from: n, to: side)
        var rows = [Float](repeating: 0, count: side * n)      // resized vertically: [side, n]
        for (i, taps) in weights.enumerated() {
            for (k, w) in taps {
                for x in 0..<n { rows[i * n + x] += w * square[k * n + x] }
            }
        }
        var out = [Float](repeating: 0, count: side * side)
        for y in 0..<side {
            for (j, taps) in weights.enumerated() {
                var s: Float = 0
                for (k, w) in taps { s += w * rows[y * n + k] }
                out[y * side + j] = s
            }
        }
        return out
    }

    /// For each output cell, the input cells it overlaps and their normalised overlap.
    static func areaWeights(from n: Int, to m: Int) -> [[(Int, Float)]] {
        let r = Double(n) / Double(m)
        return (0..<m).map { i in
            let lo = Double(i) * r, hi = Double(i + 1) * r
            var taps: [(Int, Float)] = []
            var k = Int(lo.rounded(.down))
            while Double(k) < hi && k < n {
                let overlap = min(hi, Double(k + 1)) - max(lo, Double(k))
                if overlap > 1e-9 { taps.append((k, Float(overlap / r))) }
                k += 1
            }
            return taps
        }
    }
}
