//! Transitional path: the deterministic building blocks live in [`secateur_bayes::nn`].
//! (Removed once every caller imports them from there.)

pub use secateur_bayes::nn::*;
