import Foundation

/// A line chart rasterised to an RGB buffer: loss curves and accuracy curves as PNG, without
/// any plotting library. The y axis can be logarithmic (losses span decades).
public struct LineChart {
    public struct Series {
        public var label: String
        public var points: [(x: Double, y: Double)]
        public var color: (UInt8, UInt8, UInt8)
        public init(label: String, points: [(x: Double, y: Double)], color: (UInt8, UInt8, UInt8)) {
            self.label = label
            self.points = points
            self.color = color
        }
    }

    public var title: String
    public var series: [Series] = []
    public var logY: Bool
    public var width: Int
    public var height: Int

    public static let palette: [(UInt8, UInt8, UInt8)] = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189)]

    public init(title: String, logY: Bool = false, width: Int = 640, height: Int = 400) {
        self.title = title
        self.logY = logY
        self.width = width
        self.height = height
    }

    /// Adds a series; its colour comes from the palette in order.
    public mutating func add(_ label: String, _ ys: [Double], xs: [Double]? = nil) {
        let x = xs ?? ys.indices.map(Double.init)
        series.append(Series(label: label, points: Array(zip(x, ys)).map { (x: $0.0, y: $0.1) },
                             color: LineChart.palette[series.count % LineChart.palette.count]))
    }

    /// Renders to row-major RGB bytes [height, width, 3].
    public func render() -> [UInt8] {
        var canvas = RGBCanvas(width: width, height: height)
        let left = 70, right = width - 20, top = 30, bottom = height - 40
        let finite = series.flatMap(\.points).filter { $0.x.isFinite && $0.y.isFinite && (!logY || $0.y > 0) }
        canvas.text(title, x: left, y: 10, color: (0, 0, 0))
        guard let x0 = finite.map(\.x).min(), let x1 = finite.map(\.x).max(),
              var y0 = finite.map(\.y).min(), var y1 = finite.map(\.y).max() else {
            canvas.text("NO DATA", x: left + 10, y: top + 20, color: (120, 120, 120))
            return canvas.pixels
        }
        func ty(_ y: Double) -> Double { logY ? log10(y) : y }
        y0 = ty(y0); y1 = ty(y1)
        if y1 - y0 < 1e-12 { y0 -= 0.5; y1 += 0.5 }
        let pad = (y1 - y0) * 0.05
        y0 -= pad; y1 += pad
        let xSpan = Swift.max(x1 - x0, 1e-12)
        func px(_ x: Double) -> Int { left + Int(((x - x0) / xSpan) * Double(right - left)) }
        func py(_ y: Double) -> Int { bottom - Int(((ty(y) - y0) / (y1 - y0)) * Double(bottom - top)) }

        // Axes, gridlines and tick labels.
        for i in 0...4 {
            let fy = y0 + (y1 - y0) * Double(i) / 4
            let yPix = bottom - Int(Double(bottom - top) * Double(i) / 4)
            canvas.line(left, yPix, right, yPix, color: (225, 225, 225))
            let value = logY ? Foundation.pow(10, fy) : fy
            canvas.text(LineChart.label(value), x: 4, y: yPix - 3, color: (60, 60, 60))
            let fx = x0 + xSpan * Double(i) / 4
            let xPix = left + Int(Double(right - left) * Double(i) / 4)
            canvas.text(LineChart.label(fx), x: xPix - 10, y: bottom + 8, color: (60, 60, 60))
        }
        canvas.line(left, top, left, bottom, color: (0, 0, 0))
        canvas.line(left, bottom, right, bottom, color: (0, 0, 0))

        for (k, s) in series.enumerated() {
            let pts = s.points.filter { $0.x.isFinite && $0.y.isFinite && (!logY || $0.y > 0) }
            for (a, b) in zip(pts, pts.dropFirst()) {
                canvas.line(px(a.x), py(a.y), px(b.x), py(b.y), color: s.color)
            }
            if pts.count == 1 { canvas.line(px(pts[0].x), py(pts[0].y), px(pts[0].x) + 1, py(pts[0].y), color: s.color) }
            // Legend, top right.
            let ly = top + 4 + k * 12
            canvas.line(right - 120, ly + 3, right - 105, ly + 3, color: s.color)
            canvas.text(s.label, x: right - 100, y: ly, color: (0, 0, 0))
        }
        return canvas.pixels
    }

    static func label(_ v: Double) -> String {
        let a = Swift.abs(v)
        if a == 0 { return "0" }
        if a >= 1e5 || a < 1e-3 { return String(format: "%.1e", v) }
        if a >= 100 { return String(format: "%.0f", v) }
        if a >= 1 { return String(format: "%.2f", v) }
        return String(format: "%.3f", v)
    }
}

/// An RGB pixel buffer with line and text drawing.
struct RGBCanvas {
    let width: Int, height: Int
    var pixels: [UInt8]

    init(width: Int, height: Int) {
        self.width = width
        self.height = height
        pixels = [UInt8](repeating: 255, count: width * height * 3)
    }

    mutating func set(_ x: Int, _ y: Int, _ c: (UInt8, UInt8, UInt8)) {
        guard x >= 0, y >= 0, x < width, y < height else { return }
        let i = (y * width + x) * 3
        pixels[i] = c.0; pixels[i + 1] = c.1; pixels[i + 2] = c.2
    }

    /// Bresenham's line.
    mutating func line(_ x0: Int, _ y0: Int, _ x1: Int, _ y1: Int, color: (UInt8, UInt8, UInt8)) {
        var x = x0, y = y0
        let dx = Swift.abs(x1 - x0), dy = -Swift.abs(y1 - y0)
        let sx = x0 < x1 ? 1 : -1, sy = y0 < y1 ? 1 : -1
        var err = dx + dy
        while true {
            set(x, y, color)
            if x == x1 && y == y1 { break }
            let e2 = 2 * err
            if e2 >= dy { err += dy; x += sx }
            if e2 <= dx { err += dx; y += sy }
        }
    }

    mutating func text(_ s: String, x: Int, y: Int, color: (UInt8, UInt8, UInt8)) {
        var cx = x
        for ch in s {
            let rows = BitmapFont.rows(for: ch)
            for (r, bits) in rows.enumerated() {
                for c in 0..<BitmapFont.width where bits & (0x10 >> UInt8(c)) != 0 { set(cx + c, y + r, color) }
            }
            cx += BitmapFont.width + 1
        }
    }
}
