import Foundation

/// A problem with a Fashion-MNIST (IDX) file, naming the file.
public struct DatasetFileError: Error, CustomStringConvertible, Equatable, Sendable {
    public let file: String
    public let reason: String
    public init(file: String, reason: String) {
        self.file = file
        self.reason = reason
    }
    public var description: String { "\(file): \(reason)" }
}

/// An unsigned-byte IDX array (the MNIST file format): a big-endian header
/// `00 00 08 D` (type 0x08 = unsigned byte, D dimensions), then D big-endian UInt32 sizes,
/// then ∏ sizes bytes. Files are read as they are or, when they start with the gzip magic
/// `1f 8b`, through `gzip -dc`.
public struct IDXArray: Sendable {
    /// The dimension sizes from the header.
    public let shape: [Int]
    /// The values, row-major.
    public let bytes: [UInt8]

    /// Refuses arrays larger than this (1 GiB) before allocating.
    public static let maxBytes = 1 << 30

    /// Reads an IDX file, gzip-compressed or not.
    /// - Throws: `DatasetFileError` for unreadable files, a failed decompression, a wrong magic
    ///   number or element type, an unexpected number of dimensions, or a size that does not
    ///   match the header.
    public init(contentsOf url: URL, expectedDimensions: Int? = nil) throws {
        let raw = try IDXArray.readMaybeGzip(url)
        try self.init(bytes: raw, file: url.path, expectedDimensions: expectedDimensions)
    }

    /// Parses IDX bytes; `file` names the source in errors.
    public init(bytes raw: [UInt8], file: String, expectedDimensions: Int? = nil) throws {
        guard raw.count >= 4 else {
            throw DatasetFileError(file: file, reason: "too short for an IDX header (\(raw.count) bytes)")
        }
        guard raw[0] == 0, raw[1] == 0 else {
            throw DatasetFileError(file: file, reason: String(format: "bad IDX magic %02x %02x %02x %02x (expected 00 00 08 0D)",
                                                              raw[0], raw[1], raw[2], raw[3]))
        }
        guard raw[2] == 0x08 else {
            throw DatasetFileError(file: file, reason: String(format: "IDX element type 0x%02x is not unsigned byte (0x08)", raw[2]))
        }
        let dims = Int(raw[3])
        guard dims >= 1 else { throw DatasetFileError(file: file, reason: "IDX header declares 0 dimensions") }
        if let expectedDimensions, dims != expectedDimensions {
            throw DatasetFileError(file: file, reason: "IDX header declares \(dims) dimensions, expected \(expectedDimensions)")
        }
        let headerLength = 4 + 4 * dims
        guard raw.count >= headerLength else {
            throw DatasetFileError(file: file, reason: "truncated IDX header: \(dims) dimensions need \(headerLength) bytes, file has \(raw.count)")
        }
        var shape: [Int] = []
        var total = 1
        for d in 0..<dims {
            let o = 4 + 4 * d
            let size = Int(raw[o]) << 24 | Int(raw[o + 1]) << 16 | Int(raw[o + 2]) << 8 | Int(raw[o + 3])
            shape.append(size)
            let (product, overflow) = total.multipliedReportingOverflow(by: size)
            guard !overflow, product <= IDXArray.maxBytes else {
                throw DatasetFileError(file: file, reason: "IDX sizes \(shape) exceed the \(IDXArray.maxBytes)-byte limit")
            }
            total = product
        }
        guard raw.count - headerLength == total else {
            throw DatasetFileError(file: file, reason: "IDX sizes \(shape) need \(total) data bytes after the \(headerLength)-byte header, file has \(raw.count - headerLength)")
        }
        self.shape = shape
        self.bytes = Array(raw[headerLength...])
    }

    /// The file's bytes, decompressed with `gzip -dc` when they start with the gzip magic.
    static func readMaybeGzip(_ url: URL) throws -> [UInt8] {
        let data: Foundation.Data
        do {
            data = try Foundation.Data(contentsOf: url)
        } catch {
            throw DatasetFileError(file: url.path, reason: "cannot read file: \(error.localizedDescription)")
        }
        guard data.count >= 2, data[data.startIndex] == 0x1F, data[data.startIndex + 1] == 0x8B else { return [UInt8](data) }
        return try gunzip(url)
    }

    /// Decompresses a gzip file by running the system's `gzip -dc` (no zlib binding needed).
    static func gunzip(_ url: URL) throws -> [UInt8] {
        guard let tool = ["/bin/gzip", "/usr/bin/gzip"].first(where: { FileManager.default.isExecutableFile(atPath: $0) }) else {
            throw DatasetFileError(file: url.path, reason: "gzip is not installed (needed to decompress; apt-get install gzip)")
        }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: tool)
        process.arguments = ["-dc", "--", url.path]
        let output = Pipe(), errors = Pipe()
        process.standardOutput = output
        process.standardError = errors
        process.standardInput = FileHandle.nullDevice
        do {
            try process.run()
        } catch {
            throw DatasetFileError(file: url.path, reason: "cannot run \(tool): \(error.localizedDescription)")
        }
        // Drain stderr on another thread so neither pipe can fill up and block gzip.
        let errorBox = ErrorTextBox()
        let group = DispatchGroup()
        group.enter()
        DispatchQueue.global().async {
            errorBox.text = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            group.leave()
        }
        let decompressed = output.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        group.wait()
        guard process.terminationReason == .exit, process.terminationStatus == 0 else {
            let message = errorBox.text.trimmingCharacters(in: .whitespacesAndNewlines)
            throw DatasetFileError(file: url.path, reason: "gzip could not decompress it (status \(process.terminationStatus)): \(message)")
        }
        return [UInt8](decompressed)
    }
}

/// Holds gzip's stderr text read on another thread.
private final class ErrorTextBox: @unchecked Sendable {
    var text = ""
}
