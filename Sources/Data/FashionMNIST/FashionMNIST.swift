import Foundation

/// Fashion-MNIST (Xiao et al., 2017): 28×28 grayscale clothing images in 10 classes, 60,000 for
/// training and 10,000 for testing, read from the IDX files that the Debian package
/// `dataset-fashion-mnist` installs in /usr/share/datasets/fashion-mnist.
public struct FashionMNIST: Sendable {
    /// Which half of the dataset.
    public enum Split: String, CaseIterable, Sendable {
        case train, test

        /// The file-name prefix of this split's IDX files.
        var filePrefix: String { self == .train ? "train" : "t10k" }
    }

    /// The ten class names, indexed by label.
    public static let classNames = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
    /// Image side in pixels.
    public static let side = 28

    /// Where the Debian package installs the files.
    public static let systemDirectory = URL(fileURLWithPath: "/usr/share/datasets/fashion-mnist")

    /// The folder to read from: `SURA_FASHION_MNIST` when set, else the Debian location.
    public static var defaultDirectory: URL {
        if let custom = ProcessInfo.processInfo.environment["SURA_FASHION_MNIST"], !custom.isEmpty {
            return URL(fileURLWithPath: custom)
        }
        return systemDirectory
    }

    /// The image and label files of `split` in `directory` (`…-ubyte.gz`, or uncompressed
    /// `…-ubyte` when only that exists).
    public static func files(for split: Split, in directory: URL = defaultDirectory) -> (images: URL, labels: URL) {
        func pick(_ base: String) -> URL {
            let gz = directory.appendingPathComponent(base + ".gz")
            let plain = directory.appendingPathComponent(base)
            return FileManager.default.fileExists(atPath: gz.path) || !FileManager.default.fileExists(atPath: plain.path) ? gz : plain
        }
        return (pick("\(split.filePrefix)-images-idx3-ubyte"), pick("\(split.filePrefix)-labels-idx1-ubyte"))
    }

    /// Whether both files of `split` exist in `directory`.
    public static func isAvailable(_ split: Split, in directory: URL = defaultDirectory) -> Bool {
        let f = files(for: split, in: directory)
        return FileManager.default.fileExists(atPath: f.images.path) && FileManager.default.fileExists(atPath: f.labels.path)
    }

    /// Number of images.
    public let count: Int
    /// Image height and width (28 for the real dataset).
    public let rows: Int
    public let columns: Int
    /// `count × rows × columns` bytes, 0 = background, 255 = full intensity.
    public let pixels: [UInt8]
    /// `count` labels in 0..<10.
    public let labels: [UInt8]

    /// Reads one split from `directory`.
    public init(split: Split, directory: URL = FashionMNIST.defaultDirectory) throws {
        let f = FashionMNIST.files(for: split, in: directory)
        try self.init(imagesURL: f.images, labelsURL: f.labels)
    }

    /// Reads an image file (IDX, 3 dimensions) and a label file (IDX, 1 dimension).
    /// - Throws: `DatasetFileError` naming the file: bad headers or sizes, different image and
    ///   label counts, or a label outside 0…9.
    public init(imagesURL: URL, labelsURL: URL) throws {
        for url in [imagesURL, labelsURL] where !FileManager.default.fileExists(atPath: url.path) {
            throw DatasetFileError(file: url.path, reason: "file not found (install the Debian package dataset-fashion-mnist, or set SURA_FASHION_MNIST to a folder with the IDX files)")
        }
        let images = try IDXArray(contentsOf: imagesURL, expectedDimensions: 3)
        let labels = try IDXArray(contentsOf: labelsURL, expectedDimensions: 1)
        guard images.shape[1] > 0, images.shape[2] > 0 else {
            throw DatasetFileError(file: imagesURL.path, reason: "images have size \(images.shape[1])×\(images.shape[2])")
        }
        guard images.shape[0] == labels.shape[0] else {
            throw DatasetFileError(file: labelsURL.path, reason: "\(labels.shape[0]) labels for \(images.shape[0]) images in \(imagesURL.path)")
        }
        if let bad = labels.bytes.firstIndex(where: { $0 >= 10 }) {
            throw DatasetFileError(file: labelsURL.path, reason: "label \(labels.bytes[bad]) at index \(bad) is outside 0…9")
        }
        self.init(count: images.shape[0], rows: images.shape[1], columns: images.shape[2],
                  pixels: images.bytes, labels: labels.bytes)
    }

    /// A dataset from memory (tests, synthetic items).
    public init(count: Int, rows: Int, columns: Int, pixels: [UInt8], labels: [UInt8]) {
        precondition(pixels.count == count * rows * columns && labels.count == count, "FashionMNIST: sizes do not match")
        self.count = count
        self.rows = rows
        self.columns = columns
        self.pixels = pixels
        self.labels = labels
    }

    /// The bytes of image `index`, row-major.
    public func image(_ index: Int) -> ArraySlice<UInt8> {
        let n = rows * columns
        return pixels[(index * n)..<((index + 1) * n)]
    }

    /// Image `index` reduced by averaging `factor × factor` blocks, as intensities in [0, 1]:
    /// out[i, j] = Σ x[factor·i + a, factor·j + b] / (255 · factor²). 28×28 with factor 2 gives 14×14.
    public func downsampled(_ index: Int, factor: Int = 2) -> [Float] {
        precondition(factor >= 1 && rows % factor == 0 && columns % factor == 0, "downsampled: factor \(factor) does not divide \(rows)×\(columns)")
        let h = rows / factor, w = columns / factor
        let base = index * rows * columns
        var out = [Float](repeating: 0, count: h * w)
        let scale = 1 / (255 * Float(factor * factor))
        pixels.withUnsafeBufferPointer { p in
            for i in 0..<h {
                for j in 0..<w {
                    var sum = 0
                    for a in 0..<factor {
                        let row = base + (i * factor + a) * columns + j * factor
                        for b in 0..<factor { sum += Int(p[row + b]) }
                    }
                    out[i * w + j] = Float(sum) * scale
                }
            }
        }
        return out
    }

    /// The indices of each class's images, in file order.
    public func indicesByClass() -> [[Int]] {
        var result = Array(repeating: [Int](), count: 10)
        for (i, label) in labels.enumerated() { result[Int(label)].append(i) }
        return result
    }
}
