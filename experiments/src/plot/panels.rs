//! Figures made of panels: a grid of charts, each a set of [`Line`]s (solid or dashed, with
//! markers and a ± band if wanted) over its own axes, drawn by [`panels_png`] or, under a title,
//! [`titled_panels_png`]. The report's figures, the compression curves and the PaI study's
//! accuracy–sparsity plot are all drawn this way.

use super::{finite_segments, render, value_range, FAMILY, GREY, PALETTE};
use crate::error::Result;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// One line of a [`Panel`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Line {
    /// Legend entry (empty: no entry).
    pub label: String,
    /// Index into the palette.
    pub color: usize,
    /// Dashed instead of solid.
    pub dashed: bool,
    /// `(x, y)` points; a NaN breaks the line.
    pub points: Vec<(f64, f64)>,
    /// Also mark the points.
    pub markers: bool,
    /// A shaded band `(x, low, high)` behind the line (e.g. mean ± sd over seeds); drawn where
    /// it has two or more points.
    pub band: Vec<(f64, f64, f64)>,
}

/// Where a panel's legend goes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Legend {
    /// Upper left corner.
    #[default]
    UpperLeft,
    /// Lower left corner.
    LowerLeft,
}

/// One chart of a figure.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Panel {
    /// Title above the chart.
    pub title: String,
    /// Axis descriptions.
    pub x_desc: String,
    /// Axis descriptions.
    pub y_desc: String,
    /// Fixed x range, or `None` to fit the data.
    pub x_range: Option<(f64, f64)>,
    /// Fixed y range, or `None` to fit the data (bands included).
    pub y_range: Option<(f64, f64)>,
    /// Draw the diagonal `y = x` (dashed grey).
    pub diagonal: bool,
    /// Labelled x ticks with a vertical grid line each, instead of the default numbered axis
    /// (e.g. sparsities on a compression scale).
    pub x_ticks: Vec<(f64, String)>,
    /// Where the legend goes.
    pub legend: Legend,
    /// The lines.
    pub lines: Vec<Line>,
}

/// Size in pixels of one panel.
pub const PANEL_SIZE: (u32, u32) = (560, 440);

/// Height in pixels of the title band of [`titled_panels_png`].
pub const TITLE_HEIGHT: u32 = 36;

/// Draws `panels` on a grid `cols` wide into a PNG; `name` names the figure in errors.
pub fn panels_png(name: &str, panels: &[Panel], cols: usize) -> Result<Vec<u8>> {
    titled_panels_png(name, "", panels, cols)
}

/// [`panels_png`] under a title across the figure (none if `title` is empty).
pub fn titled_panels_png(name: &str, title: &str, panels: &[Panel], cols: usize) -> Result<Vec<u8>> {
    let cols = cols.clamp(1, panels.len().max(1));
    let rows = panels.len().div_ceil(cols).max(1);
    let head = if title.is_empty() { 0 } else { TITLE_HEIGHT };
    let size = (PANEL_SIZE.0 * cols as u32, PANEL_SIZE.1 * rows as u32 + head);
    render(name, size, |root| {
        let root = if title.is_empty() {
            root.clone()
        } else {
            root.titled(title, (FAMILY, 20)).map_err(|e| e.to_string())?
        };
        let areas = root.split_evenly((rows, cols));
        for (area, panel) in areas.iter().zip(panels) {
            draw_panel(area, panel)?;
        }
        Ok(())
    })
}

fn draw_panel(
    area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    panel: &Panel,
) -> std::result::Result<(), String> {
    let xs = panel
        .lines
        .iter()
        .flat_map(|l| l.points.iter().map(|p| p.0))
        .chain(panel.x_ticks.iter().map(|t| t.0));
    let (x0, x1) = panel
        .x_range
        .unwrap_or_else(|| value_range(xs, (f64::NEG_INFINITY, f64::INFINITY), (0.0, 1.0)));
    let ys = panel.lines.iter().flat_map(|l| {
        l.points
            .iter()
            .map(|p| p.1)
            .chain(l.band.iter().flat_map(|b| [b.1, b.2]))
    });
    let (y0, y1) = panel
        .y_range
        .unwrap_or_else(|| value_range(ys, (f64::NEG_INFINITY, f64::INFINITY), (0.0, 1.0)));
    let mut chart = ChartBuilder::on(area)
        .caption(&panel.title, (FAMILY, 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(|e| e.to_string())?;
    let mut mesh = chart.configure_mesh();
    mesh.x_desc(panel.x_desc.as_str())
        .y_desc(panel.y_desc.as_str())
        .label_style((FAMILY, 13));
    if !panel.x_ticks.is_empty() {
        mesh.disable_x_mesh().x_labels(0);
    }
    mesh.draw().map_err(|e| e.to_string())?;
    if !panel.x_ticks.is_empty() {
        let base = area.get_base_pixel();
        let style = TextStyle::from((FAMILY, 13).into_font()).pos(Pos::new(HPos::Center, VPos::Top));
        for (x, label) in panel.x_ticks.iter().filter(|t| (x0..=x1).contains(&t.0)) {
            chart
                .draw_series(std::iter::once(PathElement::new(
                    vec![(*x, y0), (*x, y1)],
                    GREY.mix(0.25).stroke_width(1),
                )))
                .map_err(|e| e.to_string())?;
            let (px, py) = chart.backend_coord(&(*x, y0));
            area.draw(&Text::new(label.clone(), (px - base.0, py - base.1 + 6), style.clone()))
                .map_err(|e| e.to_string())?;
        }
    }
    if panel.diagonal {
        let (lo, hi) = (x0.max(y0), x1.min(y1));
        chart
            .draw_series(DashedLineSeries::new(
                vec![(lo, lo), (hi, hi)],
                6,
                4,
                GREY.stroke_width(1),
            ))
            .map_err(|e| e.to_string())?;
    }
    let mut labelled = false;
    for line in &panel.lines {
        let color = PALETTE[line.color % PALETTE.len()];
        let band: Vec<&(f64, f64, f64)> = line
            .band
            .iter()
            .filter(|b| b.0.is_finite() && b.1.is_finite() && b.2.is_finite())
            .collect();
        if band.len() > 1 {
            let mut poly: Vec<(f64, f64)> = band.iter().map(|b| (b.0, b.2.min(y1))).collect();
            poly.extend(band.iter().rev().map(|b| (b.0, b.1.max(y0))));
            chart
                .draw_series(std::iter::once(Polygon::new(poly, color.mix(0.12).filled())))
                .map_err(|e| e.to_string())?;
        }
        let style = color.stroke_width(2);
        let mut first = true;
        for seg in finite_segments(line.points.iter().copied()) {
            let drawn = if line.dashed {
                chart.draw_series(DashedLineSeries::new(seg.clone(), 8, 5, style))
            } else {
                chart.draw_series(LineSeries::new(seg.clone(), style))
            }
            .map_err(|e| e.to_string())?;
            if first && !line.label.is_empty() {
                labelled = true;
                // a dashed line's legend entry is two dashes
                let (first_end, second_start) = if line.dashed { (7, 11) } else { (9, 9) };
                drawn.label(line.label.clone()).legend(move |(x, y)| {
                    EmptyElement::at((x, y))
                        + PathElement::new(vec![(0, 0), (first_end, 0)], color.stroke_width(2))
                        + PathElement::new(vec![(second_start, 0), (18, 0)], color.stroke_width(2))
                });
            }
            first = false;
            if line.markers {
                chart
                    .draw_series(seg.iter().map(|&p| Circle::new(p, 3, color.filled())))
                    .map_err(|e| e.to_string())?;
            }
        }
    }
    if labelled {
        let position = match panel.legend {
            Legend::UpperLeft => SeriesLabelPosition::UpperLeft,
            Legend::LowerLeft => SeriesLabelPosition::LowerLeft,
        };
        chart
            .configure_series_labels()
            .position(position)
            .label_font((FAMILY, 12))
            .background_style(WHITE.mix(0.85))
            .border_style(GREY)
            .draw()
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn size(png: &[u8]) -> (u32, u32) {
        let be = |i: usize| u32::from_be_bytes([png[i], png[i + 1], png[i + 2], png[i + 3]]);
        (be(16), be(20))
    }

    /// Every kind of panel renders, also an empty one, a line broken by a NaN, a band, labelled
    /// ticks and a title band; the figure is a grid of PANEL_SIZE panels.
    #[test]
    fn panels_render() -> Result<()> {
        let panels = vec![
            Panel {
                title: "a".into(),
                diagonal: true,
                lines: vec![Line {
                    label: "l".into(),
                    dashed: true,
                    points: vec![(0.0, 0.1), (f64::NAN, 0.2), (0.5, 0.9), (1.0, 1.0)],
                    markers: true,
                    band: vec![(0.0, 0.0, 0.2), (0.5, 0.8, f64::NAN), (1.0, 0.9, 1.1)],
                    ..Line::default()
                }],
                x_ticks: vec![(0.0, "0".into()), (1.0, "0.9".into()), (7.0, "outside".into())],
                legend: Legend::LowerLeft,
                ..Panel::default()
            },
            Panel {
                title: "empty".into(),
                ..Panel::default()
            },
            Panel::default(),
        ];
        let png = panels_png("t.png", &panels, 2)?;
        assert_eq!(&png[1..4], b"PNG");
        assert_eq!(size(&png), (2 * PANEL_SIZE.0, 2 * PANEL_SIZE.1));
        let png = titled_panels_png("t.png", "a title", &panels, 3)?;
        assert_eq!(size(&png), (3 * PANEL_SIZE.0, PANEL_SIZE.1 + TITLE_HEIGHT));
        Ok(())
    }
}
