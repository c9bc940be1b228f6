import Foundation
import Tensor

/// The keys and values a Llama decoder has already computed for a batch, so that generation
/// runs the prompt once (prefill) and then one new token per row at a time.
///
/// Per layer it holds K and V after RoPE as [B, kvHeads, capacity, headDim] buffers (capacity
/// doubles when needed), the attention mask of every cached position (1 = token, 0 = padding)
/// and each row's next position id, so left-padded batches keep their own positions.
///
/// The cache is for inference: values are copied in outside the autograd graph, so gradients do
/// not flow through cached keys and values. One cache serves one batch of sequences; `reset()`
/// empties it for reuse.
public final class LlamaKVCache {
    public let batch: Int
    public let layers: Int
    public let kvHeads: Int
    public let headDim: Int
    /// Positions stored so far (the same for every row; padding counts).
    public private(set) var length: Int = 0
    /// [batch][length]: 1 for a token, 0 for padding, for every cached position.
    public private(set) var attentionMask: [[Int]]
    /// The position id the next token of each row takes (its count of real tokens so far).
    public private(set) var nextPositions: [Int]

    private var keys: [Tensor?]
    private var values: [Tensor?]
    private var capacity: [Int]

    /// An empty cache for `batch` rows of a model with `config`; `capacity` positions are
    /// allocated up front (more are added on demand).
    public init(config: LlamaConfig, batch: Int, capacity: Int = 0) {
        precondition(batch > 0, "LlamaKVCache: batch must be ≥ 1")
        self.batch = batch
        layers = config.numHiddenLayers
        kvHeads = config.numKeyValueHeads
        headDim = config.headDim
        attentionMask = [[Int]](repeating: [], count: batch)
        nextPositions = [Int](repeating: 0, count: batch)
        keys = [Tensor?](repeating: nil, count: layers)
        values = [Tensor?](repeating: nil, count: layers)
        self.capacity = [Int](repeating: 0, count: layers)
        if capacity > 0 { for l in 0..<layers { grow(layer: l, to: capacity) } }
    }

    /// Empties the cache (buffers are kept).
    public func reset() {
        length = 0
        attentionMask = [[Int]](repeating: [], count: batch)
        nextPositions = [Int](repeating: 0, count: batch)
    }

    /// Bytes held by the key and value buffers.
    public var byteCount: Int {
        capacity.reduce(0, +) * 2 * batch * kvHeads * headDim * MemoryLayout<Float>.size
    }

    private func grow(layer l: Int, to needed: Int) {
        guard needed > capacity[l] else { return }
        var newCapacity = Swift.max(16, capacity[l])
        while newCapacity < needed { newCapacity *= 2 }
        let old = capacity[l]
        for which in 0..<2 {
            let fresh = Tensor(zeros: [batch, kvHeads, newCapacity, headDim])
            if let previous = which == 0 ? keys[l] : values[l], length > 0 {
                for bh in 0..<(batch * kvHeads) {
                    (fresh.pointer + bh * newCapacity * headDim)
                        .update(from: previous.pointer + bh * old * headDim, count: length * headDim)
                }
            }
            if which == 0 { keys[l] = fresh } else { values[l] = fresh }
        }
        capacity[l] = newCapacity
    }

    /// Writes this step's keys and values of layer `l` (post-RoPE, [B, L, kvHeads·d]) after the
    /// `length` cached positions and returns the views of all `length + L` positions as
    /// [B, kvHeads, length + L, d].
    func store(layer l: Int, keys k: Tensor, values v: Tensor) -> (keys: Tensor, values: Tensor) {
        let steps = k.shape[1]
        grow(layer: l, to: length + steps)
        let cap = capacity[l], d = headDim, kvh = kvHeads
        let kc = k.isContiguous ? k : k.contiguousCopy()
        let vc = v.isContiguous ? v : v.contiguousCopy()
        for (source, target) in [(kc, keys[l]!), (vc, values[l]!)] {
            let src = source.pointer, dst = target.pointer
            for b in 0..<batch {
                for t in 0..<steps {
                    for h in 0..<kvh {
                        (dst + ((b * kvh + h) * cap + length + t) * d)
                            .update(from: src + ((b * steps + t) * kvh + h) * d, count: d)
                    }
                }
            }
        }
        let total = length + steps
        let shape = [batch, kvh, total, d]
        let strides = [kvh * cap * d, cap * d, d, 1]
        return (Tensor(storage: keys[l]!.storage, shape: shape, strides: strides),
                Tensor(storage: values[l]!.storage, shape: shape, strides: strides))
    }

    /// Records that a forward pass stored `mask[b].count` more positions with these positions.
    func commit(mask: [[Int]], positions: [[Int]]) {
        for b in 0..<batch {
            attentionMask[b] += mask[b]
            if let t = mask[b].lastIndex(of: 1) { nextPositions[b] = positions[b][t] + 1 }
        }
        length += mask[0].count
    }
}
