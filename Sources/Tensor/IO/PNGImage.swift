import CPNG
import Foundation

/// An 8-bit image, rows top to bottom, channels interleaved: 1 = gray, 2 = gray+alpha,
/// 3 = RGB, 4 = RGBA.
///
/// Reading and writing go through libpng's simplified API, which reports failures as return
/// codes and messages instead of `longjmp` (which Swift cannot survive). Palette, 16-bit and
/// low-bit-depth files are converted on read to the 8-bit layout with the same channels.
public struct PNGImage: Equatable, Sendable {
    public let width: Int
    public let height: Int
    public let channels: Int
    /// `height × width × channels` bytes, row-major.
    public var pixels: [UInt8]

    /// Refuses to decode images whose pixels would take more than this many bytes.
    public static let maxPixelBytes = 1 << 30

    // libpng's format flags (png.h), spelled out because they are C macros.
    private static let flagAlpha: UInt32 = 0x01
    private static let flagColor: UInt32 = 0x02
    private static let flag16BitSRGB: UInt32 = 0x04

    /// An image from raw pixels; `pixels.count` must equal `width × height × channels`.
    public init(width: Int, height: Int, channels: Int, pixels: [UInt8]) throws {
        guard (1...4).contains(channels) else {
            throw FileFormatError.image(file: "<pixels>", reason: "channels must be 1…4, got \(channels)")
        }
        guard width > 0, height > 0, width <= Int(Int32.max) / channels, height <= Int(Int32.max) else {
            throw FileFormatError.image(file: "<pixels>", reason: "invalid size \(width)×\(height)")
        }
        guard pixels.count == width * height * channels else {
            throw FileFormatError.image(file: "<pixels>",
                                        reason: "\(width)×\(height)×\(channels) needs \(width * height * channels) bytes, got \(pixels.count)")
        }
        self.width = width
        self.height = height
        self.channels = channels
        self.pixels = pixels
    }

    /// Reads a PNG file.
    public init(contentsOf url: URL) throws {
        let data: Data
        do {
            data = try Data(contentsOf: url)
        } catch {
            throw FileFormatError.unreadable(file: url.path, reason: error.localizedDescription)
        }
        try self.init(pngData: data, name: url.path)
    }

    /// Decodes PNG bytes; `name` appears in error messages.
    public init(pngData data: Data, name: String = "<memory>") throws {
        guard !data.isEmpty else { throw FileFormatError.image(file: name, reason: "empty file") }
        // libpng keeps a pointer to the input between begin and finish, so both run inside
        // one `withUnsafeBytes`.
        let (width, height, channels, pixels) = try data.withUnsafeBytes { raw in
            try Self.decode(raw, name: name)
        }
        try self.init(width: width, height: height, channels: channels, pixels: pixels)
    }

    private static func decode(_ raw: UnsafeRawBufferPointer, name: String) throws -> (Int, Int, Int, [UInt8]) {
        var image = png_image()
        image.version = UInt32(PNG_IMAGE_VERSION)
        defer { png_image_free(&image) }
        guard let base = raw.baseAddress, png_image_begin_read_from_memory(&image, base, raw.count) != 0 else {
            throw FileFormatError.image(file: name, reason: message(&image))
        }
        // 16-bit files without gamma chunks come from tools that store sRGB values (PIL, numpy);
        // without this flag libpng would treat them as linear and gamma-encode them.
        image.flags |= flag16BitSRGB
        let hasColor = image.format & flagColor != 0
        let hasAlpha = image.format & flagAlpha != 0
        let channels = (hasColor ? 3 : 1) + (hasAlpha ? 1 : 0)
        // 8-bit sRGB, no colour map, RGB order: the simplified API converts everything else.
        image.format = (hasColor ? flagColor : 0) | (hasAlpha ? flagAlpha : 0)
        let width = Int(image.width), height = Int(image.height)
        let (bytes, overflow) = (width * channels).multipliedReportingOverflow(by: height)
        guard !overflow, bytes <= maxPixelBytes, width * channels <= Int(Int32.max) else {
            throw FileFormatError.image(file: name, reason: "image of \(width)×\(height) is too large")
        }
        var pixels = [UInt8](repeating: 0, count: bytes)
        let finished = pixels.withUnsafeMutableBytes { out in
            png_image_finish_read(&image, nil, out.baseAddress, Int32(width * channels), nil)
        }
        guard finished != 0 else {
            throw FileFormatError.image(file: name, reason: message(&image))
        }
        return (width, height, channels, pixels)
    }

    private static func message(_ image: inout png_image) -> String {
        withUnsafeBytes(of: &image.message) { raw in
            let bytes = raw.prefix { $0 != 0 }
            let text = String(decoding: bytes, as: UTF8.self)
            return text.isEmpty ? "libpng error" : text
        }
    }

    /// Encodes as PNG (8-bit, default compression).
    public func pngData(name: String = "<memory>") throws -> Data {
        var image = png_image()
        image.version = UInt32(PNG_IMAGE_VERSION)
        image.width = UInt32(width)
        image.height = UInt32(height)
        image.format = (channels >= 3 ? Self.flagColor : 0) | (channels % 2 == 0 ? Self.flagAlpha : 0)
        let stride = Int32(width * channels)
        var size: Int = 0
        var ok = pixels.withUnsafeBytes { raw in
            png_image_write_to_memory(&image, nil, &size, 0, raw.baseAddress, stride, nil)
        }
        guard ok != 0, size > 0 else {
            let message = Self.message(&image)
            png_image_free(&image)
            throw FileFormatError.image(file: name, reason: message)
        }
        var out = Data(count: size)
        ok = out.withUnsafeMutableBytes { dst in
            pixels.withUnsafeBytes { raw in
                png_image_write_to_memory(&image, dst.baseAddress, &size, 0, raw.baseAddress, stride, nil)
            }
        }
        guard ok != 0 else {
            let message = Self.message(&image)
            png_image_free(&image)
            throw FileFormatError.image(file: name, reason: message)
        }
        png_image_free(&image)
        return out.prefix(size)
    }

    /// Writes the PNG to `url` through a temporary file renamed into place.
    public func write(to url: URL) throws {
        let data = try pngData(name: url.path)
        var writer = try AtomicFileWriter(url: url)
        do {
            try data.withUnsafeBytes { try writer.write($0) }
            try writer.commit()
        } catch {
            writer.discard()
            throw error
        }
    }

    /// An image from a float tensor of shape [C, H, W], [1, C, H, W] or [H, W] with values in
    /// [0, 1]; values are clamped and rounded: byte = round(255 · clamp(v, 0, 1)), NaN → 0.
    public init(tensor: Tensor) throws {
        var shape = tensor.shape
        if shape.count == 4 && shape[0] == 1 { shape.removeFirst() }
        if shape.count == 2 { shape.insert(1, at: 0) }
        guard shape.count == 3, (1...4).contains(shape[0]), shape[1] > 0, shape[2] > 0 else {
            throw FileFormatError.image(file: "<tensor>", reason: "expected [C, H, W] with C in 1…4 or [H, W], got \(tensor.shape)")
        }
        let (c, h, w) = (shape[0], shape[1], shape[2])
        let values = tensor.isContiguous ? tensor : tensor.contiguousCopy()
        let src = values.pointer
        var pixels = [UInt8](repeating: 0, count: c * h * w)
        for ch in 0..<c {
            for i in 0..<(h * w) {
                let v = src[ch * h * w + i]
                let clamped = v.isNaN ? 0 : min(max(v, 0), 1)
                pixels[i * c + ch] = UInt8((clamped * 255).rounded())
            }
        }
        try self.init(width: w, height: h, channels: c, pixels: pixels)
    }

    /// The pixels as a [C, H, W] tensor in [0, 1] (byte / 255).
    public func toTensor() -> Tensor {
        let out = Tensor(zeros: [channels, height, width])
        let dst = out.storage.pointer
        let plane = height * width
        for i in 0..<plane {
            for ch in 0..<channels { dst[ch * plane + i] = Float(pixels[i * channels + ch]) / 255 }
        }
        return out
    }
}
