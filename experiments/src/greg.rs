//! The growing-regularisation phase of `secateur train` (`[greg]` in the config; Wang, Qin, Zhang
//! & Fu 2021): start from given weights, train with the growing penalty of
//! `secateur_pruning::greg::GReg` at a constant learning rate until its schedule ends, and return
//! the masks of the regularised groups, applied. `commands::train` then trains the masked network
//! for `train.epochs` (the paper's fine-tuning). The phase trains whole epochs: the iterations
//! after the schedule ends (fewer than one epoch) run without the penalty, before the cut.
//!
//! At `granularity = "filter"` the groups are the structured groups of
//! `secateur_pruning::structured` (only layers that form them are regularised: not the
//! classifier, not a ResNet's residual-sum layers), and the masks returned carry everything a
//! pruned filter owns: its bias and batch-norm γ, β, and the next layer's input channels, so that
//! FLOP counts are those of the smaller network and `secateur compact` can build it.

use crate::atomic;
use crate::commands::TrainingSetup;
use crate::config::{GregMethod, StudyConfig};
use crate::data::{ImageSet, Normalizer};
use crate::error::{ExpError, Result};
use crate::observe::Progress;
use crate::seed_stream::SeedStream;
use candle_core::Device;
use secateur_bayes::{Module, ParamStore};
use secateur_inference::schedule::Schedule;
use secateur_inference::train::{Observer, TrainSettings};
use secateur_pruning::greg::{GReg, Granularity, Phase};
use secateur_pruning::structured::StructuredMask;
use secateur_pruning::{Allocation, Exclusions, MaskSet};

/// What the phase did, for `metrics.json`.
#[derive(Debug, Clone)]
pub struct GregSummary {
    /// Iterations the schedule needs.
    pub schedule_iterations: usize,
    /// Epochs trained (whole epochs covering the schedule).
    pub epochs: usize,
    /// λ at the end.
    pub final_lambda: f64,
    /// Training loss of the last epoch (penalty not included).
    pub final_train_loss: f64,
}

/// Runs the regularisation phase on `net` / `store` (see the module documentation); returns the
/// masks, already applied to `store`.
pub fn regularise(
    cfg: &StudyConfig,
    net: &dyn Module,
    store: &ParamStore,
    train_set: &ImageSet,
    norm: &Normalizer,
    dev: &Device,
    quiet: bool,
) -> Result<(MaskSet, GregSummary)> {
    let g = &cfg.greg;
    if let Some(path) = &g.weights {
        let w = atomic::read_safetensors(path)?;
        store
            .load(&w)
            .map_err(|e| ExpError::config("greg.weights", format!("{}: {e}", path.display())))?;
    }
    let input = [train_set.channels, train_set.height, train_set.width];
    let classes = train_set.n_classes as usize;
    let geom = crate::commands::geometry(cfg, input, classes)?;
    let mut exclude = Exclusions {
        first_layer: g.keep_first,
        last_layer: g.keep_last,
        ..Default::default()
    }
    .resolve(Some(&geom))?;
    // filters are the structured groups: only layers that form groups (not the classifier,
    // not a ResNet's residual-sum layers) are regularised, and the final masks carry every
    // tensor a pruned filter owns
    let coupling = match g.granularity {
        Granularity::Filter => {
            let c = crate::commands::coupling(cfg, input, classes)?;
            for l in &geom.layers {
                if c.layers.iter().all(|grp| grp.name != l.name) {
                    exclude.insert(l.name.clone());
                }
            }
            Some(c)
        }
        Granularity::Weight => None,
    };
    let allocation = Allocation::new(g.sparsity, g.scope).with_exclude(exclude);
    let schedule = g.schedule();
    let (granularity, two) = (g.granularity, g.method == GregMethod::Greg2);
    let mut reg = if two {
        GReg::greg2(store, granularity, allocation, schedule)?
    } else {
        GReg::greg1(store, granularity, allocation, schedule)?
    };
    let iterations = schedule.iterations(two)?;
    let steps_per_epoch = train_set.len().div_ceil(cfg.data.batch_size.max(1)).max(1);
    let epochs = iterations.div_ceil(steps_per_epoch);
    let mut setup = TrainingSetup::new(cfg, train_set.len())?.with_stream(SeedStream::Greg);
    setup.settings = TrainSettings {
        epochs,
        lr: g.lr,
        schedule: Schedule::Constant { warmup: 0 },
        ..setup.settings
    };
    let state = {
        let mut trainer = setup.trainer(net, store)?;
        trainer.set_hook(Box::new(&mut reg));
        let mut batches = setup.image_batches(train_set, norm, dev)?;
        let mut progress = Progress::new(quiet);
        let mut observers: Vec<&mut dyn Observer> = vec![&mut progress];
        trainer.fit(&mut batches, None, &mut observers)?
    };
    if reg.phase() != Phase::Done {
        return Err(ExpError::config(
            "greg",
            format!("the schedule did not end after {epochs} epochs ({iterations} iterations); this is a bug"),
        ));
    }
    let masks = reg
        .masks()
        .cloned()
        .ok_or_else(|| ExpError::config("greg", "no groups were picked; this is a bug"))?;
    let masks = match &coupling {
        Some(c) => StructuredMask::from_mask_set(c, &masks)?.expand(c)?.to_mask_set()?,
        None => masks,
    };
    masks.apply(store)?;
    let summary = GregSummary {
        schedule_iterations: iterations,
        epochs,
        final_lambda: reg.lambda(),
        final_train_loss: state.history.last().map(|r| r.train_loss).unwrap_or(f64::NAN),
    };
    Ok((masks, summary))
}
