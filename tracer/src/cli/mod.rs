//! Command-line interface: the options as clap reads them, and their
//! checked values, with one clear error per bad value. The options of a
//! recording that several commands share are declared once
//! (`recording`); each command flattens the groups it takes.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::frame::View;

mod daemon;
mod record;
pub mod recording;
mod top;

pub use daemon::{DaemonArgs, ExportArgs};
pub use record::{RecordArgs, RecordOptions, ReportSettings};
use recording::seconds;
pub use top::{TopArgs, TopOptions};

/// Traces memory allocations of running Python (and other) processes with
/// eBPF, without restarting or changing them, and reports what leaks and
/// what allocates most.
#[derive(Debug, Parser)]
#[command(name = "tracer", version, about)]
pub struct Cli {
    /// More log output on stderr (-v: info, -vv: debug). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Record allocations of running processes (--pid) or of a command
    /// started by tracer (after --), then print the leak and hotspot reports.
    Record(RecordArgs),
    /// Make a report from a capture (`record -o DIR` writes DIR/capture.tracer):
    /// offline, on any machine, without root.
    Report(ReportArgs),
    /// A live view of what holds memory now, refreshed every second: each
    /// process's totals and the locations (Python lines) with the most
    /// live bytes. Keys: l/a/c/g sort, n native frames, t thread, p
    /// process, Enter stack, space pause, o objects by type, ? help, q quit.
    Top(TopArgs),
    /// Run for weeks: every --interval, a memory profile of each traced
    /// process, pushed to Grafana Pyroscope and/or Parca; growth ranked.
    Daemon(DaemonArgs),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ReportKind {
    /// Live allocations at the end (or when each process began to exit).
    Leaks,
    /// Bytes allocated per stack.
    Hotspots,
    /// The live set at each process's highest live heap.
    Peak,
    /// Allocations freed soon after they were made.
    Temporary,
    /// Per process and thread: allocated, freed, live, peak.
    Summary,
    /// Live objects by type (walks of the heap), and their growth.
    Types,
    /// A Python function (--function, --file) or file (--file) line by
    /// line: allocated there and in callees, by the line itself, live.
    Lines,
    /// Each stack's live bytes window by window, ranked by sustained
    /// growth: growing (leak suspects), plateaued (caches), steady.
    Growth,
    /// An interactive SVG flamegraph (of --of).
    Flamegraph,
    /// A gzipped pprof profile (alloc_* and inuse_* sample types).
    Pprof,
    /// A speedscope JSON profile (of --of).
    Speedscope,
    /// One self-contained HTML page with all of it.
    Html,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Text,
    Json,
}

/// What a flamegraph or speedscope profile weighs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Of {
    Leaks,
    Hotspots,
    Peak,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The capture file, or a directory of capture segments (`daemon -o
    /// DIR`, or `record -o DIR`), read in order.
    pub capture: PathBuf,

    #[arg(value_enum, default_value_t = ReportKind::Summary)]
    pub kind: ReportKind,

    /// Write the report to FILE instead of stdout.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,

    /// text or json (report.json, with every section) for leaks, hotspots,
    /// peak, temporary and summary.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,

    /// Flamegraph and speedscope: which report to draw.
    #[arg(long, value_enum, default_value_t = Of::Leaks)]
    pub of: Of,

    #[command(flatten)]
    pub view: ViewArgs,

    /// Temporary: freed within this many milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 1.0)]
    pub temporary_ms: f64,

    /// Temporary: freed before this many more allocations of the same
    /// thread (memray's threshold), instead of --temporary-ms.
    #[arg(long, value_name = "N")]
    pub temporary_allocations: Option<u64>,

    /// Lines: the Python function, by name ("handle") or qualified name
    /// ("Server.handle").
    #[arg(long, value_name = "NAME")]
    pub function: Option<String>,

    /// Lines: the Python file (its path, or the end of it); alone, every
    /// line of the file.
    #[arg(long, value_name = "PATH")]
    pub file: Option<String>,

    #[command(flatten)]
    pub growth: GrowthArgs,
}

/// How stacks are ranked by growth.
#[derive(Clone, Debug, Args)]
pub struct GrowthArgs {
    /// Growth: the windows the trend test looks at (the last K).
    #[arg(long, value_name = "K", default_value_t = 20)]
    pub growth_windows: usize,

    /// Growth: windows of this many seconds (default: the capture's own,
    /// the daemon's --interval or record's --sample-ms).
    #[arg(long, value_name = "SECS")]
    pub window_secs: Option<f64>,
}

/// How entries are chosen and shown, in every report.
#[derive(Debug, Args)]
pub struct ViewArgs {
    /// Leaks: only allocations at least this old when the leak set was
    /// taken (like memleak's -o).
    #[arg(long, value_name = "SECS", default_value_t = 0.0)]
    pub min_age: f64,

    /// Show the N largest entries of each report (text and JSON).
    #[arg(short = 'T', long, value_name = "N", default_value_t = 10)]
    pub top: usize,

    /// Show Python frames only (after the allocation function).
    #[arg(long, conflicts_with = "native_only")]
    pub python_only: bool,

    /// Show native frames only.
    #[arg(long)]
    pub native_only: bool,

    /// Rank thread stacks (mappings made with MAP_STACK; glibc keeps a
    /// finished thread's for the next one) with the other mappings in
    /// leaks, hotspots and peak, instead of counting them on a line of
    /// their own.
    #[arg(long)]
    pub include_thread_stacks: bool,
}

/// Most entries per report.
const MAX_TOP: usize = 1_000_000;

impl ViewArgs {
    pub fn view(&self) -> View {
        match (self.python_only, self.native_only) {
            (true, _) => View::Python,
            (_, true) => View::Native,
            _ => View::Mixed,
        }
    }

    pub fn min_age_ns(&self) -> u64 {
        (self.min_age.max(0.0) * 1e9) as u64
    }

    /// Each option in its range, with one clear error.
    pub fn check(&self) -> Result<()> {
        seconds("--min-age", self.min_age)?;
        if !(1..=MAX_TOP).contains(&self.top) {
            bail!("--top must be from 1 to {MAX_TOP}, not {}", self.top);
        }
        Ok(())
    }
}

impl ReportArgs {
    /// Each option in its range, with one clear error.
    pub fn check(&self) -> Result<()> {
        self.view.check()?;
        seconds("--temporary-ms (in seconds)", self.temporary_ms / 1e3)?;
        if self.temporary_allocations == Some(0) {
            bail!("--temporary-allocations must be at least 1");
        }
        Ok(())
    }
}
