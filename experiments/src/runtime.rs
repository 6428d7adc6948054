//! Transitional path: the process set-up moved to [`secateur_kernels::runtime`].

pub use secateur_kernels::runtime::*;
