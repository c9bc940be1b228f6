import Foundation
import Tensor

/// A manifest folder held in memory for training: every image decoded once into RGB bytes, with
/// its simple prompt (`text`) and complex prompt (`prompt`).
///
/// Images are stored as bytes (H·W·3 each) and converted per batch to the [-1, 1] range the
/// diffusion models use, so a 40k-scene dataset at 32×32 takes 120 MB rather than 500 MB.
public struct ImageTextDataset: Sendable {
    public let directory: URL
    public let records: [DatasetRecord]
    public let height: Int
    public let width: Int
    private let pixels: [UInt8]

    public var count: Int { records.count }

    /// Loads the manifest at `url` (a folder or its `metadata.jsonl`) and decodes every image,
    /// keeping the records of `split` only when given.
    /// - Throws: `ManifestError` naming the file and line of a bad record, an unreadable image, or
    ///   an image whose size differs from the first one's; `split` selecting nothing.
    public init(contentsOf url: URL, split: String? = nil, limit: Int? = nil,
                progress: ((Int, Int) -> Void)? = nil) throws {
        let manifest = try DatasetManifest(contentsOf: url, imageCheck: .exists)
        var records = split.map { manifest.records(inSplit: $0) } ?? manifest.records
        if let split, records.isEmpty {
            let splits = manifest.splitCounts.keys.sorted().joined(separator: ", ")
            throw ManifestError(file: manifest.url.path, line: 0,
                                reason: "no records in split '\(split)' (splits present: \(splits.isEmpty ? "none" : splits))")
        }
        if let limit, limit < records.count { records = Array(records.prefix(limit)) }
        guard !records.isEmpty else { throw ManifestError(file: manifest.url.path, line: 0, reason: "the manifest lists no images") }
        var bytes: [UInt8] = []
        var size: (Int, Int)? = nil
        for (k, record) in records.enumerated() {
            let image: PNGImage
            do {
                image = try PNGImage(contentsOf: record.imageURL)
            } catch {
                throw ManifestError(file: manifest.url.path, line: record.line, reason: "cannot read image \(record.fileName): \(error)")
            }
            if size == nil {
                size = (image.height, image.width)
                bytes.reserveCapacity(records.count * image.height * image.width * 3)
            }
            guard image.height == size!.0 && image.width == size!.1 else {
                throw ManifestError(file: manifest.url.path, line: record.line,
                                    reason: "image \(record.fileName) is \(image.width)×\(image.height), but the first image is \(size!.1)×\(size!.0); training needs one size")
            }
            bytes += ImageTextDataset.rgb(image)
            if (k + 1) % 1024 == 0 || k + 1 == records.count { progress?(k + 1, records.count) }
        }
        self.directory = manifest.directory
        self.records = records
        self.height = size!.0
        self.width = size!.1
        self.pixels = bytes
    }

    /// Gray and gray+alpha images become RGB; alpha is dropped.
    static func rgb(_ image: PNGImage) -> [UInt8] {
        let n = image.width * image.height, c = image.channels
        if c == 3 { return image.pixels }
        var out = [UInt8](repeating: 0, count: n * 3)
        for i in 0..<n {
            for ch in 0..<3 { out[i * 3 + ch] = image.pixels[i * c + (c >= 3 ? ch : 0)] }
        }
        return out
    }

    /// Images `indices` as x₀ in [-1, 1]: [indices.count, 3, H, W].
    public func images(_ indices: [Int]) -> Tensor {
        let plane = height * width
        let out = Tensor.uninitialized([indices.count, 3, height, width])
        let dst = out.storage.pointer
        pixels.withUnsafeBufferPointer { src in
            for (b, index) in indices.enumerated() {
                let base = index * plane * 3
                for i in 0..<plane {
                    for ch in 0..<3 { dst[(b * 3 + ch) * plane + i] = Float(src[base + i * 3 + ch]) / 127.5 - 1 }
                }
            }
        }
        return out
    }
}
