//! The simulator's command line, shared by `lucky-sim` and `lucky sim`: list scenarios, run
//! one seed, or sweep many.

use std::io::{IsTerminal as _, Write as _};
use std::process::ExitCode;

use crate::registry;
use crate::scenario::{Injected, Scenario};
use crate::svg;
use crate::sweep::{sweep, Sweep};

/// How a sweep reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Style {
    /// Progress counts on stderr, one line per scenario (for scripts and CI logs).
    Plain,
    /// A progress bar on stderr and a summary table (for people).
    Table,
}

/// The usage text, for the program named `program`.
pub fn usage(program: &str) -> String {
    format!(
        "usage:
  {program} list
  {program} run --scenario NAME --seed S [--inject-bug BUG] [--svg FILE]
  {program} sweep --scenario NAME|all --seeds N [--start S] [--inject-bug BUG] [--threads T]"
    )
}

/// Runs the command line `args` (without the program name); usage errors exit 64.
pub fn main(program: &str, args: &[String], style: Style) -> ExitCode {
    if matches!(
        args.first().map(String::as_str),
        Some("-h" | "--help" | "help")
    ) {
        println!("{}", usage(program));
        return ExitCode::SUCCESS;
    }
    match run(program, args, style) {
        Ok(code) => code,
        Err(msg) => {
            eprintln!("{program}: {msg}\n{}", usage(program));
            ExitCode::from(64)
        }
    }
}

struct Opts {
    scenario: Option<String>,
    seed: Option<u64>,
    seeds: Option<u64>,
    start: u64,
    bug: Option<Injected>,
    threads: Option<usize>,
    svg: Option<String>,
}

fn parse(args: &[String]) -> Result<Opts, String> {
    let mut o = Opts {
        scenario: None,
        seed: None,
        seeds: None,
        start: 0,
        bug: None,
        threads: None,
        svg: None,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        let num = |v: &String| {
            v.parse::<u64>()
                .map_err(|_| format!("{flag}: not a number: {v}"))
        };
        match flag.as_str() {
            "--scenario" => o.scenario = Some(value()?.clone()),
            "--seed" => o.seed = Some(num(value()?)?),
            "--seeds" => o.seeds = Some(num(value()?)?),
            "--start" => o.start = num(value()?)?,
            "--threads" => o.threads = Some(num(value()?)? as usize),
            "--svg" => o.svg = Some(value()?.clone()),
            "--inject-bug" => {
                let v = value()?;
                o.bug = Some(
                    registry::bug(v)
                        .ok_or_else(|| format!("unknown bug {v:?} (see `lucky-sim list`)"))?,
                );
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(o)
}

fn scenario(name: &str) -> Result<&'static Scenario, String> {
    registry::scenario(name)
        .ok_or_else(|| format!("unknown scenario {name:?} (see `lucky-sim list`)"))
}

fn replay(program: &str, name: &str, seed: u64, bug: Option<Injected>) -> String {
    match bug {
        Some(b) => format!(
            "{program} run --scenario {name} --seed {seed} --inject-bug {}",
            b.name()
        ),
        None => format!("{program} run --scenario {name} --seed {seed}"),
    }
}

fn run(program: &str, args: &[String], style: Style) -> Result<ExitCode, String> {
    let Some((cmd, rest)) = args.split_first() else {
        return Err("no command".into());
    };
    match cmd.as_str() {
        "list" => {
            for s in registry::scenarios() {
                println!("{:<30} {}", s.name, s.about);
            }
            println!();
            println!("injectable bugs (--inject-bug):");
            for b in registry::bugs() {
                println!("{}", b.name());
            }
            Ok(ExitCode::SUCCESS)
        }
        "run" => {
            let o = parse(rest)?;
            let sc = scenario(o.scenario.as_deref().ok_or("run needs --scenario")?)?;
            let seed = o.seed.ok_or("run needs --seed")?;
            let out = sc.run(seed, o.bug);
            let r = &out.report;
            println!(
                "scenario {} seed {seed}{}",
                sc.name,
                o.bug
                    .map(|b| format!(" bug {}", b.name()))
                    .unwrap_or_default()
            );
            println!("  {}", sc.about);
            println!(
                "  simulated {:.3} s, {} events; acquired {} failed {} extended {} lost {} released {}; writes accepted {} rejected {}",
                r.end as f64 / 1e9, r.events, r.acquired, r.failed, r.extended, r.lost, r.released, r.writes.0, r.writes.1
            );
            println!("  assumptions broken: {}", r.broken);
            if std::env::var_os("LUCKY_SIM_CLAIMS").is_some() {
                for (at, f) in &r.faults {
                    println!("  fault at {:.3} ms: {f:?}", *at as f64 / 1e6);
                }
                for c in &r.claims {
                    println!(
                        "  claim: client {} [{:.3}, {:.3}) ms",
                        c.client,
                        c.start as f64 / 1e6,
                        c.end as f64 / 1e6
                    );
                }
            }
            for v in &r.violations {
                let kind = if v.excused_by(&r.broken) {
                    "expected"
                } else {
                    "VIOLATION"
                };
                println!("  {kind}: {v}");
            }
            let verdict = out.verdict();
            println!("verdict: {verdict}");
            println!("trace-hash={:016x}", r.trace_hash);
            if let Some(file) = &o.svg {
                let title = svg::Title {
                    scenario: sc.name,
                    seed,
                    bug: o.bug.map(Injected::name),
                    verdict: &verdict,
                };
                if let Err(e) = std::fs::write(file, svg::timeline(&title, r)) {
                    eprintln!("{program}: cannot write {file}: {e}");
                    return Ok(ExitCode::from(74));
                }
            }
            Ok(if out.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        "sweep" => {
            let o = parse(rest)?;
            if o.svg.is_some() {
                return Err("--svg draws one run: use it with run".into());
            }
            let name = o.scenario.as_deref().ok_or("sweep needs --scenario")?;
            let seeds = o.seeds.ok_or("sweep needs --seeds")?;
            let scenarios: Vec<&'static Scenario> = if name == "all" {
                // With a bug, only the scenarios of the backend it lives in.
                registry::scenarios_for(o.bug).collect()
            } else {
                vec![scenario(name)?]
            };
            let threads = o
                .threads
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
            let tty = std::io::stderr().is_terminal();
            let progress = |done: u64, total: u64| {
                let mut e = std::io::stderr().lock();
                if tty && (done % 256 == 0 || done == total) {
                    if style == Style::Table {
                        let filled = (done * 40 / total.max(1)) as usize;
                        let _ = write!(
                            e,
                            "\r[{}{}] {:>3}% {done}/{total} runs",
                            "#".repeat(filled),
                            ".".repeat(40 - filled),
                            done * 100 / total.max(1)
                        );
                    } else {
                        let _ = write!(e, "\r{done}/{total} runs");
                    }
                    if done == total {
                        let _ = writeln!(e);
                    }
                } else if !tty && done * 10 / total != (done - 1) * 10 / total {
                    let _ = writeln!(e, "{done}/{total} runs");
                }
            };
            let s = sweep(&scenarios, o.start, seeds, o.bug, threads, &progress);
            if style == Style::Table {
                print_table(&s);
            }
            let (mut runs, mut fails, mut found, mut events) = (0, 0, 0, 0);
            for (name, st) in &s.stats {
                let per_core = st.events as f64 / (st.busy_ns as f64 / 1e9).max(1e-9);
                runs += st.runs;
                fails += st.failures;
                found += st.expected_found;
                events += st.events;
                if style == Style::Table {
                    continue;
                }
                println!(
                    "{name:<30} runs={} violations={} expected_found={} events={} events_per_sec_per_core={:.0}",
                    st.runs, st.failures, st.expected_found, st.events, per_core
                );
            }
            for f in s.failures.iter().take(20) {
                println!("FAIL {} seed {}: {}", f.scenario, f.seed, f.why);
                println!("  replay: {}", replay(program, f.scenario, f.seed, o.bug));
            }
            if s.failures.len() > 20 {
                println!("... and {} more failures", s.failures.len() - 20);
            }
            let eps = events as f64 / (s.wall_ns as f64 / 1e9).max(1e-9);
            println!("summary runs={runs} violations={fails} expected_found={found} events={events} events_per_sec={eps:.0}");
            Ok(if fails == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        other => Err(format!("unknown command {other:?}")),
    }
}

/// One row per scenario: what it checks, its runs, and its verdict.
fn print_table(s: &Sweep) {
    println!(
        "{:<36} {:>7} {:>10} {:>9}  verdict",
        "scenario", "runs", "violations", "expected"
    );
    for (name, st) in &s.stats {
        let verdict = match (st.failures, st.expected_found) {
            (0, 0) => "holds",
            (0, _) => "breaks as expected (assumption broken on purpose)",
            _ => "FAILED",
        };
        println!(
            "{name:<36} {:>7} {:>10} {:>9}  {verdict}",
            st.runs, st.failures, st.expected_found
        );
    }
}
