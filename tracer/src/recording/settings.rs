//! What a recording is told to do, whichever command asks: which processes
//! (`TargetSettings`), how its probes are made (`ProbeSettings`), which
//! allocations it records (`Sampling`), how long and how much
//! (`Bounds`), how often its sinks get a snapshot, and whether it walks
//! heaps for types (`WalkSettings`). The commands build it from their
//! checked options (`cli`); nothing here knows which command it serves.

use std::{ffi::OsString, time::Duration};

use crate::{event::Pid, sampling::Sampling, sources::probes::LinkKind};

#[derive(Clone, Debug)]
pub struct Settings {
    pub targets: TargetSettings,
    pub probes: ProbeSettings,
    /// `--sample-bytes`; `None` records every allocation.
    pub sampling: Option<Sampling>,
    pub bounds: Bounds,
    /// How often every sink gets a snapshot (`record --sample-ms`, the
    /// `--interval` of `top` and the daemon).
    pub snapshot_every: Duration,
    pub walks: WalkSettings,
}

/// Which processes are traced (with what each of them forks).
#[derive(Clone, Debug)]
pub struct TargetSettings {
    /// `--pid`, each with its descendants.
    pub pids: Vec<Pid>,
    /// Every CPython process on the host, running now and started later
    /// (`--all`, and `--match`, which chooses among them).
    pub all: bool,
    /// `--match`: only the CPython processes whose command line matches.
    pub matching: Option<regex::Regex>,
    /// A command to start, traced from its first allocation.
    pub launch: Option<LaunchSettings>,
}

/// A command tracer starts.
#[derive(Clone, Debug)]
pub struct LaunchSettings {
    pub command: Vec<OsString>,
    /// `--user`, if given (else whoever ran tracer).
    pub user: Option<String>,
    /// `--detach-command`: left running when tracer stops.
    pub detach: bool,
}

/// How the programs are loaded and their uprobes attached.
#[derive(Clone, Copy, Debug)]
pub struct ProbeSettings {
    pub links: LinkKind,
    /// Also probe CPython's object allocator (`--pymalloc`).
    pub pymalloc: bool,
    /// The ring buffer between the kernel and tracer (`--ring-mb`).
    pub ring_bytes: u32,
}

/// What ends a recording, or caps what it keeps.
#[derive(Clone, Copy, Debug, Default)]
pub struct Bounds {
    /// `--duration`.
    pub duration: Option<Duration>,
    /// `--max-tracked`: live allocations the heap model keeps at most.
    pub max_tracked: Option<u64>,
}

/// Heap walks for the types of live objects.
#[derive(Clone, Copy, Debug, Default)]
pub struct WalkSettings {
    /// Walk when tracing begins and ends (and hold a launched command at
    /// its finalization for it).
    pub types: bool,
    /// Walk every target this often too (the daemon's `--types-every`);
    /// the last periodic walk then stands for the end.
    pub every: Option<Duration>,
}
