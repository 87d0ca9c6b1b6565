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
    sources::probes::LinkKind,
};

/// Traces memory allocations of running Python (and other) processes with
/// eBPF, without restarting or changing them, and reports what leaks and
/// what allocates most.
mod daemon;
mod top;

pub use daemon::DaemonArgs;
pub use top::{TopArgs, TopOptions};

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
    /// B bytes: about sqrt(N / B). The mode for production, and the default
    /// of --all (N = 262144: 5% on 100 MB, 1.6% on 1 GB).
    #[arg(long, value_name = "N", conflicts_with = "exact")]
    pub sample_bytes: Option<u64>,

    /// Record every allocation, also with --all (which samples by default).
    #[arg(long)]
    pub exact: bool,

    /// Ring buffer between the kernel and tracer, in MiB (a power of two).
    #[arg(long, value_name = "MIB", default_value_t = 32)]
    pub ring_mb: u32,

    /// Stop recording (and report what was recorded) once the capture
    /// file reaches this many MiB.
    #[arg(long, value_name = "MIB", default_value_t = DEFAULT_CAPTURE_MB)]
    pub max_capture_mb: u64,

    /// Run the command as this user (a name or a uid). Default: the user
    /// who ran tracer (through sudo: SUDO_UID and SUDO_GID).
    #[arg(long, value_name = "USER", requires = "command")]
    pub user: Option<String>,

    /// Leave the command running when tracer stops (by default it gets
    /// SIGTERM, then SIGKILL if it is still running 5 seconds later).
    #[arg(long, requires = "command")]
    pub detach_command: bool,

    /// How uprobes are attached: uprobe sessions (Linux 6.13+: an untraced
    /// or unsampled call pays one trap, not two), multi-uprobe links (6.6+),
    /// or perf-event uprobes (any kernel, slow to remove). auto: the best
    /// the kernel has.
    #[arg(long, value_enum, default_value_t = ProbeLinks::Auto)]
    pub probe_links: ProbeLinks,

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

    /// Each option in its range, with one clear error.
    pub fn check(&self) -> Result<()> {
        seconds("--min-age", self.min_age)?;
        if !(1..=MAX_TOP).contains(&self.top) {
            bail!("--top must be from 1 to {MAX_TOP}, not {}", self.top);
        }
        Ok(())
    }
}

/// Longest time any option takes, in seconds (a year): beyond it a
/// value is a mistake, and nanoseconds of it would overflow.
const MAX_SECONDS: f64 = 365.0 * 24.0 * 3600.0;
/// Most entries per report.
const MAX_TOP: usize = 1_000_000;
/// --sample-ms: an hour at most (10 ms at least: a tick more often than
/// the ring is drained is all ticks).
const SAMPLE_MS: std::ops::RangeInclusive<u64> = 10..=3_600_000;
/// --sample-bytes: at most 1 TiB between samples (the kernel multiplies it
/// by gaps of up to 2^20 in 64 bits).
const MAX_SAMPLE_BYTES: u64 = 1 << 40;
/// --max-capture-mb: 2 GiB by default (about an hour of a busy service,
/// docs/captures.md), 1 TiB at most.
const DEFAULT_CAPTURE_MB: u64 = 2048;
const MAX_CAPTURE_MB: u64 = 1 << 20;

/// A number of seconds that is not negative, not NaN, and at most a year.
fn seconds(option: &str, value: f64) -> Result<f64> {
    if !(0.0..=MAX_SECONDS).contains(&value) {
        bail!("{option} must be a number of seconds from 0 to {MAX_SECONDS} (a year), not {value}");
    }
    Ok(value)
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

/// The largest ring buffer: the kernel's limit is near 4 GiB, far beyond
/// what any drain rate needs.
const MAX_RING_MB: u32 = 1024;

/// The mean bytes between samples where tracer samples by default (`--all`,
/// the daemon): a total of B bytes is estimated within about sqrt(N / B)
/// (5% of 100 MB, 1.6% of 1 GB), and an allocation of 1 MiB or more is
/// nearly always recorded, while most small ones are not, and cost no
/// return trap with uprobe sessions (docs/overhead.md).
pub const PRODUCTION_SAMPLE_BYTES: u64 = 256 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ProbeLinks {
    Auto,
    Session,
    Multi,
    Perf,
}

impl ProbeLinks {
    /// The kind of links to make; `Auto`: the best the running kernel has.
    pub fn resolve(self) -> Result<LinkKind> {
        Ok(match self {
            ProbeLinks::Auto => {
                let release = nix::sys::utsname::uname()?
                    .release()
                    .to_string_lossy()
                    .into_owned();
                LinkKind::for_kernel(&release)
            }
            ProbeLinks::Session => LinkKind::Session,
            ProbeLinks::Multi => LinkKind::Multi,
            ProbeLinks::Perf => LinkKind::Perf,
        })
    }
}

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
    pub max_capture_bytes: u64,
    /// `--user`, if given.
    pub user: Option<String>,
    pub detach_command: bool,
    pub links: LinkKind,
    pub analysis: analysis::Options,
    pub top: usize,
    /// Walk the heaps for the types of live objects.
    pub types: bool,
    /// Walk every target's heap this often too (the daemon's
    /// `--types-every`); its last walk then stands for the end, which
    /// walks no more.
    pub types_every: Option<Duration>,
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
                Ok(t) if !t.is_zero() && d <= MAX_SECONDS => Some(t),
                _ => bail!(
                    "--duration must be a positive number of seconds up to {MAX_SECONDS} (a year), not {d}"
                ),
            },
            None => None,
        };
        let sampling = match self.sample_bytes {
            Some(n) if !(1..=MAX_SAMPLE_BYTES).contains(&n) => {
                bail!("--sample-bytes must be from 1 to {MAX_SAMPLE_BYTES} (1 TiB), not {n}")
            }
            Some(mean_bytes) => Some(Sampling { mean_bytes }),
            // --all is for a host's production services.
            None if self.all && !self.exact => Some(Sampling {
                mean_bytes: PRODUCTION_SAMPLE_BYTES,
            }),
            None => None,
        };
        let links = self.probe_links.resolve()?;
        if !SAMPLE_MS.contains(&self.sample_ms) {
            bail!(
                "--sample-ms must be from {} to {} (an hour), not {}",
                SAMPLE_MS.start(),
                SAMPLE_MS.end(),
                self.sample_ms
            );
        }
        if !(1..=MAX_CAPTURE_MB).contains(&self.max_capture_mb) {
            bail!(
                "--max-capture-mb must be from 1 to {MAX_CAPTURE_MB}, not {}",
                self.max_capture_mb
            );
        }
        self.view.check()?;
        Ok(RecordOptions {
            pids: self.pids,
            all: self.all,
            command: self.command,
            pymalloc: self.pymalloc,
            duration,
            output: self.output,
            sample_every: Duration::from_millis(self.sample_ms),
            sampling,
            ring_bytes: self.ring_mb << 20,
            max_capture_bytes: self.max_capture_mb << 20,
            user: self.user,
            detach_command: self.detach_command,
            links,
            analysis: analysis::Options {
                view: self.view.view(),
                min_age_ns: self.view.min_age_ns(),
                temporary: Temporary::Within { ns: 1_000_000 },
                include_thread_stacks: self.view.include_thread_stacks,
            },
            top: self.view.top,
            types: !self.no_types,
            types_every: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(args: &[&str]) -> Result<RecordOptions> {
        let cli = Cli::try_parse_from(["tracer", "record"].iter().chain(args))?;
        let Command::Record(record) = cli.command else {
            unreachable!("parsed as record");
        };
        record.validate()
    }

    fn mean_bytes(args: &[&str]) -> Option<u64> {
        record(args).expect("valid").sampling.map(|s| s.mean_bytes)
    }

    #[test]
    fn all_samples_by_default_and_named_targets_are_exact() {
        assert_eq!(mean_bytes(&["--all"]), Some(PRODUCTION_SAMPLE_BYTES));
        assert_eq!(mean_bytes(&["--all", "--exact"]), None);
        assert_eq!(mean_bytes(&["--all", "--sample-bytes", "4096"]), Some(4096));
        assert_eq!(mean_bytes(&["--pid", "1"]), None);
        assert_eq!(mean_bytes(&["--", "python3", "app.py"]), None);
        assert!(record(&["--all", "--exact", "--sample-bytes", "1"]).is_err());
        assert!(record(&["--all", "--sample-bytes", "0"]).is_err());
    }

    #[test]
    fn probe_links_are_chosen_or_forced() {
        let links = |kind: &str| {
            record(&["--all", "--probe-links", kind])
                .expect("valid")
                .links
        };
        assert_eq!(links("session"), LinkKind::Session);
        assert_eq!(links("multi"), LinkKind::Multi);
        assert_eq!(links("perf"), LinkKind::Perf);
        assert!(record(&["--all", "--probe-links", "kprobe"]).is_err());
    }
}
