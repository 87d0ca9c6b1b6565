//! Command-line interface: the options as clap reads them, and their
//! checked values (`RecordOptions`), with one clear error per bad value.

use std::{ffi::OsString, path::PathBuf, time::Duration};

use anyhow::{Result, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::{
    event::Pid,
    frame::View,
    report::analysis::{self, Temporary},
    sampling::Sampling,
};

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
    /// Run for weeks: every --interval, a memory profile of each traced
    /// process, pushed to Grafana Pyroscope and/or Parca; growth ranked.
    Daemon(DaemonArgs),
}

/// The default of `tracer daemon` (and of `--all`): one allocation recorded
/// per 256 KiB allocated on average. A service allocating 1 GB a minute is
/// measured to about 1.6% per minute at this rate (error sqrt(N / B)), for
/// about 4,000 recorded allocations a minute instead of millions.
pub const PRODUCTION_SAMPLE_BYTES: u64 = 256 * 1024;

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

/// `tracer daemon`: the target options of `record`, then where windows go.
/// Every option may also be set in the --config file under the same name
/// (dashes as underscores); the command line wins.
#[derive(Debug, Default, Args)]
pub struct DaemonArgs {
    /// Trace this running process and its descendants (repeatable).
    #[arg(short, long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,

    /// Trace every CPython process on the host, running and started later.
    #[arg(short, long)]
    pub all: bool,

    /// Trace the CPython processes whose command line matches REGEX,
    /// running and started later.
    #[arg(long = "match", value_name = "REGEX", conflicts_with = "all")]
    pub matching: Option<String>,

    /// A TOML file with the same keys as these options (dashes as
    /// underscores), plus push credentials; read again on SIGHUP.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Seconds per window (at least 1; default 15).
    #[arg(long, value_name = "SECS")]
    pub interval: Option<u64>,

    /// Push every window to Grafana Pyroscope (or Alloy's
    /// pyroscope.receive_http) at this base URL, through /ingest.
    #[arg(long, value_name = "URL")]
    pub pyroscope: Option<String>,

    /// Push every window to Parca at this base URL (its HTTP API,
    /// /api/profiles/writeraw).
    #[arg(long, value_name = "URL")]
    pub parca: Option<String>,

    /// A fixed label on every profile (repeatable).
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,

    /// Label each profile with its process's pid (one series per process
    /// instance: more series in the backend).
    #[arg(long)]
    pub pid_label: bool,

    /// Keep windows that could not be pushed yet in this directory, sent
    /// when the backend is back (and after a restart).
    #[arg(long, value_name = "DIR")]
    pub spool_dir: Option<PathBuf>,

    /// The most the spool may hold, in MiB (default 256).
    #[arg(long, value_name = "MIB")]
    pub max_spool_mb: Option<u64>,

    /// Serve Prometheus metrics at ADDR (PORT alone: 127.0.0.1:PORT).
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<String>,

    /// Let --metrics listen on an address other than loopback.
    #[arg(long)]
    pub metrics_any_address: bool,

    /// Also write the windows' events to DIR as a rotating capture
    /// (capture-NNNNNN.tracer segments, for `tracer report DIR`).
    #[arg(short, long, value_name = "DIR")]
    pub output: Option<PathBuf>,

    /// The most the rotating capture may hold, in MiB (default 1024);
    /// the oldest segments are deleted first.
    #[arg(long, value_name = "MIB")]
    pub max_capture_mb: Option<u64>,

    /// Record one allocation per N bytes on average (default 262144);
    /// 0 records every allocation.
    #[arg(long, value_name = "N", conflicts_with = "exact")]
    pub sample_bytes: Option<u64>,

    /// Record every allocation (--sample-bytes 0).
    #[arg(long)]
    pub exact: bool,

    /// Track at most this many live allocations (default 1000000); past
    /// it, one is forgotten per new one, and counted.
    #[arg(long, value_name = "N")]
    pub max_tracked: Option<u64>,

    /// Log the growth ranking every N windows (default 20; 0: never).
    #[arg(long, value_name = "N")]
    pub growth_every: Option<u64>,

    /// Also probe CPython's object allocator (objects of 512 bytes or less).
    #[arg(long)]
    pub pymalloc: bool,

    /// Stop after SECS (default: until SIGTERM or SIGINT).
    #[arg(short, long, value_name = "SECS")]
    pub duration: Option<f64>,

    /// Ring buffer between the kernel and tracer, in MiB (a power of two).
    #[arg(long, value_name = "MIB")]
    pub ring_mb: Option<u32>,
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

#[derive(Debug, Args)]
pub struct RecordArgs {
    /// Trace this running process (repeatable).
    #[arg(short, long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,

    /// Trace every CPython process on the host: those running now and those
    /// started while recording, each reported on its own.
    #[arg(short, long, conflicts_with_all = ["pids", "command"])]
    pub all: bool,

    /// Also probe CPython's object allocator (PyObject_Malloc and friends),
    /// which serves objects of 512 bytes or less without calling malloc.
    /// Costs a probe per object allocation.
    #[arg(long)]
    pub pymalloc: bool,

    #[command(flatten)]
    pub view: ViewArgs,

    /// Stop recording after this many seconds (default: until every target
    /// exits, or Ctrl-C / SIGTERM).
    #[arg(short, long, value_name = "SECS")]
    pub duration: Option<f64>,

    /// Also write capture.tracer (every event, to report again with
    /// `tracer report`), report.json, stacks.folded (leaked bytes) and
    /// hotspots.folded (allocated bytes) into this directory.
    #[arg(short, long, value_name = "DIR")]
    pub output: Option<PathBuf>,

    /// How often to sample each process's memory (live heap and resident
    /// set) and make the capture readable up to now, in ms.
    #[arg(long, value_name = "MS", default_value_t = 100)]
    pub sample_ms: u64,

    /// Record a sample of the allocations instead of every one: on average
    /// one per N bytes allocated (Poisson, like tcmalloc), each weighted so
    /// that bytes and counts stay unbiased estimates. Frees of unsampled
    /// allocations are dropped in the kernel. Relative error of a total of
    /// B bytes: about sqrt(N / B). The mode for production.
    #[arg(long, value_name = "N")]
    pub sample_bytes: Option<u64>,

    /// Ring buffer between the kernel and tracer, in MiB (a power of two).
    #[arg(long, value_name = "MIB", default_value_t = 32)]
    pub ring_mb: u32,

    /// The command to start and trace from its first allocation.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<OsString>,
}

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
}

/// The largest ring buffer: the kernel's limit is near 4 GiB, far beyond
/// what any drain rate needs.
const MAX_RING_MB: u32 = 1024;

/// `tracer record`'s options, checked.
#[derive(Debug)]
pub struct RecordOptions {
    pub pids: Vec<Pid>,
    pub all: bool,
    pub command: Vec<OsString>,
    pub pymalloc: bool,
    pub duration: Option<Duration>,
    pub output: Option<PathBuf>,
    /// How often memory is sampled and the capture made readable.
    pub sample_every: Duration,
    pub sampling: Option<Sampling>,
    pub ring_bytes: u32,
    pub analysis: analysis::Options,
    pub top: usize,
}

impl RecordArgs {
    pub fn validate(self) -> Result<RecordOptions> {
        if self.pids.is_empty() && self.command.is_empty() && !self.all {
            bail!(
                "nothing to trace: give --pid PID, --all, or a command after --, e.g. `tracer record -- python3 app.py`"
            );
        }
        if !self.ring_mb.is_power_of_two() || self.ring_mb > MAX_RING_MB {
            bail!(
                "--ring-mb must be a power of two from 1 to {MAX_RING_MB}, not {}",
                self.ring_mb
            );
        }
        let duration = match self.duration {
            Some(d) => match Duration::try_from_secs_f64(d) {
                Ok(d) if !d.is_zero() => Some(d),
                _ => bail!("--duration must be a positive number of seconds, not {d}"),
            },
            None => None,
        };
        let sampling = match self.sample_bytes {
            Some(0) => bail!("--sample-bytes must be at least 1"),
            n => n.map(|mean_bytes| Sampling { mean_bytes }),
        };
        Ok(RecordOptions {
            pids: self.pids,
            all: self.all,
            command: self.command,
            pymalloc: self.pymalloc,
            duration,
            output: self.output,
            // A tick more often than this is all ticks.
            sample_every: Duration::from_millis(self.sample_ms.max(10)),
            sampling,
            ring_bytes: self.ring_mb << 20,
            analysis: analysis::Options {
                view: self.view.view(),
                min_age_ns: self.view.min_age_ns(),
                temporary: Temporary::Within { ns: 1_000_000 },
                include_thread_stacks: self.view.include_thread_stacks,
            },
            top: self.view.top,
        })
    }
}
