//! The bench's one figure, as SVG written by hand: the per-step breakdown of our time to key
//! beside clevis/tang's, and the boot-storm completion curves (ours, the fixed-interval
//! baselines, the ideal). Pure: data in, text out.

use std::fmt::Write as _;

/// One curve of a storm panel: (seconds, fraction of nodes unlocked).
pub(super) struct Curve {
    pub label: String,
    pub color: &'static str,
    pub points: Vec<(f64, f64)>,
    pub dashed: bool,
    /// Draw as a step function (completions) rather than straight segments (the ideal).
    pub steps: bool,
}

/// One storm panel.
pub(super) struct StormPanel {
    pub title: String,
    pub curves: Vec<Curve>,
}

/// The step breakdown: our steps' medians (ms) in order, our wall-clock median, and the
/// baseline's wall-clock median.
pub(super) struct Breakdown {
    pub steps: Vec<(String, f64)>,
    pub ours_wall: f64,
    /// Our wall clock minus the keyslot check: the key in memory.
    pub ours_key: f64,
    pub baseline_label: String,
    pub baseline_wall: f64,
}

const WIDTH: f64 = 960.0;
const STEP_COLORS: &[&str] = &[
    "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
    "#9c755f", "#bab0ac", "#17becf", "#d37295",
];
/// Room under a storm panel's plot for its legend, one line per curve.
const LEGEND_LINE: f64 = 15.0;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A "nice" axis maximum and tick step for values up to `max`.
fn nice(max: f64) -> (f64, f64) {
    let max = if max.is_finite() && max > 0.0 {
        max
    } else {
        1.0
    };
    let raw = max / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    ((max / step).ceil() * step, step)
}

fn text(out: &mut String, x: f64, y: f64, anchor: &str, size: u32, body: &str) {
    let _ = writeln!(
        out,
        r#"<text x="{x:.1}" y="{y:.1}" text-anchor="{anchor}" font-size="{size}">{}</text>"#,
        esc(body)
    );
}

fn breakdown_panel(out: &mut String, b: &Breakdown, top: f64) -> f64 {
    let left = 190.0;
    let right = WIDTH - 30.0;
    text(
        out,
        20.0,
        top + 18.0,
        "start",
        15,
        "Time to key: where the time goes (medians, ms)",
    );
    text(
        out,
        20.0,
        top + 34.0,
        "start",
        11,
        &format!(
            "key in memory (wall minus the keyslot check): ours {:.1} ms vs {} {:.1} ms",
            b.ours_key, b.baseline_label, b.baseline_wall
        ),
    );
    let (xmax, tick) = nice(b.ours_wall.max(b.baseline_wall));
    let scale = |ms: f64| left + (right - left) * (ms / xmax).clamp(0.0, 1.0);
    let bar_h = 26.0;
    let y1 = top + 46.0;
    let y2 = y1 + bar_h + 14.0;
    // Axis and grid.
    let axis_y = y2 + bar_h + 8.0;
    let mut t = 0.0;
    while t <= xmax + tick / 2.0 {
        let x = scale(t);
        let _ = writeln!(
            out,
            r##"<line x1="{x:.1}" y1="{y1:.1}" x2="{x:.1}" y2="{axis_y:.1}" stroke="#ddd"/>"##
        );
        text(out, x, axis_y + 14.0, "middle", 11, &format!("{t:.0}"));
        t += tick;
    }
    text(out, right, axis_y + 28.0, "end", 11, "ms");
    // Our stacked bar.
    text(
        out,
        left - 8.0,
        y1 + 17.0,
        "end",
        12,
        "attest-unlock unlock (swtpm)",
    );
    let mut x = 0.0;
    let mut legend = Vec::new();
    for (i, (name, ms)) in b.steps.iter().enumerate() {
        let color = STEP_COLORS[i % STEP_COLORS.len()];
        let (x0, x1) = (scale(x), scale(x + ms));
        let _ = writeln!(
            out,
            r#"<rect x="{x0:.1}" y="{y1:.1}" width="{:.1}" height="{bar_h}" fill="{color}"><title>{}: {ms:.1} ms</title></rect>"#,
            (x1 - x0).max(0.0),
            esc(name)
        );
        x += ms;
        if *ms >= 0.05 {
            legend.push((format!("{name} {ms:.1}"), color));
        }
    }
    let rest = (b.ours_wall - x).max(0.0);
    if rest > 0.0 {
        let (x0, x1) = (scale(x), scale(x + rest));
        let _ = writeln!(
            out,
            r##"<rect x="{x0:.1}" y="{y1:.1}" width="{:.1}" height="{bar_h}" fill="#e8e8e8" stroke="#999"><title>process start, config, exit: {rest:.1} ms</title></rect>"##,
            (x1 - x0).max(0.0)
        );
        legend.push((format!("process/other {rest:.1}"), "#e8e8e8"));
    }
    text(
        out,
        scale(b.ours_wall) + 6.0,
        y1 + 17.0,
        "start",
        11,
        &format!("{:.1}", b.ours_wall),
    );
    // The baseline's bar.
    text(out, left - 8.0, y2 + 17.0, "end", 12, &b.baseline_label);
    let _ = writeln!(
        out,
        r##"<rect x="{left:.1}" y="{y2:.1}" width="{:.1}" height="{bar_h}" fill="#888"/>"##,
        scale(b.baseline_wall) - left
    );
    text(
        out,
        scale(b.baseline_wall) + 6.0,
        y2 + 17.0,
        "start",
        11,
        &format!("{:.1}", b.baseline_wall),
    );
    // Legend, wrapped.
    let mut lx = left;
    let mut ly = axis_y + 46.0;
    for (label, color) in legend {
        let w = 16.0 + 6.5 * label.len() as f64 + 14.0;
        if lx + w > right {
            lx = left;
            ly += 18.0;
        }
        let _ = writeln!(
            out,
            r##"<rect x="{lx:.1}" y="{:.1}" width="11" height="11" fill="{color}" stroke="#666"/>"##,
            ly - 10.0
        );
        text(out, lx + 15.0, ly, "start", 11, &label);
        lx += w;
    }
    ly + 16.0
}

fn storm_panel(out: &mut String, p: &StormPanel, x0: f64, top: f64, w: f64, h: f64) {
    let left = x0 + 48.0;
    let right = x0 + w - 12.0;
    let ptop = top + 30.0;
    let legend_h = LEGEND_LINE * p.curves.len() as f64 + 6.0;
    let bottom = top + h - 40.0 - legend_h;
    text(out, x0 + 10.0, top + 18.0, "start", 14, &p.title);
    let tmax = p
        .curves
        .iter()
        .flat_map(|c| c.points.iter().map(|(t, _)| *t))
        .fold(0.0, f64::max);
    let (xmax, tick) = nice(tmax);
    let sx = |t: f64| left + (right - left) * (t / xmax).clamp(0.0, 1.0);
    let sy = |f: f64| bottom - (bottom - ptop) * f.clamp(0.0, 1.0);
    for pct in [0.0, 0.25, 0.5, 0.75, 1.0] {
        let y = sy(pct);
        let _ = writeln!(
            out,
            r##"<line x1="{left:.1}" y1="{y:.1}" x2="{right:.1}" y2="{y:.1}" stroke="#ddd"/>"##
        );
        text(
            out,
            left - 6.0,
            y + 4.0,
            "end",
            11,
            &format!("{:.0}%", pct * 100.0),
        );
    }
    let mut t = 0.0;
    while t <= xmax + tick / 2.0 {
        let x = sx(t);
        let _ = writeln!(
            out,
            r##"<line x1="{x:.1}" y1="{ptop:.1}" x2="{x:.1}" y2="{bottom:.1}" stroke="#eee"/>"##
        );
        text(out, x, bottom + 14.0, "middle", 11, &format!("{t}"));
        t += tick;
    }
    text(
        out,
        right,
        bottom + 28.0,
        "end",
        11,
        "seconds since all nodes started",
    );
    let _ = writeln!(
        out,
        r##"<rect x="{left:.1}" y="{ptop:.1}" width="{:.1}" height="{:.1}" fill="none" stroke="#999"/>"##,
        right - left,
        bottom - ptop
    );
    for (i, c) in p.curves.iter().enumerate() {
        let mut d = String::new();
        let mut last_f = 0.0;
        for (j, (t, f)) in c.points.iter().enumerate() {
            if j == 0 {
                let _ = write!(d, "M{:.1},{:.1}", sx(*t), sy(*f));
            } else if c.steps {
                // Each completion raises the line.
                let _ = write!(
                    d,
                    " L{:.1},{:.1} L{:.1},{:.1}",
                    sx(*t),
                    sy(last_f),
                    sx(*t),
                    sy(*f)
                );
            } else {
                let _ = write!(d, " L{:.1},{:.1}", sx(*t), sy(*f));
            }
            last_f = *f;
        }
        let dash = if c.dashed {
            r#" stroke-dasharray="6,4""#
        } else {
            ""
        };
        let _ = writeln!(
            out,
            r#"<path d="{d}" fill="none" stroke="{}" stroke-width="2"{dash}/>"#,
            c.color
        );
        let ly = bottom + 44.0 + LEGEND_LINE * i as f64;
        let _ = writeln!(
            out,
            r#"<line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="{}" stroke-width="2"{dash}/>"#,
            left,
            ly - 4.0,
            left + 22.0,
            ly - 4.0,
            c.color
        );
        text(out, left + 28.0, ly, "start", 11, &c.label);
    }
}

/// The whole figure.
pub(super) fn svg(breakdown: Option<&Breakdown>, storms: &[StormPanel]) -> String {
    let mut body = String::new();
    let mut y = 10.0;
    if let Some(b) = breakdown {
        y = breakdown_panel(&mut body, b, y) + 10.0;
    }
    let storm_h = 330.0
        + storms
            .iter()
            .map(|p| LEGEND_LINE * p.curves.len() as f64 + 6.0)
            .fold(0.0, f64::max);
    if !storms.is_empty() {
        let w = (WIDTH - 20.0) / storms.len() as f64;
        for (i, p) in storms.iter().enumerate() {
            storm_panel(&mut body, p, 10.0 + w * i as f64, y, w, storm_h);
        }
        y += storm_h;
    }
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{h:.0}\" \
         viewBox=\"0 0 {WIDTH} {h:.0}\" font-family=\"sans-serif\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n{body}</svg>\n",
        h = y + 10.0
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_axes() {
        assert_eq!(nice(0.0), (1.0, 0.2));
        assert_eq!(nice(123.0), (125.0, 25.0));
        assert_eq!(nice(9.0), (10.0, 2.0));
    }

    #[test]
    fn svg_is_one_well_formed_document() {
        let b = Breakdown {
            steps: vec![("auth".into(), 2.0), ("evidence<tpm>".into(), 90.0)],
            ours_wall: 120.0,
            ours_key: 100.0,
            baseline_label: "clevis decrypt (tang)".into(),
            baseline_wall: 130.0,
        };
        let p = StormPanel {
            title: "N = 10".into(),
            curves: vec![Curve {
                label: "ours".into(),
                color: "#000",
                points: vec![(0.0, 0.0), (1.0, 0.5), (2.0, 1.0)],
                dashed: false,
                steps: true,
            }],
        };
        let s = svg(Some(&b), &[p]);
        assert!(s.starts_with("<svg") && s.trim_end().ends_with("</svg>"));
        assert!(s.contains("evidence&lt;tpm&gt;"));
        assert_eq!(s.matches("<svg").count(), 1);
        assert_eq!(s.matches("<text").count(), s.matches("</text>").count());
    }
}
