import Foundation

extension Tensor {
    /// The affine map of a fully connected layer (PyTorch `F.linear`): y = x·Wᵀ + b.
    ///
    /// - x (self) [..., in], weight [out, in], bias [out]? → [..., out].
    /// - Forward hands Wᵀ to sgemm as a transposed view, without a copy; with batch dimensions in
    ///   x all rows go through one GEMM.
    /// - Backward (its own node, as llm.c's matmul_backward): dx = g·W [..., in] and
    ///   dW = g_flatᵀ·x_flat [out, in], one GEMM each over every row at once. Differentiating
    ///   through `matmul` and `transposed` instead would produce dWᵀ [in, out] and hand the weight a
    ///   transposed view, which costs a strided copy of every weight gradient (a sixth of the
    ///   GEMMs' time in an MLP's training step).
    public func linear(weight: Tensor, bias: Tensor?) -> Tensor {
        precondition(rank >= 1 && weight.rank == 2 && shape[rank - 1] == weight.shape[1],
                     "linear: input \(shape) and weight \(weight.shape) (expected [out, \(rank >= 1 ? shape[rank - 1] : 0)])")
        if let bias { precondition(bias.shape == [weight.shape[0]], "linear: bias \(bias.shape) for weight \(weight.shape)") }
        let x2 = rank == 1 ? unsqueezed(0) : self                       // [..., in]
        var y = x2.linearProduct(weight)                                  // [..., out]
        if let bias { y = y + bias }
        return rank == 1 ? y.squeezed(0) : y
    }

    /// x·Wᵀ for x (self) [..., in] (rank ≥ 2) and W [out, in] → [..., out].
    private func linearProduct(_ weight: Tensor) -> Tensor {
        let x = self
        let outputs = weight.shape[0], inputs = weight.shape[1]
        let y = withoutGrad { x.matmul(weight.transposed(0, 1)) }          // [..., out]
        return Tensor.record("linear", y, [x, weight]) { g in              // g [..., out]
            let gx: Tensor? = x.requiresGrad ? g.matmul(weight) : nil      // [..., in]
            var gw: Tensor? = nil
            if weight.requiresGrad {
                let gFlat = g.contiguous().reshaped([-1, outputs])          // [N, out]
                let xFlat = x.contiguous().reshaped([-1, inputs])           // [N, in]
                gw = gFlat.transposed(0, 1).matmul(xFlat)                   // [out, in], contiguous
            }
            return [gx, gw]
        }
    }
}
