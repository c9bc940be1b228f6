import Foundation
import Tensor
import XCTest

final class PNGTests: XCTestCase {
    private let width = 5, height = 4

    /// The fixture formula: channel c of pixel (x, y).
    private func pixel(_ x: Int, _ y: Int, _ c: Int) -> UInt8 { UInt8((x * 37 + y * 11 + c * 71) % 256) }

    private func expectedPixels(channels: Int) -> [UInt8] {
        var out: [UInt8] = []
        for y in 0..<height { for x in 0..<width { for c in 0..<channels { out.append(pixel(x, y, c)) } } }
        return out
    }

    // MARK: Reading files written by Pillow

    func testReadsEightBitLayouts() throws {
        for (name, channels) in [("png_gray.png", 1), ("png_gray_alpha.png", 2), ("png_rgb.png", 3), ("png_rgba.png", 4)] {
            let image = try PNGImage(contentsOf: formatFixture(name))
            XCTAssertEqual(image.width, width, name)
            XCTAssertEqual(image.height, height, name)
            XCTAssertEqual(image.channels, channels, name)
            XCTAssertEqual(image.pixels, expectedPixels(channels: channels), name)
        }
    }

    func testReadsSixteenBitAsEightBit() throws {
        let image = try PNGImage(contentsOf: formatFixture("png_gray16.png"))
        XCTAssertEqual(image.channels, 1)
        XCTAssertEqual(image.pixels, expectedPixels(channels: 1))
    }

    func testExpandsPaletteWithTransparency() throws {
        let image = try PNGImage(contentsOf: formatFixture("png_palette.png"))
        XCTAssertEqual(image.channels, 4)
        var expected: [UInt8] = []
        for y in 0..<height {
            for x in 0..<width {
                let k = (x + y * width) % 16
                expected += [UInt8(16 * k), UInt8(255 - 16 * k), UInt8((40 * k) % 256), UInt8(17 * k)]
            }
        }
        XCTAssertEqual(image.pixels, expected)
    }

    // MARK: Writing

    func testRoundTripsEveryChannelCount() throws {
        let dir = formatScratchDirectory(self)
        var state: UInt32 = 12345
        for channels in 1...4 {
            let (w, h) = (13, 7)
            let pixels = (0..<(w * h * channels)).map { _ -> UInt8 in
                state = state &* 1_664_525 &+ 1_013_904_223
                return UInt8(state >> 24)
            }
            let image = try PNGImage(width: w, height: h, channels: channels, pixels: pixels)
            let url = dir.appendingPathComponent("c\(channels).png")
            try image.write(to: url)
            XCTAssertEqual(try PNGImage(contentsOf: url), image, "channels \(channels)")
            XCTAssertEqual(try PNGImage(pngData: image.pngData()), image)
        }
        let names = try FileManager.default.contentsOfDirectory(atPath: dir.path).sorted()
        XCTAssertEqual(names, ["c1.png", "c2.png", "c3.png", "c4.png"], "no temporary files are left")
    }

    func testTensorConversion() throws {
        // [C, H, W] = [3, 1, 2]; values clamp to [0, 1] and round to the nearest byte; NaN → 0.
        let t = Tensor(shape: [3, 1, 2], data: [0, 1, 0.5, -3, 2, .nan])
        let image = try PNGImage(tensor: t)
        XCTAssertEqual(image.width, 2)
        XCTAssertEqual(image.height, 1)
        XCTAssertEqual(image.channels, 3)
        XCTAssertEqual(image.pixels, [0, 128, 255, 255, 0, 0])
        let back = image.toTensor()
        XCTAssertEqual(back.shape, [3, 1, 2])
        XCTAssertEqual(back.scalars, [0, 1, 128.0 / 255, 0, 1, 0])

        let gray = try PNGImage(tensor: Tensor(shape: [2, 2], data: [0, 0.25, 0.75, 1]))
        XCTAssertEqual(gray.channels, 1)
        XCTAssertEqual(gray.pixels, [0, 64, 191, 255])
        let batched = try PNGImage(tensor: Tensor(zeros: [1, 4, 3, 3]))
        XCTAssertEqual(batched.channels, 4)

        for shape in [[5, 2, 2], [2], [2, 0, 3], [2, 1, 2, 2]] {
            assertFormatError(nil, { try PNGImage(tensor: Tensor(zeros: shape)) }) {
                if case .image = $0 { return true } else { return false }
            }
        }
    }

    // MARK: Bad input

    func testRejectsBadPixelsAndFiles() throws {
        assertFormatError(nil, { try PNGImage(width: 2, height: 2, channels: 3, pixels: [0, 1, 2]) }) {
            if case .image = $0 { return true } else { return false }
        }
        assertFormatError(nil, { try PNGImage(width: 2, height: 2, channels: 5, pixels: []) }) {
            if case .image = $0 { return true } else { return false }
        }
        let dir = formatScratchDirectory(self)
        let good = [UInt8](try Data(contentsOf: formatFixture("png_rgb.png")))

        let notPNG = dir.appendingPathComponent("not-a.png")
        try Data("GIF89a, certainly not a PNG".utf8).write(to: notPNG)
        let truncated = dir.appendingPathComponent("truncated.png")
        try Data(good[0..<(good.count / 2)]).write(to: truncated)
        let empty = dir.appendingPathComponent("empty.png")
        try Data().write(to: empty)
        var flipped = good
        flipped[good.count / 2] ^= 0xFF  // breaks the IDAT checksum or its zlib stream
        let corrupt = dir.appendingPathComponent("corrupt.png")
        try Data(flipped).write(to: corrupt)
        for url in [notPNG, truncated, empty, corrupt] {
            assertFormatError(url, { try PNGImage(contentsOf: url) }) {
                if case .image = $0 { return true } else { return false }
            }
        }
        let missing = dir.appendingPathComponent("missing.png")
        assertFormatError(missing, { try PNGImage(contentsOf: missing) }) {
            if case .unreadable = $0 { return true } else { return false }
        }
        let image = try PNGImage(width: 1, height: 1, channels: 1, pixels: [7])
        let nowhere = dir.appendingPathComponent("no/such/dir/out.png")
        assertFormatError(nowhere, { try image.write(to: nowhere) }) {
            if case .writeFailed = $0 { return true } else { return false }
        }
    }
}
