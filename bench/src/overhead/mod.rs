//! `cargo xtask bench` (`bench overhead`): what tracing costs a Python
//! process, measured side by side with the tools an operator would
//! otherwise reach for.
//!
//! Every workload in bench/workloads is run untraced and under each tool,
//! interleaved (one round of every mode, then the next round), so that drift
//! of the machine hits every mode alike. A workload sets up, says "ready",
//! and starts its timed work phase when it reads "go": attaching tools
//! attach in between, so the ratio is of the work phase alone. The slowdown
//! of a run is its work time over the untraced run's of the same round.
//!
//! `cargo xtask bench` installs the tools compared with (into bench/cache)
//! and builds tracer before it runs this.

mod children;
mod results;
mod run;
mod web;

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use self::{
    children::output,
    results::{markdown, summarize},
    run::run_once,
};

/// The interpreter every workload runs on: Debian's own, as on a production
/// host (stripped, LTO, no frame pointers).
const PYTHON: &str = ::tests::DEBIAN_PYTHON;

const WORKLOADS: [&str; 8] = [
    "churn", "requests", "buffers", "leak", "threads", "maxrate", "spawn", "flask",
];

/// Seconds of load per web service run.
const WEB_SECS: u64 = 10;
const WEB_SECS_QUICK: u64 = 3;

#[derive(Clone, Copy, PartialEq)]
enum Tool {
    Untraced,
    Tracer(&'static [&'static str]),
    Bpftrace,
    Memleak,
    Memray { native: bool },
}

struct Mode {
    name: &'static str,
    tool: Tool,
}

const SAMPLED: &[&str] = &["--sample-bytes", "65536"];

const MODES: [Mode; 8] = [
    Mode {
        name: "untraced",
        tool: Tool::Untraced,
    },
    Mode {
        name: "tracer",
        tool: Tool::Tracer(&[]),
    },
    Mode {
        name: "tracer --pymalloc",
        tool: Tool::Tracer(&["--pymalloc"]),
    },
    Mode {
        name: "tracer --sample-bytes 64KiB",
        tool: Tool::Tracer(SAMPLED),
    },
    Mode {
        name: "bpftrace (malloc/free + ustack)",
        tool: Tool::Bpftrace,
    },
    Mode {
        name: "bcc memleak",
        tool: Tool::Memleak,
    },
    Mode {
        name: "memray",
        tool: Tool::Memray { native: false },
    },
    Mode {
        name: "memray --native",
        tool: Tool::Memray { native: true },
    },
];

pub struct Options {
    pub quick: bool,
    pub rounds: Option<usize>,
    pub workloads: Vec<String>,
}

struct Paths {
    root: PathBuf,
    /// What `cargo xtask bench` installed: memray's venv (`memray/`) and
    /// the kernel headers bcc compiles against (`kernel-headers/`).
    cache: PathBuf,
    work: PathBuf,
}

/// One run of one workload in one mode.
#[derive(Default)]
struct Run {
    elapsed_s: f64,
    /// The tool's own process (tracer, bpftrace, memleak): CPU seconds from
    /// start to exit, and peak resident set.
    daemon_cpu_s: Option<f64>,
    daemon_rss_mib: Option<f64>,
    events: Option<u64>,
    lost: Option<u64>,
    /// tracer: bytes of the leak report's entries at leak.py's leaking line.
    leak_line_bytes: Option<u64>,
}

pub fn run(root: &Path, options: &Options) -> Result<()> {
    let paths = Paths {
        root: root.to_path_buf(),
        cache: root.join("bench/cache"),
        work: root.join("target/bench"),
    };
    let rounds = options.rounds.unwrap_or(if options.quick { 1 } else { 5 });
    let scale = if options.quick { 0.1 } else { 1.0 };
    let workloads: Vec<&str> = WORKLOADS
        .into_iter()
        .filter(|w| options.workloads.is_empty() || options.workloads.iter().any(|o| o == w))
        .collect();
    if workloads.is_empty() {
        bail!(
            "no such workload; the workloads are {}",
            WORKLOADS.join(", ")
        );
    }
    let collector = collector_throughput(&paths.root)?;
    let started = Instant::now();
    let web = workloads.contains(&"flask");
    let workloads: Vec<&str> = workloads.into_iter().filter(|w| *w != "flask").collect();
    let mut runs: BTreeMap<(usize, usize), Vec<Run>> = BTreeMap::new();
    for round in 0..rounds {
        for (w, workload) in workloads.iter().enumerate() {
            for m in round_order(MODES.len(), round) {
                let mode = &MODES[m];
                eprint!(
                    "bench: round {}/{rounds}: {workload} / {} ... ",
                    round + 1,
                    mode.name
                );
                let run = run_once(&paths, workload, mode, scale)
                    .with_context(|| format!("{workload} under {}", mode.name))?;
                eprintln!("{:.3} s", run.elapsed_s);
                runs.entry((w, m)).or_default().push(run);
            }
        }
    }
    let web_rows = if web {
        let secs = if options.quick {
            WEB_SECS_QUICK
        } else {
            WEB_SECS
        };
        web::run(&paths, rounds, secs)?
    } else {
        Vec::new()
    };
    let results = summarize(
        &workloads,
        &runs,
        rounds,
        scale,
        options.quick,
        &collector,
        &web_rows,
    );
    print!("{}", markdown(&results));
    let out = paths.root.join("bench/results/latest.json");
    fs::create_dir_all(out.parent().expect("has a parent"))?;
    fs::write(&out, serde_json::to_string_pretty(&results)? + "\n")?;
    eprintln!(
        "bench: took {:.0} s; results in {}",
        started.elapsed().as_secs_f64(),
        out.display()
    );
    Ok(())
}

/// The order of `n` modes in round `round`: each round starts one mode
/// later, so that a machine that slows down or speeds up within a round
/// (this VM drifts by a quarter within minutes) does not always favour the
/// same mode.
fn round_order(n: usize, round: usize) -> impl Iterator<Item = usize> {
    (0..n).map(move |i| (round + i) % n)
}

/// Runs the collector benchmark (tracer/benches/collector.rs): its last
/// line is a JSON object.
fn collector_throughput(root: &Path) -> Result<Value> {
    eprintln!("bench: measuring the collector on synthetic records");
    let out = output(
        Command::new("cargo")
            .args([
                "bench",
                "--quiet",
                "--package",
                "tracer",
                "--bench",
                "collector",
            ])
            .current_dir(root),
    )
    .context("cargo bench --bench collector failed")?;
    let last = out.lines().last().unwrap_or_default();
    serde_json::from_str(last).with_context(|| format!("collector benchmark said {last:?}"))
}

#[cfg(test)]
mod tests {
    use super::round_order;

    #[test]
    fn every_round_runs_every_mode_once_starting_one_later() {
        let orders: Vec<Vec<usize>> = (0..4).map(|r| round_order(3, r).collect()).collect();
        assert_eq!(orders, [[0, 1, 2], [1, 2, 0], [2, 0, 1], [0, 1, 2]]);
    }
}
