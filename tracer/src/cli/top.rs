//! `tracer top`'s options: those of `record` it shares, and the view's.

use std::{ffi::OsString, time::Duration};

use anyhow::{Result, bail};
use clap::Args;

use super::{DEFAULT_CAPTURE_MB, ProbeLinks, RecordArgs, RecordOptions, ViewArgs};

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
            // Sampled by default with --all, as `record` is.
            exact: false,
            probe_links: ProbeLinks::Auto,
            max_capture_mb: DEFAULT_CAPTURE_MB,
            user: None,
            // A command started to be watched stops with the view.
            detach_command: false,
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
