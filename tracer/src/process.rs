//! What a recording knows of each traced process besides its events: who it
//! is, and its memory over time. Kept by the capture, shown by the reports.

use serde::{Deserialize, Serialize};

use crate::event::Pid;

/// The facts of one traced process.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessInfo {
    pub pid: Pid,
    /// Named by the user (not found by `--all`): reported even if it made
    /// no allocation.
    pub explicit: bool,
    /// The traced process it was forked from, if it was.
    pub parent: Option<Pid>,
    pub command: String,
    /// "CPython 3.11 (/usr/bin/python3.11)" if it runs one.
    pub python: Option<String>,
    /// What tracer sees of its allocations (object allocator coverage).
    pub notes: Vec<String>,
    /// How it ended, if it did while recorded ("exited with status 0").
    pub exit_status: Option<String>,
}

/// One process's memory at one moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemorySample {
    pub pid: Pid,
    pub ts_ns: u64,
    /// Live bytes in the heap model.
    pub live_bytes: u64,
    /// Its resident set, from /proc (none once it has exited).
    pub rss_bytes: Option<u64>,
}
