//! The study's summary: `compression.md` (one table per metric, mean ± standard deviation over
//! seeds) and `compression.png` (2×2 panels: accuracy, NLL, ECE and OOD AUROC against sparsity,
//! one colour per model and criterion, solid without and dashed with the fine-tune, a band of
//! ± one standard deviation over seeds), both rewritten from `results.csv`.

use super::config::CompressionConfig;
use super::run::{read_results, CompressionRow, DENSE, FIGURE_FILE, RESULTS_FILE, TABLE_FILE};
use crate::atomic;
use crate::error::Result;
use crate::pai::mean_std;
use crate::plot::{
    compression_scale, sparsity_ticks, titled_panels_png, value_range, Legend, Line as PanelLine, Panel, PANEL_SIZE,
    TITLE_HEIGHT,
};
use std::path::Path;

/// The metrics of the tables and panels: title, whether shown in %, and the axis bounds.
const METRICS: [(&str, bool, (f64, f64)); 4] = [
    ("test accuracy", true, (0.0, 1.0)),
    ("test NLL", false, (0.0, f64::INFINITY)),
    ("test ECE", false, (0.0, 1.0)),
    ("OOD AUROC (predictive entropy)", false, (0.0, 1.0)),
];

/// Size in pixels of `compression.png`: 2×2 panels under a title.
pub const FIGURE_SIZE: (u32, u32) = (2 * PANEL_SIZE.0, 2 * PANEL_SIZE.1 + TITLE_HEIGHT);

/// One point of a line: a target sparsity, and over the seeds that ran it the mean reached
/// sparsity and the mean and standard deviation of each metric (accuracy, NLL, ECE, OOD AUROC).
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    /// Target sparsity (0 for the dense network).
    pub target: f64,
    /// Mean reached sparsity.
    pub reached: f64,
    /// Seeds with a finite accuracy.
    pub seeds: usize,
    /// Rows of the cell (failed ones included).
    pub rows: usize,
    /// Means of the metrics.
    pub mean: [f64; 4],
    /// Sample standard deviations of the metrics (0 for one seed).
    pub sd: [f64; 4],
}

/// A line: a model, a criterion ([`DENSE`] for the reference) and fine-tuned or not, with its
/// points by increasing target sparsity.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    /// Model name.
    pub model: String,
    /// Criterion.
    pub criterion: String,
    /// After the fine-tune.
    pub finetuned: bool,
    /// Points by target sparsity (only those with rows).
    pub points: Vec<Point>,
}

fn metric(r: &CompressionRow, k: usize) -> f64 {
    [r.accuracy, r.nll, r.ece, r.ood_auroc][k]
}

/// The lines of the study in table order (per model: the dense reference, then each criterion;
/// each without, then with, the fine-tune), from its rows.
pub fn lines(study: &CompressionConfig, rows: &[CompressionRow]) -> Vec<Line> {
    let mut out = Vec::new();
    let fts: &[bool] = if study.finetune_epochs > 0 {
        &[false, true]
    } else {
        &[false]
    };
    for m in &study.models {
        let crits = std::iter::once(DENSE.to_string()).chain(m.criteria.iter().cloned());
        for c in crits {
            for &ft in fts {
                let targets: Vec<f64> = if c == DENSE {
                    vec![0.0]
                } else {
                    study.sparsities.clone()
                };
                let mut points = Vec::new();
                let mut sorted = targets.clone();
                sorted.sort_by(f64::total_cmp);
                for t in sorted {
                    let cell: Vec<&CompressionRow> = rows
                        .iter()
                        .filter(|r| r.model == m.name && r.criterion == c && r.finetuned == ft)
                        .filter(|r| (r.target_sparsity - t).abs() < 1e-9)
                        .collect();
                    if cell.is_empty() {
                        continue;
                    }
                    let mut mean = [f64::NAN; 4];
                    let mut sd = [f64::NAN; 4];
                    for k in 0..4 {
                        let v: Vec<f64> = cell.iter().map(|r| metric(r, k)).collect();
                        (mean[k], sd[k]) = mean_std(&v);
                    }
                    let reached: Vec<f64> = cell.iter().map(|r| r.sparsity).collect();
                    points.push(Point {
                        target: t,
                        reached: mean_std(&reached).0,
                        seeds: cell.iter().filter(|r| r.accuracy.is_finite()).count(),
                        rows: cell.len(),
                        mean,
                        sd,
                    });
                }
                out.push(Line {
                    model: m.name.clone(),
                    criterion: c.clone(),
                    finetuned: ft,
                    points,
                });
            }
        }
    }
    out
}

/// A table cell: `mean ± sd` (in % for accuracy), `failed` where no seed has a value, `(n=k)`
/// where fewer seeds than the study's have one.
fn cell(p: &Point, k: usize, seeds: usize) -> String {
    if p.seeds == 0 || !p.mean[k].is_finite() {
        return "failed".into();
    }
    let mut s = if METRICS[k].1 {
        format!("{:.2} ± {:.2}", 100.0 * p.mean[k], 100.0 * p.sd[k])
    } else {
        format!("{:.4} ± {:.4}", p.mean[k], p.sd[k])
    };
    if p.seeds < seeds {
        s.push_str(&format!(" (n={})", p.seeds));
    }
    s
}

/// `compression.md`: per metric, one row per (model, criterion, fine-tuned), one column per
/// sparsity, the dense network in the first column.
pub fn table(study: &CompressionConfig, lines: &[Line]) -> String {
    let n = study.seeds.len();
    let mut sparsities = study.sparsities.clone();
    sparsities.sort_by(f64::total_cmp);
    let mut s = format!(
        "# {}\n\nMean ± standard deviation over seeds {:?} (`(n=k)`: only k seeds so far; `failed`: no seed \
         finished the cell). `fine-tuned`: after {} epoch(s) with the masks held. Rows: `results.csv`.\n",
        study.name, study.seeds, study.finetune_epochs
    );
    for (k, (title, pct, _)) in METRICS.iter().enumerate() {
        s.push_str(&format!(
            "\n## {title}{}\n\n| model | criterion | fine-tuned | dense |",
            if *pct { " (%)" } else { "" }
        ));
        for sp in &sparsities {
            s.push_str(&format!(" {sp} |"));
        }
        s.push_str(&format!("\n|---|---|---|---:|{}\n", "---:|".repeat(sparsities.len())));
        for l in lines.iter().filter(|l| l.criterion != DENSE) {
            let dense = lines
                .iter()
                .find(|d| d.model == l.model && d.criterion == DENSE && d.finetuned == l.finetuned)
                .and_then(|d| d.points.first())
                .map(|p| cell(p, k, n))
                .unwrap_or_default();
            s.push_str(&format!(
                "| {} | {} | {} | {dense} |",
                l.model,
                l.criterion,
                if l.finetuned { "yes" } else { "no" }
            ));
            for sp in &sparsities {
                let c = l
                    .points
                    .iter()
                    .find(|p| (p.target - sp).abs() < 1e-9)
                    .map(|p| cell(p, k, n))
                    .unwrap_or_default();
                s.push_str(&format!(" {c} |"));
            }
            s.push('\n');
        }
    }
    let off: Vec<String> = lines
        .iter()
        .flat_map(|l| l.points.iter().map(move |p| (l, p)))
        .filter(|(_, p)| (p.reached - p.target).abs() > 5e-3)
        .map(|(l, p)| format!("{} {} at {} reached {:.4}", l.model, l.criterion, p.target, p.reached))
        .collect();
    if !off.is_empty() {
        s.push_str(&format!(
            "\nReached sparsity differs from the target: {}.\n",
            off.join("; ")
        ));
    }
    s
}

/// `compression.png` of the lines (see the [module docs](self)), drawn by
/// [`crate::plot::titled_panels_png`] on the compression scale of
/// [`crate::plot::sparsity_accuracy_png`]. Each criterion's line starts at its model's dense
/// network (sparsity 0), without or with the fine-tune as the line.
pub fn figure(study: &CompressionConfig, lines: &[Line]) -> Result<Vec<u8>> {
    let curves: Vec<&Line> = lines.iter().filter(|l| l.criterion != DENSE).collect();
    // colour index of (model, criterion), in table order
    let mut keys: Vec<(&str, &str)> = Vec::new();
    for l in &curves {
        if !keys.contains(&(l.model.as_str(), l.criterion.as_str())) {
            keys.push((&l.model, &l.criterion));
        }
    }
    fn with_dense<'a>(lines: &'a [Line], l: &'a Line) -> Vec<&'a Point> {
        let dense = lines
            .iter()
            .find(|d| d.model == l.model && d.criterion == DENSE && d.finetuned == l.finetuned)
            .and_then(|d| d.points.first());
        dense.into_iter().chain(l.points.iter()).collect()
    }
    let caption = format!(
        "{}: solid = pruned, dashed = pruned + {} fine-tune epoch(s); bands ± 1 sd over {} seed(s)",
        study.name,
        study.finetune_epochs,
        study.seeds.len()
    );
    // ticks at the dense network and the study's sparsities
    let ticks = sparsity_ticks(std::iter::once(0.0).chain(study.sparsities.iter().copied()));
    let x1 = ticks.iter().map(|t| t.0).fold(1.0, f64::max) + 0.15;
    let panels: Vec<Panel> = METRICS
        .iter()
        .enumerate()
        .map(|(k, &(title, pct, bounds))| {
            let all: Vec<&Point> = curves.iter().flat_map(|l| with_dense(lines, l)).collect();
            let ys = all.iter().flat_map(|p| {
                let sd = if p.sd[k].is_finite() { p.sd[k] } else { 0.0 };
                [p.mean[k] - sd, p.mean[k] + sd]
            });
            let drawn = curves.iter().map(|l| {
                let pts = with_dense(lines, l);
                PanelLine {
                    // one legend, in the first panel, for the solid lines
                    label: if k == 0 && !l.finetuned {
                        format!("{}: {}", l.model, l.criterion)
                    } else {
                        String::new()
                    },
                    color: keys
                        .iter()
                        .position(|kk| *kk == (l.model.as_str(), l.criterion.as_str()))
                        .unwrap_or(0),
                    dashed: l.finetuned,
                    markers: true,
                    points: pts.iter().map(|p| (compression_scale(p.target), p.mean[k])).collect(),
                    // the band: mean ± sd where at least two seeds ran
                    band: pts
                        .iter()
                        .filter(|p| p.seeds > 1 && p.mean[k].is_finite() && p.sd[k].is_finite())
                        .map(|p| (compression_scale(p.target), p.mean[k] - p.sd[k], p.mean[k] + p.sd[k]))
                        .collect(),
                }
            });
            Panel {
                title: title.to_string(),
                x_desc: "sparsity".into(),
                y_desc: if pct {
                    format!("{title} (fraction)")
                } else {
                    title.to_string()
                },
                x_range: Some((0.0, x1)),
                y_range: Some(value_range(ys, bounds, (bounds.0, bounds.1.min(1.0)))),
                x_ticks: ticks.clone(),
                legend: Legend::LowerLeft,
                lines: drawn.collect(),
                ..Panel::default()
            }
        })
        .collect();
    titled_panels_png(FIGURE_FILE, &caption, &panels, 2)
}

/// Rewrites `compression.md` and `compression.png` in `dir` from its `results.csv`.
pub fn write_report(study: &CompressionConfig, dir: &Path) -> Result<()> {
    let rows = read_results(&dir.join(RESULTS_FILE))?;
    let lines = lines(study, &rows);
    atomic::write_string(&dir.join(TABLE_FILE), &table(study, &lines))?;
    atomic::write_bytes(&dir.join(FIGURE_FILE), &figure(study, &lines)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compression_study::CompressionFile;

    fn study() -> CompressionConfig {
        let text = r#"
[compression]
name = "c"
seeds = [0, 1]
sparsities = [0.9, 0.5]
[[compression.models]]
name = "mf"
config = "x.toml"
criteria = ["snr"]
"#;
        toml::from_str::<CompressionFile>(text).unwrap().compression
    }

    fn row(crit: &str, s: f64, seed: u64, ft: bool, acc: f64) -> CompressionRow {
        CompressionRow {
            model: "mf".into(),
            seed,
            criterion: crit.into(),
            target_sparsity: s,
            sparsity: s,
            finetuned: ft,
            accuracy: acc,
            nll: 0.5,
            ece: 0.02,
            ood_auroc: 0.9,
            seconds: 1.0,
            error: String::new(),
        }
    }

    /// Means and sample standard deviations by hand; a failed seed is left out and counted; the
    /// sparsities are sorted; the figure is a PNG of the stated size.
    #[test]
    fn lines_table_and_figure() -> Result<()> {
        let s = study();
        let rows = vec![
            row(DENSE, 0.0, 0, false, 0.90),
            row(DENSE, 0.0, 1, false, 0.86),
            row("snr", 0.9, 0, false, 0.80),
            row("snr", 0.9, 1, false, 0.84),
            row("snr", 0.5, 0, false, 0.88),
            row("snr", 0.5, 1, false, f64::NAN),
            row("snr", 0.9, 0, true, 0.85),
        ];
        let ls = lines(&s, &rows);
        assert_eq!(ls.len(), 4); // dense and snr, each without and with the fine-tune
        let snr = &ls[2];
        assert_eq!((snr.criterion.as_str(), snr.finetuned), ("snr", false));
        assert_eq!(snr.points.iter().map(|p| p.target).collect::<Vec<_>>(), [0.5, 0.9]);
        assert!((snr.points[1].mean[0] - 0.82).abs() < 1e-12);
        // sample sd: √((0.02² + 0.02²) / (2 − 1)) = 0.0283
        assert!((snr.points[1].sd[0] - 0.0008f64.sqrt()).abs() < 1e-12);
        assert_eq!((snr.points[0].seeds, snr.points[0].rows), (1, 2));
        let t = table(&s, &ls);
        assert!(
            t.contains("| mf | snr | no | 88.00 ± 2.83 | 88.00 ± 0.00 (n=1) | 82.00 ± 2.83 |"),
            "{t}"
        );
        assert!(t.contains("| mf | snr | yes |  |  | 85.00 ± 0.00 (n=1) |"), "{t}");
        let png = figure(&s, &ls)?;
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        let (w, h) = (
            u32::from_be_bytes([png[16], png[17], png[18], png[19]]),
            u32::from_be_bytes([png[20], png[21], png[22], png[23]]),
        );
        assert_eq!((w, h), FIGURE_SIZE);
        assert_eq!(
            [0.0, 0.5, 0.98, 0.95].map(crate::plot::sparsity_label),
            ["0", "0.5", "0.98", "0.95"]
        );
        // an empty study draws too
        assert!(figure(&s, &lines(&s, &[]))?.len() > 8);
        Ok(())
    }
}
