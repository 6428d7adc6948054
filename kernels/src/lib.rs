//! # secateur-kernels
//!
//! Fast CPU kernels as candle custom ops. candle 0.11's CPU convolution is far behind PyTorch's
//! (its weight gradient is computed as a convolution with the batch as channels), so secateur
//! brings its own, built so that every backward pass is itself made of differentiable custom ops
//! (Hessian-vector products by double backpropagation keep working). On CUDA the functions here
//! fall back to candle's own ops.
//!
//! Module plan:
//! - [`conv`]: 2-D convolution forward, input gradient and weight gradient (im2col packing into
//!   gemm, parallel over the batch), closed under differentiation; stride-1 convolutions run
//!   as direct AVX-512 loops over padded planes where the CPU has AVX-512F (`conv_direct`).
//! - [`lrt`]: fused local-reparameterisation convolution and linear layer: mean and variance
//!   outputs from one pass over the packed input (Kingma, Salimans & Welling 2015).
//! - [`lrt_sample`]: the local-reparameterisation draw `m + √(v + c) ⊙ ε` in one pass.
//! - [`activation`]: ReLU and the residual `relu(a + b)` on both cores.
//! - [`norm`]: training-mode batch norm, optionally fused with its ReLU, closed under
//!   differentiation to second order.
//! - [`affine`]: the per-channel affine map `act(s x + t)`, evaluation-mode batch norm (with its
//!   ReLU) in one pass.
//! - [`pool`]: max pooling.
//! - [`bias`]: per-channel bias with a parallel channel-sum backward.
//! - [`inner`]: the inner product `Σ a ⊙ b` that starts a Hessian-vector product, with a
//!   backward only for the operands that track gradients.
//! - [`matmul`]: the matrix product whose backward skips the gradient of an operand that does
//!   not track one (the input batch), at first and second order.
//! - [`optim`]: the SGD and AdamW updates in place.
//! - [`runtime`], [`alloc_cache`]: process set-up for programs that train (thread pool, glibc
//!   allocator settings, a caching global allocator); the `secateur` binary uses them, and so
//!   can any program built on the library.
//! - [`softplus`], [`gaussian_kl`]: the mean-field posterior's `σ = softplus(ρ)` and the
//!   closed-form Gaussian KL, each one pass.
//! - [`sparse_vd`]: sparse variational dropout's divergence and its gradients, and its
//!   `σ = e^{½ log σ²}`, each one pass.
//! - [`dropout`]: inverted dropout with given draws (MC dropout's layer), one pass each way.
//! - [`gates`]: Bernoulli gates on a layer's input units with the straight-through gradient,
//!   one pass forward and one per gradient.
//! - [`variational_dropout`]: variational dropout's divergence (Kingma et al. 2015's polynomial
//!   fit) and its gradient, and `σ = √α |θ|` with its gradients, each one pass.

pub mod activation;
pub mod affine;
pub mod alloc_cache;
pub mod bias;
pub mod conv;
mod conv_direct;
mod conv_lanes;
mod conv_taps;
mod cpu;
pub mod double_backprop;
pub mod dropout;
pub mod gates;
pub mod gaussian_kl;
pub mod inner;
pub mod lrt;
pub mod lrt_sample;
pub mod matmul;
pub mod norm;
pub mod optim;
pub mod pool;
pub mod runtime;
pub mod shortcut;
pub mod softplus;
pub mod sparse_vd;
pub mod variational_dropout;
mod vmath;

/// Helpers of the crate's unit tests.
#[cfg(test)]
pub(crate) mod test_util {
    use candle_core::{DType, Tensor};

    /// Every entry of `t`, any shape, as the bits of its f64 value: equal vectors mean the same
    /// values to the bit (an f32 widens exactly).
    pub(crate) fn bits(t: &Tensor) -> Vec<u64> {
        t.flatten_all()
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
            .to_vec1::<f64>()
            .unwrap()
            .iter()
            .map(|v| v.to_bits())
            .collect()
    }
}
