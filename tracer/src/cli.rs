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
    /// A live view of what holds memory now, refreshed every second: each
    /// process's totals and the locations (Python lines) with the most
    /// live bytes. Keys: l/a/c/g sort, n native frames, t thread, p
    /// process, Enter stack, space pause, o objects by type, ? help, q quit.
    Top(TopArgs),
}

#[derive(Debug, Args)]
pub struct TopArgs {
    /// Trace this running process (repeatable).
    #[arg(short, long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,

    /// Every CPython process on the host.
    #[arg(short, long, conflicts_with_all = ["pids", "command"])]
    pub all: bool,

    /// Also probe CPython's object allocator (see `record --pymalloc`).
    #[arg(long)]
    pub pymalloc: bool,

    /// Sample one allocation per N bytes on average (see `record`).
    #[arg(long, value_name = "N")]
    pub sample_bytes: Option<u64>,

    /// Seconds between refreshes.
    #[arg(long, value_name = "SECS", default_value_t = 1.0)]
    pub interval: f64,

    /// Print one refresh as text and exit (also when stdout is no terminal).
    #[arg(long)]
    pub once: bool,

    /// Start with native frames (the allocation function's caller).
    #[arg(long)]
    pub native: bool,

    /// Stop after this many seconds.
    #[arg(short, long, value_name = "SECS")]
    pub duration: Option<f64>,

    /// Ring buffer between the kernel and tracer, in MiB (a power of two).
    #[arg(long, value_name = "MIB", default_value_t = 32)]
    pub ring_mb: u32,

    /// The command to start and watch.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<OsString>,
}

/// `tracer top`'s options, checked.
#[derive(Debug)]
pub struct TopOptions {
    pub record: RecordOptions,
    pub once: bool,
    pub native: bool,
}

impl TopArgs {
    pub fn validate(self) -> Result<TopOptions> {
        let interval = match Duration::try_from_secs_f64(self.interval) {
            Ok(d) if d >= Duration::from_millis(100) => d,
            _ => bail!(
                "--interval must be at least 0.1 seconds, not {}",
                self.interval
            ),
        };
        let record = RecordArgs {
            pids: self.pids,
            all: self.all,
            pymalloc: self.pymalloc,
            view: ViewArgs {
                min_age: 0.0,
                top: 10,
                python_only: false,
                native_only: false,
                include_thread_stacks: false,
            },
            duration: self.duration,
            output: None,
            sample_ms: interval.as_millis() as u64,
            sample_bytes: self.sample_bytes,
            ring_mb: self.ring_mb,
            // The objects view walks the heap itself, while it is open.
            no_types: true,
            command: self.command,
        }
        .validate()?;
        Ok(TopOptions {
            record,
            once: self.once,
            native: self.native,
        })
    }
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
    /// The capture file.
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

    /// Do not read the types of live Python objects (walks of the heap
    /// when tracing begins and when the leak set is taken), nor hold a
    /// launched command at its finalization while they are read.
    #[arg(long)]
    pub no_types: bool,

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
    /// Walk the heaps for the types of live objects.
    pub types: bool,
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
            types: !self.no_types,
        })
    }
}
