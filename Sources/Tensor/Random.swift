import Foundation

/// A seeded pseudo-random generator (xoshiro256**, seeded through SplitMix64): the same seed
/// gives the same stream on every machine. Its state can be saved and restored with checkpoints.
public struct SeededGenerator: RandomNumberGenerator, Codable, Sendable {
    public private(set) var state: [UInt64]

    public init(seed: UInt64) {
        var z = seed
        var s: [UInt64] = []
        for _ in 0..<4 {
            z &+= 0x9E37_79B9_7F4A_7C15
            var x = z
            x = (x ^ (x >> 30)) &* 0xBF58_476D_1CE4_E5B9
            x = (x ^ (x >> 27)) &* 0x94D0_49BB_1331_11EB
            s.append(x ^ (x >> 31))
        }
        state = s
    }

    /// Restores a generator from a saved `state`.
    public init(state: [UInt64]) {
        precondition(state.count == 4, "generator state needs 4 words")
        self.state = state
    }

    /// The generator for item `index` of a stream seeded by `seed`: independent of how many
    /// items came before, so scenes can be made in any order.
    public static func stream(seed: UInt64, index: Int) -> SeededGenerator {
        var z = seed &* 0x9E37_79B9_7F4A_7C15 ^ UInt64(truncatingIfNeeded: index) &* 0xD1B5_4A32_D192_ED03
        z = (z ^ (z >> 29)) &* 0xBF58_476D_1CE4_E5B9
        return SeededGenerator(seed: z ^ (z >> 32))
    }

    public mutating func next() -> UInt64 {
        let result = rotl(state[1] &* 5, 7) &* 9
        let t = state[1] << 17
        state[2] ^= state[0]
        state[3] ^= state[1]
        state[1] ^= state[2]
        state[0] ^= state[3]
        state[2] ^= t
        state[3] = rotl(state[3], 45)
        return result
    }

    private func rotl(_ x: UInt64, _ k: UInt64) -> UInt64 { (x << k) | (x >> (64 - k)) }

    /// Uniform in [0, 1) with 24 bits of precision.
    public mutating func nextUniform() -> Float { Float(next() >> 40) * (1.0 / 16_777_216.0) }

    /// Standard normal (Box–Muller).
    public mutating func nextNormal() -> Float {
        var u1 = nextUniform()
        while u1 <= 0 { u1 = nextUniform() }
        let u2 = nextUniform()
        return (-2 * Foundation.log(u1)).squareRoot() * Foundation.cos(2 * Float.pi * u2)
    }
}

extension Tensor {
    /// Samples from N(0, 1).
    public static func randn(_ shape: [Int], using rng: inout SeededGenerator) -> Tensor {
        let t = Tensor(zeros: shape)
        for i in 0..<t.count { t.storage.pointer[i] = rng.nextNormal() }
        return t
    }

    /// Samples from U[low, high).
    public static func uniform(_ shape: [Int], low: Float = 0, high: Float = 1, using rng: inout SeededGenerator) -> Tensor {
        let t = Tensor(zeros: shape)
        for i in 0..<t.count { t.storage.pointer[i] = low + (high - low) * rng.nextUniform() }
        return t
    }
}
