import Foundation
import Tensor

/// The `config.json` of a diffusers `UNet2DConditionModel`, with diffusers' keys and defaults.
///
/// Keys are read in snake_case (`block_out_channels`, `cross_attention_dim`, …); keys Sura does
/// not use (`_diffusers_version`, `upcast_attention`, …) are accepted. Options Sura does not
/// implement (class embeddings, added embeddings, GLIGEN, dual cross-attention, …) are rejected
/// with `DiffusionConfigError.unsupported` naming the key when set to a non-default value.
///
/// **Heads.** As in diffusers, `attention_head_dim` is — for historical reasons — the *number of
/// heads* of every transformer when `num_attention_heads` is absent; each head then has
/// `channels / heads` dimensions. `num_attention_heads`, when present, takes precedence.
public struct UNet2DConditionConfig: Codable, Equatable, Sendable {
    /// Block types Sura builds, by position.
    public static let downBlockTypesSupported = ["CrossAttnDownBlock2D", "DownBlock2D"]
    public static let upBlockTypesSupported = ["CrossAttnUpBlock2D", "UpBlock2D"]
    public static let midBlockTypesSupported = ["UNetMidBlock2DCrossAttn", "UNetMidBlock2D"]

    public var className: String? = "UNet2DConditionModel"
    public var diffusersVersion: String?
    /// Training resolution of the latents (informational; any multiple of 2^(blocks−1) runs).
    public var sampleSize: IntOrList?
    public var inChannels = 4
    public var outChannels = 4
    /// Map the input from [0, 1] to [−1, 1] (2x − 1) before `conv_in`.
    public var centerInputSample = false
    /// Timestep embedding order: [cos, sin] when true, [sin, cos] when false.
    public var flipSinToCos = true
    /// `downscale_freq_shift` of the sinusoidal timestep embedding.
    public var freqShift = 0.0
    public var downBlockTypes = ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"]
    /// nil (JSON null): no mid block.
    public var midBlockType: String? = "UNetMidBlock2DCrossAttn"
    public var upBlockTypes = ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]
    public var blockOutChannels = [320, 640, 1280, 1280]
    /// Resnets per down block; up blocks have one more.
    public var layersPerBlock = IntOrList.single(2)
    public var downsamplePadding = 1
    public var midBlockScaleFactor = 1.0
    public var dropout = 0.0
    public var actFn = DiffusionActivation.silu
    public var normNumGroups = 32
    public var normEps = 1e-5
    /// Width of the conditioning tokens (`encoder_hidden_states`' last dimension).
    public var crossAttentionDim = IntOrList.single(1280)
    public var transformerLayersPerBlock = IntOrList.single(1)
    /// The number of heads when `num_attention_heads` is absent (diffusers' legacy naming).
    public var attentionHeadDim = IntOrList.single(8)
    public var numAttentionHeads: IntOrList?
    /// `proj_in`/`proj_out` of every transformer are Linear layers (true) or 1×1 convolutions (false).
    public var useLinearProjection = false
    /// Accepted and ignored: Sura always computes attention in float32.
    public var upcastAttention = false
    /// "default" (add the projected timestep embedding) or "scale_shift" (FiLM after norm2).
    public var resnetTimeScaleShift = "default"
    /// Width of the timestep embedding; nil means 4 × `block_out_channels[0]`.
    public var timeEmbeddingDim: Int?
    /// Activation applied to the timestep embedding before the blocks (nil: none).
    public var timeEmbeddingActFn: DiffusionActivation?
    /// Activation after `time_embedding.linear_2` (nil: none).
    public var timestepPostAct: DiffusionActivation?
    public var convInKernel = 3
    public var convOutKernel = 3

    /// A config holding diffusers' defaults (the Stable Diffusion 1.x UNet); set the fields you need.
    public init() {}

    // MARK: Derived values

    public var blockCount: Int { blockOutChannels.count }
    /// Heads of the transformers in down block `i` (and of the up block that mirrors it).
    public func heads(block i: Int) -> Int { (numAttentionHeads ?? attentionHeadDim).value(at: i) }
    /// Width of the timestep embedding that every resnet receives.
    public var timeEmbedDim: Int { timeEmbeddingDim ?? blockOutChannels[0] * 4 }
    /// Number of ×2 upsamplers, so inputs must have sides divisible by 2^this.
    public var upsamplerCount: Int { Swift.max(blockOutChannels.count - 1, 0) }

    // MARK: Validation

    /// Checks the config for everything that would make the model inconsistent, naming the key.
    public func validate() throws {
        let n = blockOutChannels.count
        guard n >= 1 else {
            throw DiffusionConfigError.invalidValue(key: "block_out_channels", value: "[]", message: "needs at least one block")
        }
        for (key, value) in [("in_channels", inChannels), ("out_channels", outChannels), ("norm_num_groups", normNumGroups)] where value < 1 {
            throw DiffusionConfigError.invalidValue(key: key, value: String(value), message: "must be ≥ 1")
        }
        for (key, list) in [("down_block_types", downBlockTypes.count), ("up_block_types", upBlockTypes.count)] where list != n {
            throw DiffusionConfigError.invalidValue(key: key, value: String(list) + " entries",
                                                    message: "needs one entry per block_out_channels entry (\(n))")
        }
        for (i, t) in downBlockTypes.enumerated() where !Self.downBlockTypesSupported.contains(t) {
            throw DiffusionConfigError.unknownBlockType(key: "down_block_types[\(i)]", value: t, allowed: Self.downBlockTypesSupported)
        }
        for (i, t) in upBlockTypes.enumerated() where !Self.upBlockTypesSupported.contains(t) {
            throw DiffusionConfigError.unknownBlockType(key: "up_block_types[\(i)]", value: t, allowed: Self.upBlockTypesSupported)
        }
        if let mid = midBlockType, !Self.midBlockTypesSupported.contains(mid) {
            throw DiffusionConfigError.unknownBlockType(key: "mid_block_type", value: mid, allowed: Self.midBlockTypesSupported + ["null"])
        }
        for (i, c) in blockOutChannels.enumerated() {
            if c < 1 {
                throw DiffusionConfigError.invalidValue(key: "block_out_channels[\(i)]", value: String(c), message: "must be ≥ 1")
            }
            if c % normNumGroups != 0 {
                throw DiffusionConfigError.channelsNotDivisible(key: "block_out_channels[\(i)]", channels: c, groups: normNumGroups)
            }
        }
        try layersPerBlock.check(key: "layers_per_block", count: n, minimum: 1)
        try crossAttentionDim.check(key: "cross_attention_dim", count: n, minimum: 1)
        try transformerLayersPerBlock.check(key: "transformer_layers_per_block", count: n, minimum: 1)
        try attentionHeadDim.check(key: "attention_head_dim", count: n, minimum: 1)
        try numAttentionHeads?.check(key: "num_attention_heads", count: n, minimum: 1)
        let headsKey = numAttentionHeads == nil ? "attention_head_dim" : "num_attention_heads"
        for i in 0..<n where heads(block: i) > blockOutChannels[i] {
            throw DiffusionConfigError.invalidValue(key: "\(headsKey)[\(i)]", value: String(heads(block: i)),
                                                    message: "more heads than the block's \(blockOutChannels[i]) channels")
        }
        if !["default", "scale_shift"].contains(resnetTimeScaleShift) {
            throw DiffusionConfigError.unsupported(key: "resnet_time_scale_shift", value: "\"\(resnetTimeScaleShift)\"",
                                                   reason: "Sura implements \"default\" and \"scale_shift\"")
        }
        for (key, k) in [("conv_in_kernel", convInKernel), ("conv_out_kernel", convOutKernel)] where k < 1 || k % 2 == 0 {
            throw DiffusionConfigError.invalidValue(key: key, value: String(k), message: "must be an odd size ≥ 1")
        }
        if downsamplePadding < 0 {
            throw DiffusionConfigError.invalidValue(key: "downsample_padding", value: String(downsamplePadding), message: "must be ≥ 0")
        }
        if normEps <= 0 || !normEps.isFinite {
            throw DiffusionConfigError.invalidValue(key: "norm_eps", value: String(normEps), message: "must be a positive number")
        }
        if !(0..<1).contains(dropout) {
            throw DiffusionConfigError.invalidValue(key: "dropout", value: String(dropout), message: "must be in [0, 1)")
        }
        if timeEmbedDim < 1 {
            throw DiffusionConfigError.invalidValue(key: "time_embedding_dim", value: String(timeEmbedDim), message: "must be ≥ 1")
        }
        if midBlockScaleFactor == 0 || !midBlockScaleFactor.isFinite {
            throw DiffusionConfigError.invalidValue(key: "mid_block_scale_factor", value: String(midBlockScaleFactor),
                                                    message: "must be a non-zero number")
        }
    }

    // MARK: Files

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

    // MARK: Codable

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: DiffusionConfigKey.self)
        className = try c.value("_class_name", default: className)
        diffusersVersion = try c.value("_diffusers_version", default: nil)
        sampleSize = try c.value("sample_size", default: nil)
        inChannels = try c.value("in_channels", default: inChannels)
        outChannels = try c.value("out_channels", default: outChannels)
        centerInputSample = try c.value("center_input_sample", default: centerInputSample)
        flipSinToCos = try c.value("flip_sin_to_cos", default: flipSinToCos)
        freqShift = try c.value("freq_shift", default: freqShift)
        downBlockTypes = try c.value("down_block_types", default: downBlockTypes)
        midBlockType = try c.nullable("mid_block_type", default: midBlockType)
        upBlockTypes = try c.value("up_block_types", default: upBlockTypes)
        blockOutChannels = try c.value("block_out_channels", default: blockOutChannels)
        layersPerBlock = try c.value("layers_per_block", default: layersPerBlock)
        downsamplePadding = try c.value("downsample_padding", default: downsamplePadding)
        midBlockScaleFactor = try c.value("mid_block_scale_factor", default: midBlockScaleFactor)
        dropout = try c.value("dropout", default: dropout)
        actFn = try c.value("act_fn", default: actFn)
        let groups: Int? = try c.nullable("norm_num_groups", default: normNumGroups)
        guard let groups else {
            throw DiffusionConfigError.unsupported(key: "norm_num_groups", value: "null",
                                                   reason: "Sura's UNet always normalises with GroupNorm")
        }
        normNumGroups = groups
        normEps = try c.value("norm_eps", default: normEps)
        crossAttentionDim = try c.value("cross_attention_dim", default: crossAttentionDim)
        transformerLayersPerBlock = try c.value("transformer_layers_per_block", default: transformerLayersPerBlock)
        attentionHeadDim = try c.value("attention_head_dim", default: attentionHeadDim)
        numAttentionHeads = try c.value("num_attention_heads", default: nil)
        useLinearProjection = try c.value("use_linear_projection", default: useLinearProjection)
        upcastAttention = try c.value("upcast_attention", default: upcastAttention)
        resnetTimeScaleShift = try c.value("resnet_time_scale_shift", default: resnetTimeScaleShift)
        timeEmbeddingDim = try c.value("time_embedding_dim", default: nil)
        timeEmbeddingActFn = try c.value("time_embedding_act_fn", default: nil)
        timestepPostAct = try c.value("timestep_post_act", default: nil)
        convInKernel = try c.value("conv_in_kernel", default: convInKernel)
        convOutKernel = try c.value("conv_out_kernel", default: convOutKernel)

        // Options diffusers has and Sura does not build: accepted only at their defaults.
        let onlyCross: BoolOrList = try c.value("only_cross_attention", default: .bool(false))
        if onlyCross.anyTrue {
            throw DiffusionConfigError.unsupported(key: "only_cross_attention", value: onlyCross.description,
                                                   reason: "Sura's transformer blocks always have self-attention")
        }
        try c.require("time_embedding_type", equals: "positional", reason: "Sura implements the sinusoidal (positional) embedding")
        try c.require("dual_cross_attention", equals: false, reason: "dual cross-attention is not implemented")
        try c.require("attention_type", equals: "default", reason: "gated (GLIGEN) attention is not implemented")
        try c.require("resnet_skip_time_act", equals: false, reason: "resnets always apply act_fn to the timestep embedding")
        try c.require("resnet_out_scale_factor", equals: 1.0, reason: "resnet output scaling is not implemented")
        try c.require("class_embeddings_concat", equals: false, reason: "class embeddings are not implemented")
        try c.require("mid_block_only_cross_attention", equals: false, reason: "the mid block always has self-attention")
        for key in ["class_embed_type", "num_class_embeds", "projection_class_embeddings_input_dim"] {
            try c.requireNull(key, reason: "class-conditional embeddings are not implemented")
        }
        for key in ["addition_embed_type", "addition_time_embed_dim"] {
            try c.requireNull(key, reason: "added (SDXL-style) embeddings are not implemented")
        }
        for key in ["encoder_hid_dim", "encoder_hid_dim_type"] {
            try c.requireNull(key, reason: "an encoder projection is not implemented; project the conditioning before the UNet")
        }
        try c.requireNull("time_cond_proj_dim", reason: "timestep conditioning projections are not implemented")
        try c.requireNull("cross_attention_norm", reason: "cross-attention normalisation is not implemented")
        try c.requireNull("reverse_transformer_layers_per_block", reason: "asymmetric transformer depths are not implemented")
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: DiffusionConfigKey.self)
        func put<T: Encodable>(_ key: String, _ value: T) throws { try c.encode(value, forKey: DiffusionConfigKey(key)) }
        func putOrNull<T: Encodable>(_ key: String, _ value: T?) throws {
            if let value { try c.encode(value, forKey: DiffusionConfigKey(key)) } else { try c.encodeNil(forKey: DiffusionConfigKey(key)) }
        }
        try put("_class_name", className ?? "UNet2DConditionModel")
        if let diffusersVersion { try put("_diffusers_version", diffusersVersion) }
        try putOrNull("sample_size", sampleSize)
        try put("in_channels", inChannels)
        try put("out_channels", outChannels)
        try put("center_input_sample", centerInputSample)
        try put("flip_sin_to_cos", flipSinToCos)
        try put("freq_shift", freqShift)
        try put("down_block_types", downBlockTypes)
        try putOrNull("mid_block_type", midBlockType)
        try put("up_block_types", upBlockTypes)
        try put("only_cross_attention", false)
        try put("block_out_channels", blockOutChannels)
        try put("layers_per_block", layersPerBlock)
        try put("downsample_padding", downsamplePadding)
        try put("mid_block_scale_factor", midBlockScaleFactor)
        try put("dropout", dropout)
        try put("act_fn", actFn)
        try put("norm_num_groups", normNumGroups)
        try put("norm_eps", normEps)
        try put("cross_attention_dim", crossAttentionDim)
        try put("transformer_layers_per_block", transformerLayersPerBlock)
        try put("attention_head_dim", attentionHeadDim)
        // diffusers' UNet2DConditionModel refuses a num_attention_heads key, so write it only when set.
        if let numAttentionHeads { try put("num_attention_heads", numAttentionHeads) }
        try put("use_linear_projection", useLinearProjection)
        try put("upcast_attention", upcastAttention)
        try put("resnet_time_scale_shift", resnetTimeScaleShift)
        try put("time_embedding_type", "positional")
        try putOrNull("time_embedding_dim", timeEmbeddingDim)
        try putOrNull("time_embedding_act_fn", timeEmbeddingActFn)
        try putOrNull("timestep_post_act", timestepPostAct)
        try put("conv_in_kernel", convInKernel)
        try put("conv_out_kernel", convOutKernel)
    }
}

/// `only_cross_attention`: a boolean or one boolean per block.
private enum BoolOrList: Decodable, CustomStringConvertible {
    case bool(Bool)
    case list([Bool])

    init(from decoder: Decoder) throws {
        let c = try decoder.singleValueContainer()
        if let b = try? c.decode(Bool.self) { self = .bool(b) } else { self = .list(try c.decode([Bool].self)) }
    }

    var anyTrue: Bool {
        switch self {
        case .bool(let b): return b
        case .list(let l): return l.contains(true)
        }
    }

    var description: String {
        switch self {
        case .bool(let b): return String(b)
        case .list(let l): return "[" + l.map(String.init).joined(separator: ", ") + "]"
        }
    }
}
