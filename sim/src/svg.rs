//! A run as a picture: [`timeline`] draws a [`Report`] as a standalone SVG document
//! (`lucky-sim run --svg FILE`).
//!
//! True time runs across, in milliseconds. Each client has a lane: every claim it made is a bar
//! from its start to its end, labelled with its fence, and every write of it that reached the
//! resource is a tick under the bar (a solid tick if the resource accepted it, a grey cross if
//! it rejected it). The lane on top shows the fault schedule: spans for cut links, nodes down,
//! stalled nodes and slowed replies, marks for instants (clock jumps, roll-backs, members
//! changing state, the network changing), each with a short label; a client's pause and its
//! exit are drawn on its own lane, and the instant faults stopped is a dashed line across all.
//! Every violation is numbered, marked where it happened (the overlap of two claims shaded on
//! both lanes, a stale write pointed at, the claims of a fence regression outlined, a write
//! accepted out of fence order marked) and written out under the picture. Violations the run's
//! broken assumptions excuse are drawn in a softer colour than those nothing excuses.
//!
//! The drawing reads only the report: it knows no backend.

use std::fmt::Write as _;

use crate::net::Cut;
use crate::oracle::{Claim, Violation};
use crate::world::{Fault, MemberState, Report};

/// What the title says about a run besides its report.
#[derive(Clone, Copy, Debug)]
pub struct Title<'a> {
    /// The scenario's name.
    pub scenario: &'a str,
    /// The seed.
    pub seed: u64,
    /// The injected bug, if any.
    pub bug: Option<&'a str>,
    /// The verdict ([`Outcome::verdict`](crate::scenario::Outcome::verdict)).
    pub verdict: &'a str,
}

const WIDTH: f64 = 1200.0;
/// Room for the lanes' names.
const LEFT: f64 = 80.0;
const RIGHT: f64 = 30.0;
/// One row of the faults lane.
const ROW: f64 = 16.0;
/// One client's lane.
const LANE: f64 = 40.0;
/// Rows of the faults lane at most (labels overlap beyond).
const MAX_ROWS: usize = 12;
/// Violations marked and written out at most.
const MAX_SHOWN: usize = 40;
/// Width of one character of 10 px text, roughly.
const CHAR: f64 = 5.8;

const CLAIM: &str = "#4a7fb5";
const ACCEPTED: &str = "#1a7f37";
const REJECTED: &str = "#8a8a8a";
const FAULT: &str = "#6e6e6e";
const RED: &str = "#d62728";
const SOFT: &str = "#f0a830";
const SOFT_TEXT: &str = "#a0620a";

/// Draws the run `report` describes, titled with `title`, as an SVG document.
pub fn timeline(title: &Title<'_>, report: &Report) -> String {
    let span = report
        .claims
        .iter()
        .map(|c| c.end)
        .chain(report.write_log.iter().map(|w| w.at))
        .fold(report.end, u64::max)
        .max(1);
    let frame = Frame {
        span,
        plot: WIDTH - LEFT - RIGHT,
    };
    let faults: Vec<(u64, Fault)> = report
        .faults
        .iter()
        .filter(|(at, _)| *at <= report.end)
        .cloned()
        .collect();
    let items = fault_items(&faults, span);
    let lanes = report
        .claims
        .iter()
        .map(|c| c.client + 1)
        .chain(items.iter().filter_map(|i| match i.place {
            Place::Client(c) => Some(c + 1),
            Place::Top => None,
        }))
        .fold(report.clients, usize::max);

    // The faults lane: rows so that no label runs into the next item.
    let mut rows: Vec<f64> = Vec::new();
    let mut row_of = vec![0; items.len()];
    for (k, item) in items.iter().enumerate() {
        if item.place != Place::Top {
            continue;
        }
        let x0 = frame.x(item.from);
        let x1 = frame.x(item.to.unwrap_or(item.from));
        let end = x1.max(x0 + 8.0 + width(&item.label(), 10.0));
        let row = match rows.iter().position(|&e| e + 4.0 <= x0) {
            Some(r) => r,
            None if rows.len() < MAX_ROWS => {
                rows.push(0.0);
                rows.len() - 1
            }
            None => (0..rows.len())
                .min_by(|&a, &b| rows[a].total_cmp(&rows[b]))
                .unwrap_or(0),
        };
        rows[row] = rows[row].max(end);
        row_of[k] = row;
    }
    let faults_top = 56.0;
    let faults_h = rows.len().max(1) as f64 * ROW + 6.0;
    let lanes_top = faults_top + faults_h + 6.0;
    let lane_top = |c: usize| lanes_top + c as f64 * LANE;
    let lanes_bottom = lane_top(lanes);

    let mut s = String::new();
    // Lanes and grid.
    rect(
        &mut s, LEFT, faults_top, frame.plot, faults_h, "#f4f4f4", "",
    );
    text(&mut s, LEFT - 8.0, faults_top + 14.0, "end", "", "faults");
    for c in 0..lanes {
        let fill = if c % 2 == 0 { "#fafafa" } else { "#f0f0f0" };
        rect(&mut s, LEFT, lane_top(c), frame.plot, LANE, fill, "");
        let name = format!("client {c}");
        text(&mut s, LEFT - 8.0, lane_top(c) + 24.0, "end", "", &name);
    }
    let ticks = ticks(span);
    for &(t, _) in &ticks {
        let x = frame.x(t);
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{faults_top:.1}" x2="{x:.1}" y2="{lanes_bottom:.1}" stroke="#dddddd" stroke-width="0.5"/>"##
        );
    }

    // Pauses under everything else on a client's lane, labelled if the label fits (and
    // does not run into the label of an earlier pause).
    let mut labelled = vec![0.0f64; lanes];
    for item in &items {
        if let (Place::Client(c), Some(to)) = (item.place, item.to) {
            let (x0, x1) = (frame.x(item.from), frame.x(to));
            let top = lane_top(c);
            let label = item.label();
            let _ = writeln!(
                s,
                r#"<rect class="pause" x="{x0:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{FAULT}" fill-opacity="0.18" stroke="{FAULT}" stroke-dasharray="2 2" stroke-width="0.6"><title>client {c} {}</title></rect>"#,
                top + 1.0,
                (x1 - x0).max(1.0),
                LANE - 2.0,
                esc(&label)
            );
            let w = width(&label, 8.5) + 4.0;
            if x1 - x0 >= w && x0 >= labelled[c] {
                text(
                    &mut s,
                    x0 + 2.0,
                    top + 9.0,
                    "start",
                    r#"font-size="8.5""#,
                    &label,
                );
                labelled[c] = x0 + w;
            }
        }
    }

    // Claims: a bar each, its fence written inside it if it fits, else above it if there is
    // room before the lane's next claim; its tooltip says it all.
    for (i, c) in report.claims.iter().enumerate() {
        let (x0, x1) = (frame.x(c.start), frame.x(c.end));
        let top = lane_top(c.client);
        let fence = c.fence.map(|f| format!("fence {f}"));
        let tip = format!(
            "client {}: held [{}, {}){}",
            c.client,
            ms(c.start),
            ms(c.end),
            fence.as_ref().map(|f| format!(", {f}")).unwrap_or_default()
        );
        let _ = writeln!(
            s,
            r#"<rect class="claim" x="{x0:.1}" y="{:.1}" width="{:.1}" height="14" rx="2" fill="{CLAIM}"><title>{}</title></rect>"#,
            top + 13.0,
            (x1 - x0).max(1.0),
            esc(&tip)
        );
        let (Some(label), Some(f)) = (fence, c.fence) else {
            continue;
        };
        let room = report.claims[i + 1..]
            .iter()
            .find(|d| d.client == c.client)
            .map_or(LEFT + frame.plot, |d| frame.x(d.start))
            - x0;
        if x1 - x0 >= width(&label, 9.0) + 6.0 {
            let attrs = r##"font-size="9" fill="#ffffff""##;
            text(&mut s, x0 + 3.0, top + 23.5, "start", attrs, &label);
        } else if room >= width(&label, 9.0) + 2.0 {
            text(
                &mut s,
                x0 + 1.0,
                top + 10.0,
                "start",
                r#"font-size="9""#,
                &label,
            );
        } else if room >= width(&f.to_string(), 9.0) + 2.0 {
            text(
                &mut s,
                x0 + 1.0,
                top + 10.0,
                "start",
                r#"font-size="9""#,
                &f.to_string(),
            );
        }
    }

    // Writes, under the bars.
    for w in &report.write_log {
        let Some(c) = report.claims.get(w.claim) else {
            continue;
        };
        let x = frame.x(w.at);
        let y = lane_top(c.client) + 31.0;
        if w.accepted {
            let _ = writeln!(
                s,
                r#"<line class="write" x1="{x:.1}" y1="{y:.1}" x2="{x:.1}" y2="{:.1}" stroke="{ACCEPTED}" stroke-width="1"/>"#,
                y + 7.0
            );
        } else {
            cross(&mut s, x, y + 3.5, 2.5, REJECTED, "write-rejected");
        }
    }

    // The faults lane, a client's exit, and the line where faults stop.
    for (k, item) in items.iter().enumerate() {
        let label = item.label();
        let y = faults_top + 3.0 + row_of[k] as f64 * ROW;
        match (item.place, item.to, item.quiet) {
            (Place::Top, _, true) => {
                let x = frame.x(item.from);
                let _ = writeln!(
                    s,
                    r#"<line class="quiet" x1="{x:.1}" y1="{faults_top:.1}" x2="{x:.1}" y2="{lanes_bottom:.1}" stroke="{FAULT}" stroke-width="1.2" stroke-dasharray="6 3"/>"#
                );
                text(
                    &mut s,
                    x + 3.0,
                    y + 11.0,
                    "start",
                    r#"font-style="italic""#,
                    &label,
                );
            }
            (Place::Top, Some(to), _) => {
                let (x0, x1) = (frame.x(item.from), frame.x(to));
                let _ = writeln!(
                    s,
                    r#"<rect class="fault" x="{x0:.1}" y="{:.1}" width="{:.1}" height="12" fill="{FAULT}" fill-opacity="0.3" stroke="{FAULT}" stroke-width="0.6"><title>{} [{}, {})</title></rect>"#,
                    y + 1.0,
                    (x1 - x0).max(1.5),
                    esc(&label),
                    ms(item.from),
                    ms(to)
                );
                text(&mut s, x0 + 3.0, y + 11.0, "start", "", &label);
            }
            (Place::Top, None, _) => {
                let x = frame.x(item.from);
                diamond(&mut s, x, y + 7.0, 4.5, FAULT, "fault", &label);
                text(&mut s, x + 6.0, y + 11.0, "start", "", &label);
            }
            (Place::Client(c), None, _) => {
                let x = frame.x(item.from);
                let top = lane_top(c);
                cross(&mut s, x, top + 20.0, 5.0, "#222222", "exit");
                text(
                    &mut s,
                    x + 7.0,
                    top + 10.0,
                    "start",
                    r#"font-size="9""#,
                    &label,
                );
            }
            (Place::Client(_), Some(_), _) => {} // pauses, drawn first
        }
    }

    // Violations: marked where they happened, numbered, written out below.
    let shown: Vec<(usize, &Violation, bool)> = report
        .violations
        .iter()
        .take(MAX_SHOWN)
        .enumerate()
        .map(|(k, v)| (k + 1, v, v.excused_by(&report.broken)))
        .collect();
    // Their numbers, where they do not hide an earlier one.
    let mut badges: Vec<(f64, f64, usize, &str)> = Vec::new();
    for &(n, v, excused) in &shown {
        let (class, colour, kind) = if excused {
            ("expected", SOFT, "expected")
        } else {
            ("unexpected", RED, "VIOLATION")
        };
        let said = format!("{n}. {kind}: {v}");
        let tip = esc(&said);
        match *v {
            Violation::MutualExclusion { a, b } => {
                let (lo, hi) = (a.1.max(b.1), a.2.min(b.2).max(a.1.max(b.1)));
                let (x0, x1) = (frame.x(lo), frame.x(hi));
                let w = (x1 - x0).max(2.0);
                for c in [a.0, b.0] {
                    let _ = writeln!(
                        s,
                        r#"<rect class="overlap {class}" x="{x0:.1}" y="{:.1}" width="{w:.1}" height="{:.1}" fill="{colour}" fill-opacity="0.45" stroke="{colour}" stroke-width="1"><title>{tip}</title></rect>"#,
                        lane_top(c) + 2.0,
                        LANE - 4.0
                    );
                }
                let (up, down) = (a.0.min(b.0), a.0.max(b.0));
                let xm = x0 + w / 2.0;
                let _ = writeln!(
                    s,
                    r#"<line class="{class}" x1="{xm:.1}" y1="{:.1}" x2="{xm:.1}" y2="{:.1}" stroke="{colour}" stroke-width="1.2" stroke-dasharray="3 2"/>"#,
                    lane_top(up) + LANE - 2.0,
                    lane_top(down) + 2.0
                );
                badges.push((x0 + w, lane_top(up) + 6.0, n, colour));
            }
            Violation::StaleWrite { writer, at, later } => {
                let x = frame.x(at);
                let top = lane_top(writer);
                let _ = writeln!(
                    s,
                    r#"<path class="stale {class}" d="M{:.1},{:.1} L{:.1},{:.1} L{x:.1},{:.1} Z" fill="{colour}"><title>{tip}</title></path>"#,
                    x - 5.0,
                    top + 1.0,
                    x + 5.0,
                    top + 1.0,
                    top + 10.0
                );
                let _ = writeln!(
                    s,
                    r#"<line class="{class}" x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{:.1}" stroke="{colour}" stroke-width="2"/>"#,
                    top + 10.0,
                    top + LANE - 1.0
                );
                let _ = writeln!(
                    s,
                    r#"<line class="{class}" x1="{:.1}" y1="{:.1}" x2="{x:.1}" y2="{:.1}" stroke="{colour}" stroke-width="1" stroke-dasharray="3 2"/>"#,
                    frame.x(later.1),
                    lane_top(later.0) + LANE / 2.0,
                    top + LANE / 2.0
                );
                badges.push((x + 12.0, top + 6.0, n, colour));
            }
            Violation::FenceRegression { earlier, later } => {
                if let Some((e, l)) = regression(&report.claims, earlier, later) {
                    for (c, dash) in [(e, "3 2"), (l, "none")] {
                        let (x0, x1) = (frame.x(c.start), frame.x(c.end));
                        let _ = writeln!(
                            s,
                            r#"<rect class="fence {class}" x="{:.1}" y="{:.1}" width="{:.1}" height="20" fill="none" stroke="{colour}" stroke-width="2" stroke-dasharray="{dash}"><title>{tip}</title></rect>"#,
                            x0 - 2.0,
                            lane_top(c.client) + 10.0,
                            (x1 - x0).max(1.0) + 4.0
                        );
                    }
                    badges.push((
                        frame.x(l.start) - 10.0,
                        lane_top(l.client) + 20.0,
                        n,
                        colour,
                    ));
                }
            }
            Violation::FenceOrder { before, after } => {
                let mut seen = false;
                let w = report.write_log.iter().find(|w| {
                    let hit = seen && w.accepted && w.fence == Some(after);
                    seen |= w.accepted && w.fence == Some(before);
                    hit
                });
                if let Some((w, c)) = w.and_then(|w| report.claims.get(w.claim).map(|c| (w, c))) {
                    let (x, y) = (frame.x(w.at), lane_top(c.client) + 34.5);
                    let class = format!("fence-order {class}");
                    diamond(&mut s, x, y, 5.0, colour, &class, &said);
                    badges.push((x + 12.0, y - 4.0, n, colour));
                }
            }
            Violation::HeldPastDeadline { client, at, .. }
            | Violation::Unavailable { client, at, .. } => {
                let (x, y) = (frame.x(at), lane_top(client) + 20.0);
                diamond(&mut s, x, y, 5.0, colour, &format!("mark {class}"), &said);
                badges.push((x + 12.0, y - 8.0, n, colour));
            }
            Violation::NoProgress { since, within } => {
                let (x0, x1) = (frame.x(since), frame.x(since.saturating_add(within)));
                let _ = writeln!(
                    s,
                    r#"<rect class="{class}" x="{x0:.1}" y="{lanes_top:.1}" width="{:.1}" height="{:.1}" fill="none" stroke="{colour}" stroke-width="1.5" stroke-dasharray="5 3"><title>{tip}</title></rect>"#,
                    (x1 - x0).max(1.0),
                    lanes_bottom - lanes_top
                );
                badges.push((x0 + 9.0, lanes_top + 8.0, n, colour));
            }
            Violation::Stuck { .. } | Violation::LeftoverLock { .. } | Violation::Herd { .. } => {}
        }
    }

    let mut drawn: Vec<(f64, f64)> = Vec::new();
    for (x, y, n, colour) in badges {
        if drawn
            .iter()
            .all(|&(bx, by)| (bx - x).abs() >= 13.0 || (by - y).abs() >= 13.0)
        {
            badge(&mut s, x, y, n, colour);
            drawn.push((x, y));
        }
    }

    // The axis.
    let axis = lanes_bottom + 2.0;
    let _ = writeln!(
        s,
        r##"<line x1="{LEFT:.1}" y1="{axis:.1}" x2="{:.1}" y2="{axis:.1}" stroke="#444444" stroke-width="1"/>"##,
        LEFT + frame.plot
    );
    for (t, label) in &ticks {
        let x = frame.x(*t);
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{axis:.1}" x2="{x:.1}" y2="{:.1}" stroke="#444444" stroke-width="1"/>"##,
            axis + 5.0
        );
        text(&mut s, x, axis + 16.0, "middle", "", label);
    }
    text(&mut s, LEFT - 8.0, axis + 16.0, "end", "", "ms");

    // The legend.
    let mut y = axis + 38.0;
    let mut x = LEFT;
    let entries: [(&str, Swatch); 9] = [
        ("claim, with its fence", Swatch::Claim),
        ("write accepted", Swatch::Accepted),
        ("write rejected", Swatch::Rejected),
        ("fault", Swatch::Fault),
        ("client paused", Swatch::Pause),
        ("faults stop", Swatch::Quiet),
        ("violation", Swatch::Violation(RED)),
        (
            "expected violation (an assumption broken on purpose)",
            Swatch::Violation(SOFT),
        ),
        ("stale write", Swatch::Stale),
    ];
    for (label, swatch) in entries {
        let w = 26.0 + width(label, 10.0) + 18.0;
        if x + w > WIDTH - RIGHT {
            x = LEFT;
            y += 18.0;
        }
        swatch.draw(&mut s, x, y);
        text(&mut s, x + 24.0, y + 4.0, "start", "", label);
        x += w;
    }

    // The violations, written out.
    y += 26.0;
    if shown.is_empty() {
        text(&mut s, LEFT, y, "start", "", "no violation");
        y += 15.0;
    }
    for &(n, v, excused) in &shown {
        let (kind, colour) = if excused {
            ("expected", SOFT_TEXT)
        } else {
            ("VIOLATION", RED)
        };
        let line = format!("{n}. {kind}: {v}");
        let style = format!(r#"class="caption" fill="{colour}""#);
        text(&mut s, LEFT, y, "start", &style, &line);
        y += 15.0;
    }
    if report.violations.len() > shown.len() {
        let more = format!("... and {} more", report.violations.len() - shown.len());
        text(&mut s, LEFT, y, "start", "", &more);
        y += 15.0;
    }

    // The head, now that the height is known.
    let height = y + 6.0;
    let mut head = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH:.0}" height="{height:.0}" viewBox="0 0 {WIDTH:.0} {height:.0}" font-family="Helvetica, Arial, sans-serif" font-size="10">"#
    );
    head.push('\n');
    let bug = title.bug.map(|b| format!(", bug {b}")).unwrap_or_default();
    let heading = format!("{}, seed {}{bug}", title.scenario, title.seed);
    let _ = writeln!(
        head,
        "<title>{}: {}</title>",
        esc(&heading),
        esc(title.verdict)
    );
    let _ = writeln!(
        head,
        r##"<rect width="100%" height="100%" fill="#ffffff"/>"##
    );
    let verdict_colour = if title.verdict.starts_with("pass") {
        ACCEPTED
    } else {
        RED
    };
    let _ = writeln!(
        head,
        r#"<text x="{LEFT:.1}" y="22" font-size="15" font-weight="bold">{} <tspan fill="{verdict_colour}">{}</tspan></text>"#,
        esc(&format!("{heading}:")),
        esc(title.verdict)
    );
    let about = format!(
        "true time in ms; {} claims; writes accepted {}, rejected {}; assumptions broken: {}",
        report.claims.len(),
        report.writes.0,
        report.writes.1,
        report.broken
    );
    text(
        &mut head,
        LEFT,
        40.0,
        "start",
        r##"fill="#444444""##,
        &about,
    );
    head.push_str(&s);
    head.push_str("</svg>\n");
    head
}

/// Where a fault is drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Place {
    Top,
    Client(usize),
}

/// One fault as drawn: a span (`to`) or an instant, its label (`{n}` standing for its nodes).
#[derive(Clone, Debug)]
struct Item {
    from: u64,
    to: Option<u64>,
    place: Place,
    text: String,
    nodes: Vec<usize>,
    quiet: bool,
}

impl Item {
    fn label(&self) -> String {
        let nodes = match self.nodes.as_slice() {
            [] => String::new(),
            [n] => format!("node {n}"),
            many => format!(
                "nodes {}",
                many.iter()
                    .map(usize::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        };
        self.text.replace("{n}", &nodes)
    }
}

/// The faults as drawn: a fault with an end (a cut until its heal, a node down until its
/// restart, a stall, slowed replies, a pause) as a span, others as instants; faults alike but
/// for their node merged into one.
fn fault_items(faults: &[(u64, Fault)], span: u64) -> Vec<Item> {
    // The end of the fault at `i`: the first later fault that ends it, or the quiet, or the run.
    let until = |i: usize, ends: &dyn Fn(&Fault) -> bool| {
        faults[i + 1..]
            .iter()
            .find(|(_, f)| matches!(f, Fault::Quiet) || ends(f))
            .map_or(span, |(t, _)| *t)
    };
    let quiet_after = |i: usize| until(i, &|_| false);
    let mut items: Vec<Item> = Vec::new();
    for (i, (at, f)) in faults.iter().enumerate() {
        let at = *at;
        let (to, place, text, node) = match f {
            Fault::Partition { client, node, cut } => {
                let who = client.map_or("every client".to_string(), |c| format!("client {c}"));
                let arrow = match cut {
                    Cut::Both => "\u{2194}",
                    Cut::ToNode => "\u{2192}",
                    Cut::FromNode => "\u{2190}",
                };
                let end = until(i, &|g| {
                    matches!(g, Fault::Heal { client: c, node: n }
                        if n == node && (c.is_none() || c == client))
                });
                (
                    Some(end),
                    Place::Top,
                    format!("cut {who} {arrow} {{n}}"),
                    Some(*node),
                )
            }
            Fault::Crash { node, lose_state } => {
                let end = until(i, &|g| matches!(g, Fault::Restart { node: n } if n == node));
                let text = if *lose_state {
                    "{n} down, state lost"
                } else {
                    "{n} down"
                };
                (Some(end), Place::Top, text.to_string(), Some(*node))
            }
            Fault::Stall { node, for_ns } => {
                let end = quiet_after(i).min(at.saturating_add(*for_ns));
                (
                    Some(end),
                    Place::Top,
                    "{n} stalled".to_string(),
                    Some(*node),
                )
            }
            Fault::SlowReplies { client, extra_ns } => {
                if *extra_ns == 0 {
                    continue;
                }
                let end = until(
                    i,
                    &|g| matches!(g, Fault::SlowReplies { client: c, .. } if c == client),
                );
                let text = format!("replies to client {client} +{}", ms(*extra_ns));
                (Some(end), Place::Top, text, None)
            }
            Fault::Pause { client, for_ns } => {
                let end = at.saturating_add(*for_ns).min(span);
                let text = format!("paused {}", ms(*for_ns));
                (Some(end), Place::Client(*client), text, None)
            }
            Fault::CrashClient { client } => {
                (None, Place::Client(*client), "exits".to_string(), None)
            }
            Fault::RollBack { node, for_ns } => {
                let text = format!("{{n}} rolled back {}", ms(*for_ns));
                (None, Place::Top, text, Some(*node))
            }
            Fault::ClockJump { node, by_ns } => {
                let sign = if *by_ns < 0 { "\u{2212}" } else { "+" };
                let text = format!("{{n}} clock {sign}{}", ms(by_ns.unsigned_abs()));
                (None, Place::Top, text, Some(*node))
            }
            Fault::Member {
                node,
                member,
                state,
            } => {
                let state = match state {
                    MemberState::Up => "up",
                    MemberState::Down => "down",
                    MemberState::Silent => "silent",
                    MemberState::NoLeader => "no leader",
                };
                let text = format!("{{n}} member {member} {state}");
                (None, Place::Top, text, Some(*node))
            }
            Fault::Net(p) => {
                let mut text = format!(
                    "network {}\u{2013}{}",
                    ms(p.delay_ns.0).trim_end_matches(" ms"),
                    ms(p.delay_ns.1)
                );
                if p.drop_ppm > 0 {
                    let _ = write!(text, ", {}% dropped", f64::from(p.drop_ppm) / 1e4);
                }
                if p.dup_ppm > 0 {
                    let _ = write!(text, ", {}% twice", f64::from(p.dup_ppm) / 1e4);
                }
                if p.reorder {
                    text.push_str(", reordering");
                }
                (None, Place::Top, text, None)
            }
            Fault::Quiet => {
                items.push(Item {
                    from: at,
                    to: None,
                    place: Place::Top,
                    text: "faults stop".to_string(),
                    nodes: Vec::new(),
                    quiet: true,
                });
                continue;
            }
            Fault::Heal { .. } | Fault::Restart { .. } => continue,
        };
        let to = to.map(|t| t.clamp(at, span));
        let alike = items.iter_mut().find(|it| {
            node.is_some()
                && it.from == at
                && it.to == to
                && it.place == place
                && it.text == text
                && !it.nodes.is_empty()
        });
        match (alike, node) {
            (Some(it), Some(n)) => {
                if !it.nodes.contains(&n) {
                    it.nodes.push(n);
                    it.nodes.sort_unstable();
                }
            }
            _ => items.push(Item {
                from: at,
                to,
                place,
                text,
                nodes: node.into_iter().collect(),
                quiet: false,
            }),
        }
    }
    items
}

/// The claims of a fence regression: the later one (the first of its client with its fence
/// that began after one of the earlier client with the earlier fence) and that earlier one.
fn regression(
    claims: &[Claim],
    earlier: (usize, u64),
    later: (usize, u64),
) -> Option<(&Claim, &Claim)> {
    let is =
        |c: &Claim, (client, fence): (usize, u64)| c.client == client && c.fence == Some(fence);
    let l = claims
        .iter()
        .filter(|c| is(c, later))
        .find(|l| claims.iter().any(|e| is(e, earlier) && e.start < l.start))?;
    let e = claims
        .iter()
        .rfind(|e| is(e, earlier) && e.start < l.start)?;
    Some((e, l))
}

/// The true-time scale.
struct Frame {
    span: u64,
    plot: f64,
}

impl Frame {
    fn x(&self, t: u64) -> f64 {
        LEFT + t.min(self.span) as f64 / self.span as f64 * self.plot
    }
}

/// Ticks for an axis `span` ns long: about ten, 1, 2 or 5 times a power of ten ms apart.
fn ticks(span: u64) -> Vec<(u64, String)> {
    let span_ms = span as f64 / 1e6;
    let raw = span_ms / 10.0;
    let pow = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * pow)
        .find(|&s| s >= raw)
        .unwrap_or(10.0 * pow);
    let decimals = if step >= 1.0 {
        0
    } else {
        (-step.log10()).ceil() as usize
    };
    let mut out = Vec::new();
    let mut k = 0u32;
    loop {
        let t_ms = f64::from(k) * step;
        if t_ms > span_ms * (1.0 + 1e-9) || k > 100 {
            break;
        }
        out.push(((t_ms * 1e6).round() as u64, format!("{t_ms:.decimals$}")));
        k += 1;
    }
    out
}

/// `ns` as milliseconds, to the microsecond at most.
fn ms(ns: u64) -> String {
    let s = format!("{:.3}", ns as f64 / 1e6);
    let s = s.trim_end_matches('0').trim_end_matches('.');
    format!("{s} ms")
}

/// `s` escaped for XML text and attribute values.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// A text element; `attrs` are written as they are, `body` is escaped.
fn text(s: &mut String, x: f64, y: f64, anchor: &str, attrs: &str, body: &str) {
    let _ = writeln!(
        s,
        r#"<text x="{x:.1}" y="{y:.1}" text-anchor="{anchor}" {attrs}>{}</text>"#,
        esc(body)
    );
}

fn rect(s: &mut String, x: f64, y: f64, w: f64, h: f64, fill: &str, attrs: &str) {
    let _ = writeln!(
        s,
        r#"<rect x="{x:.1}" y="{y:.1}" width="{w:.1}" height="{h:.1}" fill="{fill}" {attrs}/>"#
    );
}

/// Roughly how wide `text` is at `size` px.
fn width(text: &str, size: f64) -> f64 {
    CHAR * size / 10.0 * text.chars().count() as f64
}

/// Violation `n`'s number in a circle centred on (`x`, `y`).
fn badge(s: &mut String, x: f64, y: f64, n: usize, colour: &str) {
    let _ = writeln!(
        s,
        r##"<circle cx="{x:.1}" cy="{y:.1}" r="6.5" fill="#ffffff" stroke="{colour}" stroke-width="1.2"/>"##
    );
    let _ = writeln!(
        s,
        r#"<text x="{x:.1}" y="{:.1}" text-anchor="middle" font-size="9" font-weight="bold" fill="{colour}">{n}</text>"#,
        y + 3.2
    );
}

fn cross(s: &mut String, x: f64, y: f64, r: f64, colour: &str, class: &str) {
    let _ = writeln!(
        s,
        r#"<path class="{class}" d="M{:.1},{:.1} L{:.1},{:.1} M{:.1},{:.1} L{:.1},{:.1}" stroke="{colour}" stroke-width="1.2"/>"#,
        x - r,
        y - r,
        x + r,
        y + r,
        x - r,
        y + r,
        x + r,
        y - r
    );
}

/// A diamond, with `tip` as its tooltip if not empty.
fn diamond(s: &mut String, x: f64, y: f64, r: f64, colour: &str, class: &str, tip: &str) {
    let _ = writeln!(
        s,
        r#"<path class="{class}" d="M{x:.1},{:.1} L{:.1},{y:.1} L{x:.1},{:.1} L{:.1},{y:.1} Z" fill="{colour}">{}</path>"#,
        y - r,
        x + r,
        y + r,
        x - r,
        if tip.is_empty() {
            String::new()
        } else {
            format!("<title>{}</title>", esc(tip))
        }
    );
}

/// A legend entry's picture.
#[derive(Clone, Copy, Debug)]
enum Swatch {
    Claim,
    Accepted,
    Rejected,
    Fault,
    Pause,
    Quiet,
    Violation(&'static str),
    Stale,
}

impl Swatch {
    /// Draws it 20 px wide from `x`, centred on `y`.
    fn draw(self, s: &mut String, x: f64, y: f64) {
        match self {
            Swatch::Claim => rect(s, x, y - 5.0, 20.0, 10.0, CLAIM, r#"rx="2""#),
            Swatch::Accepted => {
                let _ = writeln!(
                    s,
                    r#"<line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="{ACCEPTED}"/>"#,
                    x + 10.0,
                    y - 4.0,
                    x + 10.0,
                    y + 4.0
                );
            }
            Swatch::Rejected => cross(s, x + 10.0, y, 2.5, REJECTED, "legend"),
            Swatch::Fault => rect(
                s,
                x,
                y - 5.0,
                20.0,
                10.0,
                FAULT,
                &format!(r#"fill-opacity="0.3" stroke="{FAULT}" stroke-width="0.6""#),
            ),
            Swatch::Pause => rect(
                s,
                x,
                y - 7.0,
                20.0,
                14.0,
                FAULT,
                &format!(
                    r#"fill-opacity="0.18" stroke="{FAULT}" stroke-dasharray="2 2" stroke-width="0.6""#
                ),
            ),
            Swatch::Quiet => {
                let _ = writeln!(
                    s,
                    r#"<line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="{FAULT}" stroke-width="1.2" stroke-dasharray="6 3"/>"#,
                    x + 10.0,
                    y - 7.0,
                    x + 10.0,
                    y + 7.0
                );
            }
            Swatch::Violation(colour) => rect(
                s,
                x,
                y - 7.0,
                20.0,
                14.0,
                colour,
                &format!(r#"fill-opacity="0.45" stroke="{colour}""#),
            ),
            Swatch::Stale => {
                let _ = writeln!(
                    s,
                    r#"<path d="M{:.1},{:.1} L{:.1},{:.1} L{:.1},{:.1} Z" fill="{RED}"/>"#,
                    x + 5.0,
                    y - 6.0,
                    x + 15.0,
                    y - 6.0,
                    x + 10.0,
                    y + 3.0
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry;

    fn draw(scenario: &str, seed: u64, bug: Option<&str>) -> (String, crate::scenario::Outcome) {
        let sc = registry::scenario(scenario).unwrap();
        let injected = bug.map(|b| registry::bug(b).unwrap());
        let out = sc.run(seed, injected);
        let verdict = out.verdict();
        let title = Title {
            scenario,
            seed,
            bug,
            verdict: &verdict,
        };
        (timeline(&title, &out.report), out)
    }

    /// Elements open and close in order (a small check of well-formedness).
    fn balanced(svg: &str) -> bool {
        let mut open: Vec<&str> = Vec::new();
        let mut rest = svg;
        while let Some(i) = rest.find('<') {
            rest = &rest[i + 1..];
            let Some(j) = rest.find('>') else {
                return false;
            };
            let tag = &rest[..j];
            rest = &rest[j + 1..];
            if let Some(name) = tag.strip_prefix('/') {
                if open.pop() != Some(name.trim()) {
                    return false;
                }
            } else if !tag.ends_with('/') {
                open.push(tag.split_whitespace().next().unwrap_or(""));
            }
        }
        open.is_empty()
    }

    #[cfg(feature = "bugs")]
    #[test]
    fn an_overlap_is_drawn_red_with_its_caption() {
        // Sessions changed under their holders unnoticed: two clients hold at once.
        let (svg, out) = draw(
            "sql-session-reconnected",
            3,
            Some("session-no-backend-check"),
        );
        assert!(!out.passed());
        let r = &out.report;
        assert!(svg.starts_with("<svg"));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert!(balanced(&svg));
        assert_eq!(svg.matches(r#"class="claim""#).count(), r.claims.len());
        assert!(r.claims.len() >= 2);
        assert_eq!(
            svg.matches(r#"class="write""#).count()
                + svg.matches(r#"class="write-rejected""#).count(),
            r.write_log.len()
        );
        let overlap = r
            .unexpected()
            .find(|v| matches!(v, Violation::MutualExclusion { .. }))
            .unwrap();
        // Shaded on both lanes.
        assert_eq!(svg.matches(r#"class="overlap unexpected""#).count(), 2);
        assert!(svg.contains(&esc(&format!("VIOLATION: {overlap}"))));
        assert!(svg.contains("FAIL"));
        assert!(svg.contains("session-no-backend-check"));
        // The crash and restart of the server.
        assert!(svg.contains("node 0 down"));
        assert!(svg.contains(r#"class="quiet""#));
    }

    #[test]
    fn a_passing_run_has_no_red() {
        let (svg, out) = draw("split-vote", 1, None);
        assert!(out.passed());
        assert!(svg.starts_with("<svg"));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert!(balanced(&svg));
        assert_eq!(
            svg.matches(r#"class="claim""#).count(),
            out.report.claims.len()
        );
        assert!(!out.report.claims.is_empty());
        assert!(!svg.contains("unexpected"));
        assert!(!svg.contains("VIOLATION"));
        assert!(svg.contains("no violation"));
    }

    #[test]
    fn expected_violations_are_soft() {
        // A crash ends sessions: an overlap within a ttl is allowed, and the run must find it.
        let found = (0..20).find_map(|seed| {
            let (svg, out) = draw("sql-session-restart", seed, None);
            (out.passed() && out.report.expected().next().is_some()).then_some(svg)
        });
        let svg = found.unwrap();
        assert!(svg.contains(r#" expected""#));
        assert!(svg.contains("expected: "));
        assert!(!svg.contains("unexpected"));
    }

    #[test]
    fn text_is_escaped() {
        assert_eq!(
            esc(r#"a<b & "c" 'd'>"#),
            "a&lt;b &amp; &quot;c&quot; &apos;d&apos;&gt;"
        );
        let title = Title {
            scenario: "<x>",
            seed: 0,
            bug: Some("&"),
            verdict: "pass",
        };
        let report = registry::scenario("split-vote")
            .unwrap()
            .run(0, None)
            .report;
        let svg = timeline(&title, &report);
        assert!(svg.contains("&lt;x&gt;") && svg.contains("bug &amp;"));
        assert!(!svg.contains("<x>"));
        assert!(balanced(&svg));
    }

    #[test]
    fn ticks_are_round() {
        let t = ticks(3_432_000_000);
        assert_eq!(t[1], (500_000_000, "500".to_string()));
        assert_eq!(t.last().unwrap().1, "3000");
        let t = ticks(400_000);
        assert_eq!(t[1].1, "0.05");
        assert_eq!(ms(1_500_000), "1.5 ms");
        assert_eq!(ms(400_000_000), "400 ms");
    }
}
