//! The pruning criteria (each implements [`crate::Criterion`]) and their registry [`CRITERIA`].
//!
//! Every criterion has one entry in [`CRITERIA`]: its config name, a one-line description (score
//! and reference), what it needs (scoring data, double backpropagation), its default number of
//! score-and-prune rounds, and its constructor. That table is the only list of criteria: it feeds
//! [`crate::criterion::by_name`] and [`crate::criterion::build`], the names listed in error
//! messages and in the command line's help, and every question a caller asks about a criterion.
//! Adding a criterion is a new file here (the type, its `Criterion` impl, its tests), its `mod`
//! line and its entry.
//!
//! The loss temperatures: GraSP and the Hutchinson and Gauss–Newton scores use `T = 200` (Wang
//! et al. 2020; Gollini Navarrete et al. 2025), the others `T = 1`.

pub mod first_order;
pub mod lamp;
pub mod magnitude;
pub mod posterior;
pub mod second_order;
pub mod synflow;
pub mod training;

pub use first_order::{EmpiricalFisher, FisherScore, Snip};
pub use magnitude::{Magnitude, Random};
pub use posterior::{PosteriorFisher, PosteriorScore};
pub use second_order::{
    ggn_diagonal, hutchinson_diagonal, hvp, Ggn, Grasp, HessianScore, Hutchinson, HutchinsonOptions,
};
pub use synflow::{float64_twin, SynFlow};
pub use training::AdamFisher;

use crate::criterion::{CriterionEntry as E, CriterionOptions};

/// Hutchinson's criterion `score` with the options' batch size and probes.
fn hutchinson(score: HessianScore, o: &CriterionOptions) -> Box<dyn crate::Criterion> {
    Box::new(Hutchinson {
        options: o.hutchinson,
        ..Hutchinson::new(score)
    })
}

/// Every criterion, one entry (one line) each (see the [module documentation](self)).
#[rustfmt::skip]
pub static CRITERIA: &[E] = &[
    E::new("random", "U(0, 1) from the run's generator (baseline)", |_| Box::new(Random)),
    E::new("magnitude", "|θ| (Han et al. 2015)", |_| Box::new(Magnitude)),
    E::new("lamp", "θ_(u)² / Σ_{v≥u} θ_(v)² by layer (Lee et al. 2021)", |_| Box::new(lamp::Lamp)),
    E::new("snip", "|θ ⊙ ∂L/∂θ| (Lee, Ajanthan & Torr 2019)", |_| Box::new(Snip::default())).with_data(),
    E::new("grasp", "−θ ⊙ Hg, T = 200 (Wang, Zhang & Grosse 2020)", |_| Box::new(Grasp::default())).with_data().with_double_backprop(),
    // with_data: the registry's SynFlow takes the input shape (only) from the scoring data
    E::new("synflow", "|θ ⊙ ∂R/∂θ| on |θ|, all-ones input (Tanaka et al. 2020)", |_| Box::new(SynFlow::default())).with_data().with_rounds(SynFlow::DEFAULT_ROUNDS),
    E::new("fisher", "empirical Fisher diagonal F (Gollini Navarrete et al. 2025)", |_| Box::new(EmpiricalFisher::new(FisherScore::Diagonal))).with_data(),
    E::new("fp", "θ²F/2, Fisher pruning (Gollini Navarrete et al. 2025)", |_| Box::new(EmpiricalFisher::new(FisherScore::Fp))).with_data(),
    E::new("fts", "|θḡ + θ²F/2|, Fisher Taylor score (Gollini Navarrete et al. 2025)", |_| Box::new(EmpiricalFisher::new(FisherScore::Fts))).with_data(),
    E::new("hutchinson", "Hutchinson's diag H, T = 200 (Gollini Navarrete et al. 2025)", |o| hutchinson(HessianScore::Diagonal, o)).with_data().with_double_backprop(),
    E::new("hp", "θ² diag H/2, Hutchinson, T = 200 (Gollini Navarrete et al. 2025)", |o| hutchinson(HessianScore::Hp, o)).with_data().with_double_backprop(),
    E::new("hts", "|θḡ + θ² diag H/2|, Hutchinson, T = 200 (Gollini Navarrete et al. 2025)", |o| hutchinson(HessianScore::Hts, o)).with_data().with_double_backprop(),
    E::new("ggn", "exact Gauss–Newton diagonal G, T = 200 (beyond the paper)", |_| Box::new(Ggn::new(HessianScore::Diagonal))).with_data(),
    E::new("hp-ggn", "θ² diag G/2, exact Gauss–Newton diagonal, T = 200", |_| Box::new(Ggn::new(HessianScore::Hp))).with_data(),
    E::new("hts-ggn", "|θḡ + θ² diag G/2|, exact Gauss–Newton diagonal, T = 200", |_| Box::new(Ggn::new(HessianScore::Hts))).with_data(),
    E::new("snr", "posterior |μ|/σ (Blundell et al. 2015)", |_| Box::new(PosteriorScore::Snr)),
    E::new("log-alpha", "posterior −log α (Molchanov et al. 2017)", |_| Box::new(PosteriorScore::LogAlpha)),
    E::new("inclusion", "posterior gate inclusion probability", |_| Box::new(PosteriorScore::Inclusion)),
    E::new("posterior-fisher", "Fisher diagonal of the mean-mode network (Mohan, Scaife et al. 2022)", |_| Box::new(PosteriorFisher::default())).with_data(),
    E::new("adam-fisher", "Adam's second moment of the training gradient, the Fisher ranking of Mohan, Scaife et al.'s code", |_| Box::new(AdamFisher)),
];
