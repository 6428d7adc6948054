//! Softmax and the softmax cross-entropy loss.

use candle_core::{DType, Result, Tensor, D};

/// Softmax over the last dimension, written with ordinary (differentiable) tensor ops; the
/// row maximum is subtracted first for stability (it cancels, so it is detached).
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    let m = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&m)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}

/// Softmax cross-entropy of `logits: [B, K]` against integer `labels: [B]`, averaged over the batch.
pub fn cross_entropy(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let logp = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    let picked = logp.gather(&labels.to_dtype(DType::U32)?.unsqueeze(1)?, 1)?;
    picked.mean_all()?.neg()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn cross_entropy_matches_hand_value() -> Result<()> {
        // logits [0, ln 3] for label 1: p = 3/4, loss = ln(4/3); label 0: p = 1/4, loss = ln 4.
        let logits = Tensor::new(&[[0f32, 3f32.ln()], [0., 3f32.ln()]], &Device::Cpu)?;
        let labels = Tensor::new(&[1u32, 0], &Device::Cpu)?;
        let l = cross_entropy(&logits, &labels)?.to_scalar::<f32>()?;
        let want = ((4f32 / 3.).ln() + 4f32.ln()) / 2.;
        assert!((l - want).abs() < 1e-6);
        Ok(())
    }
}
