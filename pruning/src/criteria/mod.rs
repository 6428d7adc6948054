//! The pruning criteria (each implements [`crate::Criterion`]).
//!
//! | name | criterion | score | reference |
//! |---|---|---|---|
//! | `random` | [`Random`] | `U(0, 1)` from the run's generator | baseline |
//! | `magnitude` | [`Magnitude`] | `\|θ\|` | Han et al. 2015 |
//! | `snip` | [`Snip`] | `\|θ ⊙ ∂L/∂θ\|` | Lee, Ajanthan & Torr 2019 |
//! | `grasp` | [`Grasp`] | `−θ ⊙ H g`, `T = 200` | Wang, Zhang & Grosse 2020 |
//! | `synflow` | [`SynFlow`] | `\|θ ⊙ ∂R/∂θ\|`, data-free | Tanaka et al. 2020 |
//! | `fisher`, `fp`, `fts` | [`EmpiricalFisher`] | `F`, `θ²F/2`, `\|θḡ + θ²F/2\|` | Gollini Navarrete et al. 2025 |
//! | `hutchinson`, `hp`, `hts` | [`Hutchinson`] | `diag H`, `θ² diag H/2`, `\|θḡ + θ² diag H/2\|` (10 probes per example) | Gollini Navarrete et al. 2025 |
//! | `ggn`, `hp-ggn`, `hts-ggn` | [`Ggn`] | as above on the exact Gauss–Newton diagonal | beyond the paper |
//! | `snr`, `log-alpha`, `inclusion` | [`Posterior`] | `\|μ\|/σ`, `−log α`, gate probability | Blundell et al. 2015; Molchanov et al. 2017 |
//! | `posterior-fisher` | [`PosteriorFisher`] | Fisher diagonal of the mean-mode network | Mohan, Scaife et al. 2022 |

pub mod first_order;
pub mod magnitude;
pub mod posterior;
pub mod second_order;
pub mod synflow;

pub use first_order::{EmpiricalFisher, FisherScore, Snip};
pub use magnitude::{Magnitude, Random};
pub use posterior::{Posterior, PosteriorFisher};
pub use second_order::{
    ggn_diagonal, hutchinson_diagonal, hvp, Ggn, Grasp, HessianScore, Hutchinson, HutchinsonOptions,
};
pub use synflow::{float64_twin, SynFlow};
