import Foundation
import XCTest
import Tensor
import Data

/// Shared helpers for the Data tests.
enum TestSupport {
    /// The copied Fixtures folder of this test target.
    static var fixtures: URL {
        Bundle.module.resourceURL!.appendingPathComponent("Fixtures")
    }

    /// The repository's committed checker weights.
    static var checkerWeights: URL {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("models/checker/fashion_classifier.safetensors")
    }

    /// A fresh empty folder, removed when the test ends.
    static func temporaryFolder(_ test: XCTestCase) throws -> URL {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("sura-data-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        test.addTeardownBlock { try? FileManager.default.removeItem(at: url) }
        return url
    }

    /// A one-pixel PNG.
    static func writePNG(_ url: URL) throws {
        try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
        try PNGImage(width: 1, height: 1, channels: 3, pixels: [10, 20, 30]).write(to: url)
    }

    /// Ten classes of synthetic 14×14 items, four images each: class k is a filled rectangle
    /// whose size and position depend on k, with a little variation per image.
    static func syntheticSource() -> SceneItemSource {
        var images: [[Float]] = [], labels: [Int] = []
        for k in 0..<10 {
            for v in 0..<4 {
                var image = [Float](repeating: 0, count: 196)
                let w = 4 + k, h = 13 - k / 2
                for y in 0..<h {
                    for x in 0..<w { image[(y + (14 - h) / 2) * 14 + x + (14 - w) / 2] = 0.5 + 0.1 * Float(v) }
                }
                images.append(image)
                labels.append(k)
            }
        }
        return SceneItemSource(side: 14, images: images, labels: labels)
    }

    /// Fashion-MNIST from the Debian location, or a skip when it is not installed.
    static func fashionMNIST(_ split: FashionMNIST.Split) throws -> FashionMNIST {
        guard FashionMNIST.isAvailable(split) else {
            throw XCTSkip("Fashion-MNIST is not installed in \(FashionMNIST.defaultDirectory.path) (apt-get install dataset-fashion-mnist)")
        }
        return try FashionMNIST(split: split)
    }
}
