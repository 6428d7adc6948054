//! Numerically stable elementwise functions that candle-core lacks (differentiable: built from
//! candle ops, so autograd goes through them).

use candle_core::{Result, Tensor};

/// Below this argument `softplus(x)` is computed as `exp(x)` (relative error `≈ exp(x)/2`,
/// under 2e-7 here), which keeps `softplus` strictly positive in f32 for very negative `x`.
const SOFTPLUS_EXP_BELOW: f64 = secateur_kernels::softplus::EXP_BELOW;

/// `softplus(x) = log(1 + eˣ)`, computed stably as `max(x, 0) + log(1 + e^{−|x|})`, and as `eˣ`
/// for `x < −15` so that the result never rounds to zero.
///
/// ```
/// # use candle_core::{Tensor, Device};
/// let x = Tensor::new(&[-30f64, 0., 30.], &Device::Cpu).unwrap();
/// let y: Vec<f64> = secateur_bayes::math::softplus(&x).unwrap().to_vec1().unwrap();
/// assert!((y[0] - (-30f64).exp()).abs() < 1e-20 && (y[1] - 2f64.ln()).abs() < 1e-12 && (y[2] - 30.).abs() < 1e-12);
/// ```
pub fn softplus(x: &Tensor) -> Result<Tensor> {
    // One fused pass on the CPU (secateur-kernels, same definition); candle ops elsewhere.
    if let Some(y) = secateur_kernels::softplus::softplus(x)? {
        return Ok(y);
    }
    let stable = (x.relu()? + (x.abs()?.neg()?.exp()? + 1.0)?.log()?)?;
    let tiny = x.minimum(SOFTPLUS_EXP_BELOW)?.exp()?;
    x.lt(SOFTPLUS_EXP_BELOW)?.where_cond(&tiny, &stable)
}

/// The inverse of softplus for a positive scalar: `ρ = log(e^σ − 1)` (`= log(expm1(σ))`), so that
/// `softplus(ρ) = σ`.
pub fn inv_softplus(sigma: f64) -> f64 {
    if sigma > 30.0 {
        sigma
    } else {
        sigma.exp_m1().ln()
    }
}

/// The logistic sigmoid `σ(x) = 1 / (1 + e^{−x})`, computed as `(1 + tanh(x/2)) / 2` (stable for
/// every `x`).
pub fn sigmoid(x: &Tensor) -> Result<Tensor> {
    (x * 0.5)?.tanh()?.affine(0.5, 0.5)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn softplus_and_inverse_round_trip() -> Result<()> {
        for s in [1e-8, 1e-3, 0.5, 3.0, 40.0] {
            let rho = Tensor::new(&[inv_softplus(s)], &Device::Cpu)?;
            let back = softplus(&rho)?.to_vec1::<f64>()?[0];
            assert!((back - s).abs() <= 1e-9 * s.max(1.0), "{s} -> {back}");
        }
        Ok(())
    }

    #[test]
    fn sigmoid_matches_definition() -> Result<()> {
        let xs = [-20.0f64, -1.0, 0.0, 2.5, 20.0];
        let y = sigmoid(&Tensor::new(&xs, &Device::Cpu)?)?.to_vec1::<f64>()?;
        for (x, y) in xs.iter().zip(y) {
            assert!((y - 1.0 / (1.0 + (-x).exp())).abs() < 1e-15);
        }
        Ok(())
    }
}
