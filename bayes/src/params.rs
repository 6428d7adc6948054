//! Named parameters and buffers.
//!
//! Every parameter has a stable PyTorch-style name (`features.0.weight`), so that weights, scores
//! and masks can be exchanged with PyTorch through safetensors. Parameters are trainable
//! [`Var`]s; buffers (batch-norm running statistics) are stored beside them but never handed to
//! an optimiser. Both live in `BTreeMap`s, so iteration is always in sorted name order, never in
//! hash order: a requirement for bit-identical runs.

use crate::divergence::Divergence;
use crate::init::Init;
use crate::rng::SeededRng;
use crate::variational::{PosteriorStats, Variational};
use candle_core::{DType, Device, Result, Tensor, Var};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

#[derive(Default)]
struct StoreInner {
    params: BTreeMap<String, Var>,
    buffers: BTreeMap<String, Var>,
    variational: BTreeMap<String, Arc<dyn Variational>>,
}

/// The named parameters and buffers of a model (cheap to clone: clones share the storage).
#[derive(Clone, Default)]
pub struct ParamStore {
    inner: Arc<Mutex<StoreInner>>,
}

fn lock(m: &Mutex<StoreInner>) -> MutexGuard<'_, StoreInner> {
    // A poisoned lock only means another thread panicked while holding it; the maps are intact.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ParamStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// The trainable parameters, by name in sorted order.
    pub fn params(&self) -> BTreeMap<String, Var> {
        lock(&self.inner).params.clone()
    }

    /// The buffers (non-trainable state such as running statistics), by name in sorted order.
    pub fn buffers(&self) -> BTreeMap<String, Var> {
        lock(&self.inner).buffers.clone()
    }

    /// The trainable parameters in sorted name order.
    pub fn trainable(&self) -> Vec<Var> {
        lock(&self.inner).params.values().cloned().collect()
    }

    /// A parameter or buffer by name.
    pub fn get(&self, name: &str) -> Option<Var> {
        let g = lock(&self.inner);
        g.params.get(name).or_else(|| g.buffers.get(name)).cloned()
    }

    /// Number of scalar trainable parameters.
    pub fn num_params(&self) -> usize {
        lock(&self.inner).params.values().map(|v| v.elem_count()).sum()
    }

    /// Number of non-zero scalar trainable parameters.
    pub fn num_nonzero(&self) -> Result<usize> {
        let mut n = 0usize;
        for v in lock(&self.inner).params.values() {
            let nz = v
                .as_tensor()
                .ne(0f64)?
                .to_dtype(DType::F32)?
                .sum_all()?
                .to_scalar::<f32>()?;
            n += nz as usize;
        }
        Ok(n)
    }

    /// Every parameter and buffer as a tensor, by name: what a checkpoint saves.
    pub fn tensors(&self) -> BTreeMap<String, Tensor> {
        let g = lock(&self.inner);
        g.params
            .iter()
            .chain(g.buffers.iter())
            .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
            .collect()
    }

    /// Copies values into the store. Strict: every stored name must be present with the same
    /// shape and no unknown name may appear; the error names the offending tensor.
    pub fn load(&self, tensors: &HashMap<String, Tensor>) -> Result<()> {
        let g = lock(&self.inner);
        for name in tensors.keys() {
            if !g.params.contains_key(name) && !g.buffers.contains_key(name) {
                candle_core::bail!("unexpected tensor `{name}`: the model has no parameter or buffer of that name");
            }
        }
        for (name, var) in g.params.iter().chain(g.buffers.iter()) {
            let t = tensors
                .get(name)
                .ok_or_else(|| candle_core::Error::Msg(format!("missing tensor `{name}`")))?;
            if t.dims() != var.dims() {
                candle_core::bail!(
                    "tensor `{name}` has shape {:?}, the model expects {:?}",
                    t.dims(),
                    var.dims()
                );
            }
            var.set(&t.to_dtype(var.dtype())?.to_device(var.device())?)?;
        }
        Ok(())
    }

    /// Registers a probabilistic layer under `name` (its path, e.g. `features.0`), so that
    /// [`ParamStore::divergence`] and [`ParamStore::posterior_stats`] reach it. Refuses a name
    /// registered twice.
    pub fn register_variational(&self, name: impl Into<String>, layer: Arc<dyn Variational>) -> Result<()> {
        let name = name.into();
        let mut g = lock(&self.inner);
        if g.variational.contains_key(&name) {
            candle_core::bail!("duplicate variational layer `{name}`");
        }
        g.variational.insert(name, layer);
        Ok(())
    }

    /// The registered probabilistic layers, in sorted name order.
    pub fn variational_layers(&self) -> Vec<(String, Arc<dyn Variational>)> {
        lock(&self.inner)
            .variational
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// The total divergence of every registered layer, **summed** (a scalar tensor,
    /// differentiable), and each layer's share as an `f64`, by layer name.
    ///
    /// Layers are visited in sorted name order, so Monte Carlo divergences draw from `rng` in a
    /// reproducible order. With no probabilistic layer the total is a zero scalar in the dtype
    /// and on the device of the first parameter (f32 on the CPU for an empty store).
    pub fn divergence(&self, how: &Divergence, rng: &mut SeededRng) -> Result<(Tensor, BTreeMap<String, f64>)> {
        let layers = self.variational_layers();
        let mut per_layer = BTreeMap::new();
        let mut total: Option<Tensor> = None;
        for (name, layer) in layers {
            let d = layer
                .divergence(how, rng)
                .map_err(|e| candle_core::Error::Msg(format!("divergence of layer `{name}`: {e}")))?;
            per_layer.insert(name, d.to_dtype(DType::F64)?.to_scalar::<f64>()?);
            total = Some(match total {
                None => d,
                Some(t) => (t + d)?,
            });
        }
        let total = match total {
            Some(t) => t,
            None => {
                let g = lock(&self.inner);
                match g.params.values().next() {
                    Some(v) => Tensor::zeros((), v.dtype(), v.device())?,
                    None => Tensor::zeros((), DType::F32, &Device::Cpu)?,
                }
            }
        };
        Ok((total, per_layer))
    }

    /// The analytic divergence [`Divergence::Kl`] of every registered layer, summed: the `D` of
    /// the ELBO (a differentiable scalar; a zero scalar without probabilistic layers). Analytic
    /// divergences draw nothing, so no generator is needed; a layer whose `kl` has no closed form
    /// (a mean-field layer under a non-Gaussian prior) refuses with an error naming it.
    ///
    /// ```
    /// use secateur_bayes::layers::mean_field::{BayesLinear, BayesLinearConfig};
    /// use secateur_bayes::{ParamBuilder, ParamStore, SeededRng};
    /// use candle_core::{DType, Device};
    /// let store = ParamStore::new();
    /// let pb = ParamBuilder::new(store.clone(), SeededRng::new(0), DType::F32, Device::Cpu);
    /// let _fc = BayesLinear::new(&pb.pp("fc"), BayesLinearConfig::new(3, 2))?;
    /// assert!(store.kl()?.to_scalar::<f32>()? > 0.0);
    /// # Ok::<(), candle_core::Error>(())
    /// ```
    pub fn kl(&self) -> Result<Tensor> {
        // `Divergence::Kl` never draws (every layer computes it in closed form): the generator
        // below is a placeholder of the shared signature and is never advanced.
        let mut unused = SeededRng::new(0);
        Ok(self.divergence(&Divergence::Kl, &mut unused)?.0)
    }

    /// Test-time parameter counts `(kept, total)`: the entries of the parameters of the
    /// test-time network, and how many of them are non-zero and kept by their layer's test-time
    /// rule ([`Variational::test_time_weights`]: a posterior mean stands for its weight; sparse
    /// VD drops `log α ≥ threshold`, spike-and-slab nodes and gates below their thresholds drop
    /// their weights). The other parameters of a probabilistic layer (variances, rates, logits,
    /// gate parameters) are not counted; every parameter outside probabilistic layers counts,
    /// non-zero entries as kept. For a deterministic model: the non-zero trainable parameters.
    pub fn test_time_params(&self) -> Result<(usize, usize)> {
        let mut rules: BTreeMap<String, Option<Tensor>> = BTreeMap::new();
        let mut layer_paths = Vec::new();
        for (name, layer) in self.variational_layers() {
            for w in layer.test_time_weights()? {
                rules.insert(w.name, w.keep);
            }
            layer_paths.push(name);
        }
        // a parameter created under a probabilistic layer's path (`fc1.` for `fc1`; for a layer
        // at the root, a name without a dot)
        let in_layer = |p: &str| {
            layer_paths.iter().any(|l| {
                if l.is_empty() {
                    !p.contains('.')
                } else {
                    p.strip_prefix(l.as_str()).is_some_and(|r| r.starts_with('.'))
                }
            })
        };
        let count =
            |t: &Tensor| -> Result<usize> { Ok(t.to_dtype(DType::F64)?.sum_all()?.to_scalar::<f64>()? as usize) };
        let (mut kept, mut total) = (0usize, 0usize);
        for (name, var) in self.params() {
            let rule = match rules.get(&name) {
                Some(rule) => rule.as_ref(),
                None if in_layer(&name) => continue,
                None => None,
            };
            let t = var.as_tensor();
            total += t.elem_count();
            let nonzero = t.ne(0f64)?;
            kept += count(&match rule {
                Some(keep) => nonzero.mul(keep)?,
                None => nonzero,
            })?;
        }
        Ok((kept, total))
    }

    /// Units removed at test time over every probabilistic layer that selects units
    /// ([`Variational::removed_units`]), by layer name in sorted order.
    pub fn removed_units(&self) -> Result<Vec<(String, usize, usize)>> {
        let mut out = Vec::new();
        for (name, layer) in self.variational_layers() {
            if let Some((removed, total)) = layer.removed_units()? {
                out.push((name, removed, total));
            }
        }
        Ok(out)
    }

    /// Per layer that selects units: the units kept at test time and their mean posterior
    /// inclusion probability ([`Variational::removed_units`], [`Variational::unit_inclusion`]), by
    /// layer name in sorted order. A training run records this every epoch, so that its history
    /// shows how units leave.
    pub fn unit_summaries(&self) -> Result<Vec<UnitSummary>> {
        let mut out = Vec::new();
        for (name, layer) in self.variational_layers() {
            if let Some((removed, total)) = layer.removed_units()? {
                let mean_inclusion = match layer.unit_inclusion()? {
                    Some(g) => Some(g.to_dtype(DType::F64)?.mean_all()?.to_scalar::<f64>()?),
                    None => None,
                };
                out.push(UnitSummary {
                    layer: name,
                    kept: total - removed,
                    total,
                    mean_inclusion,
                });
            }
        }
        Ok(out)
    }

    /// Posterior statistics of every probabilistic parameter of every registered layer (layers in
    /// sorted name order, each layer's parameters in its own order).
    pub fn posterior_stats(&self) -> Result<Vec<PosteriorStats>> {
        let mut out = Vec::new();
        for (_, layer) in self.variational_layers() {
            out.extend(layer.posterior_stats()?);
        }
        Ok(out)
    }

    fn insert(&self, name: String, var: Var, buffer: bool) -> Result<()> {
        let mut g = lock(&self.inner);
        if g.params.contains_key(&name) || g.buffers.contains_key(&name) {
            candle_core::bail!("duplicate parameter name `{name}`");
        }
        if buffer {
            g.buffers.insert(name, var);
        } else {
            g.params.insert(name, var);
        }
        Ok(())
    }
}

/// Creates parameters under a path, drawing initial values from the run's seeded generator.
///
/// Modelled on candle-nn's `VarBuilder`: `pb.pp("fc1").param("weight", …)` creates `fc1.weight`.
///
/// ```
/// use secateur_bayes::{ParamBuilder, ParamStore, SeededRng, Init};
/// use candle_core::{DType, Device};
/// let store = ParamStore::new();
/// let pb = ParamBuilder::new(store.clone(), SeededRng::new(0), DType::F32, Device::Cpu);
/// let w = pb.pp("fc1").param("weight", &[3, 4], Init::TorchDefault).unwrap();
/// assert_eq!(w.dims(), &[3, 4]);
/// assert!(store.get("fc1.weight").is_some());
/// ```
#[derive(Clone)]
pub struct ParamBuilder {
    store: ParamStore,
    rng: Arc<Mutex<SeededRng>>,
    prefix: String,
    dtype: DType,
    device: Device,
}

impl ParamBuilder {
    /// A builder at the root path of `store`, drawing from `rng`.
    pub fn new(store: ParamStore, rng: SeededRng, dtype: DType, device: Device) -> Self {
        Self {
            store,
            rng: Arc::new(Mutex::new(rng)),
            prefix: String::new(),
            dtype,
            device,
        }
    }

    /// A builder one level down: `pp("features").pp("0")` names `features.0.*`.
    pub fn pp(&self, name: impl std::fmt::Display) -> Self {
        let mut b = self.clone();
        b.prefix = self.path(&name.to_string());
        b
    }

    /// The full name of `name` under this builder's path.
    pub fn path(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    /// This builder's path (`features.0`; empty at the root).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Registers a probabilistic layer in the store under this builder's path (see
    /// [`ParamStore::register_variational`]).
    pub fn register_variational(&self, layer: Arc<dyn Variational>) -> Result<()> {
        self.store.register_variational(self.prefix.clone(), layer)
    }

    /// The store parameters are registered in.
    pub fn store(&self) -> &ParamStore {
        &self.store
    }

    /// The dtype of new parameters.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The device of new parameters.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The state of the initialisation generator (draws so far continue from here).
    pub fn rng_state(&self) -> crate::rng::RngState {
        self.rng.lock().unwrap_or_else(|e| e.into_inner()).state()
    }

    fn draw(&self, shape: &[usize], init: Init) -> Result<Tensor> {
        let mut rng = self.rng.lock().unwrap_or_else(|e| e.into_inner());
        init.sample(shape, &mut rng, self.dtype, &self.device)
    }

    /// Refuses a tensor whose size overflows or that cannot fit in the memory available now
    /// (`MemAvailable` of `/proc/meminfo`; its initialisation draws in f64, so twice the f64
    /// size is asked for), naming the parameter, instead of letting the allocator abort the
    /// process.
    fn check_size(&self, name: &str, shape: &[usize]) -> Result<()> {
        let name = self.path(name);
        let n = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        let bytes = n.and_then(|n| n.checked_mul(2 * DType::F64.size_in_bytes()));
        let Some(bytes) = bytes else {
            candle_core::bail!(
                "model parameter `{name}` of shape {shape:?} has more entries than this machine can address"
            );
        };
        if let Some(avail) = available_memory() {
            if bytes as u64 > avail {
                candle_core::bail!(
                    "model parameter `{name}` of shape {shape:?} needs {:.1} GB to initialise; {:.1} GB of memory is \
                     available (check the model's sizes, e.g. model.hidden)",
                    bytes as f64 / 1e9,
                    avail as f64 / 1e9
                );
            }
        }
        Ok(())
    }

    /// Creates the trainable parameter `name` and returns a tensor sharing its storage (updates
    /// by the optimiser are seen through it).
    pub fn param(&self, name: &str, shape: &[usize], init: Init) -> Result<Tensor> {
        self.check_size(name, shape)?;
        let var = Var::from_tensor(&self.draw(shape, init)?)?;
        let t = var.as_tensor().clone();
        self.store.insert(self.path(name), var, false)?;
        Ok(t)
    }

    /// Creates the buffer `name` (stored and checkpointed, never trained) and returns its [`Var`]
    /// so the owning layer can update it.
    pub fn buffer(&self, name: &str, shape: &[usize], init: Init) -> Result<Var> {
        self.check_size(name, shape)?;
        let var = Var::from_tensor(&self.draw(shape, init)?)?;
        self.store.insert(self.path(name), var.clone(), true)?;
        Ok(var)
    }
}

/// Bytes of memory available to new allocations (`MemAvailable`), where the system says.
fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A parameter too large for any machine (or whose size overflows) is refused with its
    /// name, before anything is allocated (`model.hidden=[100000000]` used to abort the process).
    #[test]
    fn impossible_sizes_are_refused_by_name() {
        let pb = ParamBuilder::new(ParamStore::new(), SeededRng::new(0), DType::F32, Device::Cpu);
        let e = pb
            .pp("fc1")
            .param("weight", &[1 << 40, 1 << 12], Init::Const(0.0))
            .unwrap_err()
            .to_string();
        assert!(e.contains("fc1.weight") && e.contains("GB"), "{e}");
        let e = pb
            .pp("fc2")
            .param("weight", &[usize::MAX, 3], Init::Const(0.0))
            .unwrap_err()
            .to_string();
        assert!(e.contains("fc2.weight") && e.contains("address"), "{e}");
        assert!(pb.pp("fc3").param("weight", &[3, 4], Init::Const(0.0)).is_ok());
    }

    #[test]
    fn names_are_sorted_and_duplicates_refused() -> Result<()> {
        let store = ParamStore::new();
        let pb = ParamBuilder::new(store.clone(), SeededRng::new(0), DType::F32, Device::Cpu);
        pb.pp("b").param("weight", &[2], Init::Const(1.0))?;
        pb.pp("a").param("weight", &[3], Init::Const(2.0))?;
        pb.pp("a").buffer("running_mean", &[3], Init::Const(0.0))?;
        assert!(pb.pp("a").param("weight", &[3], Init::Const(2.0)).is_err());
        let names: Vec<_> = store.params().into_keys().collect();
        assert_eq!(names, vec!["a.weight", "b.weight"]);
        assert_eq!(store.num_params(), 5);
        Ok(())
    }

    #[test]
    fn load_is_strict_and_updates_shared_tensors() -> Result<()> {
        let store = ParamStore::new();
        let pb = ParamBuilder::new(store.clone(), SeededRng::new(0), DType::F32, Device::Cpu);
        let w = pb.param("w", &[2], Init::Const(0.0))?;
        let mut m = HashMap::new();
        m.insert("w".to_string(), Tensor::new(&[3f32, 4.], &Device::Cpu)?);
        store.load(&m)?;
        assert_eq!(w.to_vec1::<f32>()?, vec![3., 4.]);
        m.insert("x".to_string(), Tensor::new(&[1f32], &Device::Cpu)?);
        assert!(store.load(&m).is_err());
        m.remove("x");
        m.insert("w".to_string(), Tensor::new(&[1f32], &Device::Cpu)?);
        assert!(store.load(&m).is_err());
        Ok(())
    }
}

/// One layer's selected units at a moment of training ([`ParamStore::unit_summaries`]).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct UnitSummary {
    /// The layer's path in the store (e.g. `fc1`).
    pub layer: String,
    /// Units kept by the layer's test-time rule (spike-and-slab: `γ ≥ ½`).
    pub kept: usize,
    /// Units the layer selects among.
    pub total: usize,
    /// The mean posterior inclusion probability over the layer's units, where the layer has one.
    pub mean_inclusion: Option<f64>,
}
