//! `tracer daemon`'s options, as clap reads them (`daemon::config` merges
//! them with the --config file and checks them).

use std::path::PathBuf;

use clap::Args;

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

    /// Walk each process's heap for its live objects by type every SECS
    /// (default 60; 0: never), pushed as a `types` profile beside the
    /// memory windows.
    #[arg(long, value_name = "SECS")]
    pub types_every: Option<u64>,

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
