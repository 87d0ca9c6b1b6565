//! Command-line interface.

use std::{ffi::OsString, path::PathBuf};

use clap::{Args, Parser, Subcommand};

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

    /// Show Python frames only (after the allocation function).
    #[arg(long, conflicts_with = "native_only")]
    pub python_only: bool,

    /// Show native frames only.
    #[arg(long)]
    pub native_only: bool,

    /// Stop recording after this many seconds (default: until every target
    /// exits, or Ctrl-C / SIGTERM).
    #[arg(short, long, value_name = "SECS")]
    pub duration: Option<f64>,

    /// Also write report.json, stacks.folded (leaked bytes) and
    /// hotspots.folded (allocated bytes) into this directory.
    #[arg(short, long, value_name = "DIR")]
    pub output: Option<PathBuf>,

    /// Leaks: only allocations at least this old when the leak set was
    /// taken (like memleak's -o).
    #[arg(long, value_name = "SECS", default_value_t = 0.0)]
    pub min_age: f64,

    /// Show the N largest entries of each report (text and JSON).
    #[arg(short = 'T', long, value_name = "N", default_value_t = 10)]
    pub top: usize,

    /// Ring buffer between the kernel and tracer, in MiB (a power of two).
    #[arg(long, value_name = "MIB", default_value_t = 32)]
    pub ring_mb: u32,

    /// The command to start and trace from its first allocation.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<OsString>,
}
