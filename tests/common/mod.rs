//! Helpers shared by the end-to-end tests.

use secateur::experiments::commands::TrainOptions;
use secateur::experiments::config::StudyConfig;
use std::path::Path;

/// A shipped config text with `key=value` overrides applied.
pub fn config(text: &str, name: &str, set: &[&str]) -> StudyConfig {
    let set: Vec<String> = set.iter().map(|s| s.to_string()).collect();
    StudyConfig::from_toml(text, name, &set).expect("shipped config parses")
}

/// Quiet CPU training into `out`, data found by the default lookup.
pub fn opts(out: &Path) -> TrainOptions {
    TrainOptions {
        out: Some(out.to_path_buf()),
        data_dir: None,
        device: "cpu".into(),
        quiet: true,
        masks: None,
    }
}
