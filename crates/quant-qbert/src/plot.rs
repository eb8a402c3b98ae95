//! SVG plots of a [`QbertReport`]: Q-BERT's box plot of per-layer top eigenvalues, and
//! accuracy against model size for every method of the study. Plain SVG, no dependencies.

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

impl QbertReport {
    /// Q-BERT's figure: for each weight matrix, a box plot of its top Hessian eigenvalue over
    /// the data subsets (box: quartiles; whiskers: extremes; bar: median).
    pub fn eigenvalue_svg(&self) -> String {
        let mut out = header("Top Hessian eigenvalue per layer over data subsets");
        let all: Vec<f64> = self.layers.iter().flat_map(|l| l.eigenvalues.iter().copied()).collect();
        let (mut lo, mut hi) = all.iter().fold((0.0f64, f64::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
        if hi <= lo || !hi.is_finite() {
            hi = lo + 1.0;
        }
        hi += 0.05 * (hi - lo);
        lo -= 0.02 * (hi - lo);
        let y = |v: f64| TOP + (hi - v) / (hi - lo) * (H - TOP - BOTTOM);
        y_axis(&mut out, lo, hi, "top eigenvalue", &y);
        let n = self.layers.len().max(1) as f64;
        let step = (W - LEFT - RIGHT) / n;
        for (i, l) in self.layers.iter().enumerate() {
            if l.eigenvalues.is_empty() {
                continue;
            }
            let mut v = l.eigenvalues.clone();
            v.sort_by(f64::total_cmp);
            let cx = LEFT + step * (i as f64 + 0.5);
            let half = (step * 0.3).min(14.0);
            let (q1, q2, q3) = (quantile(&v, 0.25), quantile(&v, 0.5), quantile(&v, 0.75));
            let (mn, mx) = (v[0], v[v.len() - 1]);
            let colour = if l.negative { "#d62728" } else { "#1f77b4" };
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
            let _ = writeln!(out, "<text x=\"{cx:.1}\" y=\"{ly}\" transform=\"rotate(60 {cx:.1} {ly})\">{}</text>", escape(&l.name));
        }
        out.push_str("</svg>\n");
        out
    }

    /// Test accuracy (weights and activations quantized) against model size for every row of
    /// the study, one colour per method.
    pub fn accuracy_svg(&self) -> String {
        let mut out = header("Test accuracy against model size");
        let rows = &self.rows;
        let (mut smin, mut smax) = rows.iter().fold((f64::INFINITY, 0.0f64), |(a, b), r| (a.min(r.bytes as f64), b.max(r.bytes as f64)));
        if smax <= smin {
            smax = smin + 1.0;
        }
        smin = smin.max(1.0).ln();
        smax = smax.ln();
        let lo = rows.iter().map(|r| r.accuracy_act).fold(1.0f64, f64::min).min(1.0) - 0.02;
        let hi = 1.0;
        let y = |v: f64| TOP + (hi - v) / (hi - lo) * (H - TOP - BOTTOM);
        let x = |bytes: f64| LEFT + 10.0 + (bytes.max(1.0).ln() - smin) / (smax - smin + 1e-12) * (W - LEFT - RIGHT - 20.0);
        y_axis(&mut out, lo, hi, "test accuracy (weights + activations quantized)", &y);
        let _ = writeln!(
            out,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">model size in bytes (log scale)</text>",
            W / 2.0,
            H - BOTTOM + 30.0
        );
        let colours = ["#000000", "#1f77b4", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2"];
        let mut methods: Vec<&str> = Vec::new();
        for r in rows {
            let kind = r.method.split(" (").next().unwrap_or(&r.method);
            let k = methods.iter().position(|m| *m == kind).unwrap_or_else(|| {
                methods.push(kind);
                methods.len() - 1
            });
            let c = colours[k % colours.len()];
            let _ = writeln!(
                out,
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"4\" fill=\"{c}\"><title>{} {} bits, {} groups: {:.2}%</title></circle>",
                x(r.bytes as f64),
                y(r.accuracy_act),
                escape(&r.method),
                escape(&r.bits),
                escape(&r.groups),
                100.0 * r.accuracy_act
            );
        }
        for (k, m) in methods.iter().enumerate() {
            let ly = H - BOTTOM + 50.0 + 14.0 * (k % 4) as f64;
            let lx = LEFT + 260.0 * (k / 4) as f64;
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
}
