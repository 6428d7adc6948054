//! The compression study (`secateur study compression`): calibration-aware compression curves.
//!
//! Train each model of the study once per seed, then prune the trained network at a grid of
//! sparsities by posterior criteria and by deterministic ones, and evaluate every pruned network
//! without and with a short fine-tune: test accuracy, NLL, ECE and the AUROC of telling an
//! out-of-distribution set from the test set by predictive entropy, against sparsity, one line
//! per (model, criterion), mean ± standard deviation over seeds.
//!
//! ```toml
//! [compression]
//! name = "compression-lenet5"
//! seeds = [0, 1, 2]
//! sparsities = [0.5, 0.7, 0.8, 0.9, 0.95, 0.98]
//! finetune_epochs = 1          # 0: no fine-tune; each cell is evaluated without and with it
//! # finetune_lr = 0.005        # default: a tenth of the model config's optim.lr
//! ood = "uci-digits"           # default: each model config's data.ood
//! samples_per_class = 10       # scoring examples of the data criteria (fisher, posterior-fisher)
//! scope = "global"             # or "layer"
//! keep_last = false            # keep the classifier dense
//! keep_conv = false            # keep the convolutions dense (prune fully connected layers only)
//!
//! [compression.dllp]           # optional: settings of the `dllp` cells (crate::dllp::DllpConfig)
//! particles = 10
//!
//! [[compression.models]]
//! name = "deterministic"
//! config = "fashion-mnist-lenet5.toml"   # a training config, relative to this file
//! set = ["train.epochs=12"]               # `--set` overrides of it
//! criteria = ["magnitude", "fisher"]
//!
//! [[compression.models]]
//! name = "mean-field"
//! config = "fashion-mnist-lenet5.toml"
//! set = ['model.layers="mean-field"', 'optim.kind="adamw"', "optim.lr=1e-3"]
//! criteria = ["snr", "posterior-fisher", "magnitude"]
//! ```
//!
//! Unknown keys are refused, as in every config.
//!
//! **Criteria.** Posterior criteria ([`config::POSTERIOR_CRITERIA`]) read the trained run's
//! posterior: the signal-to-noise ratio `|μ|/σ` (Graves 2011; Blundell et al. 2015; Mohan,
//! Scaife et al. 2022 prune variational networks by it), `−log α` with `log α = log σ² − log μ²`
//! (Molchanov, Ashukha & Vetrov 2017), a gate's inclusion probability, and the Fisher diagonal of
//! the posterior-mean network (Mohan, Scaife et al. 2022). `adam-fisher` reads the trained run's
//! last checkpoint instead (Adam's second moment of each weight's training gradient, the Fisher
//! ranking of Mohan, Scaife et al.'s code) and applies to models trained with Adam. They apply to Bayesian layers that
//! report those statistics, or to a run with a `[posterior]` (SWAG, Laplace: mean and σ only).
//! Deterministic criteria (`magnitude`, `fisher`, `snip`, `lamp`, `random`, …) score the weights
//! (a Bayesian layer's posterior means) and apply to every model. A criterion that does not
//! apply to its model is refused before anything runs, with the reason: when the file is read
//! (a posterior criterion on a model without a posterior; `log-alpha` or `inclusion` on a
//! `[posterior]`; a second-order criterion, which needs double backpropagation: use the `-ggn`
//! variants), and on the freshly built model (the layers report no `log α` or inclusion
//! probability). For mean-field and sparse-VD layers, `−log α = 2 log SNR`: `snr` and
//! `log-alpha` rank weights identically and give the same masks.
//!
//! **DLLP.** The criterion `dllp` is a method of its own ([`crate::dllp`]): on a deterministic
//! model without `[posterior]`, each cell runs DLLP on the trained weights at the cell's
//! sparsity, with the settings of the optional `[compression.dllp]` table (the keys of
//! [`crate::dllp::DllpConfig`]), and is evaluated by the model average of its hardened particles
//! (OOD AUROC by that average's predictive entropy). Its fine-tune is `finetune_epochs` more
//! passes of Stein steps over the particles with the mask held, shuffles from
//! [`SeedStream::Finetune`] like every other fine-tune.
//!
//! **A cell** is (model, seed, criterion, sparsity). Every cell of a (model, seed) starts from
//! the same trained weights, `<dir>/runs/<model>-s<seed>/` (an ordinary `train` run of the
//! model config with the seed, trained by the study if absent, so that one command reproduces
//! the study). The criterion scores them (as `secateur prune --run`: data criteria on
//! `samples_per_class` training examples per class drawn from [`SeedStream::Prune`], no
//! batch-norm warm-up, the run's own batch-norm statistics), the masks reach the target
//! sparsity over the prunable weights (global top-k unless `scope = "layer"`), and the masked
//! network is evaluated with the run's own predictive: Monte Carlo over `bayes.eval_samples`
//! weight draws for a Bayesian model (a pruned weight has mean 0 and σ ≈ 0), one pass otherwise,
//! as `train` evaluates (a `[posterior]` run's network is evaluated at its trained weights: its
//! posterior's predictive is not pruned). Then, with `finetune_epochs > 0`, the same masked
//! network trains `finetune_epochs` more epochs with the masks held (as `train --masks`): a
//! fresh optimiser of the model config, a constant learning rate `finetune_lr`, the ELBO's β
//! fixed at its value on the last training step, shuffles and weight noise from
//! [`SeedStream::Finetune`], and is evaluated again. So fine-tuned and not fine-tuned rows share
//! their masks, all criteria share the weights, and all fine-tunes of a seed share their draws:
//! paired comparisons. The dense network (sparsity 0) is evaluated the same way, without and
//! with the fine-tune (then without masks), as the reference every line starts from.
//!
//! **Rows** (`results.csv`): `model, seed, criterion, target_sparsity, sparsity, finetuned,
//! accuracy, nll, ece, ood_auroc, seconds, error`, with `criterion = dense` for the reference,
//! `sparsity` the reached fraction of zero prunable weights, `seconds` the row's own wall time
//! (scoring and evaluation; fine-tune and evaluation). A failing cell (a diverging fine-tune)
//! records its error and the study goes on. Each row is added to `results.csv` as it comes,
//! atomically and under a lock.
//!
//! **Directory.** `<dir>/compression.toml` (the study file), `runs/` (the trained runs, and
//! `results.lock`, locked while a row is added), `results.csv`,
//! `compression.md` (per metric: rows (model, criterion, fine-tuned), columns sparsities, mean ±
//! sd over seeds) and `compression.png` (2×2 panels: accuracy, NLL, ECE, OOD AUROC against
//! sparsity on the axis `−log₁₀(1 − s)`, one colour per (model, criterion), solid without and
//! dashed with the fine-tune, bands ± 1 sd). A directory that already holds a compression study
//! is refused unless `--resume` (continue: the rows in `results.csv` are skipped, finished runs
//! reused, an unfinished run resumed from its checkpoint; a study killed at any point, even by
//! SIGKILL, continues to the same rows but for `seconds`) or `--force` (replace it). A resumed
//! (model, seed) whose dense row is already recorded first evaluates its dense network again and
//! refuses to go on if it differs (a run retrained on another machine or build would mix rows
//! of two networks). `--shard
//! I/N` runs every N-th (model, seed) from the I-th; shards may share a directory (start one
//! with `--out`, the others with `--resume`).
//!
//! [`SeedStream::Prune`]: crate::seed_stream::SeedStream::Prune
//! [`SeedStream::Finetune`]: crate::seed_stream::SeedStream::Finetune

pub mod config;
pub mod plot;
pub mod run;

pub use config::{CompressionConfig, CompressionFile, CompressionModel};
pub use run::{run, CompressionRow, RunOptions};
