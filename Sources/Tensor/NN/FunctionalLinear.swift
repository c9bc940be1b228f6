import Foundation

extension Tensor {
    /// The affine map of a fully connected layer (PyTorch `F.linear`): y = x·Wᵀ + b.
    ///
    /// - x (self) [..., in], weight [out, in], bias [out]? → [..., out].
    /// - Wᵀ is a transposed view handed to sgemm without a copy. With batch dimensions in x the
    ///   shared weight takes matmul's folded path: one GEMM over all rows forward, one GEMM for
    ///   dx, and one GEMM for dWᵀ = x_flatᵀ·g_flat over every row at once backward.
    public func linear(weight: Tensor, bias: Tensor?) -> Tensor {
        precondition(rank >= 1 && weight.rank == 2 && shape[rank - 1] == weight.shape[1],
                     "linear: input \(shape) and weight \(weight.shape) (expected [out, \(rank >= 1 ? shape[rank - 1] : 0)])")
        if let bias { precondition(bias.shape == [weight.shape[0]], "linear: bias \(bias.shape) for weight \(weight.shape)") }
        let x2 = rank == 1 ? unsqueezed(0) : self                       // [..., in]
        var y = x2.matmul(weight.transposed(0, 1))                       // [..., out]
        if let bias { y = y + bias }
        return rank == 1 ? y.squeezed(0) : y
    }
}
