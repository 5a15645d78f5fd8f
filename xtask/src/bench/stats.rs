//! Pure helpers of the bench: summaries of samples, the verdict line's step timings, the
//! boot-storm metrics. No I/O, so they are unit-tested without any of the machinery.

use std::fmt::Write as _;

/// Median, minimum and maximum of a set of samples (any unit).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

/// The summary of `samples`; `None` when there are none. The median of an even count is the
/// mean of the two middle samples.
pub(super) fn summarize(samples: &[f64]) -> Option<Summary> {
    let mut s: Vec<f64> = samples.iter().copied().filter(|v| v.is_finite()).collect();
    if s.is_empty() {
        return None;
    }
    s.sort_by(f64::total_cmp);
    let n = s.len();
    let median = if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    };
    Some(Summary {
        median,
        min: s[0],
        max: s[n - 1],
        n,
    })
}

impl Summary {
    /// `12.3 (11.0-14.2)` with `digits` decimals.
    pub(super) fn show(&self, digits: usize) -> String {
        format!(
            "{:.d$} ({:.d$}-{:.d$})",
            self.median,
            self.min,
            self.max,
            d = digits
        )
    }
}

/// `median (min-max)` of `samples`, or `-` when there are none.
pub(super) fn show(samples: &[f64], digits: usize) -> String {
    summarize(samples).map_or_else(|| "-".to_owned(), |s| s.show(digits))
}

/// The per-step timings of a verdict line (`... keygen=0.1ms auth=2.0ms ... total=122.2ms`),
/// in the order they appear, in milliseconds. `total` is included.
pub(super) fn verdict_steps(line: &str) -> Vec<(String, f64)> {
    line.split_whitespace()
        .filter_map(|word| {
            let (key, value) = word.split_once('=')?;
            let ms = value.strip_suffix("ms")?.parse::<f64>().ok()?;
            if key.is_empty() || !key.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
                return None;
            }
            Some((key.to_owned(), ms))
        })
        .collect()
}

/// The verdict line among a run's stderr lines.
pub(super) fn find_verdict(stderr: &str) -> Option<&str> {
    stderr.lines().find(|l| l.contains("verdict="))
}

/// What one simulated node did in a boot storm.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Node {
    /// Seconds from the common start until it had the key; `None` if it gave up.
    pub done: Option<f64>,
    /// Its attempts: sessions it opened, and attestations it resent in a kept session.
    pub sessions: u32,
}

/// The figures of one boot-storm run.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct StormMetrics {
    pub nodes: usize,
    pub unlocked: usize,
    /// When the last node that got the key got it (s).
    pub last: Option<f64>,
    /// Median completion over the nodes that got the key (s).
    pub median: Option<f64>,
    /// `last / ideal`, when every node got the key.
    pub ratio: Option<f64>,
    /// Sessions per node (mean).
    pub sessions_per_node: f64,
    /// HTTP requests to the broker per node (mean).
    pub requests_per_node: f64,
    /// Requests per node beyond the three a single clean session needs (auth, attest, resource).
    pub extra_requests_per_node: f64,
}

/// The metrics of a run with `requests` broker requests in all and an ideal completion time
/// of `ideal` seconds.
pub(super) fn storm_metrics(nodes: &[Node], requests: u64, ideal: f64) -> StormMetrics {
    let n = nodes.len().max(1) as f64;
    let done: Vec<f64> = nodes.iter().filter_map(|x| x.done).collect();
    let unlocked = done.len();
    let last = done
        .iter()
        .copied()
        .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))));
    let ratio = match last {
        Some(l) if unlocked == nodes.len() && ideal > 0.0 => Some(l / ideal),
        _ => None,
    };
    let sessions: u64 = nodes.iter().map(|x| u64::from(x.sessions)).sum();
    let requests_per_node = requests as f64 / n;
    StormMetrics {
        nodes: nodes.len(),
        unlocked,
        last,
        median: summarize(&done).map(|s| s.median),
        ratio,
        sessions_per_node: sessions as f64 / n,
        requests_per_node,
        extra_requests_per_node: requests_per_node - 3.0,
    }
}

/// The completion curve: (time s, fraction of all nodes unlocked), one point per node that
/// got the key, in time order, starting at (0, 0).
pub(super) fn completion_curve(nodes: &[Node]) -> Vec<(f64, f64)> {
    let n = nodes.len().max(1) as f64;
    let mut done: Vec<f64> = nodes.iter().filter_map(|x| x.done).collect();
    done.sort_by(f64::total_cmp);
    let mut out = vec![(0.0, 0.0)];
    for (i, t) in done.iter().enumerate() {
        out.push((*t, (i + 1) as f64 / n));
    }
    out
}

/// A byte count as `1.23 MiB` / `456.7 KiB` / `89 B`.
pub(super) fn bytes(n: u64) -> String {
    let f = n as f64;
    if f >= 1024.0 * 1024.0 {
        format!("{:.2} MiB", f / (1024.0 * 1024.0))
    } else if f >= 1024.0 {
        format!("{:.1} KiB", f / 1024.0)
    } else {
        format!("{n} B")
    }
}

/// A Markdown table.
pub(super) fn markdown_table(head: &[&str], rows: &[Vec<String>]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "| {} |", head.join(" | "));
    let _ = writeln!(
        out,
        "|{}|",
        head.iter().map(|_| "---").collect::<Vec<_>>().join("|")
    );
    for r in rows {
        let _ = writeln!(out, "| {} |", r.join(" | "));
    }
    out
}

/// A plain-text table with aligned columns, for the terminal.
pub(super) fn text_table(head: &[&str], rows: &[Vec<String>]) -> String {
    let cols = head.len();
    let mut width: Vec<usize> = head.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate().take(cols) {
            width[i] = width[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| -> String {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            let pad = width[i].saturating_sub(c.chars().count());
            s.push_str(c);
            if i + 1 < cells.len() {
                s.push_str(&" ".repeat(pad + 2));
            }
        }
        s.trim_end().to_owned()
    };
    let rule: String = width
        .iter()
        .map(|w| "-".repeat(*w))
        .collect::<Vec<_>>()
        .join("  ");
    let mut out = line(head.to_vec());
    out.push('\n');
    out.push_str(&rule);
    out.push('\n');
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries() {
        assert_eq!(summarize(&[]), None);
        let s = summarize(&[3.0, 1.0, 2.0]).unwrap_or(Summary {
            median: 0.0,
            min: 0.0,
            max: 0.0,
            n: 0,
        });
        assert_eq!((s.median, s.min, s.max, s.n), (2.0, 1.0, 3.0, 3));
        assert_eq!(
            summarize(&[4.0, 1.0, 2.0, 3.0]).map(|s| s.median),
            Some(2.5)
        );
        assert_eq!(show(&[1.0, 2.0, 4.0], 1), "2.0 (1.0-4.0)");
        assert_eq!(show(&[], 1), "-");
    }

    #[test]
    fn verdict_line_steps() {
        let line = "attest-unlock: verdict=ok platform=tpm broker=https://127.0.0.1:37729 \
                    volume=verified secrets=1 attempts=1 detect=0.0ms keygen=0.1ms auth=2.0ms \
                    evidence=92.5ms attest=1.5ms fetch=3.1ms decrypt=0.5ms unlock=21.8ms total=122.2ms";
        let steps = verdict_steps(line);
        let names: Vec<&str> = steps.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            names,
            [
                "detect", "keygen", "auth", "evidence", "attest", "fetch", "decrypt", "unlock",
                "total"
            ]
        );
        assert_eq!(steps[3].1, 92.5);
        assert_eq!(
            find_verdict("x\nattest-unlock: verdict=ok total=1.0ms\n"),
            Some("attest-unlock: verdict=ok total=1.0ms")
        );
    }

    #[test]
    fn storm_figures() {
        let nodes = vec![
            Node {
                done: Some(1.0),
                sessions: 1,
            },
            Node {
                done: Some(3.0),
                sessions: 3,
            },
        ];
        let m = storm_metrics(&nodes, 10, 2.0);
        assert_eq!((m.unlocked, m.last, m.ratio), (2, Some(3.0), Some(1.5)));
        assert_eq!((m.sessions_per_node, m.requests_per_node), (2.0, 5.0));
        assert_eq!(m.extra_requests_per_node, 2.0);
        let gave_up = vec![
            Node {
                done: None,
                sessions: 5,
            },
            Node {
                done: Some(1.0),
                sessions: 1,
            },
        ];
        let m = storm_metrics(&gave_up, 12, 1.0);
        assert_eq!((m.unlocked, m.ratio), (1, None));
        assert_eq!(completion_curve(&gave_up), vec![(0.0, 0.0), (1.0, 0.5)]);
    }

    #[test]
    fn tables_and_bytes() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(2048), "2.0 KiB");
        assert_eq!(bytes(3 << 20), "3.00 MiB");
        let t = text_table(&["a", "bb"], &[vec!["xyz".into(), "1".into()]]);
        assert_eq!(t, "a    bb\n---  --\nxyz  1\n");
        let m = markdown_table(&["a", "b"], &[vec!["1".into(), "2".into()]]);
        assert_eq!(m, "| a | b |\n|---|---|\n| 1 | 2 |\n");
    }
}
