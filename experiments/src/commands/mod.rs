//! The commands behind the CLI: `train`, `eval`, `data info`, `quickstart`. Regression tables
//! (`[likelihood] kind = "gaussian"`) go through [`regression`].

pub mod regression;
mod setup;

pub use setup::*;
