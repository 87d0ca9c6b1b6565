//! The daemon's windows: every `--interval`, for each traced process, what
//! each stack allocated since the last window (from the heap model's
//! running totals, so that the windows add up to the whole recording
//! exactly) and what it holds live now; and the heap walks that ended
//! since the last window, labelled as the process's windows are. The rows,
//! and the walks go to the export thread, which encodes and pushes once
//! the recording's symbolizer has defined their stacks: nothing here
//! waits for symbols or the network.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock, atomic::Ordering::Relaxed},
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::Result;

use log::debug;

use super::{
    Ending, Sink, Snapshot,
    export::{Batch, Exporter, TypesWindow},
    interval::Interval,
    stats::Stats,
    window_pprof::{ProcessWindow, WindowRow},
};
use crate::{
    census::Census,
    clock::monotonic_ns,
    event::{HeapEvent, Pid, StackId},
    labels::{self, Cgroup, Labels},
    process::ProcessInfo,
};

/// Walks of one process held until the next window: a process is walked
/// once at a time, so more than two come only when the loop fell behind
/// (the baseline and the first periodic walk may come together: both are
/// kept, the growth log compares them); the oldest go first.
const WALKS_HELD: usize = 4;

/// What labels every window carries besides each process's own; replaced
/// when the configuration is read again (SIGHUP).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LabelSettings {
    pub fixed: Labels,
    pub pid: bool,
}

/// What is known of a process across windows.
struct Known {
    cgroup: Cgroup,
    /// Its labels at the last window, which its walks carry too.
    labels: Labels,
    /// What each stack allocated by the last window's end.
    allocated: Interval<StackId>,
}

pub struct WindowSink {
    interval_ns: u64,
    /// When the current window began (CLOCK_MONOTONIC ns).
    start_ns: u64,
    known: HashMap<Pid, Known>,
    host: String,
    settings: Arc<RwLock<LabelSettings>>,
    /// A window computed at a snapshot before its end was due: the last
    /// one goes out when the recording finishes.
    pending: Option<Batch>,
    /// Walks that ended since the last window went out, in order, at most
    /// `WALKS_HELD` of each process.
    walks: Vec<Census>,
    exporter: Exporter,
    stats: Arc<Stats>,
}

impl WindowSink {
    pub fn new(
        interval_ns: u64,
        start_ns: u64,
        settings: Arc<RwLock<LabelSettings>>,
        exporter: Exporter,
        stats: Arc<Stats>,
    ) -> Self {
        Self {
            interval_ns,
            start_ns,
            known: HashMap::new(),
            host: labels::host_name(),
            settings,
            pending: None,
            walks: Vec::new(),
            exporter,
            stats,
        }
    }

    /// The window from `start_ns` to the snapshot, without changing what
    /// the next one counts from.
    fn window(&mut self, s: &Snapshot<'_>) -> Batch {
        let settings = self.settings.read().map(|g| g.clone()).unwrap_or_default();
        let to_unix = unix_ns_of(s.ts_ns);
        let mut windows = Vec::new();
        for info in s.processes {
            let heap = s.model.heap().process(info.pid);
            // A process that has not allocated since tracing began has no
            // heap and no window, but its labels already: its walks (the
            // baseline first) carry them.
            if heap.is_none() && exited(info) {
                continue;
            }
            let known = self.known.entry(info.pid).or_insert_with(|| Known {
                cgroup: labels::cgroup_of(info.pid),
                labels: Labels::new(),
                allocated: Interval::default(),
            });
            known.labels = labels::of_process(
                info.pid,
                &info.command,
                &known.cgroup,
                &self.host,
                &settings.fixed,
                settings.pid,
            );
            let Some(heap) = heap else { continue };
            let mut rows = Vec::new();
            for (stack, stats) in heap.stacks() {
                let allocated = known.allocated.peek(stack, stats.allocated);
                if allocated.count > 0 || stats.live.bytes > 0 {
                    rows.push(WindowRow {
                        stack: *stack,
                        allocated,
                        live: stats.live,
                    });
                }
            }
            windows.push(ProcessWindow {
                pid: info.pid,
                labels: known.labels.clone(),
                start_unix_ns: to_unix(self.start_ns),
                end_unix_ns: to_unix(s.ts_ns),
                rows,
            });
        }
        Batch {
            windows,
            types: Vec::new(),
            ended: Vec::new(),
            stacks_known: s.model.stacks().count(),
            ends_ns: s.ts_ns,
        }
    }

    /// The walks that ended, labelled as their processes' windows; those of
    /// a process never in a window (it ended first) are dropped.
    fn take_walks(&mut self) -> Vec<TypesWindow> {
        let to_unix = unix_ns_of(monotonic_ns());
        let mut out = Vec::new();
        for census in std::mem::take(&mut self.walks) {
            match self.known.get(&census.pid) {
                Some(known) => out.push(TypesWindow {
                    pid: census.pid,
                    labels: known.labels.clone(),
                    at_unix_ns: to_unix(census.ts_ns),
                    types: census.types,
                }),
                None => debug!("pid {}: a walk of a process without windows", census.pid),
            }
        }
        out
    }

    /// Sends `batch`, with the walks that ended, and counts from its end
    /// on; forgets the processes that had exited (their last window is in
    /// it).
    fn emit(&mut self, mut batch: Batch, s: Option<&Snapshot<'_>>) {
        batch.types = self.take_walks();
        if let Some(s) = s {
            for info in s.processes {
                if let (Some(heap), Some(known)) = (
                    s.model.heap().process(info.pid),
                    self.known.get_mut(&info.pid),
                ) {
                    known.allocated.count_all(
                        heap.stacks()
                            .iter()
                            .filter(|(_, st)| st.allocated.count > 0)
                            .map(|(id, st)| (*id, st.allocated)),
                    );
                }
                if exited(info) && self.known.remove(&info.pid).is_some() {
                    batch.ended.push(info.pid);
                }
            }
        }
        self.start_ns = batch.ends_ns;
        let made = batch.windows.len() as u64;
        if self.exporter.send(batch) {
            self.stats.windows.fetch_add(made, Relaxed);
        } else {
            self.stats.windows_dropped.fetch_add(made, Relaxed);
        }
    }
}

fn exited(info: &ProcessInfo) -> bool {
    info.exit_status.is_some()
}

/// A function from CLOCK_MONOTONIC ns to Unix time ns, as of now.
fn unix_ns_of(now_mono: u64) -> impl Fn(u64) -> u64 {
    let unix_now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mono_now = monotonic_ns().max(now_mono);
    move |ts| unix_now.saturating_sub(mono_now.saturating_sub(ts))
}

impl Sink for WindowSink {
    fn events(&mut self, events: &[HeapEvent]) -> Result<()> {
        self.stats.events.fetch_add(events.len() as u64, Relaxed);
        Ok(())
    }

    fn snapshot(&mut self, s: &Snapshot<'_>) -> Result<()> {
        self.stats
            .lost_events
            .store(s.counters.get(tracer_common::counter::LOST_EVENTS), Relaxed);
        let running = s.processes.iter().filter(|p| !exited(p)).count();
        self.stats.processes.store(running as u64, Relaxed);
        let tracked: u64 = s
            .model
            .heap()
            .processes()
            .map(|(_, h)| h.totals().live_count)
            .sum();
        self.stats.tracked.store(tracked, Relaxed);
        self.stats.evicted.store(s.model.heap().evicted(), Relaxed);
        let batch = self.window(s);
        // The interval's tick may come a little early or late; the first
        // snapshot comes right at the start.
        if s.ts_ns.saturating_sub(self.start_ns) >= self.interval_ns / 2 {
            self.pending = None;
            self.emit(batch, Some(s));
        } else {
            self.pending = Some(batch);
        }
        Ok(())
    }

    fn census(&mut self, census: &Census) -> Result<()> {
        let mine = || self.walks.iter().filter(|c| c.pid == census.pid);
        if mine().count() >= WALKS_HELD
            && let Some(i) = self.walks.iter().position(|c| c.pid == census.pid)
        {
            self.walks.remove(i);
        }
        self.walks.push(census.clone());
        Ok(())
    }

    fn finish(mut self: Box<Self>, _end: &Ending) -> Result<()> {
        if let Some(batch) = self.pending.take()
            && batch.ends_ns > self.start_ns
        {
            self.emit(batch, None);
        }
        self.exporter.finish();
        Ok(())
    }
}
