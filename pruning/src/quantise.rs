//! Post-training quantisation of weights to int8, per output channel, symmetric.
//!
//! The first family of the resource-efficiency survey: a trained network's weights stored in 8
//! bits. For a weight `W` of shape `[O, …]` (a linear layer's `[O, I]`, a convolution's
//! `[O, I, kh, kw]`) each output channel `o` gets its own scale
//!
//! ```text
//! s_o = max_j |W[o, j]| / 127,    q[o, j] = clamp(round(W[o, j] / s_o), −127, 127) ∈ int8,
//! Ŵ[o, j] = s_o · q[o, j],        |W[o, j] − Ŵ[o, j]| ≤ s_o / 2
//! ```
//!
//! (symmetric: zero is exact, no zero point; −128 unused, so that the range is symmetric, as in
//! PyTorch's `per_channel_symmetric` observers and Krishnamoorthi 2018, "Quantizing deep
//! convolutional networks for efficient inference"; a channel of zeros gets `s_o = 0`, `q = 0`).
//! Rounding is to the nearest integer, halves away from zero (`f32::round`); PyTorch rounds
//! halves to even, which differs only on exact halves.
//!
//! **Weight-only.** Activations stay in floating point, so no calibration pass is needed: a
//! layer computes `y_o = s_o · Σ_j q[o, j] x_j`, which equals `Σ_j Ŵ[o, j] x_j` (what
//! [`QuantisedWeights::apply`] makes the network compute, with the dequantised weights `Ŵ`) up
//! to the order of floating-point additions. Biases and batch-norm parameters stay in f32
//! (they are a small share of the parameters).

use crate::geometry::Geometry;
use crate::prunable::resolve;
use candle_core::{DType, Device, Result, Tensor};
use secateur_bayes::ParamStore;
use std::collections::BTreeMap;

/// Largest magnitude of a symmetric int8 code.
pub const QMAX: f32 = 127.0;

/// One weight tensor in int8 with a scale per output channel.
#[derive(Debug, Clone, PartialEq)]
pub struct Int8PerChannel {
    /// Shape of the weight (`[O, …]`).
    pub shape: Vec<usize>,
    /// Codes, row-major, `O · (numel / O)` entries.
    pub q: Vec<i8>,
    /// Scale of each output channel, `O` entries.
    pub scales: Vec<f32>,
}

impl Int8PerChannel {
    /// Quantises `w` (rank ≥ 2, any float dtype) per output channel (see the
    /// [module documentation](self)). A non-finite entry is refused.
    pub fn quantise(w: &Tensor) -> Result<Self> {
        let shape = w.dims().to_vec();
        if shape.len() < 2 || shape[0] == 0 {
            candle_core::bail!("quantise: expected a weight of rank 2 or more, got shape {shape:?}");
        }
        let o = shape[0];
        let rows = w.to_dtype(DType::F32)?.reshape((o, ()))?.to_vec2::<f32>()?;
        let mut q = Vec::with_capacity(w.elem_count());
        let mut scales = Vec::with_capacity(o);
        for row in rows {
            if row.iter().any(|x| !x.is_finite()) {
                candle_core::bail!("quantise: the weight has a non-finite entry");
            }
            let m = row.iter().fold(0f32, |a, x| a.max(x.abs()));
            let s = m / QMAX;
            scales.push(s);
            q.extend(row.iter().map(|&x| {
                if s > 0.0 {
                    (x / s).round().clamp(-QMAX, QMAX) as i8
                } else {
                    0
                }
            }));
        }
        Ok(Self { shape, q, scales })
    }

    /// `Ŵ = s_o · q`, f32, in the weight's shape.
    pub fn dequantise(&self, device: &Device) -> Result<Tensor> {
        let o = self.shape[0];
        let per = self.q.len() / o.max(1);
        let v: Vec<f32> = self
            .q
            .chunks(per.max(1))
            .zip(&self.scales)
            .flat_map(|(row, &s)| row.iter().map(move |&c| s * f32::from(c)))
            .collect();
        Tensor::from_vec(v, self.shape.as_slice(), device)
    }

    /// Bytes of the codes and scales (`numel + 4·O`).
    pub fn bytes(&self) -> usize {
        self.q.len() + 4 * self.scales.len()
    }
}

/// Every weight layer of a network quantised, by logical weight name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QuantisedWeights {
    /// The int8 weights.
    pub weights: BTreeMap<String, Int8PerChannel>,
}

impl QuantisedWeights {
    /// Quantises the weight of every layer of `geometry` in `store` (a deterministic store:
    /// a Bayesian layer's `weight_mu` is refused, its posterior is not a weight).
    pub fn quantise(store: &ParamStore, geometry: &Geometry) -> Result<Self> {
        let mut weights = BTreeMap::new();
        for l in &geometry.layers {
            let (stored, var) = resolve(store, &l.name)?;
            if stored != l.name {
                candle_core::bail!(
                    "quantise: `{}` is stored as `{stored}` (a Bayesian layer); quantise a deterministic network",
                    l.name
                );
            }
            weights.insert(l.name.clone(), Int8PerChannel::quantise(var.as_tensor())?);
        }
        Ok(Self { weights })
    }

    /// Sets every quantised weight of `store` to its dequantised value `Ŵ`: the network then
    /// computes what int8 weights with floating-point accumulation compute.
    pub fn apply(&self, store: &ParamStore) -> Result<()> {
        for (name, w) in &self.weights {
            let (_, var) = resolve(store, name)?;
            if var.dims() != w.shape.as_slice() {
                candle_core::bail!(
                    "quantised `{name}` has shape {:?}, the store's has {:?}",
                    w.shape,
                    var.dims()
                );
            }
            var.set(&w.dequantise(var.device())?.to_dtype(var.dtype())?)?;
        }
        Ok(())
    }

    /// Bytes of the int8 weights with their scales.
    pub fn bytes(&self) -> usize {
        self.weights.values().map(Int8PerChannel::bytes).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secateur_bayes::{ParamBuilder, SeededRng};
    use secateur_models::{build, Deterministic, ModelSpec};

    /// Against the closed form: every entry within half a step of its channel's scale, the
    /// largest magnitude of each channel exact (code ±127), zero exact, a channel of zeros kept
    /// at zero, and values on the grid round-tripping exactly.
    #[test]
    fn per_channel_error_is_at_most_half_a_step() -> Result<()> {
        let mut rng = SeededRng::new(3);
        let mut w = rng.randn(&[8, 3, 5, 5], DType::F32, &Device::Cpu)?;
        // channel 2 ten times larger, channel 5 all zero
        let scale: Vec<f32> = (0..8)
            .map(|o| match o {
                2 => 10.0,
                5 => 0.0,
                _ => 1.0,
            })
            .collect();
        w = w.broadcast_mul(&Tensor::from_vec(scale, (8, 1, 1, 1), &Device::Cpu)?)?;
        let q = Int8PerChannel::quantise(&w)?;
        let d = q.dequantise(&Device::Cpu)?;
        let (wv, dv) = (
            w.reshape((8, 75))?.to_vec2::<f32>()?,
            d.reshape((8, 75))?.to_vec2::<f32>()?,
        );
        for o in 0..8 {
            let m = wv[o].iter().fold(0f32, |a, x| a.max(x.abs()));
            assert!((q.scales[o] - m / 127.0).abs() <= f32::EPSILON * m);
            let mut worst = 0f32;
            for j in 0..75 {
                let e = (wv[o][j] - dv[o][j]).abs();
                worst = worst.max(e / q.scales[o].max(f32::MIN_POSITIVE));
                assert!(
                    e <= q.scales[o] / 2.0 * (1.0 + 1e-5) + 1e-12,
                    "({o}, {j}): {e} vs {}",
                    q.scales[o]
                );
            }
            if o != 5 {
                let top = (0..75)
                    .max_by(|&a, &b| wv[o][a].abs().total_cmp(&wv[o][b].abs()))
                    .unwrap_or(0);
                assert_eq!(q.q[o * 75 + top].unsigned_abs(), 127);
                // the error is not always tiny: some entry is at least a quarter step off
                assert!(worst > 0.25, "channel {o}: worst error {worst} steps");
            }
        }
        assert!(q.q[5 * 75..6 * 75].iter().all(|&c| c == 0) && q.scales[5] == 0.0);
        // a weight on the grid comes back exactly
        let again = Int8PerChannel::quantise(&d)?;
        assert_eq!(again.q, q.q);
        let back = again.dequantise(&Device::Cpu)?.flatten_all()?.to_vec1::<f32>()?;
        assert_eq!(back, d.flatten_all()?.to_vec1::<f32>()?);
        assert_eq!(q.bytes(), 8 * 75 + 4 * 8);
        Ok(())
    }

    #[test]
    fn refuses_vectors_and_non_finite_weights() -> Result<()> {
        assert!(Int8PerChannel::quantise(&Tensor::ones(4, DType::F32, &Device::Cpu)?).is_err());
        let w = Tensor::new(&[[1f32, f32::NAN]], &Device::Cpu)?;
        assert!(Int8PerChannel::quantise(&w).is_err());
        Ok(())
    }

    /// Every weight layer of LeNet-5 is quantised; applying the result leaves each weight on its
    /// grid, biases untouched, and the weight bytes about a quarter of f32's.
    #[test]
    fn quantises_every_weight_layer() -> Result<()> {
        let spec = ModelSpec::new("lenet5", [1, 28, 28], 10);
        let store = ParamStore::new();
        let pb = ParamBuilder::new(store.clone(), SeededRng::new(0), DType::F32, Device::Cpu);
        build(&spec, &Deterministic, &pb)?;
        let g = crate::geometry::record(&spec)?;
        let bias = store
            .get("fc1.bias")
            .map(|v| v.as_tensor().to_vec1::<f32>())
            .transpose()?;
        let q = QuantisedWeights::quantise(&store, &g)?;
        assert_eq!(q.weights.len(), 5);
        q.apply(&store)?;
        let after = QuantisedWeights::quantise(&store, &g)?;
        for (n, w) in &q.weights {
            assert_eq!(after.weights[n].q, w.q, "{n}");
        }
        assert_eq!(
            store
                .get("fc1.bias")
                .map(|v| v.as_tensor().to_vec1::<f32>())
                .transpose()?,
            bias
        );
        let f32_bytes: usize = q.weights.values().map(|w| 4 * w.q.len()).sum();
        assert!(q.bytes() * 4 < f32_bytes + 4 * 4 * 300, "{} vs {f32_bytes}", q.bytes());
        Ok(())
    }
}
