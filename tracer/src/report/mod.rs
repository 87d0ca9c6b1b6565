//! Reports: `analysis` makes one `Report` value from a capture (pure
//! functions of its events, unit-tested on synthetic ones); `render` turns
//! that value into each format, through one dispatcher that `tracer record`
//! and `tracer report` share.

pub mod analysis;
pub mod render;
pub mod source;

use std::collections::BTreeMap;

use serde::Serialize;

use crate::{
    census::{Coverage, Moment, TypeCount, TypeGrowth},
    counters::Counters,
    event::{ExitReason, Pid, Tid},
    frame::Frame,
    model::heap::ThreadStacks,
    process::ProcessInfo,
};

#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    pub duration_s: f64,
    /// How the probes were attached.
    pub probes: String,
    pub processes: Vec<ProcessReport>,
    pub totals: Totals,
    pub counters: Counters,
    pub min_age_s: f64,
    /// Thread stacks are ranked with the other mappings in leaks, hotspots
    /// and peak (`--include-thread-stacks`), not only counted apart.
    pub thread_stacks_included: bool,
    /// Every leaking stack, largest first.
    pub leaks: Vec<Entry>,
    /// Every allocating stack, largest first.
    pub hotspots: Vec<Entry>,
    /// Each process's and thread's totals and peak, in pid order.
    pub summary: Vec<ProcessSummary>,
    /// What needs the whole sequence of events.
    pub history: History,
    /// Live objects by type, per process that was walked, in pid order.
    pub types: Vec<ProcessTypes>,
    /// Each process's top leaking Python function, line by line.
    pub lines: Vec<FunctionLines>,
}

/// Live objects by type of one process: its last walk, and how each type
/// grew since its first.
#[derive(Clone, Debug, PartialEq)]
pub struct ProcessTypes {
    pub pid: Pid,
    pub moment: Moment,
    /// Seconds after recording began.
    pub at_s: f64,
    /// Most bytes first.
    pub types: Vec<TypeCount>,
    pub coverage: Coverage,
    pub notes: Vec<String>,
    pub growth: Option<TypesGrowth>,
}

/// How types grew between two walks.
#[derive(Clone, Debug, PartialEq)]
pub struct TypesGrowth {
    /// When the earlier walk was made, seconds after recording began.
    pub since_s: f64,
    /// The most grown bytes first.
    pub types: Vec<TypeGrowth>,
}

/// One Python function, line by line (memory_profiler's table).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct FunctionLines {
    pub pid: Pid,
    pub function: String,
    pub file: String,
    /// The recording sampled allocations: the amounts are estimates.
    pub estimated: bool,
    /// The file could be read: every line of the function is listed.
    pub source_found: bool,
    pub lines: Vec<LineAmounts>,
    /// Other functions the name matched, as "function (file)".
    pub others: Vec<String>,
}

/// What one source line of a function allocated.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LineAmounts {
    pub line: u32,
    /// The text of the line, if the file was read.
    pub source: Option<String>,
    /// Allocated there and in what it called.
    pub allocations: u64,
    pub allocated_bytes: u64,
    /// Of that, still live when the leak set was taken.
    pub live_bytes: u64,
    /// Allocated by the line itself: the function was the innermost
    /// Python frame.
    pub own_allocations: u64,
    pub own_allocated_bytes: u64,
    pub own_live_bytes: u64,
}

/// What a report says about one traced process.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProcessReport {
    pub info: ProcessInfo,
    /// When its leak set was taken, if it began to exit while recorded.
    pub leaks_taken: Option<LeaksTaken>,
    /// Its thread stacks mapped when its leak set was taken.
    pub thread_stacks: ThreadStacks,
    /// Bytes it inherited from its parent at fork (live in it too, not its
    /// leaks).
    pub inherited_bytes: u64,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LeaksTaken {
    pub reason: ExitReason,
    /// Seconds after recording began.
    pub at_s: f64,
}

/// A report row: the allocations of one process under one stack.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub pid: Pid,
    pub bytes: u64,
    pub count: u64,
    pub stack: Vec<Frame>,
    pub truncated: bool,
    /// The types of its objects (leaks of a walked process), most bytes first.
    pub types: Vec<TypeCount>,
}

/// Totals over every traced process.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub allocs: u64,
    pub frees: u64,
    pub bytes_allocated: u64,
    pub bytes_freed: u64,
    /// Bytes in the leak sets (before `--min-age`).
    pub live_bytes: u64,
}

/// The reports made by replaying a capture's events.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct History {
    /// The live set at each process's peak, by stack.
    pub peak: Vec<Entry>,
    /// Allocations freed soon after they were made, by stack.
    pub temporary: Vec<Entry>,
    pub temporary_rule: String,
    pub timeline: Vec<TimelinePoint>,
    /// Each stack's live bytes window by window, ranked by growth.
    pub growth: Growth,
}

/// Stacks ranked by sustained growth over the last windows
/// (`analysis::growth`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Growth {
    /// Seconds per window.
    pub window_s: f64,
    /// Windows in the capture.
    pub windows: u64,
    /// The last windows the trend test looked at.
    pub tested: usize,
    /// Growing first (fastest first), then plateaued, then steady.
    pub entries: Vec<GrowthEntry>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GrowthStatus {
    /// Still growing over the last windows and their second half: a leak
    /// suspect.
    Growing,
    /// Grew since first seen, flat over the second half of the last
    /// windows: a cache that filled.
    Plateaued,
    Steady,
}

impl GrowthStatus {
    pub fn name(self) -> &'static str {
        match self {
            GrowthStatus::Growing => "growing",
            GrowthStatus::Plateaued => "plateaued",
            GrowthStatus::Steady => "steady",
        }
    }
}

/// One stack of one process: live now (`entry.bytes`, `entry.count`), its
/// trend, and its live bytes in each window tested, oldest first.
#[derive(Clone, Debug, PartialEq)]
pub struct GrowthEntry {
    pub entry: Entry,
    pub status: GrowthStatus,
    pub bytes_per_hour: f64,
    pub series: Vec<u64>,
}

/// Memory of one process at one moment.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct TimelinePoint {
    pub pid: Pid,
    /// Seconds after recording began.
    pub t: f64,
    /// Live bytes in the heap model.
    pub live_bytes: u64,
    /// The process's resident set, from /proc.
    pub rss_bytes: Option<u64>,
}

/// What one process or thread allocated and freed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Activity {
    pub allocations: u64,
    pub allocated_bytes: u64,
    pub frees: u64,
    pub freed_bytes: u64,
    /// Live at the end of the recording.
    pub live_bytes: u64,
    /// Live when the process began to exit, or at the end: its leaks.
    pub leaked_bytes: u64,
    /// The most live bytes at once.
    pub peak_bytes: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ProcessSummary {
    pub pid: Pid,
    #[serde(flatten)]
    pub activity: Activity,
    /// Seconds after recording began when the peak was first reached.
    pub peak_at_s: f64,
    /// Frees of addresses never seen allocated (before tracing, or lost).
    pub unmatched_frees: u64,
    /// Allocations at an address still live: a free was not seen.
    pub implied_frees: u64,
    /// By thread id; memory is charged to the thread that allocated it.
    pub threads: BTreeMap<Tid, Activity>,
}

impl Report {
    pub fn process(&self, pid: Pid) -> Option<&ProcessReport> {
        self.processes.iter().find(|p| p.info.pid == pid)
    }

    /// A process's command line, as recorded ("" if unknown).
    pub fn command(&self, pid: Pid) -> &str {
        self.process(pid).map_or("", |p| p.info.command.as_str())
    }

    /// A process's program name (without its path), for flamegraph roots.
    pub fn command_name(&self, pid: Pid) -> String {
        self.command(pid)
            .split_whitespace()
            .next()
            .map(|c| c.rsplit('/').next().unwrap_or(c).to_owned())
            .unwrap_or_else(|| "process".to_owned())
    }

    pub fn summary_of(&self, pid: Pid) -> Option<&ProcessSummary> {
        self.summary.iter().find(|s| s.pid == pid)
    }

    pub fn types_of(&self, pid: Pid) -> Option<&ProcessTypes> {
        self.types.iter().find(|t| t.pid == pid)
    }
}
