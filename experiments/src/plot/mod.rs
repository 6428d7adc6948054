//! PNG plots of a run: learning curves (`curves.png`) and a reliability diagram of the test
//! predictions (`reliability.png`). Regression runs (a history with `train_rmse`) draw the loss
//! and the RMSE instead of the accuracy, and no reliability diagram.
//!
//! Plots are drawn with `plotters` into an in-memory RGB buffer and encoded to PNG bytes here,
//! so that they can be written atomically with [`atomic::write_bytes`]. Text is rendered with
//! `ab_glyph` from a font embedded in the binary (DejaVu Sans, see `assets/FONT-LICENSE.md`):
//! no system fonts or font libraries are needed. Plotting never panics on degenerate input
//! (one epoch, missing or NaN metrics, empty bins); drawing failures come back as [`ExpError`].

use crate::atomic;
use crate::error::{ExpError, Result};
use crate::store::RunDir;
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};
use secateur_inference::metrics::{reliability_bins, ReliabilityBin, CALIBRATION_BINS};
use secateur_inference::predict::Predictions;
use secateur_inference::train::EpochRecord;
use std::path::Path;
use std::sync::OnceLock;

pub mod panels;
pub use panels::{panels_png, titled_panels_png, Legend, Line, Panel, PANEL_SIZE, TITLE_HEIGHT};

/// File name of the learning-curve plot inside a run directory.
pub const CURVES_FILE: &str = "curves.png";
/// File name of the reliability diagram inside a run directory.
pub const RELIABILITY_FILE: &str = "reliability.png";
/// Size in pixels (width, height) of `curves.png`.
pub const CURVES_SIZE: (u32, u32) = (1200, 480);
/// Size in pixels (width, height) of `reliability.png`.
pub const RELIABILITY_SIZE: (u32, u32) = (640, 720);
/// File name of the unit-selection plot inside a run directory (runs whose layers select units).
pub const UNITS_FILE: &str = "units.png";

/// DejaVu Sans, embedded so that the plots need no system fonts.
static FONT: &[u8] = include_bytes!("../../assets/DejaVuSans.ttf");
pub(crate) const FAMILY: &str = "sans-serif";

const TRAIN_COLOR: RGBColor = RGBColor(31, 119, 180);
const TEST_COLOR: RGBColor = RGBColor(214, 39, 40);
const GAP_COLOR: RGBColor = RGBColor(255, 127, 14);
const GAP_EDGE: RGBColor = RGBColor(217, 95, 2);
pub(crate) const GREY: RGBColor = RGBColor(110, 110, 110);

fn plot_error(name: &str, message: impl std::fmt::Display) -> ExpError {
    ExpError::io(name, std::io::Error::other(format!("plotting: {message}")))
}

/// Registers the embedded font under the family `sans-serif` (once per process).
fn ensure_font(name: &str) -> Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| register_font(FAMILY, FontStyle::Normal, FONT).is_ok());
    if ok {
        Ok(())
    } else {
        Err(plot_error(name, "the embedded font could not be parsed"))
    }
}

/// Draws with `draw` into a fresh white RGB canvas of `size` and returns it encoded as PNG.
pub(crate) fn render<F>(name: &str, size: (u32, u32), draw: F) -> Result<Vec<u8>>
where
    F: FnOnce(&DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>) -> std::result::Result<(), String>,
{
    ensure_font(name)?;
    let (w, h) = size;
    let mut rgb = vec![255u8; w as usize * h as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, size).into_drawing_area();
        root.fill(&WHITE).map_err(|e| plot_error(name, e))?;
        draw(&root).map_err(|e| plot_error(name, e))?;
        root.present().map_err(|e| plot_error(name, e))?;
    }
    encode_png(&rgb, size).map_err(|e| plot_error(name, e))
}

/// Encodes an RGB8 buffer as PNG bytes. plotters' own encoder (`bitmap_encoder`, via the `image`
/// crate) can only save to a path, which would defeat the atomic write; the `png` crate encodes
/// into memory with far fewer dependencies.
fn encode_png(rgb: &[u8], (w, h): (u32, u32)) -> std::result::Result<Vec<u8>, png::EncodingError> {
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, w, h);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut writer = enc.write_header()?;
        writer.write_image_data(rgb)?;
        writer.finish()?;
    }
    Ok(out)
}

/// Splits points into runs of finite coordinates (a line is broken at NaN or infinite values).
pub(crate) fn finite_segments(points: impl IntoIterator<Item = (f64, f64)>) -> Vec<Vec<(f64, f64)>> {
    let mut segments: Vec<Vec<(f64, f64)>> = Vec::new();
    let mut current = Vec::new();
    for (x, y) in points {
        if x.is_finite() && y.is_finite() {
            current.push((x, y));
        } else if !current.is_empty() {
            segments.push(std::mem::take(&mut current));
        }
    }
    if !current.is_empty() {
        segments.push(current);
    }
    segments
}

/// A padded axis range covering the finite `values`, clamped to `bounds`; `fallback` if none.
pub(crate) fn value_range(
    values: impl IntoIterator<Item = f64>,
    bounds: (f64, f64),
    fallback: (f64, f64),
) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values.into_iter().filter(|v| v.is_finite()) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() {
        return fallback;
    }
    let span = hi - lo;
    let pad = if span > 1e-12 {
        0.06 * span
    } else {
        0.05 * lo.abs().max(1e-3)
    };
    let lo = (lo - pad).max(bounds.0);
    let hi = (hi + pad).min(bounds.1);
    if hi > lo {
        (lo, hi)
    } else {
        fallback
    }
}

/// The epoch axis: a padded range and how many labels to ask for. Only whole epochs are
/// labelled (see `epoch_label`).
fn epoch_axis(history: &[EpochRecord]) -> ((f64, f64), usize) {
    let first = history.iter().map(|r| r.epoch).min().unwrap_or(1) as f64;
    let last = history.iter().map(|r| r.epoch).max().unwrap_or(1) as f64;
    let span = last - first;
    if span < 1.0 {
        ((first - 0.5, last + 0.5), 3)
    } else {
        ((first - 0.03 * span, last + 0.03 * span), (span as usize + 1).min(10))
    }
}

/// Decimals that tell apart the ~10 tick labels of an axis spanning `span`.
fn label_decimals(span: f64) -> usize {
    if span.is_finite() && span > 0.0 {
        (-(span / 10.0).log10()).ceil().clamp(0.0, 6.0) as usize
    } else {
        2
    }
}

/// An epoch tick label: whole numbers only, fractional ticks stay unlabelled.
fn epoch_label(x: &f64) -> String {
    if (x - x.round()).abs() < 1e-6 {
        format!("{x:.0}")
    } else {
        String::new()
    }
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>;

/// One learning-curve panel: a train and (optionally) a test series against the epoch.
struct CurvePanel<'s> {
    title: &'s str,
    y_desc: &'s str,
    train_label: &'s str,
    test_label: &'s str,
    y_bounds: (f64, f64),
    fallback: (f64, f64),
    legend: SeriesLabelPosition,
}

fn draw_curve_panel(
    area: &Area<'_>,
    history: &[EpochRecord],
    panel: &CurvePanel<'_>,
    train: &dyn Fn(&EpochRecord) -> f64,
    test: &dyn Fn(&EpochRecord) -> Option<f64>,
) -> std::result::Result<(), String> {
    let train_pts: Vec<(f64, f64)> = history.iter().map(|r| (r.epoch as f64, train(r))).collect();
    let test_pts: Vec<(f64, f64)> = history
        .iter()
        .filter_map(|r| test(r).map(|v| (r.epoch as f64, v)))
        .collect();
    let (y_lo, y_hi) = value_range(
        train_pts.iter().chain(&test_pts).map(|p| p.1),
        panel.y_bounds,
        panel.fallback,
    );
    let ((x_lo, x_hi), x_labels) = epoch_axis(history);
    let decimals = label_decimals(y_hi - y_lo);

    let mut chart = ChartBuilder::on(area)
        .caption(panel.title, (FAMILY, 24))
        .margin(12)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d(x_lo..x_hi, y_lo..y_hi)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .y_desc(panel.y_desc)
        .x_labels(x_labels)
        .x_label_formatter(&epoch_label)
        .y_label_formatter(&|y| format!("{y:.decimals$}"))
        .axis_desc_style((FAMILY, 18))
        .label_style((FAMILY, 15))
        .light_line_style(WHITE.mix(0.0))
        .bold_line_style(BLACK.mix(0.12))
        .draw()
        .map_err(|e| e.to_string())?;

    let mut labelled = false;
    for (points, color, label) in [
        (&train_pts, TRAIN_COLOR, panel.train_label),
        (&test_pts, TEST_COLOR, panel.test_label),
    ] {
        for (i, seg) in finite_segments(points.iter().copied()).into_iter().enumerate() {
            let series = chart
                .draw_series(LineSeries::new(seg, color.stroke_width(2)).point_size(3))
                .map_err(|e| e.to_string())?;
            if i == 0 {
                labelled = true;
                series
                    .label(label)
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(2)));
            }
        }
    }
    if labelled {
        chart
            .configure_series_labels()
            .position(panel.legend.clone())
            .label_font((FAMILY, 16))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.4))
            .draw()
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Renders the learning curves as a PNG of [`CURVES_SIZE`]: two panels side by side, the loss
/// (train loss and test NLL) and the accuracy (train and test) against the epoch — for a
/// regression history (any record with `train_rmse`), the RMSE (train and test) instead of the
/// accuracy. Epochs without evaluation have no test point; non-finite values break a line rather
/// than failing the plot.
pub fn learning_curves_png(history: &[EpochRecord]) -> Result<Vec<u8>> {
    if history.iter().any(|r| r.train_rmse.is_some()) {
        return regression_curves_png(history);
    }
    render(CURVES_FILE, CURVES_SIZE, |root| {
        let panels = root.split_evenly((1, 2));
        draw_curve_panel(
            &panels[0],
            history,
            &CurvePanel {
                title: "Loss",
                y_desc: "loss / NLL (nats)",
                train_label: "train loss",
                test_label: "test NLL",
                y_bounds: (f64::NEG_INFINITY, f64::INFINITY),
                fallback: (0.0, 1.0),
                legend: SeriesLabelPosition::UpperRight,
            },
            &|r| r.train_loss,
            &|r| r.eval.as_ref().or(r.eval_mc.as_ref()).map(|m| m.nll),
        )?;
        draw_curve_panel(
            &panels[1],
            history,
            &CurvePanel {
                title: "Accuracy",
                y_desc: "accuracy",
                train_label: "train accuracy",
                test_label: "test accuracy",
                y_bounds: (0.0, 1.0),
                fallback: (0.0, 1.0),
                legend: SeriesLabelPosition::LowerRight,
            },
            &|r| r.train_accuracy,
            &|r| r.eval.as_ref().or(r.eval_mc.as_ref()).map(|m| m.accuracy),
        )
    })
}

/// The regression learning curves: loss (train loss, test NLL of the Gaussian predictive) and
/// RMSE (train, test), both in the units the history records (the original target units for
/// `secateur train`).
fn regression_curves_png(history: &[EpochRecord]) -> Result<Vec<u8>> {
    render(CURVES_FILE, CURVES_SIZE, |root| {
        let panels = root.split_evenly((1, 2));
        draw_curve_panel(
            &panels[0],
            history,
            &CurvePanel {
                title: "Loss",
                y_desc: "loss / NLL (nats)",
                train_label: "train loss",
                test_label: "test NLL",
                y_bounds: (f64::NEG_INFINITY, f64::INFINITY),
                fallback: (0.0, 1.0),
                legend: SeriesLabelPosition::UpperRight,
            },
            &|r| r.train_loss,
            &|r| r.eval_regression.as_ref().map(|m| m.nll),
        )?;
        draw_curve_panel(
            &panels[1],
            history,
            &CurvePanel {
                title: "RMSE",
                y_desc: "RMSE (target units)",
                train_label: "train RMSE",
                test_label: "test RMSE",
                y_bounds: (0.0, f64::INFINITY),
                fallback: (0.0, 1.0),
                legend: SeriesLabelPosition::UpperRight,
            },
            &|r| r.train_rmse.unwrap_or(f64::NAN),
            &|r| r.eval_regression.as_ref().map(|m| m.rmse),
        )
    })
}

/// Writes `curves.png` of a regression run (no reliability diagram: it needs class
/// probabilities), atomically.
pub fn write_regression_plots(run: &RunDir, history: &[EpochRecord]) -> Result<()> {
    let curves = run.file(CURVES_FILE);
    let bytes = learning_curves_png(history).map_err(|e| match e {
        ExpError::Io { source, .. } => ExpError::io(&curves, source),
        other => other,
    })?;
    atomic::write_bytes(&curves, &bytes)
}

/// Renders a reliability diagram as a PNG of [`RELIABILITY_SIZE`]: per-bin accuracy as bars
/// against confidence, the gap to each bin's mean confidence, the diagonal of perfect
/// calibration, and below it a strip with the share of examples in each bin. `ece` goes in the
/// title (`n/a` when not finite). Empty bins draw no bar.
pub fn reliability_png(bins: &[ReliabilityBin], ece: f64) -> Result<Vec<u8>> {
    render(RELIABILITY_FILE, RELIABILITY_SIZE, |root| {
        let total: usize = bins.iter().map(|b| b.count).sum();
        let ece_text = if ece.is_finite() {
            format!("{ece:.4}")
        } else {
            "n/a".to_string()
        };
        let title = format!("Reliability diagram (ECE = {ece_text}, n = {total})");
        let (top, bottom) = root.split_vertically(RELIABILITY_SIZE.1 * 72 / 100);
        let finite = |b: &&ReliabilityBin| {
            b.count > 0
                && [b.lower, b.upper, b.mean_confidence, b.accuracy]
                    .iter()
                    .all(|v| v.is_finite())
        };
        let clamp = |v: f64| v.clamp(0.0, 1.0);

        let mut chart = ChartBuilder::on(&top)
            .caption(title, (FAMILY, 22))
            .margin(12)
            .x_label_area_size(8)
            .y_label_area_size(64)
            .build_cartesian_2d(0.0..1.0, 0.0..1.0)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .y_desc("accuracy")
            .x_labels(11)
            .y_labels(11)
            .x_label_formatter(&|_| String::new())
            .y_label_formatter(&|y| format!("{y:.1}"))
            .axis_desc_style((FAMILY, 18))
            .label_style((FAMILY, 15))
            .light_line_style(WHITE.mix(0.0))
            .bold_line_style(BLACK.mix(0.1))
            .draw()
            .map_err(|e| e.to_string())?;
        chart
            .draw_series(bins.iter().filter(finite).map(|b| {
                Rectangle::new(
                    [(clamp(b.lower), 0.0), (clamp(b.upper), clamp(b.accuracy))],
                    TRAIN_COLOR.mix(0.85).filled(),
                )
            }))
            .map_err(|e| e.to_string())?
            .label("accuracy")
            .legend(|(x, y)| Rectangle::new([(x, y - 6), (x + 20, y + 6)], TRAIN_COLOR.mix(0.85).filled()));
        chart
            .draw_series(bins.iter().filter(finite).map(|b| {
                Rectangle::new(
                    [
                        (clamp(b.lower), clamp(b.accuracy)),
                        (clamp(b.upper), clamp(b.mean_confidence)),
                    ],
                    GAP_COLOR.mix(0.45).filled(),
                )
            }))
            .map_err(|e| e.to_string())?
            .label("gap to mean confidence")
            .legend(|(x, y)| {
                EmptyElement::at((x, y))
                    + Rectangle::new([(0, -6), (20, 6)], GAP_COLOR.mix(0.45).filled())
                    + Rectangle::new([(0, -6), (20, 6)], GAP_EDGE.stroke_width(2))
            });
        chart
            .draw_series(bins.iter().filter(finite).map(|b| {
                Rectangle::new(
                    [(clamp(b.lower), 0.0), (clamp(b.upper), clamp(b.accuracy))],
                    BLACK.mix(0.6).stroke_width(1),
                )
            }))
            .map_err(|e| e.to_string())?;
        // Outline the gaps last, so that a gap inside a bar (accuracy above confidence) stays
        // visible as a gap rather than reading as part of the bar.
        chart
            .draw_series(bins.iter().filter(finite).map(|b| {
                Rectangle::new(
                    [
                        (clamp(b.lower), clamp(b.accuracy)),
                        (clamp(b.upper), clamp(b.mean_confidence)),
                    ],
                    GAP_EDGE.stroke_width(2),
                )
            }))
            .map_err(|e| e.to_string())?;
        chart
            .draw_series(LineSeries::new([(0.0, 0.0), (1.0, 1.0)], GREY.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label("perfect calibration")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], GREY.stroke_width(2)));
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .label_font((FAMILY, 16))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.4))
            .draw()
            .map_err(|e| e.to_string())?;

        // Share of examples per bin, on the same confidence axis.
        let max_share = bins
            .iter()
            .filter(finite)
            .map(|b| b.count as f64 / total as f64)
            .fold(0.0, f64::max);
        let y_hi = if max_share > 0.0 {
            (max_share * 1.15).min(1.0)
        } else {
            1.0
        };
        let mut strip = ChartBuilder::on(&bottom)
            .margin(12)
            .margin_top(0)
            .x_label_area_size(48)
            .y_label_area_size(64)
            .build_cartesian_2d(0.0..1.0, 0.0..y_hi)
            .map_err(|e| e.to_string())?;
        strip
            .configure_mesh()
            .x_desc("confidence (top-1 probability)")
            .y_desc("share")
            .x_labels(11)
            .y_labels(4)
            .x_label_formatter(&|x| format!("{x:.1}"))
            .y_label_formatter(&|y| format!("{y:.2}"))
            .axis_desc_style((FAMILY, 18))
            .label_style((FAMILY, 15))
            .light_line_style(WHITE.mix(0.0))
            .bold_line_style(BLACK.mix(0.1))
            .draw()
            .map_err(|e| e.to_string())?;
        strip
            .draw_series(bins.iter().filter(finite).map(|b| {
                Rectangle::new(
                    [(clamp(b.lower), 0.0), (clamp(b.upper), b.count as f64 / total as f64)],
                    GREY.mix(0.6).filled(),
                )
            }))
            .map_err(|e| e.to_string())?;
        Ok(())
    })
}

/// Expected calibration error from reliability bins: `Σ_b (n_b / N) |acc_b − conf_b|`; NaN when
/// every bin is empty.
pub fn ece_from_bins(bins: &[ReliabilityBin]) -> f64 {
    let total: usize = bins.iter().map(|b| b.count).sum();
    if total == 0 {
        return f64::NAN;
    }
    bins.iter()
        .map(|b| b.count as f64 / total as f64 * (b.accuracy - b.mean_confidence).abs())
        .sum()
}

/// How units leave during training, for a history whose layers select units (spike-and-slab
/// nodes, gates; [`EpochRecord::units`]): two panels against the epoch, the fraction of each
/// layer's units kept by its test-time rule together with the test accuracy and the divergence
/// weight β (dashed), and each layer's mean inclusion probability. `None` for a history without
/// such layers.
pub fn units_png(history: &[EpochRecord]) -> Option<Result<Vec<u8>>> {
    let layers: Vec<(String, usize)> = history
        .first()?
        .units
        .iter()
        .map(|u| (u.layer.clone(), u.total))
        .collect();
    if layers.is_empty() {
        return None;
    }
    let series = |f: &dyn Fn(&EpochRecord) -> Option<f64>| -> Vec<(f64, f64)> {
        history
            .iter()
            .map(|r| (r.epoch as f64, f(r).unwrap_or(f64::NAN)))
            .collect()
    };
    let mut kept = Vec::new();
    let mut inclusion = Vec::new();
    for (i, (layer, total)) in layers.iter().enumerate() {
        let find = |r: &EpochRecord| r.units.iter().find(|u| &u.layer == layer).cloned();
        kept.push(Line {
            label: format!("{layer} kept (of {total})"),
            color: i,
            points: series(&|r| find(r).map(|u| u.kept as f64 / u.total.max(1) as f64)),
            ..Line::default()
        });
        inclusion.push(Line {
            label: format!("{layer} mean inclusion"),
            color: i,
            points: series(&|r| find(r).and_then(|u| u.mean_inclusion)),
            ..Line::default()
        });
    }
    let n = layers.len();
    kept.push(Line {
        label: "test accuracy".into(),
        color: n,
        dashed: true,
        points: series(&|r| r.eval.as_ref().or(r.eval_mc.as_ref()).map(|m| m.accuracy)),
        ..Line::default()
    });
    kept.push(Line {
        label: "divergence weight β".into(),
        color: n + 1,
        dashed: true,
        points: series(&|r| Some(r.beta)),
        ..Line::default()
    });
    let panel = |title: &str, y_desc: &str, lines: Vec<Line>| Panel {
        title: title.into(),
        x_desc: "epoch".into(),
        y_desc: y_desc.into(),
        y_range: Some((0.0, 1.02)),
        legend: Legend::LowerLeft,
        lines,
        ..Panel::default()
    };
    Some(panels_png(
        UNITS_FILE,
        &[
            panel("Units kept at test time", "fraction kept / accuracy / β", kept),
            panel("Mean inclusion probability", "mean inclusion", inclusion),
        ],
        2,
    ))
}

/// Writes `curves.png` (from `history`) and `reliability.png` (from the test predictions `preds`,
/// binned with [`CALIBRATION_BINS`] bins as the reported ECE) into `run`, each atomically; and
/// `units.png` ([`units_png`]) for a run whose layers select units.
pub fn write_run_plots(run: &RunDir, history: &[EpochRecord], preds: &Predictions) -> Result<()> {
    let with_path = |path: &Path, e: ExpError| match e {
        ExpError::Io { source, .. } => ExpError::io(path, source),
        other => other,
    };
    let curves = run.file(CURVES_FILE);
    let bytes = learning_curves_png(history).map_err(|e| with_path(&curves, e))?;
    atomic::write_bytes(&curves, &bytes)?;
    if let Some(png) = units_png(history) {
        let units = run.file(UNITS_FILE);
        atomic::write_bytes(&units, &png.map_err(|e| with_path(&units, e))?)?;
    }

    let reliability = run.file(RELIABILITY_FILE);
    let bins = reliability_bins(&preds.probs, &preds.labels, preds.classes, CALIBRATION_BINS)?;
    let bytes = reliability_png(&bins, ece_from_bins(&bins)).map_err(|e| with_path(&reliability, e))?;
    atomic::write_bytes(&reliability, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use secateur_inference::metrics::ClassificationMetrics;

    const PNG_SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a];

    fn dimensions(png: &[u8]) -> (u32, u32) {
        assert!(png.len() > 24, "PNG too short");
        assert_eq!(&png[..8], &PNG_SIGNATURE);
        assert_eq!(&png[12..16], b"IHDR");
        let w = u32::from_be_bytes(png[16..20].try_into().unwrap());
        let h = u32::from_be_bytes(png[20..24].try_into().unwrap());
        (w, h)
    }

    fn record(epoch: usize, eval: bool) -> EpochRecord {
        let t = epoch as f64;
        EpochRecord {
            epoch,
            lr: 0.1,
            train_loss: 2.3 * (-0.25 * t).exp() + 0.05,
            train_accuracy: 1.0 - 0.9 * (-0.3 * t).exp(),
            train_nll: 2.3 * (-0.25 * t).exp() + 0.05,
            train_divergence: 0.0,
            beta: 1.0,
            train_rmse: None,
            eval_regression: None,
            eval: eval.then(|| ClassificationMetrics {
                accuracy: 0.97 - 0.8 * (-0.35 * t).exp(),
                nll: 2.0 * (-0.3 * t).exp() + 0.12 + 0.004 * t,
                brier: 0.1,
                ece: 0.02,
                mce: 0.1,
            }),
            eval_mc: None,
            seconds: 1.0,
            eval_seconds: 0.1,
            units: Vec::new(),
        }
    }

    fn bins() -> Vec<ReliabilityBin> {
        (0..CALIBRATION_BINS)
            .map(|b| {
                let lower = b as f64 / CALIBRATION_BINS as f64;
                let upper = (b + 1) as f64 / CALIBRATION_BINS as f64;
                let count = if b < 3 { 0 } else { b * b * 7 };
                let mean_confidence = if count > 0 { (lower + upper) / 2.0 } else { 0.0 };
                let accuracy = if count > 0 {
                    (mean_confidence + 0.08 * (b as f64).sin()).clamp(0.0, 1.0)
                } else {
                    0.0
                };
                ReliabilityBin {
                    lower,
                    upper,
                    count,
                    mean_confidence,
                    accuracy,
                }
            })
            .collect()
    }

    #[test]
    fn learning_curves_are_png_of_the_stated_size() {
        let history: Vec<EpochRecord> = (1..=30).map(|e| record(e, true)).collect();
        let png = learning_curves_png(&history).unwrap();
        assert_eq!(dimensions(&png), CURVES_SIZE);
    }

    #[test]
    fn learning_curve_edge_cases_do_not_fail() {
        for history in [
            vec![],
            vec![record(1, true)],
            vec![record(1, false)],
            (1..=5).map(|e| record(e, false)).collect(),
            (1..=6).map(|e| record(e, e % 2 == 0)).collect(),
        ] {
            let png = learning_curves_png(&history).unwrap();
            assert_eq!(dimensions(&png), CURVES_SIZE);
        }
        let mut nan: Vec<EpochRecord> = (1..=4).map(|e| record(e, true)).collect();
        nan[1].train_loss = f64::NAN;
        nan[2].eval.as_mut().unwrap().nll = f64::NAN;
        nan[3].eval.as_mut().unwrap().accuracy = f64::INFINITY;
        for r in &mut nan[..1] {
            r.eval.as_mut().unwrap().accuracy = f64::NAN;
            r.eval.as_mut().unwrap().nll = f64::NAN;
        }
        assert_eq!(dimensions(&learning_curves_png(&nan).unwrap()), CURVES_SIZE);
        let all_nan: Vec<EpochRecord> = (1..=3)
            .map(|e| EpochRecord {
                train_loss: f64::NAN,
                train_accuracy: f64::NAN,
                ..record(e, false)
            })
            .collect();
        assert_eq!(dimensions(&learning_curves_png(&all_nan).unwrap()), CURVES_SIZE);
    }

    #[test]
    fn segments_break_at_non_finite_values() {
        let pts = [
            (1.0, 1.0),
            (2.0, f64::NAN),
            (3.0, 3.0),
            (4.0, 4.0),
            (5.0, f64::INFINITY),
        ];
        assert_eq!(
            finite_segments(pts),
            vec![vec![(1.0, 1.0)], vec![(3.0, 3.0), (4.0, 4.0)]]
        );
        assert!(finite_segments([(1.0, f64::NAN)]).is_empty());
    }

    #[test]
    fn label_decimals_follow_the_span() {
        assert_eq!(label_decimals(1.0), 1);
        assert_eq!(label_decimals(2.0), 1);
        assert_eq!(label_decimals(0.03), 3);
        assert_eq!(label_decimals(500.0), 0);
        assert_eq!(label_decimals(f64::NAN), 2);
    }

    #[test]
    fn reliability_is_png_of_the_stated_size() {
        let b = bins();
        let png = reliability_png(&b, ece_from_bins(&b)).unwrap();
        assert_eq!(dimensions(&png), RELIABILITY_SIZE);
    }

    #[test]
    fn reliability_edge_cases_do_not_fail() {
        let empty: Vec<ReliabilityBin> = bins()
            .into_iter()
            .map(|b| ReliabilityBin {
                count: 0,
                mean_confidence: 0.0,
                accuracy: 0.0,
                ..b
            })
            .collect();
        assert!(ece_from_bins(&empty).is_nan());
        for (b, ece) in [(empty, f64::NAN), (vec![], 0.0), (bins(), f64::INFINITY)] {
            assert_eq!(dimensions(&reliability_png(&b, ece).unwrap()), RELIABILITY_SIZE);
        }
        let mut one = bins();
        one.truncate(1);
        one[0].count = 5;
        one[0].accuracy = f64::NAN;
        assert_eq!(dimensions(&reliability_png(&one, 0.1).unwrap()), RELIABILITY_SIZE);
    }

    #[test]
    fn ece_from_bins_matches_the_metric() {
        let probs = [0.9f32, 0.1, 0.2, 0.8, 0.6, 0.4, 0.3, 0.7];
        let labels = [0u32, 0, 0, 1];
        let b = reliability_bins(&probs, &labels, 2, CALIBRATION_BINS).unwrap();
        let m = secateur_inference::metrics::classification_metrics(&probs, &labels, 2).unwrap();
        assert!((ece_from_bins(&b) - m.ece).abs() < 1e-9);
    }

    #[test]
    fn write_run_plots_writes_both_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.toml"), "").unwrap();
        let run = RunDir::open(dir.path()).unwrap();
        let history: Vec<EpochRecord> = (1..=3).map(|e| record(e, true)).collect();
        let preds = Predictions {
            probs: vec![0.9, 0.1, 0.3, 0.7, 0.6, 0.4],
            labels: vec![0, 1, 1],
            classes: 2,
        };
        write_run_plots(&run, &history, &preds).unwrap();
        for name in [CURVES_FILE, RELIABILITY_FILE] {
            let bytes = std::fs::read(run.file(name)).unwrap();
            assert_eq!(&bytes[..8], &PNG_SIGNATURE);
        }
    }

    /// `units.png` exists only for histories with unit-selecting layers, has one panel for the
    /// kept fraction and one for the mean inclusion, and shows the numbers (a history whose
    /// nodes leave draws differently from one whose nodes stay).
    #[test]
    fn units_plot_is_drawn_for_unit_selecting_runs_only() {
        use secateur_bayes::UnitSummary;
        assert!(units_png(&(1..=3).map(|e| record(e, true)).collect::<Vec<_>>()).is_none());
        let history = |leave: bool| -> Vec<EpochRecord> {
            (1..=10)
                .map(|e| EpochRecord {
                    units: vec![
                        UnitSummary {
                            layer: "fc1".into(),
                            kept: if leave { 300 - 25 * e } else { 300 },
                            total: 300,
                            mean_inclusion: Some(if leave { 1.0 - 0.08 * e as f64 } else { 0.99 }),
                        },
                        UnitSummary {
                            layer: "fc2".into(),
                            kept: 100,
                            total: 100,
                            mean_inclusion: None,
                        },
                    ],
                    ..record(e, true)
                })
                .collect()
        };
        let a = units_png(&history(true)).unwrap().unwrap();
        let b = units_png(&history(false)).unwrap().unwrap();
        assert_eq!(dimensions(&a), (2 * PANEL_SIZE.0, PANEL_SIZE.1));
        assert_ne!(a, b);
    }

    #[test]
    fn regression_runs_plot_curves_without_a_reliability_diagram() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.toml"), "").unwrap();
        let run = RunDir::open(dir.path()).unwrap();
        let history: Vec<EpochRecord> = (1..=5)
            .map(|e| EpochRecord {
                train_accuracy: f64::NAN,
                train_rmse: Some(1.0 / e as f64),
                eval: None,
                eval_regression: Some(secateur_inference::metrics::RegressionMetrics {
                    rmse: 0.7,
                    nll: 1.0,
                    mixture_nll: 1.0,
                    coverage_95: 0.9,
                    mean_predictive_std: 0.6,
                    mean_aleatoric_var: 0.3,
                    mean_epistemic_var: 0.0,
                }),
                ..record(e, false)
            })
            .collect();
        write_regression_plots(&run, &history).unwrap();
        assert_eq!(dimensions(&std::fs::read(run.file(CURVES_FILE)).unwrap()), CURVES_SIZE);
        assert!(!run.file(RELIABILITY_FILE).exists());
    }

    /// Writes sample plots to `$TMPDIR` to be looked at: `cargo test -p secateur-experiments --lib
    /// plot::tests::write_samples -- --ignored`.
    #[test]
    #[ignore]
    fn write_samples() {
        let tmp = std::env::temp_dir();
        let history: Vec<EpochRecord> = (1..=30).map(|e| record(e, true)).collect();
        std::fs::write(tmp.join("secateur-curves.png"), learning_curves_png(&history).unwrap()).unwrap();
        std::fs::write(
            tmp.join("secateur-curves-one.png"),
            learning_curves_png(&[record(1, false)]).unwrap(),
        )
        .unwrap();
        let b = bins();
        std::fs::write(
            tmp.join("secateur-reliability.png"),
            reliability_png(&b, ece_from_bins(&b)).unwrap(),
        )
        .unwrap();
    }
}

/// One line of [`sparsity_accuracy_png`]: a panel (architecture), a label (criterion) and
/// `(sparsity, accuracy)` points.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// The panel the line is drawn in.
    pub panel: String,
    /// The legend entry.
    pub label: String,
    /// `(sparsity in [0, 1), accuracy in [0, 1])`, NaN accuracies break the line.
    pub points: Vec<(f64, f64)>,
}

pub(crate) const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// The compression scale of a sparsity, `−log₁₀(1 − s)` (0.9 → 1, 0.99 → 2; capped at 6).
pub(crate) fn compression_scale(s: f64) -> f64 {
    -(1.0 - s).max(1e-6).log10()
}

/// A sparsity as a tick label: at most three decimals, no trailing zeros (`0.98`, `0.5`, `0`).
pub(crate) fn sparsity_label(s: f64) -> String {
    let t = format!("{s:.3}");
    let t = t.trim_end_matches('0').trim_end_matches('.');
    if t.is_empty() || t == "-" {
        "0".into()
    } else {
        t.into()
    }
}

/// Ticks on the compression scale at each of `sparsities` (deduplicated), labelled with the
/// sparsity.
pub(crate) fn sparsity_ticks(sparsities: impl IntoIterator<Item = f64>) -> Vec<(f64, String)> {
    let mut s: Vec<f64> = sparsities.into_iter().filter(|s| s.is_finite()).collect();
    s.sort_by(f64::total_cmp);
    s.dedup_by(|a, b| (*a - *b).abs() < 1e-9);
    s.into_iter()
        .map(|s| (compression_scale(s), sparsity_label(s)))
        .collect()
}

/// Test accuracy against sparsity, one panel per architecture, one line per criterion, the
/// sparsity axis on the compression scale `−log₁₀(1 − s)` (0.9 → 1, 0.99 → 2), as Tanaka et al.
/// 2020 plot it.
pub fn sparsity_accuracy_png(series: &[Series]) -> Result<Vec<u8>> {
    let mut names: Vec<&str> = series.iter().map(|s| s.panel.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    let panels: Vec<Panel> = names
        .iter()
        .map(|name| {
            let mine: Vec<&Series> = series.iter().filter(|s| s.panel == *name).collect();
            Panel {
                title: format!("{name}: test accuracy after training"),
                x_desc: "sparsity".into(),
                y_desc: "test accuracy".into(),
                x_ticks: sparsity_ticks(mine.iter().flat_map(|s| s.points.iter().map(|p| p.0))),
                legend: Legend::LowerLeft,
                lines: mine
                    .iter()
                    .enumerate()
                    .map(|(i, s)| Line {
                        label: s.label.clone(),
                        color: i,
                        // past the palette's ten colours, dashed
                        dashed: i >= PALETTE.len(),
                        markers: true,
                        points: s.points.iter().map(|&(x, y)| (compression_scale(x), y)).collect(),
                        ..Line::default()
                    })
                    .collect(),
                ..Panel::default()
            }
        })
        .collect();
    panels_png("sparsity_accuracy.png", &panels, panels.len())
}
