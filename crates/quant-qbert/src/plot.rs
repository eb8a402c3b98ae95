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

/// Round tick values covering `[lo, hi]`: about `target` steps of 1, 2 or 5 times a power of
/// ten, the first at or below `lo` and the last at or above `hi`. A degenerate range gets
/// one unit around it.
pub(crate) fn nice_ticks(lo: f64, hi: f64, target: usize) -> Vec<f64> {
    let (lo, hi) = if hi > lo && (hi - lo).is_finite() { (lo, hi) } else { (lo - 0.5, lo + 0.5) };
    let raw = (hi - lo) / target.max(1) as f64;
    let exp = raw.log10().floor() as i32;
    let mag = 10f64.powi(exp);
    let m = [1i64, 2, 5, 10].into_iter().find(|&m| m as f64 * mag >= raw).unwrap_or(10);
    let step = m as f64 * mag;
    let first = (lo / step).floor() as i64;
    let last = (hi / step).ceil() as i64;
    // k·m units of 10^exp, divided by an exact power of ten below 1: the correctly rounded
    // value (0.6, not 0.6000000000000001).
    let value = |k: i64| if exp < 0 { (k * m) as f64 / 10f64.powi(-exp) } else { (k * m) as f64 * mag };
    (first..=last).map(value).collect()
}

/// Ticks of a log axis over `[lo, hi]` (both positive): 1, 2 and 5 times powers of ten when
/// the range spans less than three decades, powers of ten otherwise; at least the two ends'
/// round neighbours.
pub(crate) fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let (a, b) = (lo.log10().floor() as i32, hi.log10().ceil() as i32);
    let mantissas: &[f64] = if b - a <= 3 { &[1.0, 2.0, 5.0] } else { &[1.0] };
    let all: Vec<f64> = (a..=b).flat_map(|e| mantissas.iter().map(move |m| m * 10f64.powi(e))).collect();
    // The ticks inside the range, plus the nearest one outside at each end.
    let below = all.iter().copied().rfind(|&v| v <= lo).unwrap_or(all[0]);
    let above = all.iter().copied().find(|&v| v >= hi).unwrap_or(all[all.len() - 1]);
    all.into_iter().filter(|&v| v >= below && v <= above).collect()
}

/// Decimals that tell `step`-spaced ticks apart.
fn decimals(step: f64) -> usize {
    if step >= 1.0 || step <= 0.0 || !step.is_finite() { 0 } else { (-step.log10().floor()).clamp(0.0, 12.0) as usize }
}

/// A tick label: fixed decimals for the step, scientific for very large or small values.
fn tick_label(v: f64, step: f64) -> String {
    if v != 0.0 && (v.abs() >= 1e6 || v.abs() < 1e-3) { format!("{v:.1e}") } else { format!("{v:.*}", decimals(step)) }
}

/// The vertical axis with round ticks (the axis spans from the first to the last);
/// `y(v)` maps a value to pixels.
fn y_axis(out: &mut String, ticks: &[f64], label: &str, y: &dyn Fn(f64) -> f64) {
    let _ = writeln!(out, "<line x1=\"{LEFT}\" y1=\"{TOP}\" x2=\"{LEFT}\" y2=\"{}\" stroke=\"black\"/>", H - BOTTOM);
    let step = if ticks.len() > 1 { ticks[1] - ticks[0] } else { 1.0 };
    for &v in ticks {
        let py = y(v);
        let _ = writeln!(out, "<line x1=\"{}\" y1=\"{py:.1}\" x2=\"{}\" y2=\"{py:.1}\" stroke=\"#ddd\"/>", LEFT, W - RIGHT);
        let _ = writeln!(out, "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>", LEFT - 6.0, py + 4.0, tick_label(v, step));
    }
    let _ = writeln!(
        out,
        "<text x=\"16\" y=\"{}\" transform=\"rotate(-90 16 {})\" text-anchor=\"middle\">{}</text>",
        (TOP + H - BOTTOM) / 2.0,
        (TOP + H - BOTTOM) / 2.0,
        escape(label)
    );
}

/// Approximate width in pixels of `text` at the plots' 11 px font.
fn text_width(text: &str) -> f64 {
    6.2 * text.chars().count() as f64
}

/// `text` cut to at most `max_px` wide, with an ellipsis when cut.
fn fit_text(text: &str, max_px: f64) -> String {
    if text_width(text) <= max_px {
        return text.to_string();
    }
    let keep = ((max_px / 6.2) as usize).saturating_sub(1);
    let mut t: String = text.chars().take(keep).collect();
    t.push('…');
    t
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
    let (lo, mut hi) = all.iter().fold((0.0f64, f64::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
    if hi <= lo || !hi.is_finite() {
        hi = lo + 1.0;
    }
    let ticks = nice_ticks(lo, hi, 5);
    let (lo, hi) = (ticks[0], ticks[ticks.len() - 1]);
    let y = |v: f64| TOP + (hi - v) / (hi - lo) * (H - TOP - BOTTOM);
    y_axis(&mut out, &ticks, y_label, &y);
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
        // Rotated 60° down to the right: the label must end above the bottom and left of the
        // right edge.
        let room = ((H - ly - 4.0) / 60f64.to_radians().sin()).min((W - cx - 2.0) / 60f64.to_radians().cos());
        let label = fit_text(&b.label, room);
        let _ = writeln!(out, "<text x=\"{cx:.1}\" y=\"{ly}\" transform=\"rotate(60 {cx:.1} {ly})\">{}</text>", escape(&label));
    }
    out.push_str("</svg>\n");
    out
}

/// Points coloured by series, with a legend; `log_x` puts the horizontal axis on a log scale.
/// Both axes have round ticks. Points that would be drawn on top of each other (within 3
/// pixels) are spread sideways and drawn as rings, so every point stays visible. Non-finite
/// points are left out.
pub fn scatter_svg(title: &str, x_label: &str, y_label: &str, points: &[PlotPoint], log_x: bool) -> String {
    let mut out = header(title);
    let points: Vec<&PlotPoint> = points.iter().filter(|p| p.x.is_finite() && p.y.is_finite() && (!log_x || p.x > 0.0)).collect();
    let (xmin, xmax) = points.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| (a.min(p.x), b.max(p.x)));
    let xticks = match (log_x, xmin.is_finite()) {
        (true, true) => log_ticks(xmin, if xmax > xmin { xmax } else { xmin * 10.0 }),
        (false, true) => nice_ticks(xmin, xmax, 6),
        _ => nice_ticks(0.0, 1.0, 5),
    };
    let fx = |v: f64| if log_x { v.ln() } else { v };
    let (x0, x1) = (fx(xticks[0]), fx(xticks[xticks.len() - 1]));
    let (lo, hi) = points.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| (a.min(p.y), b.max(p.y)));
    let yticks = if lo.is_finite() { nice_ticks(lo, hi, 5) } else { nice_ticks(0.0, 1.0, 5) };
    let (lo, hi) = (yticks[0], yticks[yticks.len() - 1]);
    let y = |v: f64| TOP + (hi - v) / (hi - lo) * (H - TOP - BOTTOM);
    let x = |v: f64| LEFT + 10.0 + (fx(v) - x0) / (x1 - x0) * (W - LEFT - RIGHT - 20.0);
    y_axis(&mut out, &yticks, y_label, &y);
    // The horizontal axis: a line, a tick mark and a label per tick (the last label kept
    // inside the canvas), and the axis title.
    let base = H - BOTTOM;
    let _ = writeln!(out, "<line x1=\"{LEFT}\" y1=\"{base}\" x2=\"{}\" y2=\"{base}\" stroke=\"black\"/>", W - RIGHT);
    let xstep = if xticks.len() > 1 { xticks[1] - xticks[0] } else { 1.0 };
    for &v in &xticks {
        let px = x(v);
        let label = if log_x { tick_label(v, v) } else { tick_label(v, xstep) };
        let anchor = if px + text_width(&label) / 2.0 > W - 2.0 { "end" } else { "middle" };
        let _ = writeln!(out, "<line x1=\"{px:.1}\" y1=\"{base}\" x2=\"{px:.1}\" y2=\"{}\" stroke=\"black\"/>", base + 5.0);
        let _ = writeln!(out, "<text x=\"{px:.1}\" y=\"{}\" text-anchor=\"{anchor}\">{label}</text>", base + 17.0);
    }
    let _ = writeln!(out, "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>", W / 2.0, base + 33.0, escape(x_label));
    let colours = [
        "#000000", "#1f77b4", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf", "#ff7f0e", "#aec7e8",
        "#98df8a", "#ff9896",
    ];
    let mut series: Vec<&str> = Vec::new();
    let mut drawn: Vec<(f64, f64)> = Vec::new();
    for p in &points {
        let k = series.iter().position(|m| *m == p.series).unwrap_or_else(|| {
            series.push(&p.series);
            series.len() - 1
        });
        let c = colours[k % colours.len()];
        let (px, py) = (x(p.x), y(p.y));
        // The n-th point on an occupied spot goes 7 px right, left, 14 px right, ...
        let twins = drawn.iter().filter(|(a, b)| (a - px).abs() < 3.0 && (b - py).abs() < 3.0).count();
        drawn.push((px, py));
        let shift = if twins == 0 { 0.0 } else { 7.0 * twins.div_ceil(2) as f64 * if twins % 2 == 1 { 1.0 } else { -1.0 } };
        let style = if twins == 0 { format!("fill=\"{c}\"") } else { format!("fill=\"white\" stroke=\"{c}\" stroke-width=\"2\"") };
        let _ =
            writeln!(out, "<circle cx=\"{:.1}\" cy=\"{py:.1}\" r=\"4\" {style}><title>{}</title></circle>", px + shift, escape(&p.label));
    }
    // The legend: as many columns as the longest entry allows, entries cut to the column.
    let rows = ((H - (base + 50.0)) / 14.0).floor().max(1.0) as usize;
    let columns = series.len().div_ceil(rows).max(1);
    let col_w = (W - LEFT - RIGHT) / columns as f64;
    for (k, m) in series.iter().enumerate() {
        let ly = base + 50.0 + 14.0 * (k % rows) as f64;
        let lx = LEFT + col_w * (k / rows) as f64;
        let _ = writeln!(
            out,
            "<circle cx=\"{lx}\" cy=\"{}\" r=\"4\" fill=\"{}\"/><text x=\"{}\" y=\"{}\">{}</text>",
            ly - 4.0,
            colours[k % colours.len()],
            lx + 10.0,
            ly,
            escape(&fit_text(m, col_w - 16.0))
        );
    }
    out.push_str("</svg>\n");
    out
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The `(x, anchor, text)` of every unrotated `<text>` element.
    fn texts(svg: &str) -> Vec<(f64, String, String)> {
        svg.split("<text ")
            .skip(1)
            .filter(|t| !t.contains("transform"))
            .map(|t| {
                let attr = |name: &str| t.split(&format!("{name}=\"")).nth(1).and_then(|r| r.split('"').next()).unwrap_or("").to_string();
                let body = t.split('>').nth(1).and_then(|r| r.split('<').next()).unwrap_or("").to_string();
                (attr("x").parse().unwrap_or(f64::NAN), attr("text-anchor"), body)
            })
            .collect()
    }

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        assert_eq!(nice_ticks(0.0123, 0.987, 5), [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]);
        assert_eq!(nice_ticks(3.2, 7.9, 5), [3.0, 4.0, 5.0, 6.0, 7.0, 8.0]);
        assert_eq!(nice_ticks(-0.31, 0.07, 4), [-0.4, -0.3, -0.2, -0.1, 0.0, 0.1]);
        assert!(nice_ticks(2.0, 2.0, 5).len() >= 2);
        assert_eq!(log_ticks(9848.0, 71848.0), [5000.0, 10000.0, 20000.0, 50000.0, 100000.0]);
        assert_eq!(log_ticks(3.0, 2e6), [1.0, 10.0, 100.0, 1000.0, 1e4, 1e5, 1e6, 1e7]);
        assert_eq!(tick_label(0.6000000000000001, 0.2), "0.6");
        assert_eq!(tick_label(20000.0, 20000.0), "20000");
    }

    #[test]
    fn scatter_has_x_ticks_visible_twins_and_nothing_cut() {
        let mut points: Vec<PlotPoint> = (0..14)
            .map(|k| PlotPoint {
                series: format!("a rather long series name number {k} (groups of 128, GPTQ)"),
                x: 9848.0 + 4000.0 * k as f64,
                y: 0.5 + 0.03 * k as f64,
                label: format!("p{k}"),
            })
            .collect();
        // Two more at exactly the first point's place.
        points.push(PlotPoint { series: "twin".into(), x: 9848.0, y: 0.5, label: "twin 1".into() });
        points.push(PlotPoint { series: "twin".into(), x: 9848.0, y: 0.5, label: "twin 2".into() });
        for log_x in [false, true] {
            let svg = scatter_svg("title", "model size in bytes", "accuracy", &points, log_x);
            // Every point drawn (legend markers have no <title>), and no two on one spot.
            let centres: Vec<&str> =
                svg.split("<circle ").filter(|c| c.contains("<title>")).map(|c| c.split("cy=").next().unwrap_or("")).collect();
            assert_eq!(centres.len(), 16);
            let mut unique = centres.clone();
            unique.sort_unstable();
            unique.dedup();
            assert_eq!(unique.len(), 16, "coinciding points drawn on top of each other (log_x {log_x})");
            assert!(svg.contains("fill=\"white\" stroke="), "twins are drawn as rings");
            // The horizontal axis has round tick labels.
            let base = H - BOTTOM + 17.0;
            let xlabels: Vec<String> = svg
                .split("<text ")
                .filter(|t| t.contains(&format!("y=\"{base}\"")))
                .filter_map(|t| t.split('>').nth(1)?.split('<').next().map(String::from))
                .collect();
            assert!(xlabels.len() >= 3, "{xlabels:?}");
            assert!(xlabels.iter().all(|l| l.parse::<f64>().is_ok_and(|v| v == (v / 1000.0).round() * 1000.0)), "{xlabels:?}");
            // No text runs past either edge.
            for (x, anchor, body) in texts(&svg) {
                let w = text_width(&body);
                let (a, b) = match anchor.as_str() {
                    "end" => (x - w, x),
                    "middle" => (x - w / 2.0, x + w / 2.0),
                    _ => (x, x + w),
                };
                assert!(a >= 0.0 && b <= W, "'{body}' spans {a:.0}..{b:.0} (log_x {log_x})");
            }
        }
    }

    #[test]
    fn box_plot_labels_fit_and_the_axis_is_round() {
        let boxes: Vec<PlotBox> = (0..40)
            .map(|k| PlotBox {
                label: format!("encoder.layer.{k}.attention.self.query.weight.with.a.long.tail"),
                values: vec![0.013 * k as f64, 0.02 * k as f64 + 0.1],
                warn: false,
            })
            .collect();
        let svg = box_plot_svg("t", "top eigenvalue", &boxes);
        let step = nice_ticks(0.0, 0.88, 5);
        for v in &step {
            assert!(svg.contains(&format!(">{}</text>", tick_label(*v, step[1] - step[0]))), "tick {v}");
        }
        // Rotated labels were cut to the room below the axis (an ellipsis on the long ones).
        assert!(svg.contains('…'));
    }
}
