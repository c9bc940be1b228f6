import Foundation
import XCTest
import Data

final class FashionMNISTTests: XCTestCase {
    func testGzipFixtureReads() throws {
        let folder = TestSupport.fixtures.appendingPathComponent("idx")
        let data = try FashionMNIST(imagesURL: folder.appendingPathComponent("tiny-images-idx3-ubyte.gz"),
                                    labelsURL: folder.appendingPathComponent("tiny-labels-idx1-ubyte.gz"))
        XCTAssertEqual(data.count, 3)
        XCTAssertEqual([data.rows, data.columns], [28, 28])
        XCTAssertEqual(data.labels, [9, 0, 3])
        for k in 0..<3 {
            let image = Array(data.image(k))
            for (r, c) in [(0, 0), (5, 7), (27, 27)] {
                XCTAssertEqual(Int(image[r * 28 + c]), (k * 50 + r * 28 + c) % 256)
            }
        }
        // 2×2 block means, scaled to [0, 1].
        let small = data.downsampled(1)
        XCTAssertEqual(small.count, 196)
        let corner: [Int] = [50, 51, 50 + 28, 50 + 29]
        let expected = Float(corner.reduce(0, +)) / (4 * 255)
        XCTAssertEqual(small[0], expected, accuracy: 1e-6)
        XCTAssertEqual(data.indicesByClass()[9], [0])
    }

    func testRealTestSplit() throws {
        let data = try TestSupport.fashionMNIST(.test)
        XCTAssertEqual(data.count, 10_000)
        XCTAssertEqual([data.rows, data.columns], [28, 28])
        XCTAssertEqual(data.indicesByClass().map(\.count), Array(repeating: 1000, count: 10))
        XCTAssertEqual(data.labels.prefix(5).map(Int.init), [9, 2, 1, 1, 6])
    }

    // MARK: Bad files, crafted uncompressed (the reader accepts raw IDX too).

    private func write(_ bytes: [UInt8], _ name: String, in folder: URL) throws -> URL {
        let url = folder.appendingPathComponent(name)
        try Foundation.Data(bytes).write(to: url)
        return url
    }

    private func header(_ magic: [UInt8], _ sizes: [Int]) -> [UInt8] {
        magic + sizes.flatMap { s in [UInt8(s >> 24 & 255), UInt8(s >> 16 & 255), UInt8(s >> 8 & 255), UInt8(s & 255)] }
    }

    private func expectError(_ images: [UInt8], _ labels: [UInt8], names: String, mentions: String,
                             file: StaticString = #filePath, line: UInt = #line) throws {
        let folder = try TestSupport.temporaryFolder(self)
        let i = try write(images, "images-idx3-ubyte", in: folder)
        let l = try write(labels, "labels-idx1-ubyte", in: folder)
        XCTAssertThrowsError(try FashionMNIST(imagesURL: i, labelsURL: l), file: file, line: line) { error in
            guard let e = error as? DatasetFileError else { return XCTFail("\(error)", file: file, line: line) }
            XCTAssertTrue(e.file.hasSuffix(names), "\(e.file) should be \(names)", file: file, line: line)
            XCTAssertTrue(e.reason.contains(mentions), e.reason, file: file, line: line)
        }
    }

    private var goodImages: [UInt8] { header([0, 0, 8, 3], [2, 2, 2]) + [UInt8](repeating: 7, count: 8) }
    private var goodLabels: [UInt8] { header([0, 0, 8, 1], [2]) + [1, 2] }

    func testCraftedGoodFilesRead() throws {
        let folder = try TestSupport.temporaryFolder(self)
        let data = try FashionMNIST(imagesURL: try write(goodImages, "i", in: folder), labelsURL: try write(goodLabels, "l", in: folder))
        XCTAssertEqual(data.count, 2)
        XCTAssertEqual(data.labels, [1, 2])
    }

    func testBadMagic() throws {
        try expectError([0x12, 0x34, 8, 3] + Array(goodImages.dropFirst(4)), goodLabels, names: "images-idx3-ubyte", mentions: "bad IDX magic 12 34")
    }

    func testElementTypeOtherThanBytes() throws {
        try expectError([0, 0, 0x0D, 3] + Array(goodImages.dropFirst(4)), goodLabels, names: "images-idx3-ubyte", mentions: "not unsigned byte")
    }

    func testWrongNumberOfDimensions() throws {
        try expectError(goodImages, header([0, 0, 8, 2], [2, 1]) + [1, 2], names: "labels-idx1-ubyte", mentions: "2 dimensions, expected 1")
    }

    func testTruncatedHeader() throws {
        try expectError([0, 0, 8, 3, 0, 0], goodLabels, names: "images-idx3-ubyte", mentions: "truncated IDX header")
        try expectError([0, 0], goodLabels, names: "images-idx3-ubyte", mentions: "too short")
    }

    func testDataShorterThanTheHeaderSays() throws {
        try expectError(Array(goodImages.dropLast()), goodLabels, names: "images-idx3-ubyte", mentions: "need 8 data bytes")
        try expectError(goodImages + [0], goodLabels, names: "images-idx3-ubyte", mentions: "file has 9")
    }

    func testAbsurdSizesAreRefusedBeforeAllocating() throws {
        try expectError(header([0, 0, 8, 3], [0x7FFF_FFFF, 0x7FFF_FFFF, 28]), goodLabels, names: "images-idx3-ubyte", mentions: "exceed")
    }

    func testImageAndLabelCountsDiffer() throws {
        try expectError(goodImages, header([0, 0, 8, 1], [3]) + [1, 2, 3], names: "labels-idx1-ubyte", mentions: "3 labels for 2 images")
    }

    func testLabelOutOfRange() throws {
        try expectError(goodImages, header([0, 0, 8, 1], [2]) + [1, 12], names: "labels-idx1-ubyte", mentions: "label 12 at index 1")
    }

    func testCorruptGzip() throws {
        try expectError([0x1F, 0x8B, 8, 0, 1, 2, 3, 4, 5, 6], goodLabels, names: "images-idx3-ubyte", mentions: "gzip could not decompress")
    }

    func testMissingFiles() throws {
        let folder = try TestSupport.temporaryFolder(self)
        XCTAssertThrowsError(try FashionMNIST(split: .train, directory: folder)) { error in
            XCTAssertTrue("\(error)".contains("train-images-idx3-ubyte.gz: file not found"), "\(error)")
        }
        XCTAssertFalse(FashionMNIST.isAvailable(.test, in: folder))
    }
}
