//! The charts of `coba-dist plot`: five PNG line charts of a [`RunMetrics`], text rendered
//! with the bundled DejaVu Sans (`crates/trainer/assets/`), so no system font is needed.

use super::{min_max_normalize, Curve, RatioSource, RunMetrics};
use anyhow::{anyhow, Context};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The files [`write_plots`] writes, in this order.
pub const FILES: [&str; 5] = [
    "val_ratio.png",
    "val_ratio_normalized.png",
    "weights.png",
    "df.png",
    "train_loss.png",
];

/// DejaVu Sans 2.37 (Bitstream Vera licence: `assets/DejaVuSans-LICENSE.txt`).
static FONT_TTF: &[u8] = include_bytes!("../../assets/DejaVuSans.ttf");

/// The font family every text uses; the bundled font is registered under this name.
const FAMILY: &str = "sans-serif";

/// Chart size and the run label shown in the titles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlotOptions {
    /// Image width in pixels.
    pub width: u32,
    /// Image height in pixels.
    pub height: u32,
    /// Appended to every title (e.g. the run directory's name); empty for none.
    pub label: String,
}

impl Default for PlotOptions {
    fn default() -> Self {
        Self {
            width: 1000,
            height: 600,
            label: String::new(),
        }
    }
}

/// Writes the five charts of [`FILES`] into `out_dir` (which must exist) and returns their
/// paths. A chart without data (e.g. `df.png` of a run without CoBa computation steps) is
/// still written, with a note saying what is missing.
///
/// # Errors
/// The bundled font does not load, or a file cannot be written.
pub fn write_plots(
    metrics: &RunMetrics,
    out_dir: &Path,
    opts: &PlotOptions,
) -> anyhow::Result<Vec<PathBuf>> {
    register_font()?;
    let named = |curves: Vec<Curve>| -> Vec<(String, Curve)> {
        metrics.tasks.iter().cloned().zip(curves).collect()
    };
    let (source, ratios) = metrics.val_ratio_curves();
    let source_text = match source {
        RatioSource::Probe => ", CoBa probe",
        RatioSource::Eval => ", full evaluation",
        RatioSource::None => "",
    };
    let normalized: Vec<Curve> = ratios
        .iter()
        .map(|curve| {
            let ys: Vec<f64> = curve.iter().map(|&(_, y)| y).collect();
            curve
                .iter()
                .zip(min_max_normalize(&ys))
                .map(|(&(x, _), y)| (x, y))
                .collect()
        })
        .collect();
    let charts = [
        Chart {
            title: format!("Validation loss ratio l(t) / l(0){source_text}"),
            y_label: "validation loss / initial validation loss",
            series: named(ratios),
            y_range: None,
            empty_note: "no probe or eval steps",
        },
        Chart {
            title: format!("Validation loss ratio, min-max normalized per task{source_text}"),
            y_label: "normalized loss ratio",
            series: named(normalized),
            y_range: Some((-0.03, 1.03)),
            empty_note: "no probe or eval steps",
        },
        Chart {
            title: "Task weights".into(),
            y_label: "weight",
            series: named(metrics.weight_curves()),
            y_range: None,
            empty_note: "no step has weights",
        },
        Chart {
            title: "Divergence factor (DF)".into(),
            y_label: "DF",
            series: vec![("DF".into(), metrics.df_curve())],
            y_range: None,
            empty_note: "no CoBa computation steps",
        },
        Chart {
            title: "Training loss per task".into(),
            y_label: "training loss",
            series: named(metrics.train_loss_curves()),
            y_range: None,
            empty_note: "no step has training losses",
        },
    ];
    let mut suffix = opts.label.clone();
    if let Some(method) = &metrics.method {
        suffix = if suffix.is_empty() {
            method.clone()
        } else {
            format!("{suffix} ({method})")
        };
    }
    // One x range for all charts (every logged step), at least 10 steps wide.
    let first = metrics.steps.first().map_or(0.0, |s| s.step as f64);
    let last = metrics.steps.last().map_or(0.0, |s| s.step as f64);
    let x_range = (first, last.max(first + 10.0));
    let mut written = Vec::with_capacity(FILES.len());
    for (file, mut chart) in FILES.iter().zip(charts) {
        if !suffix.is_empty() {
            chart.title = format!("{} - {suffix}", chart.title);
        }
        let path = out_dir.join(file);
        chart
            .draw(&path, (opts.width, opts.height), x_range)
            .with_context(|| format!("cannot write {}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

/// Registers the bundled font once per process.
fn register_font() -> anyhow::Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        plotters::style::register_font(FAMILY, FontStyle::Normal, FONT_TTF).is_ok()
    });
    if ok {
        Ok(())
    } else {
        Err(anyhow!(
            "the bundled font assets/DejaVuSans.ttf does not load"
        ))
    }
}

/// One line chart: steps on x, one series per task.
struct Chart {
    title: String,
    y_label: &'static str,
    series: Vec<(String, Curve)>,
    /// Fixed y range; `None` = fit the data.
    y_range: Option<(f64, f64)>,
    /// Shown in the middle of the chart when no series has a point.
    empty_note: &'static str,
}

impl Chart {
    fn draw(&self, path: &Path, size: (u32, u32), (x0, x1): (f64, f64)) -> anyhow::Result<()> {
        let points = || self.series.iter().flat_map(|(_, c)| c.iter());
        let empty = points().next().is_none();
        let (y0, y1) = self
            .y_range
            .unwrap_or_else(|| padded_range(points().map(|p| p.1), 0.05));
        let root = BitMapBackend::new(path, size).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(&self.title, (FAMILY, 24))
            .margin(16)
            .x_label_area_size(48)
            .y_label_area_size(80)
            .build_cartesian_2d(x0..x1, y0..y1)?;
        let y_decimals = decimals(y1 - y0);
        let x_fmt = |x: &f64| format!("{x:.0}");
        let y_fmt = move |y: &f64| format!("{y:.y_decimals$}");
        chart
            .configure_mesh()
            .x_desc("step")
            .y_desc(self.y_label)
            .x_label_formatter(&x_fmt)
            .y_label_formatter(&y_fmt)
            .label_style((FAMILY, 14))
            .axis_desc_style((FAMILY, 16))
            .light_line_style(RGBColor(235, 235, 235))
            .draw()?;
        if empty {
            let style = (FAMILY, 22)
                .into_font()
                .color(&RGBColor(90, 90, 90))
                .pos(Pos::new(HPos::Center, VPos::Center));
            let middle = ((x0 + x1) / 2.0, (y0 + y1) / 2.0);
            chart.draw_series(std::iter::once(Text::new(self.empty_note, middle, style)))?;
            root.present()?;
            return Ok(());
        }
        for (i, (name, curve)) in self.series.iter().enumerate() {
            let color = color(i);
            // Markers on sparse curves (probes, evals, DF), where a lone point has no line.
            let marker = if curve.len() <= 60 { 3 } else { 0 };
            chart
                .draw_series(
                    LineSeries::new(curve.iter().copied(), color.stroke_width(2))
                        .point_size(marker),
                )?
                .label(name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(3))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(160, 160, 160))
            .label_font((FAMILY, 15))
            .draw()?;
        root.present()?;
        Ok(())
    }
}

/// The i-th series colour: matplotlib's tab10, then plotters' 99-colour palette.
fn color(i: usize) -> RGBColor {
    const TAB10: [(u8, u8, u8); 10] = [
        (31, 119, 180),
        (255, 127, 14),
        (44, 160, 44),
        (214, 39, 40),
        (148, 103, 189),
        (140, 86, 75),
        (227, 119, 194),
        (127, 127, 127),
        (188, 189, 34),
        (23, 190, 207),
    ];
    match TAB10.get(i) {
        Some(&(r, g, b)) => RGBColor(r, g, b),
        None => {
            let (r, g, b) = Palette99::pick(i - TAB10.len()).rgb();
            RGBColor(r, g, b)
        }
    }
}

/// `[min, max]` of `values` widened by `pad` of its length on each side; a single value gets a
/// unit-sized (or 10 %) range around it, no value gives `[0, 1]`.
fn padded_range(values: impl Iterator<Item = f64>, pad: f64) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if lo > hi {
        return (0.0, 1.0);
    }
    let span = hi - lo;
    if span > 0.0 {
        (lo - pad * span, hi + pad * span)
    } else {
        let half = if lo == 0.0 {
            1.0
        } else {
            (lo.abs() * 0.1).max(1e-12)
        };
        (lo - half, hi + half)
    }
}

/// Decimals for tick labels over a range of length `span` (ticks are about span / 10 apart).
fn decimals(span: f64) -> usize {
    if !(span.is_finite() && span > 0.0) {
        return 2;
    }
    (1.0 - span.log10().floor()).clamp(0.0, 10.0) as usize
}
