//! Where a recording goes: every sink is fed the same stream of events, as
//! they are applied to the model, and a snapshot of the model and the
//! targets every `--interval` and at the end; the stacks' definitions come
//! from the recording's one symbolizer (`symbolize::feed`), to the sinks
//! that subscribe. The capture writer (`record`'s file, the daemon's
//! rotating segments) is both commands'; the windows (pushed by the export
//! and push threads) are the daemon's; what each stack allocated between
//! two snapshots is counted in one place (`interval`).

pub mod capture;
pub mod export;
pub mod interval;
pub mod push;
pub mod stats;
pub mod types_pprof;
pub mod window;
pub mod window_pprof;

use anyhow::Result;

use crate::{
    census::Census,
    counters::Counters,
    event::HeapEvent,
    model::Model,
    process::{MemorySample, ProcessInfo},
};

pub trait Sink {
    /// Events just applied to the model, in order.
    fn events(&mut self, events: &[HeapEvent]) -> Result<()>;

    /// The model and the targets as they are now.
    fn snapshot(&mut self, snapshot: &Snapshot<'_>) -> Result<()>;

    /// A target ended, after all its events: how it ended. Events of its
    /// pid after this are another process's (the pid was reused). The
    /// model forgets it right after.
    fn exited(&mut self, _process: &ProcessInfo) -> Result<()> {
        Ok(())
    }

    /// A walk of a process's heap ended: its live objects by type.
    fn census(&mut self, _census: &Census) -> Result<()> {
        Ok(())
    }

    /// Why the sink asks the recording to end, if it does (`tracer top`'s
    /// `q`, the capture's size bound).
    fn stop_requested(&self) -> Option<&'static str> {
        None
    }

    /// The recording ended, right after a last snapshot. Sinks are
    /// finished in the order they were added: a later one may read what an
    /// earlier one wrote.
    fn finish(self: Box<Self>, end: &Ending) -> Result<()>;
}

pub struct Snapshot<'a> {
    /// CLOCK_MONOTONIC ns.
    pub ts_ns: u64,
    pub model: &'a Model,
    /// Every target so far.
    pub processes: &'a [ProcessInfo],
    /// Memory of each running target now.
    pub samples: &'a [MemorySample],
    /// The kernel's and the collector's.
    pub counters: Counters,
}

pub struct Ending {
    /// CLOCK_MONOTONIC ns.
    pub end_ns: u64,
    /// Every target, with how it ended.
    pub processes: Vec<ProcessInfo>,
}
