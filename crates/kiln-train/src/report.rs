//! The method-comparison report: one row per method (test metric over seeds, trainable share,
//! time, memory) as a Markdown table, an SVG plot of the metric against the trainable share
//! (log scale, one point per method, the seeds' spread as a bar), and one self-contained HTML
//! page with both.

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};

/// One method's line of the comparison.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ComparisonRow {
    /// The run label, e.g. `lora-r8`.
    pub method: String,
    /// Seeds the mean and deviation are over.
    pub seeds: usize,
    /// Test metric over the seeds (a share, 0..1 for accuracy).
    pub mean: f64,
    /// Sample standard deviation over the seeds (0 for one seed).
    pub std: f64,
    /// Parameters that trained.
    pub trainable_params: usize,
    /// Share of the parameters that trained, in percent.
    pub trainable_percent: f64,
    /// Mean over the seeds of the seconds per epoch (training and validation).
    pub seconds_per_epoch: f64,
    /// Highest peak resident memory over the seeds.
    pub peak_rss_mib: Option<f64>,
}

/// Mean and sample standard deviation (0 for fewer than two values).
pub fn mean_std(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n.max(1.0);
    let std = if values.len() > 1 {
        (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
    } else {
        0.0
    };
    (mean, std)
}

/// Percent with one decimal; `± std` when there are several seeds.
fn percent(row: &ComparisonRow) -> String {
    if row.seeds > 1 {
        format!("{:.1} ± {:.1}", 100.0 * row.mean, 100.0 * row.std)
    } else {
        format!("{:.1}", 100.0 * row.mean)
    }
}

fn memory(row: &ComparisonRow) -> String {
    row.peak_rss_mib
        .map_or_else(|| "n/a".into(), |m| format!("{m:.0}"))
}

const HEADERS: [&str; 6] = [
    "method",
    "test METRIC %",
    "trainable params",
    "trainable %",
    "s / epoch",
    "peak RSS MiB",
];

fn cells(row: &ComparisonRow) -> [String; 6] {
    [
        row.method.clone(),
        percent(row),
        row.trainable_params.to_string(),
        format!("{:.3}", row.trainable_percent),
        format!("{:.0}", row.seconds_per_epoch),
        memory(row),
    ]
}

/// The comparison as a Markdown table, one row per method in the given order.
pub fn markdown(rows: &[ComparisonRow], metric: &str) -> String {
    let headers = HEADERS.map(|h| h.replace("METRIC", metric));
    let mut text = format!(
        "| {} |\n|{}\n",
        headers.join(" | "),
        "---|".repeat(headers.len())
    );
    for row in rows {
        text.push_str(&format!("| {} |\n", cells(row).join(" | ")));
    }
    text
}

/// The metric (percent) against the trainable share (percent, log scale).
pub fn svg_plot(rows: &[ComparisonRow], metric: &str, title: &str) -> Result<String> {
    if rows.is_empty() {
        return Err(TrainError::Invalid("nothing to plot: no method ran".into()));
    }
    let shares: Vec<f64> = rows.iter().map(|r| r.trainable_percent.max(1e-4)).collect();
    let lowest = shares.iter().copied().fold(f64::INFINITY, f64::min);
    let highest = shares.iter().copied().fold(0.0, f64::max);
    let (x_min, x_max) = (
        10f64.powf(lowest.log10().floor()),
        10f64.powf(highest.log10().ceil()).max(lowest * 10.0),
    );
    let values = rows
        .iter()
        .flat_map(|r| [100.0 * (r.mean - r.std), 100.0 * (r.mean + r.std)]);
    let (y_low, y_high) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    let pad = ((y_high - y_low) * 0.15).max(1.0);
    let (y_min, y_max) = ((y_low - pad).max(0.0), (y_high + pad).min(100.0));

    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (760, 480)).into_drawing_area();
        let plot = |e: DrawingAreaErrorKind<_>| TrainError::Invalid(format!("plotting: {e}"));
        root.fill(&WHITE).map_err(plot)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(16)
            .x_label_area_size(44)
            .y_label_area_size(56)
            .build_cartesian_2d((x_min..x_max).log_scale(), y_min..y_max)
            .map_err(plot)?;
        chart
            .configure_mesh()
            .x_desc("trainable parameters, % of the model (log scale)")
            .y_desc(format!("test {metric} %"))
            .x_label_formatter(&|x| format!("{x}"))
            .y_label_formatter(&|y| format!("{y:.0}"))
            .draw()
            .map_err(plot)?;
        let colour = RGBColor(196, 78, 20);
        let mut placed: Vec<LabelBox> = Vec::new();
        for (row, &x) in rows.iter().zip(&shares) {
            let y = 100.0 * row.mean;
            if row.seeds > 1 {
                let spread = 100.0 * row.std;
                chart
                    .draw_series(std::iter::once(PathElement::new(
                        vec![(x, y - spread), (x, y + spread)],
                        colour.stroke_width(2),
                    )))
                    .map_err(plot)?;
            }
            // Labels of points in the right quarter go to their left, inside the plot; a label
            // that would cover one already drawn goes below its point instead.
            let right = (x / x_min).ln() > 0.75 * (x_max / x_min).ln();
            let (anchor, dx) = if right {
                (HPos::Right, -8)
            } else {
                (HPos::Left, 8)
            };
            let point = chart.backend_coord(&(x, y));
            let width = 7 * row.method.chars().count() as i32;
            let left = if right {
                point.0 + dx - width
            } else {
                point.0 + dx
            };
            let above = LabelBox::new(left, point.1 - 18, width);
            let (vertical, dy, taken) = if placed.iter().any(|b| b.overlaps(&above)) {
                (VPos::Top, 4, LabelBox::new(left, point.1 + 4, width))
            } else {
                (VPos::Bottom, -4, above)
            };
            placed.push(taken);
            let label = ("sans-serif", 13)
                .into_font()
                .into_text_style(&root)
                .pos(Pos::new(anchor, vertical));
            chart
                .draw_series(std::iter::once(
                    EmptyElement::at((x, y))
                        + Circle::new((0, 0), 5, colour.filled())
                        + Text::new(row.method.clone(), (dx, dy), label),
                ))
                .map_err(plot)?;
        }
        root.present().map_err(plot)?;
    }
    Ok(svg)
}

/// A label's rough extent in pixels (13 px sans-serif: about 7 px a character, 14 high).
struct LabelBox {
    left: i32,
    top: i32,
    width: i32,
}

impl LabelBox {
    fn new(left: i32, top: i32, width: i32) -> Self {
        Self { left, top, width }
    }

    fn overlaps(&self, other: &LabelBox) -> bool {
        self.left < other.left + other.width
            && other.left < self.left + self.width
            && (self.top - other.top).abs() < 14
    }
}

pub(crate) fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// One page, no external resources: a heading, the table and the plot inline.
pub fn html_page(rows: &[ComparisonRow], metric: &str, title: &str, svg: &str) -> String {
    let headers: String = HEADERS
        .iter()
        .map(|h| format!("<th>{}</th>", escape(&h.replace("METRIC", metric))))
        .collect();
    let body: String = rows
        .iter()
        .map(|row| {
            let cells: String = cells(row)
                .iter()
                .map(|c| format!("<td>{}</td>", escape(c)))
                .collect();
            format!("<tr>{cells}</tr>\n")
        })
        .collect();
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title>\n\
         <style>body{{font-family:sans-serif;margin:2em;color:#222}}\
         table{{border-collapse:collapse}}td,th{{border:1px solid #bbb;padding:4px 10px;text-align:right}}\
         td:first-child,th:first-child{{text-align:left}}</style></head>\n<body>\n<h1>{title}</h1>\n\
         <table>\n<tr>{headers}</tr>\n{body}</table>\n<figure>{svg}</figure>\n</body></html>\n",
        title = escape(title),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(method: &str, mean: f64, share: f64, seeds: usize) -> ComparisonRow {
        ComparisonRow {
            method: method.into(),
            seeds,
            mean,
            std: if seeds > 1 { 0.02 } else { 0.0 },
            trainable_params: 1000,
            trainable_percent: share,
            seconds_per_epoch: 12.0,
            peak_rss_mib: Some(300.0),
        }
    }

    #[test]
    fn mean_and_sample_standard_deviation() {
        let (mean, std) = mean_std(&[0.5, 0.7]);
        assert!((mean - 0.6).abs() < 1e-12);
        assert!((std - 0.02f64.sqrt()).abs() < 1e-12);
        assert_eq!(mean_std(&[0.9]), (0.9, 0.0));
    }

    #[test]
    fn table_plot_and_page_show_every_method() {
        let rows = vec![row("full", 0.98, 100.0, 3), row("lora-r8", 0.955, 0.334, 3)];
        let table = markdown(&rows, "accuracy");
        assert!(table.contains("| full | 98.0 ± 2.0 | 1000 | 100.000 | 12 | 300 |"));
        assert!(table.contains("test accuracy %"));
        let svg = svg_plot(&rows, "accuracy", "BBC <News>").expect("plots");
        assert!(svg.starts_with("<svg") && svg.contains("lora-r8"));
        let page = html_page(&rows, "accuracy", "BBC <News>", &svg);
        assert!(page.contains("<td>lora-r8</td>") && page.contains("BBC &lt;News&gt;"));
        assert!(page.contains("<svg"));
        assert!(svg_plot(&[], "accuracy", "none").is_err());
    }
}
