//! The bench and the soaks: `bench overhead` (what tracing costs, run by
//! `cargo xtask bench`), `bench soak` (`tracer daemon --all` against
//! services that come and go, `cargo xtask soak`) and `bench soak-record`
//! (`tracer record --all` with exec churn, `cargo xtask soak-record`).
//!
//! Run through those tasks: they install what this needs (bpftrace, bcc,
//! memray, the test cache's interpreters and web server, the ingestion
//! server's readers) and build tracer in release mode first. Root, since
//! every one of them loads tracer's eBPF programs.
//!
//! The end-to-end tests' helpers (the `tests` crate) are used throughout;
//! they are named `::tests` since every module's unit tests are `tests`.

use std::{env, process::ExitCode};

use anyhow::{Result, bail};
use clap::{Parser, Subcommand};

mod overhead;
mod soak;
mod soak_record;

#[derive(Parser)]
#[command(name = "bench")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Measure what tracing costs: every workload in bench/workloads
    /// untraced, under tracer's modes, bpftrace, bcc's memleak and memray.
    /// Prints a Markdown table and writes bench/results/latest.json.
    Overhead {
        /// A smoke test in under 3 minutes: one round of smaller workloads,
        /// whose ratios do not predict the full run's.
        #[arg(long)]
        quick: bool,
        /// Rounds of every mode (default 5; 1 with --quick).
        #[arg(long)]
        rounds: Option<usize>,
        /// Only these workloads (churn, requests, buffers, leak, threads,
        /// maxrate, spawn, flask).
        workloads: Vec<String>,
    },
    /// Run `tracer daemon --all` against Python services that come and go,
    /// pushing every 5 s to the test ingestion server; check that its
    /// memory, descriptors and spool stay flat.
    Soak {
        /// Minutes to run.
        #[arg(long, default_value_t = 30)]
        minutes: u64,
        /// Trace only the CPython processes whose command line matches
        /// (tracer's `--match`) instead of every one.
        #[arg(long, value_name = "REGEX")]
        r#match: Option<String>,
    },
    /// `tracer record --all` on a steady workload with churn, tracer's RSS
    /// and descriptors sampled every minute: after 5 minutes they must stay
    /// within 10%.
    SoakRecord {
        /// How long to record.
        #[arg(long, default_value_t = 30)]
        minutes: u64,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse().task) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("bench: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(task: Task) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "the bench and the soaks load eBPF programs and need root: run `sudo -E env PATH=\"$PATH\" cargo xtask bench` (or `soak`, `soak-record`)"
        );
    }
    let root = ::tests::root();
    env::set_current_dir(&root)?;
    match task {
        Task::Overhead {
            quick,
            rounds,
            workloads,
        } => overhead::run(
            &root,
            &overhead::Options {
                quick,
                rounds,
                workloads,
            },
        ),
        Task::Soak { minutes, r#match } => soak::run(&root, minutes, r#match.as_deref()),
        Task::SoakRecord { minutes } => soak_record::run(&root, minutes),
    }
}
