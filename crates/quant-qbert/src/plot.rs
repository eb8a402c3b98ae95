//! Plain SVG plots, no dependencies: a box plot ([`box_plot_svg`], Q-BERT's per-layer top
//! eigenvalues) and a scatter plot by series ([`scatter_svg`], quality against size), and
//! the plots of a [`QbertReport`] and a [`SensitivityReport`](crate::sensitivity::SensitivityReport).

use core::fmt::Write;

use crate::pipeline::QbertReport;

const W: f64 = 760.0;
const H: f64 = 480.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 180.0;

fn header(title: &str) -> String {
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" font-family=\"sans-serif\" font-size=\"11\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"22\" text-anchor=\"middle\" font-size=\"14\">{}</text>\n",
        W / 2.0,
        escape(title)
    )
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// Axis with `ticks` labels between `lo` and `hi`; `y(v)` maps a value to pixels.
fn y_axis(out: &mut String, lo: f64, hi: f64, label: &str, y: &dyn Fn(f64) -> f64) {
    let _ = writeln!(out, "<line x1=\"{LEFT}\" y1=\"{TOP}\" x2=\"{LEFT}\" y2=\"{}\" stroke=\"black\"/>", H - BOTTOM);
    for k in 0..=5 {
        let v = lo + (hi - lo) * k as f64 / 5.0;
        let py = y(v);
        let _ = writeln!(out, "<line x1=\"{}\" y1=\"{py:.1}\" x2=\"{}\" y2=\"{py:.1}\" stroke=\"#ddd\"/>", LEFT, W - RIGHT);
        let _ = writeln!(out, "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{v:.3}</text>", LEFT - 6.0, py + 4.0);
    }
    let _ = writeln!(
        out,
        "<text x=\"16\" y=\"{}\" transform=\"rotate(-90 16 {})\" text-anchor=\"middle\">{}</text>",
        (TOP + H - BOTTOM) / 2.0,
        (TOP + H - BOTTOM) / 2.0,
        escape(label)
    );
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    let pos = q * (sorted.len() - 1) as f64;
    let (i, frac) = (pos.floor() as usize, pos.fract());
    if i + 1 < sorted.len() { sorted[i] * (1.0 - frac) + sorted[i + 1] * frac } else { sorted[i] }
}

/// One box of [`box_plot_svg`]: a label, its values and whether to draw it in the warning
/// colour (a negative eigenvalue).
#[derive(Debug, Clone, PartialEq)]
pub struct PlotBox {
    /// The label under the box.
    pub label: String,
    /// The values (drawn as quartiles, extremes and median).
    pub values: Vec<f64>,
    /// Drawn in red.
    pub warn: bool,
}

/// One point of [`scatter_svg`].
#[derive(Debug, Clone, PartialEq)]
pub struct PlotPoint {
    /// The series (one colour and one legend entry each).
    pub series: String,
    /// Horizontal value.
    pub x: f64,
    /// Vertical value.
    pub y: f64,
    /// The tooltip.
    pub label: String,
}

/// A box per item (box: quartiles; whiskers: extremes; bar: median), labels rotated below.
pub fn box_plot_svg(title: &str, y_label: &str, boxes: &[PlotBox]) -> String {
    let mut out = header(title);
    let all: Vec<f64> = boxes.iter().flat_map(|b| b.values.iter().copied()).filter(|v| v.is_finite()).collect();
    let (mut lo, mut hi) = all.iter().fold((0.0f64, f64::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
    if hi <= lo || !hi.is_finite() {
        hi = lo + 1.0;
    }
    hi += 0.05 * (hi - lo);
    lo -= 0.02 * (hi - lo);
    let y = |v: f64| TOP + (hi - v) / (hi - lo) * (H - TOP - BOTTOM);
    y_axis(&mut out, lo, hi, y_label, &y);
    let n = boxes.len().max(1) as f64;
    let step = (W - LEFT - RIGHT) / n;
    for (i, b) in boxes.iter().enumerate() {
        let mut v: Vec<f64> = b.values.iter().copied().filter(|v| v.is_finite()).collect();
        if v.is_empty() {
            continue;
        }
        v.sort_by(f64::total_cmp);
        let cx = LEFT + step * (i as f64 + 0.5);
        let half = (step * 0.3).min(14.0);
        let (q1, q2, q3) = (quantile(&v, 0.25), quantile(&v, 0.5), quantile(&v, 0.75));
        let (mn, mx) = (v[0], v[v.len() - 1]);
        let colour = if b.warn { "#d62728" } else { "#1f77b4" };
        let _ = writeln!(out, "<line x1=\"{cx:.1}\" y1=\"{:.1}\" x2=\"{cx:.1}\" y2=\"{:.1}\" stroke=\"{colour}\"/>", y(mn), y(mx));
        let _ = writeln!(
            out,
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{colour}\" fill-opacity=\"0.3\" stroke=\"{colour}\"/>",
            cx - half,
            y(q3),
            2.0 * half,
            (y(q1) - y(q3)).max(1.0)
        );
        let _ = writeln!(
            out,
            "<line x1=\"{:.1}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"black\" stroke-width=\"2\"/>",
            cx - half,
            y(q2),
            cx + half,
            y(q2)
        );
        let ly = H - BOTTOM + 10.0;
        let _ = writeln!(out, "<text x=\"{cx:.1}\" y=\"{ly}\" transform=\"rotate(60 {cx:.1} {ly})\">{}</text>", escape(&b.label));
    }
    out.push_str("</svg>\n");
    out
}

/// Points coloured by series, with a legend; `log_x` puts the horizontal axis on a log scale.
/// Non-finite points are left out.
pub fn scatter_svg(title: &str, x_label: &str, y_label: &str, points: &[PlotPoint], log_x: bool) -> String {
    let mut out = header(title);
    let points: Vec<&PlotPoint> = points.iter().filter(|p| p.x.is_finite() && p.y.is_finite() && (!log_x || p.x > 0.0)).collect();
    let fx = |v: f64| if log_x { v.ln() } else { v };
    let (mut xmin, mut xmax) = points.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| (a.min(fx(p.x)), b.max(fx(p.x))));
    if !(xmin.is_finite() && xmax.is_finite()) || xmax <= xmin {
        xmin = if xmin.is_finite() { xmin - 1.0 } else { 0.0 };
        xmax = xmin + 2.0;
    }
    let (mut lo, mut hi) = points.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| (a.min(p.y), b.max(p.y)));
    if !(lo.is_finite() && hi.is_finite()) || hi <= lo {
        lo = if lo.is_finite() { lo - 1.0 } else { 0.0 };
        hi = lo + 2.0;
    }
    let pad = 0.03 * (hi - lo);
    let (lo, hi) = (lo - pad, hi + pad);
    let y = |v: f64| TOP + (hi - v) / (hi - lo) * (H - TOP - BOTTOM);
    let x = |v: f64| LEFT + 10.0 + (fx(v) - xmin) / (xmax - xmin) * (W - LEFT - RIGHT - 20.0);
    y_axis(&mut out, lo, hi, y_label, &y);
    for k in 0..=5 {
        let v = xmin + (xmax - xmin) * k as f64 / 5.0;
        let v = if log_x { v.exp() } else { v };
        let _ = writeln!(out, "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>", x(v), H - BOTTOM + 14.0, short(v));
    }
    let _ = writeln!(out, "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>", W / 2.0, H - BOTTOM + 30.0, escape(x_label));
    let colours = [
        "#000000", "#1f77b4", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf", "#ff7f0e", "#aec7e8",
        "#98df8a", "#ff9896",
    ];
    let mut series: Vec<&str> = Vec::new();
    for p in &points {
        let k = series.iter().position(|m| *m == p.series).unwrap_or_else(|| {
            series.push(&p.series);
            series.len() - 1
        });
        let c = colours[k % colours.len()];
        let _ = writeln!(
            out,
            "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"4\" fill=\"{c}\"><title>{}</title></circle>",
            x(p.x),
            y(p.y),
            escape(&p.label)
        );
    }
    for (k, m) in series.iter().enumerate() {
        let ly = H - BOTTOM + 50.0 + 14.0 * (k % 4) as f64;
        let lx = LEFT + 200.0 * (k / 4) as f64;
        let _ = writeln!(
            out,
            "<circle cx=\"{lx}\" cy=\"{}\" r=\"4\" fill=\"{}\"/><text x=\"{}\" y=\"{}\">{}</text>",
            ly - 4.0,
            colours[k % colours.len()],
            lx + 10.0,
            ly,
            escape(m)
        );
    }
    out.push_str("</svg>\n");
    out
}

/// A tick label: three significant digits.
fn short(v: f64) -> String {
    if v.abs() >= 1e4 || (v != 0.0 && v.abs() < 1e-2) { format!("{v:.2e}") } else { format!("{:.3}", v) }
}

impl QbertReport {
    /// Q-BERT's figure: for each weight matrix, a box plot of its top Hessian eigenvalue over
    /// the data subsets (box: quartiles; whiskers: extremes; bar: median).
    pub fn eigenvalue_svg(&self) -> String {
        let boxes: Vec<PlotBox> =
            self.layers.iter().map(|l| PlotBox { label: l.name.clone(), values: l.eigenvalues.clone(), warn: l.negative }).collect();
        box_plot_svg("Top Hessian eigenvalue per layer over data subsets", "top eigenvalue", &boxes)
    }

    /// Test accuracy (weights and activations quantized) against model size for every row of
    /// the study, one colour per method.
    pub fn accuracy_svg(&self) -> String {
        let points: Vec<PlotPoint> = self
            .rows
            .iter()
            .map(|r| PlotPoint {
                series: r.method.split(" (").next().unwrap_or(&r.method).to_string(),
                x: r.bytes as f64,
                y: r.accuracy_act,
                label: format!("{} {} bits, {} groups: {:.2}%", r.method, r.bits, r.groups, 100.0 * r.accuracy_act),
            })
            .collect();
        scatter_svg(
            "Test accuracy against model size",
            "model size in bytes (log scale)",
            "test accuracy (weights + activations quantized)",
            &points,
            true,
        )
    }
}

impl crate::sensitivity::SensitivityReport {
    /// Q-BERT's figure on a checkpoint: per matrix, a box plot of its top Hessian eigenvalue
    /// over the calibration subsets (red: a negative eigenvalue).
    pub fn eigenvalue_svg(&self) -> String {
        let boxes: Vec<PlotBox> = self
            .matrices
            .iter()
            .map(|m| PlotBox {
                label: m.name.trim_end_matches(".weight").replace("encoder.layer.", "L").replace("attention.", ""),
                values: m.eigenvalues.clone(),
                warn: m.eigenvalues.iter().any(|&v| v < 0.0),
            })
            .collect();
        box_plot_svg("Top Hessian eigenvalue per matrix over calibration subsets", "top eigenvalue", &boxes)
    }
}
