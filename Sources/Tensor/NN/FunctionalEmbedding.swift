import Foundation

// Embedding lookup: a gather of table rows forward, a scatter-add of gradient rows backward.

extension Tensor {
    /// Rows of the table (self, [V, D]) at `ids`: out[i…, :] = table[ids[i…], :].
    ///
    /// - ids: flattened row-major over `idsShape`; result shape is idsShape + [D].
    /// - Backward: dTable[v, :] = Σ over positions i with ids[i] == v of g[i, :] (a scatter-add into [V, D]).
    /// - Throws: `TensorError.idOutOfVocabulary` naming the first id outside 0..<V and its position,
    ///   `TensorError.countMismatch` when ids.count differs from the element count of idsShape.
    public func embedding(ids: [Int], shape idsShape: [Int]) throws -> Tensor {
        precondition(rank == 2, "embedding: the table must be [V, D], got \(shape)")
        guard idsShape.allSatisfy({ $0 >= 0 }) else {
            throw TensorError.invalidArgument(op: "embedding", reason: "negative dimension in id shape \(idsShape)")
        }
        guard ids.count == Tensor.count(idsShape) else {
            throw TensorError.countMismatch(op: "embedding", what: "id shape \(idsShape)", expected: Tensor.count(idsShape), actual: ids.count)
        }
        let v = shape[0], d = shape[1]
        if let position = ids.firstIndex(where: { $0 < 0 || $0 >= v }) {
            throw TensorError.idOutOfVocabulary(id: ids[position], position: position, vocabularySize: v)
        }
        let table = contiguousValues()              // [V, D]
        let out = Tensor(zeros: idsShape + [d])     // [*idsShape, D]
        let src = table.pointer, dst = out.storage.pointer
        ids.withUnsafeBufferPointer { idp in
            parallelFor(ids.count, grain: Swift.max(1, 16_384 / Swift.max(d, 1))) { s, e in
                for i in s..<e { (dst + i * d).update(from: src + idp[i] * d, count: d) }
            }
        }
        let tableShape = shape
        return Tensor.record("embedding", out, [self]) { g in
            let gc = g.contiguousValues()
            let grad = Tensor(zeros: tableShape)    // [V, D]
            let gp = gc.pointer, tp = grad.storage.pointer
            // Threads own disjoint column ranges, so repeated ids never race.
            ids.withUnsafeBufferPointer { idp in
                parallelFor(d, grain: Swift.max(1, 16_384 / Swift.max(ids.count, 1))) { s, e in
                    for i in 0..<idp.count {
                        let row = tp + idp[i] * d, grow = gp + i * d
                        for k in s..<e { row[k] += grow[k] }
                    }
                }
            }
            return [grad]
        }
    }
}
