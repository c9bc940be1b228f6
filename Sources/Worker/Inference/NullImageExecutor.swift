import Foundation
import Tensor

/// An executor without a model, for testing and benchmarking the serving path: after an optional
/// delay it returns, per request, a small deterministic PNG of the requested size.
///
/// The picture depends only on the request (prompt, seed, size), never on the rest of the batch:
/// the top half is one colour and the bottom half another, both taken from an FNV-1a hash of
/// the prompt and the seed. So a client can check that it got the image of its own request.
public final class NullImageExecutor: InferenceBatchExecutor, @unchecked Sendable {
    /// Largest side the null executor draws, in pixels.
    public static let maxSide = 1024

    /// Seconds each batch takes before it returns (simulates a model).
    public let batchDelay: TimeInterval
    /// Extra seconds per image in the batch.
    public let perImageDelay: TimeInterval
    /// A prompt that makes the batch throw `InferenceExecutionError.injectedFailure`, so error
    /// paths can be tested end to end; nil never fails.
    public let failingPrompt: String?

    public init(batchDelay: TimeInterval = 0, perImageDelay: TimeInterval = 0, failingPrompt: String? = nil) {
        self.batchDelay = max(0, batchDelay)
        self.perImageDelay = max(0, perImageDelay)
        self.failingPrompt = failingPrompt
    }

    /// Without a delay, or with one of at most 10 ms for a batch of 8, a batch is quick enough
    /// to run on the worker's own thread.
    public var returnsWithinMilliseconds: Bool { batchDelay + 8 * perImageDelay <= 0.01 }

    /// One PNG per request, in order, after the configured delay.
    public func run(batch: [GenerationRequest]) throws -> [GeneratedImage] {
        for request in batch {
            if let failingPrompt, request.prompt == failingPrompt { throw InferenceExecutionError.injectedFailure(id: request.id) }
            for (field, value) in [("width", request.width), ("height", request.height)] where !(1...Self.maxSide).contains(value) {
                throw InferenceExecutionError.unsupportedRequest(id: request.id, field: field,
                                                                 reason: "must be 1…\(Self.maxSide), got \(value)")
            }
        }
        let delay = batchDelay + perImageDelay * Double(batch.count)
        if delay > 0 { Thread.sleep(forTimeInterval: delay) }
        return try batch.map { request in
            let image = try PNGImage(width: request.width, height: request.height, channels: 3,
                                     pixels: Self.pixels(for: request))
            return GeneratedImage(requestID: request.id, png: try image.pngData(name: "null image for \(request.id)"),
                                  width: request.width, height: request.height)
        }
    }

    /// The RGB pixels (height × width × 3) the null executor draws for `request`.
    public static func pixels(for request: GenerationRequest) -> [UInt8] {
        let hash = fnv1a(Array(request.prompt.utf8), seed: request.seed)
        let top = [UInt8(truncatingIfNeeded: hash), UInt8(truncatingIfNeeded: hash >> 8), UInt8(truncatingIfNeeded: hash >> 16)]
        let bottom = [UInt8(truncatingIfNeeded: hash >> 24), UInt8(truncatingIfNeeded: hash >> 32), UInt8(truncatingIfNeeded: hash >> 40)]
        let width = max(0, request.width), height = max(0, request.height)
        var pixels = [UInt8](repeating: 0, count: width * height * 3)
        for y in 0..<height {
            let colour = y < height / 2 ? top : bottom
            for x in 0..<width {
                let base = (y * width + x) * 3
                pixels[base] = colour[0]
                pixels[base + 1] = colour[1]
                pixels[base + 2] = colour[2]
            }
        }
        return pixels
    }

    /// 64-bit FNV-1a over the bytes followed by the seed's 8 little-endian bytes.
    static func fnv1a(_ bytes: [UInt8], seed: UInt64) -> UInt64 {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        func mix(_ byte: UInt8) { hash = (hash ^ UInt64(byte)) &* 0x0000_0100_0000_01b3 }
        for byte in bytes { mix(byte) }
        for shift in stride(from: 0, to: 64, by: 8) { mix(UInt8(truncatingIfNeeded: seed >> UInt64(shift))) }
        return hash
    }
}
