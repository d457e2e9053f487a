//! A chaos run as a picture: time runs across in seconds from the run's start; each client
//! has a lane with a bar per claim (labelled with its fence) and a tick per write under it
//! (green: the fenced table took it; grey: it refused the stale fence; blue: the unfenced
//! log). The lane on top marks every fault when it was applied, with its label. Violations are
//! red: the overlapping part of two claims shaded on both lanes, a stale write circled, and
//! all of them listed, numbered, under the picture.

use std::fmt::Write as _;

use super::check::{History, Violation};

const WIDTH: f64 = 1400.0;
const LEFT: f64 = 60.0;
const RIGHT: f64 = 20.0;
const LANE: f64 = 36.0;
const ROW: f64 = 14.0;
const FAULT_ROWS: usize = 8;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Draws the run from `start` to `end` (`CLOCK_MONOTONIC` ns): `faults` are (time, label),
/// `violations` what the checker found.
pub fn timeline(
    title: &str,
    h: &History,
    faults: &[(u64, String)],
    violations: &[Violation],
    start: u64,
    end: u64,
) -> String {
    let span = end.saturating_sub(start).max(1) as f64;
    let x = |t: u64| LEFT + (t.saturating_sub(start) as f64 / span) * (WIDTH - LEFT - RIGHT);
    let clients = h.claims.iter().map(|c| c.client).max().map_or(0, |m| m + 1) as usize;
    let top = 40.0 + FAULT_ROWS as f64 * ROW + 10.0;
    let lanes_end = top + clients as f64 * LANE;
    let height = lanes_end + 40.0 + violations.len().min(30) as f64 * 14.0;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" font-family="sans-serif" font-size="10">"#
    );
    let _ = write!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = write!(
        s,
        r#"<text x="{LEFT}" y="18" font-size="13">{}</text>"#,
        esc(title)
    );
    // Seconds across.
    let secs = (span / 1e9).ceil() as u64;
    for k in 0..=secs {
        let t = start + k * 1_000_000_000;
        if t > end {
            break;
        }
        let _ = write!(
            s,
            r##"<line x1="{0:.1}" y1="34" x2="{0:.1}" y2="{lanes_end}" stroke="#eee"/><text x="{0:.1}" y="{1}" fill="#888">{k} s</text>"##,
            x(t),
            lanes_end + 12.0
        );
    }
    // Faults: a mark and a label each, in rows so labels rarely collide.
    let _ = write!(
        s,
        r##"<text x="4" y="{}" fill="#555">faults</text>"##,
        40.0 + ROW
    );
    for (i, (t, label)) in faults.iter().enumerate() {
        let y = 40.0 + (i % FAULT_ROWS) as f64 * ROW;
        let _ = write!(
            s,
            r##"<line x1="{0:.1}" y1="{1}" x2="{0:.1}" y2="{lanes_end}" stroke="#c9c9c9" stroke-dasharray="2,3"/><text x="{2:.1}" y="{3}" fill="#6e6e6e">{4}</text>"##,
            x(*t),
            y,
            x(*t) + 2.0,
            y + 10.0,
            esc(label)
        );
    }
    // Client lanes: claims and writes.
    let lane_y = |c: u32| top + c as f64 * LANE;
    for c in 0..clients as u32 {
        let _ = write!(
            s,
            r##"<text x="4" y="{}" fill="#333">client {c}</text>"##,
            lane_y(c) + 16.0
        );
    }
    for c in &h.claims {
        let (x0, x1) = (x(c.start), x(c.end));
        let y = lane_y(c.client) + 4.0;
        let _ = write!(
            s,
            r##"<rect x="{x0:.1}" y="{y}" width="{:.1}" height="16" fill="#4a7fb5" fill-opacity="0.8"/>"##,
            (x1 - x0).max(1.0)
        );
        if let Some(f) = c.fence {
            // Fences are long numbers (RedLock: microseconds): the last digits tell them apart.
            let text = f.to_string();
            let short = &text[text.len().saturating_sub(4)..];
            let _ = write!(
                s,
                r##"<text x="{:.1}" y="{}" fill="white" font-size="9">{short}</text>"##,
                x0 + 1.5,
                y + 12.0
            );
        }
    }
    for w in &h.writes {
        let y = lane_y(w.client) + 22.0;
        let color = match (w.fenced, w.accepted) {
            (true, true) => "#1a7f37",
            (true, false) => "#8a8a8a",
            (false, _) => "#1f77b4",
        };
        let dy = if w.fenced { 0.0 } else { 6.0 };
        let _ = write!(
            s,
            r##"<line x1="{0:.1}" y1="{1}" x2="{0:.1}" y2="{2}" stroke="{color}" stroke-width="2"/>"##,
            x(w.t0),
            y + dy,
            y + dy + 6.0
        );
    }
    // Violations, numbered.
    for (i, v) in violations.iter().enumerate().take(30) {
        let n = i + 1;
        match v {
            Violation::Overlap { a, b } => {
                let (o0, o1) = (b.1, a.2.min(b.2).max(b.1));
                for c in [a.0, b.0] {
                    let _ = write!(
                        s,
                        r##"<rect x="{:.1}" y="{}" width="{:.1}" height="24" fill="#d62728" fill-opacity="0.45"/>"##,
                        x(o0),
                        lane_y(c),
                        (x(o1) - x(o0)).max(2.0)
                    );
                }
                let _ = write!(
                    s,
                    r##"<text x="{:.1}" y="{}" fill="#d62728" font-weight="bold">{n}</text>"##,
                    x(o0),
                    lane_y(b.0) - 1.0
                );
            }
            Violation::StaleUnfenced { writer, .. } | Violation::StaleAccepted { writer, .. } => {
                let _ = write!(
                    s,
                    r##"<circle cx="{:.1}" cy="{}" r="6" fill="none" stroke="#d62728" stroke-width="2"/><text x="{:.1}" y="{}" fill="#d62728" font-weight="bold">{n}</text>"##,
                    x(writer.1),
                    lane_y(writer.0) + 26.0,
                    x(writer.1) + 7.0,
                    lane_y(writer.0) + 34.0
                );
            }
            _ => {}
        }
        let _ = write!(
            s,
            r##"<text x="{LEFT}" y="{}" fill="#d62728">{n}. {}</text>"##,
            lanes_end + 34.0 + i as f64 * 14.0,
            esc(&v.since(start))
        );
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_claims_writes_faults_and_violations() {
        let mut h = History::default();
        h.read("acq 0 1 0 1000000 900000000 5\nwrite 0 1 1 2000000 3000000 1 1\nacq 1 1 0 500000000 1500000000 6\n");
        let v = h.check(None);
        assert_eq!(v.len(), 1);
        let svg = timeline(
            "t <1>",
            &h,
            &[(100_000_000, "n0: SIGSTOP".into())],
            &v,
            0,
            2_000_000_000,
        );
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert!(svg.contains("t &lt;1&gt;"));
        assert!(svg.contains("n0: SIGSTOP"));
        assert!(svg.contains("1. overlap"));
        assert_eq!(svg.matches("#4a7fb5").count(), 2, "one bar per claim");
    }
}
