import Foundation
import Tensor

/// The `config.json` of a diffusers `AutoencoderKL`, with diffusers' keys and defaults.
public struct AutoencoderKLConfig: Codable, Equatable, Sendable {
    public static let downBlockTypesSupported = ["DownEncoderBlock2D"]
    public static let upBlockTypesSupported = ["UpDecoderBlock2D"]

    public var className: String? = "AutoencoderKL"
    public var diffusersVersion: String?
    public var inChannels = 3
    public var outChannels = 3
    public var downBlockTypes = ["DownEncoderBlock2D"]
    public var upBlockTypes = ["UpDecoderBlock2D"]
    public var blockOutChannels = [64]
    public var layersPerBlock = 1
    public var actFn = DiffusionActivation.silu
    public var latentChannels = 4
    public var normNumGroups = 32
    public var sampleSize: IntOrList? = .single(32)
    /// Latents are multiplied by this before the UNet sees them (and divided after sampling).
    public var scalingFactor = 0.18215
    /// Subtracted before scaling when present (SD3/Flux-style VAEs).
    public var shiftFactor: Double?
    public var useQuantConv = true
    public var usePostQuantConv = true
    public var midBlockAddAttention = true
    /// Accepted and ignored: Sura computes in float32.
    public var forceUpcast = true

    /// A config holding diffusers' defaults; set the fields you need.
    public init() {}

    /// Spatial downsampling factor between images and latents.
    public var downsamplingFactor: Int { 1 << Swift.max(blockOutChannels.count - 1, 0) }

    /// Checks block types, list lengths and GroupNorm divisibility, naming the key at fault.
    public func validate() throws {
        let n = blockOutChannels.count
        guard n >= 1 else {
            throw DiffusionConfigError.invalidValue(key: "block_out_channels", value: "[]", message: "needs at least one block")
        }
        for (key, value) in [("in_channels", inChannels), ("out_channels", outChannels), ("latent_channels", latentChannels),
                             ("norm_num_groups", normNumGroups), ("layers_per_block", layersPerBlock)] where value < 1 {
            throw DiffusionConfigError.invalidValue(key: key, value: String(value), message: "must be ≥ 1")
        }
        for (key, count) in [("down_block_types", downBlockTypes.count), ("up_block_types", upBlockTypes.count)] where count != n {
            throw DiffusionConfigError.invalidValue(key: key, value: "\(count) entries",
                                                    message: "needs one entry per block_out_channels entry (\(n))")
        }
        for (i, t) in downBlockTypes.enumerated() where !Self.downBlockTypesSupported.contains(t) {
            throw DiffusionConfigError.unknownBlockType(key: "down_block_types[\(i)]", value: t, allowed: Self.downBlockTypesSupported)
        }
        for (i, t) in upBlockTypes.enumerated() where !Self.upBlockTypesSupported.contains(t) {
            throw DiffusionConfigError.unknownBlockType(key: "up_block_types[\(i)]", value: t, allowed: Self.upBlockTypesSupported)
        }
        for (i, c) in blockOutChannels.enumerated() {
            if c < 1 {
                throw DiffusionConfigError.invalidValue(key: "block_out_channels[\(i)]", value: String(c), message: "must be ≥ 1")
            }
            if c % normNumGroups != 0 {
                throw DiffusionConfigError.channelsNotDivisible(key: "block_out_channels[\(i)]", channels: c, groups: normNumGroups)
            }
        }
        if !scalingFactor.isFinite || scalingFactor == 0 {
            throw DiffusionConfigError.invalidValue(key: "scaling_factor", value: String(scalingFactor), message: "must be a non-zero number")
        }
    }

    /// Reads and validates a diffusers `config.json`.
    public init(contentsOf url: URL) throws {
        self = try decodeDiffusionConfig(Self.self, from: readConfigData(at: url), path: url.path)
        try validate()
    }

    /// Parses and validates config JSON; `path` names the source in error messages.
    public init(jsonData: Data, path: String = "config.json") throws {
        self = try decodeDiffusionConfig(Self.self, from: jsonData, path: path)
        try validate()
    }

    /// The config as diffusers-compatible JSON.
    public func jsonData() throws -> Data { try encodeDiffusionConfig(self) }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: DiffusionConfigKey.self)
        className = try c.value("_class_name", default: className)
        diffusersVersion = try c.value("_diffusers_version", default: nil)
        inChannels = try c.value("in_channels", default: inChannels)
        outChannels = try c.value("out_channels", default: outChannels)
        downBlockTypes = try c.value("down_block_types", default: downBlockTypes)
        upBlockTypes = try c.value("up_block_types", default: upBlockTypes)
        blockOutChannels = try c.value("block_out_channels", default: blockOutChannels)
        layersPerBlock = try c.value("layers_per_block", default: layersPerBlock)
        actFn = try c.value("act_fn", default: actFn)
        latentChannels = try c.value("latent_channels", default: latentChannels)
        normNumGroups = try c.value("norm_num_groups", default: normNumGroups)
        sampleSize = try c.value("sample_size", default: sampleSize)
        scalingFactor = try c.value("scaling_factor", default: scalingFactor)
        shiftFactor = try c.value("shift_factor", default: nil)
        useQuantConv = try c.value("use_quant_conv", default: useQuantConv)
        usePostQuantConv = try c.value("use_post_quant_conv", default: usePostQuantConv)
        midBlockAddAttention = try c.value("mid_block_add_attention", default: midBlockAddAttention)
        forceUpcast = try c.value("force_upcast", default: forceUpcast)
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: DiffusionConfigKey.self)
        func put<T: Encodable>(_ key: String, _ value: T) throws { try c.encode(value, forKey: DiffusionConfigKey(key)) }
        try put("_class_name", className ?? "AutoencoderKL")
        if let diffusersVersion { try put("_diffusers_version", diffusersVersion) }
        try put("in_channels", inChannels)
        try put("out_channels", outChannels)
        try put("down_block_types", downBlockTypes)
        try put("up_block_types", upBlockTypes)
        try put("block_out_channels", blockOutChannels)
        try put("layers_per_block", layersPerBlock)
        try put("act_fn", actFn)
        try put("latent_channels", latentChannels)
        try put("norm_num_groups", normNumGroups)
        if let sampleSize { try put("sample_size", sampleSize) } else { try c.encodeNil(forKey: DiffusionConfigKey("sample_size")) }
        try put("scaling_factor", scalingFactor)
        if let shiftFactor { try put("shift_factor", shiftFactor) } else { try c.encodeNil(forKey: DiffusionConfigKey("shift_factor")) }
        try put("use_quant_conv", useQuantConv)
        try put("use_post_quant_conv", usePostQuantConv)
        try put("mid_block_add_attention", midBlockAddAttention)
        try put("force_upcast", forceUpcast)
    }
}
